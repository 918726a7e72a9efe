"""The evaluation harness: its scoring rules on hand-made cases, and a quick end-to-end run with
the real attackers and the reference model so `python -m evaluation` cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from evaluation.attackers import Detection
from evaluation.data import Plate
from evaluation.privacy import FaceScore, Findings, PlateScore, box_iou, inside_fraction
from evaluation.scales import on_canvas
from evaluation.systems import GlobalBlur
from evaluation.temporal import Leaks, longest_run
from evaluation.utility import Agreement, psnr, ssim

REPO = Path(__file__).resolve().parents[1]


def test_canvas_centres_the_downscaled_image_on_black() -> None:
    image = np.full((80, 120, 3), 200, np.uint8)
    canvas, (x, y, w, h) = on_canvas(image, 0.25)
    assert canvas.shape == image.shape
    assert (w, h) == (30, 20) and (x, y) == (45, 30)
    assert (canvas[y:y + h, x:x + w] == 200).all()
    canvas[y:y + h, x:x + w] = 0
    assert not canvas.any()
    same, region = on_canvas(image, 1.0)
    assert region == (0, 0, 120, 80) and (same == image).all()


def test_global_blur_of_equal_privacy_takes_the_largest_kernel() -> None:
    baseline = GlobalBlur.equal_privacy([5, 41, 17], sigma_factor=10.0)
    assert (baseline.kernel, baseline.sigma) == (41, 410.0)


def test_plate_score_counts_detections_reads_and_surviving_strings() -> None:
    truth = (Plate((10, 10, 60, 30), "AB123CD"), Plate((100, 10, 150, 30), ""))
    original = (Detection((12, 11, 58, 29), 0.9, "AB123CD"), Detection((101, 9, 149, 31), 0.8,
                                                                        "ZZ99"))
    score = PlateScore()
    score.add(truth, original, original)
    assert score.rates() == {"detected": 1.0, "recognised": 1.0, "strings_leaked": 1.0}
    blurred = PlateScore()
    blurred.add(truth, (Detection((12, 11, 58, 29), 0.4, "A8"),), original)
    assert blurred.rates() == {"detected": 0.5, "recognised": 0.0, "strings_leaked": 0.0}
    # a read with the plate's surroundings (agentclpr joins text lines, HyperLPR adds a
    # province) still counts as read, privacy-side
    wrapped = PlateScore()
    wrapped.add(truth, (Detection((12, 11, 58, 29), 0.9, "QUEBECAB123CDJE"),), original)
    assert wrapped.rates() == {"detected": 0.5, "recognised": 1.0, "strings_leaked": 0.5}


def test_face_score_separates_covered_faces_from_misses() -> None:
    mask = np.zeros((100, 100), bool)
    mask[:, :50] = True
    faces = FaceScore()
    covered, missed = Detection((10, 10, 30, 30), 0.9), Detection((70, 10, 90, 30), 0.9)
    faces.add("img", (covered, missed), (covered,), mask)
    assert (faces.on_original, faces.covered, len(faces.misses)) == (2, 1, 1)
    assert (faces.on_output_masked, faces.on_output_unmasked) == (1, 0)
    assert faces.misses == [("img", (70, 10, 90, 30))]
    assert inside_fraction((40, 0, 60, 10), mask) == pytest.approx(0.5)
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)


def test_leaks_and_runs() -> None:
    assert longest_run([True, True, False, True, True, True, False]) == 3
    assert longest_run([]) == 0
    raw = Findings((), {"reader": (Detection((0, 0, 5, 5), 1.0, "LS15EBC"),)})
    leaks = Leaks()
    leaks.add(raw, raw, "")
    leaks.add(Findings((Detection((0, 0, 5, 5), 1.0),), {"reader": ()}), raw, "")
    assert leaks.plates == [True, False] and leaks.faces == [False, True]
    known = Leaks()
    known.add(Findings((), {"r": (Detection((0, 0, 5, 5), 1.0, "赣LS15EBC"),)}),
              Findings((), {"r": ()}), "LS15EBC")
    assert known.plates == [True]


def test_utility_measures() -> None:
    rng = np.random.default_rng(0)
    ramp = np.linspace(60, 190, 64)
    image = np.repeat((ramp[None, :] + ramp[:, None] * 0.3).astype(np.uint8)[..., None], 3, 2)
    region = np.ones((64, 64), bool)
    assert psnr(image, image, region) == 99.0 and ssim(image, image, region) == pytest.approx(1.0)
    noisy = np.clip(image.astype(int) + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
    assert psnr(image, noisy, region) < 30 and ssim(image, noisy, region) < 0.9
    agreement = Agreement()
    truth = np.zeros((4, 4), np.uint8)
    truth[:2] = 7
    same = truth.copy()
    half = truth.copy()
    half[:, 2:] = 0
    agreement.add(truth, same, {"car": 7, "bus": 6})
    assert agreement.miou() == 1.0
    agreement.add(truth, half, {"car": 7, "bus": 6})
    assert agreement.miou() == pytest.approx(12 / 16)


@pytest.mark.slow
def test_quick_run_writes_the_report(shared_data: Path, tmp_path: Path) -> None:
    from evaluation.__main__ import main

    assert main(["--quick", "--no-hyperlpr", "--data", str(shared_data), "--out", str(tmp_path),
                 "--models", str(REPO / "daemon" / "engines" / "deeplabv3_mnv2_voc_257.onnx")]) == 0
    report = (tmp_path / "REPORT.md").read_text()
    for heading in ("## Headline", "### 1. Privacy", "### Faces against our masks",
                    "### 2. Multi-scale", "### 3. Temporal", "### 4. Segmentation by object size",
                    "### 5. Peer: deface"):
        assert heading in report
    # CenterFace finds faces on the raw crowd still; the global blur of equal privacy hides them
    row = re.search(r"\| stills \| original \| (\d+) \|", report)
    assert row and int(row.group(1)) > 5, report
    assert re.search(r"\| stills \| global \| 0 \|", report), report
    plots = list((tmp_path / "plots").glob("*.png"))
    gallery = list((tmp_path / "gallery").glob("*.jpg"))
    assert plots and len(gallery) >= 2
    for link in re.findall(r"\]\(((?:plots|gallery)/[^)]+)\)", report):
        assert (tmp_path / link).is_file(), link
