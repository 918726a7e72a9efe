"""The one place a compute backend is chosen: the analyzer and the anonymizer that goes with it.

`model.device`:
- auto: TensorRT (NVIDIA GPU), else OpenVINO, else ONNX Runtime; each skipped one is logged
  with its reason.
- cpu: OpenVINO, else ONNX Runtime (logged). gpu: an alias of tensorrt.
- tensorrt, openvino, openvino-gpu (OpenVINO on an Intel GPU), onnxruntime: that one, or
  BackendUnavailable saying why not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from daemon.analysis.manifest import class_ids, load_manifest
from daemon.analysis.precision import Precision, cpu_flags, int8_copy, pick_precision
from daemon.config import BlurConfig, Config
from daemon.errors import BackendUnavailable
from daemon.interfaces import Analyzer, Anonymizer

log = logging.getLogger(__name__)

AnonymizerFactory = Callable[[Sequence[int], BlurConfig], Anonymizer]


@dataclass(frozen=True)
class Backend:
    """An analyzer and the anonymizers that belong with it (on the same device)."""

    name: str  # tensorrt, openvino, onnxruntime
    analyzer: Analyzer
    _anonymizer: AnonymizerFactory

    def anonymizer(self, class_ids: Sequence[int], blur: BlurConfig) -> Anonymizer:
        """An anonymizer for these class ids and blur settings (one per camera)."""
        return self._anonymizer(class_ids, blur)


_ORDER = {
    "auto": ("tensorrt", "openvino", "onnxruntime"),
    "cpu": ("openvino", "onnxruntime"),
    "gpu": ("tensorrt",),
    "tensorrt": ("tensorrt",),
    "openvino": ("openvino",),
    "openvino-gpu": ("openvino-gpu",),
    "onnxruntime": ("onnxruntime",),
}


def open_backend(config: Config) -> Backend:
    """The backend `config.model.device` asks for, loaded, checked and warmed up.

    Raises ModelError (model or manifest unusable, or an `anonymize` class the model lacks),
    ConfigError (invalid manifest, with file:line:col) or BackendUnavailable (a forced backend
    that cannot run here, with the reason).
    """
    device = config.model.device
    candidates = _ORDER[device]
    skipped: list[str] = []
    for name in candidates:
        try:
            backend = _OPENERS[name](config)
        except BackendUnavailable as exc:
            if len(candidates) == 1:
                raise BackendUnavailable(f"model.device is {device}: {exc}") from exc
            skipped.append(f"{name}: {exc}")
            continue
        if skipped:
            log.info("device %s: using %s (%s)", device, name, "; ".join(skipped))
        else:
            log.info("device %s: using %s", device, name)
        return backend
    raise BackendUnavailable(f"model.device is {device}: no backend usable ({'; '.join(skipped)})")


def _cpu_anonymizer(ids: Sequence[int], blur: BlurConfig) -> Anonymizer:
    from daemon.anonymizer.cpu import CpuAnonymizer

    return CpuAnonymizer(ids, blur)


def _weights(config: Config, native_bf16: bool) -> tuple[Path, Path, Precision]:
    """The model file and manifest to load and the precision (`model.precision`, see
    daemon.analysis.precision): the INT8 copy next to the model for int8."""
    copy = int8_copy(config.model.path)
    precision = pick_precision(config.model.precision, has_int8=copy is not None,
                               native_bf16=native_bf16, flags=cpu_flags())
    if precision == "int8" and copy is not None:
        return copy, copy.with_suffix(".manifest.yaml"), precision
    return config.model.path, config.model.manifest_path, precision


def _onnxruntime(config: Config) -> Backend:
    from daemon.analysis.onnx_backend import OnnxAnalyzer

    path, manifest_path, _ = _weights(config, native_bf16=False)  # ORT: no BF16 kernels
    manifest = load_manifest(manifest_path)
    analyzer = OnnxAnalyzer(
        path,
        manifest,
        threads=config.model.threads,
        tiling=config.analysis.tiling,
        protected=class_ids(manifest, config.analyzed_classes),
    )
    return Backend("onnxruntime", analyzer, _cpu_anonymizer)


def _openvino_on(ov_device: str) -> Callable[[Config], Backend]:
    def opener(config: Config) -> Backend:
        from daemon.analysis.openvino_backend import OpenVinoAnalyzer, OvDevice, native_bf16

        device: OvDevice = "GPU" if ov_device == "GPU" else "CPU"
        path, manifest_path, precision = _weights(config, native_bf16(device))
        manifest = load_manifest(manifest_path)
        analyzer = OpenVinoAnalyzer(
            path,
            manifest,
            device=device,
            precision=precision,
            threads=config.model.threads,
            tiling=config.analysis.tiling,
            protected=class_ids(manifest, config.analyzed_classes),
        )
        return Backend("openvino", analyzer, _cpu_anonymizer)

    return opener


def _tensorrt(config: Config) -> Backend:
    from daemon.gpu.backend import create_gpu_analyzer, create_gpu_anonymizer

    analyzer = create_gpu_analyzer(config)

    def anonymizer(ids: Sequence[int], blur: BlurConfig) -> Anonymizer:
        # on the analyzer's own device and stream: the frame goes up once and comes down once
        return create_gpu_anonymizer(ids, blur, analyzer.device)

    return Backend("tensorrt", analyzer, anonymizer)


_OPENERS: dict[str, Callable[[Config], Backend]] = {
    "tensorrt": _tensorrt,
    "openvino": _openvino_on("CPU"),
    "openvino-gpu": _openvino_on("GPU"),
    "onnxruntime": _onnxruntime,
}
