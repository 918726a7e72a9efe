"""The OpenVINO analyzer: Intel's inference runtime for x86 and ARM CPUs (BF16 on CPUs that
have it natively: AVX512-BF16, AMX) and Intel GPUs, on the same ONNX model and manifest."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

from daemon.analysis.host import HostPass, check_model_file, first_line
from daemon.analysis.manifest import Manifest
from daemon.analysis.model_io import Port, check_io
from daemon.analysis.multiscale import MultiScaleAnalyzer
from daemon.analysis.precision import pick_precision
from daemon.config import TilingConfig
from daemon.errors import BackendUnavailable, EngineError, ModelError
from daemon.types import Image, LabelMap

log = logging.getLogger(__name__)

# OpenVINO raises RuntimeError (its C++ exceptions), numpy ValueError/TypeError on bad buffers.
_OV_ERRORS: tuple[type[Exception], ...] = (RuntimeError, ValueError, TypeError, MemoryError)

# OpenVINO element types in ONNX's spelling, for the shared port check.
_ONNX_TYPES = {
    "f32": "tensor(float)", "f16": "tensor(float16)", "bf16": "tensor(bfloat16)",
    "u8": "tensor(uint8)", "i8": "tensor(int8)", "u16": "tensor(uint16)",
    "i16": "tensor(int16)", "i32": "tensor(int32)", "i64": "tensor(int64)",
}

Precision = Literal["auto", "fp32", "bf16", "int8"]
OvDevice = Literal["CPU", "GPU"]


def openvino_module() -> ModuleType:
    """The openvino package; BackendUnavailable saying how to get it."""
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailable(
            f"OpenVINO is not installed (pip install openvino; {exc})"
        ) from exc
    module: ModuleType = openvino  # OpenVINO has no type information: Any to mypy
    return module


def native_bf16(device: str = "CPU") -> bool:
    """True where OpenVINO computes BF16 natively on `device` (its OPTIMIZATION_CAPABILITIES
    list BF16: AVX512-BF16 or AMX CPUs); BackendUnavailable without OpenVINO or the device."""
    core = openvino_module().Core()
    if device not in core.available_devices:
        raise BackendUnavailable(
            f"OpenVINO has no {device} device here (available: "
            f"{', '.join(core.available_devices) or 'none'})"
        )
    return "BF16" in core.get_property(device, "OPTIMIZATION_CAPABILITIES")


def resolve_precision(capabilities: Sequence[str], precision: Precision) -> str:
    """'bf16' or 'f32' (OpenVINO's hint) by precision.pick_precision's rule for a loaded model:
    auto is bf16 only where the device computes BF16 natively (its OPTIMIZATION_CAPABILITIES
    list BF16); forcing bf16 elsewhere is an error. int8 (a quantized model: its INT8 layers run
    in INT8 whatever the hint) hints f32."""
    picked = pick_precision(precision, has_int8=precision == "int8",
                            native_bf16="BF16" in capabilities, flags=frozenset())
    return "bf16" if picked == "bf16" else "f32"


class OpenVinoAnalyzer(MultiScaleAnalyzer):
    """The analyzer on OpenVINO (CPU or an Intel GPU), from the same ONNX file as ORT's."""

    def __init__(
        self,
        model_path: Path,
        manifest: Manifest,
        *,
        device: OvDevice = "CPU",
        precision: Precision = "auto",
        threads: int = 0,
        tiling: TilingConfig | None = None,
        protected: Sequence[int] = (),
    ) -> None:
        """Load, check against `manifest`, compile for `device`, warm up. ModelError if the
        model disagrees with its manifest; BackendUnavailable if OpenVINO or the device (or
        the precision asked for) is not there. threads: CPU inference threads (0: all cores)."""
        super().__init__(manifest, tiling, protected)
        ov = openvino_module()
        self._path = model_path
        check_model_file(model_path, manifest)
        core = ov.Core()
        if device not in core.available_devices:
            raise BackendUnavailable(
                f"OpenVINO has no {device} device here (available: "
                f"{', '.join(core.available_devices) or 'none'})"
            )
        try:
            model = core.read_model(str(model_path))
        except _OV_ERRORS as exc:
            raise ModelError(
                f"model {model_path}: not a loadable ONNX model (OpenVINO): {first_line(exc)}"
            ) from exc
        self._input, self._output, input_dtype = check_io(
            _ports(model.inputs), _ports(model.outputs), manifest, model_path)
        spec = manifest.input
        if spec.size == "dynamic":  # we always feed the manifest's size: compile for it
            model.reshape({self._input: [1, 3, spec.height, spec.width]})
        capabilities = list(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
        self.precision = resolve_precision(capabilities, precision)
        properties: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": self.precision,
            "PERFORMANCE_HINT": "LATENCY",
        }
        if device == "CPU":
            properties["INFERENCE_NUM_THREADS"] = threads
        try:
            compiled = core.compile_model(model, device, properties)
        except _OV_ERRORS as exc:
            raise ModelError(
                f"model {model_path}: OpenVINO cannot compile it for {device}: {first_line(exc)}"
            ) from exc
        self._request = compiled.create_infer_request()
        # the regions of one multi-scale analysis run as concurrent requests on CPU streams
        # (one thread each): on 2 cores this beats one 2-thread request at a time
        self._queue = self._stream_queue(ov, core, model, device, threads)
        if self._queue is not None:
            self.parallel = len(self._queue)
        self._host = HostPass(manifest, input_dtype)
        shown = "int8" if precision == "int8" else self.precision
        self.backend = f"OpenVINO {ov.__version__.split('-')[0]} ({device}, {shown})"
        self._warm_up(self._path)
        log.info("analyzer ready: %s, model %s (%s), %d classes", self.describe, manifest.name,
                 model_path, len(manifest.classes))

    def _stream_queue(self, ov: ModuleType, core: Any, model: Any, device: str, threads: int
                      ) -> Any:
        """An AsyncInferQueue over a THROUGHPUT-compiled copy, or None where streams cannot
        help (one thread, or not the CPU)."""
        cores = threads or len(os.sched_getaffinity(0))
        if device != "CPU" or cores < 2:
            return None
        properties = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT":
                      "THROUGHPUT", "NUM_STREAMS": cores, "INFERENCE_NUM_THREADS": cores}
        try:
            compiled = core.compile_model(model, device, properties)
        except _OV_ERRORS as exc:
            log.info("OpenVINO: no CPU streams (%s); regions run one at a time", first_line(exc))
            return None
        return ov.AsyncInferQueue(compiled, cores)

    def infer(self, image: Image) -> np.ndarray:
        """The model's raw output (1 x C x h x w logits or 1 x h x w ids) for one BGR image."""
        tensor = self._host.preprocess(image)
        try:
            result = self._request.infer({self._input: tensor})
            return np.asarray(result[self._output])
        except _OV_ERRORS as exc:
            raise EngineError(f"inference failed: {first_line(exc)}") from exc

    def _pass(self, image: Image) -> LabelMap:
        return self._host.labels(self.infer(image), *image.shape[:2])

    def _passes(self, images: list[Image]) -> list[LabelMap]:
        if self._queue is None or len(images) < 2:
            return super()._passes(images)
        outputs: list[np.ndarray | None] = [None] * len(images)

        def done(request: Any, index: int) -> None:
            outputs[index] = np.array(request.get_tensor(self._output).data)  # a copy

        try:
            self._queue.set_callback(done)
            for index, image in enumerate(images):
                self._queue.start_async({self._input: self._host.preprocess(image)}, index)
            self._queue.wait_all()
        except _OV_ERRORS as exc:
            raise EngineError(f"inference failed: {first_line(exc)}") from exc
        if any(out is None for out in outputs):
            raise EngineError("inference failed: a request returned no output")
        return [self._host.labels(out, *image.shape[:2])  # type: ignore[arg-type]
                for out, image in zip(outputs, images, strict=True)]


def _ports(ports: Sequence[Any]) -> list[Port]:
    """OpenVINO model ports as Ports (name, ONNX type spelling, static dims or None)."""
    result = []
    for port in ports:
        shape = port.get_partial_shape()
        dims = tuple(d.get_length() if d.is_static else None for d in shape)
        kind = _ONNX_TYPES.get(port.get_element_type().get_type_name(), "tensor(other)")
        result.append(Port(port.get_any_name(), kind, dims))
    return result
