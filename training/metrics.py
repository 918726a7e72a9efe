"""Segmentation metrics without torch: IoU sums and recall by object size (used by
training.evaluate and by the evaluation harness)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import cv2
import numpy as np

# object size bins (pixels of one ground-truth person blob at the image's resolution)
SIZE_BINS = (("small", 0, 32 * 32), ("medium", 32 * 32, 96 * 96), ("large", 96 * 96, math.inf))
FOUND = 0.5  # a person counts as found when at least half of its pixels are labelled person


@dataclass
class Tally:
    """Running sums for one model."""

    inter: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    union: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    size_hit: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    size_pixels: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    found: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    objects: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add_iou(self, key: str, pred: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> None:
        self.inter[key] += int(np.count_nonzero(pred & truth & valid))
        self.union[key] += int(np.count_nonzero((pred | truth) & valid))

    def add_objects(self, pred: np.ndarray, truth: np.ndarray) -> None:
        count, blobs, stats, _ = cv2.connectedComponentsWithStats(
            truth.astype(np.uint8), connectivity=8)
        if count <= 1:
            return
        hits = np.bincount(blobs[pred].ravel(), minlength=count)
        for blob in range(1, count):
            area = int(stats[blob, cv2.CC_STAT_AREA])
            name = next(n for n, lo, hi in SIZE_BINS if lo <= area < hi)
            self.objects[name] += 1
            self.size_pixels[name] += area
            self.size_hit[name] += int(hits[blob])
            self.found[name] += int(hits[blob] >= FOUND * area)

    def metrics(self) -> dict[str, float]:
        out = {f"iou/{k}": self.inter[k] / self.union[k] if self.union[k] else math.nan
               for k in self.union}
        for name, _, _ in SIZE_BINS:
            n = self.objects.get(name, 0)
            out[f"found/{name}"] = self.found[name] / n if n else math.nan
            out[f"pixel_recall/{name}"] = (self.size_hit[name] / self.size_pixels[name]
                                           if n else math.nan)
            out[f"objects/{name}"] = float(n)
        return out
