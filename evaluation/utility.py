"""Utility: how much of what is not sensitive survives anonymization. Fidelity outside the
(dilated) sensitive masks, and a vision task on the non-sensitive content: the reference VOC
model's cars, buses and bicycles on the anonymized frame against the original."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from daemon.analysis.manifest import load_manifest
from daemon.analysis.onnx_backend import OnnxAnalyzer
from evaluation.data import REPO

VOC_MODEL = REPO / "daemon" / "engines" / "deeplabv3_mnv2_voc_257.onnx"
TASK_CLASSES = ("car", "bus", "bicycle")
MAX_PSNR = 99.0  # identical pixels


def psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    if not region.any():
        return float("nan")
    diff = a.astype(np.float64)[region] - b.astype(np.float64)[region]
    mse = float(np.mean(diff * diff))
    return MAX_PSNR if mse == 0 else min(MAX_PSNR, 10 * np.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004, 11x11 Gaussian window sigma 1.5, grey) over `region`."""
    if not region.any():
        return float("nan")
    x = cv2.cvtColor(a, cv2.COLOR_BGR2GRAY).astype(np.float64)
    y = cv2.cvtColor(b, cv2.COLOR_BGR2GRAY).astype(np.float64)

    def smooth(v: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(v, (11, 11), 1.5)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = smooth(x), smooth(y)
    vx, vy, cov = smooth(x * x) - mx * mx, smooth(y * y) - my * my, smooth(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s[region].mean())


class TaskModel:
    """The reference VOC DeepLab as the downstream vision task."""

    def __init__(self) -> None:
        manifest = load_manifest(VOC_MODEL.with_suffix(".manifest.yaml"))
        self.ids = {c: manifest.classes[c] for c in TASK_CLASSES}
        self.analyzer = OnnxAnalyzer(VOC_MODEL, manifest)

    def labels(self, image: np.ndarray) -> np.ndarray:
        return self.analyzer.labels(image)


@dataclass
class Agreement:
    """Task labels on anonymized images against the same on the originals, summed over a set:
    per class IoU of agreement, and their mean over classes the originals contain."""

    inter: dict[str, int] = field(default_factory=dict)
    union: dict[str, int] = field(default_factory=dict)

    def add(self, original: np.ndarray, anonymized: np.ndarray, ids: dict[str, int]) -> None:
        for name, cid in ids.items():
            a, b = original == cid, anonymized == cid
            self.inter[name] = self.inter.get(name, 0) + int(np.count_nonzero(a & b))
            self.union[name] = self.union.get(name, 0) + int(np.count_nonzero(a | b))

    def miou(self) -> float:
        ious = [self.inter[c] / self.union[c] for c in self.union if self.union[c]]
        return float(np.mean(ious)) if ious else float("nan")
