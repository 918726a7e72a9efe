"""The systems under test: ours (the daemon's analyzer and adaptive blur, exactly as
`anonymizer file` runs them) and the paper's baseline, one global Gaussian of equal privacy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.analysis.manifest import class_ids, load_manifest
from daemon.analysis.onnx_backend import OnnxAnalyzer
from daemon.anonymizer import CpuAnonymizer
from daemon.anonymizer.cpu import global_blur
from daemon.anonymizer.objects import find_objects
from daemon.config import BlurConfig, TilingConfig
from daemon.configfile import load_config
from daemon.pipeline.temporal import Analysis, union_labels

# the sensitive classes this evaluation anonymizes, where the model knows them
SENSITIVE = ("person", "license_plate")


@dataclass(frozen=True)
class Anonymized:
    image: np.ndarray
    mask: np.ndarray  # bool: the pixels the blur owned (everything it may have changed)
    kernels: tuple[int, ...]  # the K of every object


class Ours:
    """The model's analyzer (ONNX Runtime, CPU) and the adaptive anonymizer, default config."""

    def __init__(self, model: Path, *, tiling: bool = False, threads: int = 0) -> None:
        config = load_config(None)
        self.model = model
        self.tiling = tiling
        self.manifest = load_manifest(model.with_suffix(".manifest.yaml"))
        self.classes = tuple(c for c in SENSITIVE if c in self.manifest.classes)
        self.class_ids = class_ids(self.manifest, self.classes)
        self.analyzer = OnnxAnalyzer(model, self.manifest, threads=threads,
                                     tiling=TilingConfig(enabled=tiling),
                                     protected=self.class_ids)
        self.bracket_dilation = config.analysis.bracket_dilation
        self.use_blur(config.blur)

    def use_blur(self, blur: BlurConfig) -> None:
        """Blur with other settings (the same analysis)."""
        self.blur = blur
        self._anonymizer = CpuAnonymizer(self.class_ids, blur)

    def labels(self, image: np.ndarray) -> np.ndarray:
        return self.analyzer.labels(image)

    def anonymize(self, image: np.ndarray, labels: np.ndarray | None = None) -> Anonymized:
        labels = self.labels(image) if labels is None else labels
        objects = find_objects(labels, self.class_ids, self._anonymizer.params)
        return Anonymized(self._anonymizer.blur_objects(image, objects), objects.owner >= 0,
                          tuple(o.kernel for o in objects.objects))

    def bracketed(self, image: np.ndarray, before: np.ndarray, after: np.ndarray) -> Anonymized:
        """Frame between two analyses, as the daemon's `bracket` mode blurs it."""
        pair = (Analysis(0, 0, before), Analysis(0, 1, after))
        return self.anonymize(image, union_labels(pair, self.class_ids, self.bracket_dilation))


@dataclass(frozen=True)
class GlobalBlur:
    """The paper's baseline of equal privacy: the largest K (and its sigma) our adaptive blur
    used anywhere on the set, applied to the whole frame."""

    kernel: int
    sigma: float

    @classmethod
    def equal_privacy(cls, kernels: list[int], sigma_factor: float) -> GlobalBlur:
        k = max(kernels, default=3)
        return cls(k, sigma_factor * k)

    def anonymize(self, image: np.ndarray) -> np.ndarray:
        return global_blur(image, self.kernel, self.sigma)
