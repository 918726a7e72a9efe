"""The systems under test: ours (the analyzer and adaptive blur of the default config, exactly
as `anonymizer file` runs them: the backend `daemon.backends.open_backend` picks, the default
multi-scale plan), ours as a single pass (the same with `analysis.tiling.enabled: false`) and
the paper's baseline, one global Gaussian of equal privacy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.analysis.manifest import class_ids, load_manifest
from daemon.anonymizer import CpuAnonymizer
from daemon.anonymizer.cpu import global_blur
from daemon.anonymizer.objects import find_objects
from daemon.backends import open_backend
from daemon.config import BlurConfig, Config
from daemon.configfile import load_config
from daemon.pipeline.temporal import Analysis, union_labels

# the sensitive classes this evaluation anonymizes, where the model knows them (the default
# config's `anonymize` list)
SENSITIVE = ("person", "license_plate")
DEFAULT = "ours"  # the default config: multi-scale analysis (full frame + tiles, zoom auto)
SINGLE_PASS = "ours, single pass"  # the same with analysis.tiling.enabled: false


def product_config(model: Path, classes: tuple[str, ...], *, tiling: bool = True) -> Config:
    """The default config (`load_config(None)`, what `anonymizer file` runs without --config)
    with `model` as model.path, `classes` (those of the default `anonymize` list the model
    knows) as anonymize, and tiling as configured (`tiling`) or off."""
    config = load_config(None)
    analysis = config.analysis
    if not tiling:
        analysis = analysis.model_copy(
            update={"tiling": analysis.tiling.model_copy(update={"enabled": False})})
    return config.model_copy(update={
        "model": config.model.model_copy(update={"path": model, "manifest": None}),
        "anonymize": classes, "analysis": analysis})


@dataclass(frozen=True)
class Anonymized:
    image: np.ndarray
    mask: np.ndarray  # bool: the pixels the blur owned (everything it may have changed)
    kernels: tuple[int, ...]  # the K of every object


class Ours:
    """The default config's backend (`open_backend`: OpenVINO, else ONNX Runtime, on a CPU)
    and adaptive anonymizer for `model`. tiling=True: the default multi-scale plan (full frame
    + tiles, `analysis.tiling` as configured: zoom auto); False: the full-frame pass only."""

    def __init__(self, model: Path, *, tiling: bool = True) -> None:
        manifest = load_manifest(model.with_suffix(".manifest.yaml"))
        classes = tuple(c for c in load_config(None).anonymize if c in manifest.classes)
        config = product_config(model, classes, tiling=tiling)
        self.model = model
        self.tiling = tiling
        self.name = DEFAULT if tiling else SINGLE_PASS
        self.tiling_config = config.analysis.tiling
        self.classes = classes
        self.backend = open_backend(config)
        self.analyzer = self.backend.analyzer
        self.manifest = self.analyzer.manifest
        self.class_ids = class_ids(self.manifest, self.classes)
        self.bracket_dilation = config.analysis.bracket_dilation
        self.use_blur(config.blur)

    @property
    def describe(self) -> str:
        """The backend, its precision and the tiling, e.g. 'OpenVINO 2025.2 (CPU, bf16),
        tiling on (overlap 0.25, zoom auto)'."""
        return getattr(self.analyzer, "describe", self.backend.name)

    def use_blur(self, blur: BlurConfig) -> None:
        """Blur with other settings (the same analysis). The CPU anonymizer, which every CPU
        backend pairs with (daemon.backends); built here for its objects and masks."""
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
