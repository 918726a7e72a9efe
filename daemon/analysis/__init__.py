"""The analyzer seam: `labels(frame) -> label map`, and the one place a backend is chosen."""

from __future__ import annotations

import logging
from typing import Protocol

from daemon.analysis.manifest import Manifest, class_ids, load_manifest
from daemon.config import Config
from daemon.errors import BackendUnavailable
from daemon.types import Image, LabelMap

log = logging.getLogger(__name__)

__all__ = ["Analyzer", "Manifest", "class_ids", "create_analyzer", "load_manifest"]


class Analyzer(Protocol):
    """Labels every pixel of a frame with a class id of `manifest`."""

    manifest: Manifest

    def labels(self, frame: Image) -> LabelMap:
        """H x W uint8 class ids for an H x W x 3 BGR frame; EngineError on failure."""
        ...


def create_analyzer(config: Config) -> Analyzer:
    """The analyzer `config.model.device` asks for, loaded, checked and warmed up.

    Raises ModelError (model or manifest unusable, or an `anonymize` class the model lacks),
    ConfigError (invalid manifest, with file:line:col) or BackendUnavailable (device: gpu).
    """
    match config.model.device:
        case "cpu":
            pass
        case "auto":
            try:
                return _gpu_analyzer(config)
            except BackendUnavailable as exc:
                log.info("device auto: using ONNX Runtime on the CPU (GPU unavailable: %s)", exc)
        case "gpu":
            try:
                return _gpu_analyzer(config)
            except BackendUnavailable as exc:
                raise BackendUnavailable(f"model.device is gpu: {exc}") from exc
    from daemon.analysis.onnx_backend import OnnxAnalyzer

    manifest = load_manifest(config.model.manifest_path)
    protected = class_ids(manifest, config.anonymize)
    return OnnxAnalyzer(
        config.model.path,
        manifest,
        threads=config.model.threads,
        tiling=config.analysis.tiling,
        protected=protected,
    )


def _gpu_analyzer(config: Config) -> Analyzer:
    """The TensorRT analyzer; BackendUnavailable says why not (no CuPy, driver, TensorRT)."""
    from daemon.gpu.backend import create_gpu_analyzer

    return create_gpu_analyzer(config)
