"""The GPU analyzer: a TensorRT plan run on CuPy buffers and a CuPy stream, pre- and
post-processing in kernels.cu, labels at frame resolution on the device."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from daemon.analysis.manifest import Manifest
from daemon.analysis.multiscale import MultiScaleAnalyzer
from daemon.analysis.tiling import Tile
from daemon.config import TilingConfig
from daemon.errors import EngineError, ModelError
from daemon.gpu.analysis import (
    merge_protected_on,
    preprocess_on,
    upsampled_argmax_on,
    upsampled_nearest_on,
)
from daemon.types import Image, LabelMap

if TYPE_CHECKING:
    from daemon.gpu.backend import GpuDevice

log = logging.getLogger(__name__)


class TrtAnalyzer(MultiScaleAnalyzer):
    """The analyzer from a TensorRT plan of a manifest-described model, on one GPU: the shared
    multi-scale skeleton on CuPy arrays (one execution context, serialised by its lock)."""

    def __init__(
        self,
        trt: ModuleType,
        device: GpuDevice,
        plan: Path,
        manifest: Manifest,
        *,
        tiling: TilingConfig | None = None,
        protected: Sequence[int] = (),
    ) -> None:
        """Load the plan on `device`, check its I/O against `manifest`, warm up. tiling and
        `protected` (class ids to anonymize, which win the tiles' merge) as for OnnxAnalyzer."""
        super().__init__(manifest, tiling, protected)
        self._trt = trt
        self._device = device
        self._cupy = device.cupy
        self._kernels = device.kernels
        self._stream = device.stream
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise ModelError(f"TensorRT could not load the plan {plan} (rebuild it)")
        self._context = self._engine.create_execution_context()
        spec = manifest.input
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        self._input = _one(inputs, spec.name, "input", plan)
        self._output = _one(outputs, manifest.output.name, "output", plan)
        if spec.size == "dynamic":
            self._context.set_input_shape(self._input, (1, 3, spec.height, spec.width))
        cp = self._cupy
        with self._stream:
            self._protected_on_device = cp.asarray(self._protected_table)
            self._tensor = cp.empty((1, 3, spec.height, spec.width), dtype=cp.float32)
            self._inbuf = self._buffer(self._input)
            self._outbuf = self._buffer(self._output)
        if tuple(self._inbuf.shape) != (1, 3, spec.height, spec.width):
            raise ModelError(
                f"plan {plan}: input {self._input!r} is {tuple(self._inbuf.shape)}, manifest "
                f"{manifest.name!r} says 1 x 3 x {spec.height} x {spec.width}"
            )
        self._context.set_tensor_address(self._input, int(self._inbuf.data.ptr))
        self._context.set_tensor_address(self._output, int(self._outbuf.data.ptr))
        blank = np.zeros((spec.height, spec.width, 3), dtype=np.uint8)
        try:
            self.labels(blank)
        except EngineError as exc:
            raise ModelError(f"plan {plan}: warm-up run failed: {exc}") from exc
        self.backend = f"TensorRT {trt.__version__} ({device.identity.name}, fp16)"
        log.info("analyzer ready: %s, model %s, plan %s", self.describe, manifest.name, plan.name)

    @property
    def device(self) -> GpuDevice:
        """The GpuDevice this analyzer runs on (its stream and kernels)."""
        return self._device

    def _buffer(self, name: str) -> Any:
        shape = tuple(self._context.get_tensor_shape(name))
        dtype = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))
        return self._cupy.empty(shape, dtype=dtype)

    def labels(self, frame: Image) -> LabelMap:
        with self._stream:
            return super().labels(frame)

    def regions_labels(self, frame: Image, regions: Sequence[Tile]) -> list[LabelMap]:
        with self._stream:
            return super().regions_labels(frame, regions)

    def _to_device(self, image: Image) -> Any:
        return self._cupy.asarray(np.ascontiguousarray(image))

    def _window(self, image: Any, tile: Tile) -> Any:
        return self._cupy.ascontiguousarray(super()._window(image, tile))

    def _merge(self, labels: Any, tile: Tile, tile_labels: Any) -> None:
        merge_protected_on(labels, tile, tile_labels, self._protected_on_device)

    def _to_host(self, labels: Any) -> LabelMap:
        host: LabelMap = labels.get()  # a CuPy array's download (CuPy is untyped)
        return host

    def _despeckle(self, tile_labels: Any, tile: Tile) -> Any:
        # connected components on the host: one small (tile-sized) round trip per tile
        return self._cupy.asarray(super()._despeckle(tile_labels.get(), tile))

    def _pass(self, frame: Any) -> Any:
        """Labels at the (contiguous, device) image's own resolution from one inference."""
        cp, spec = self._cupy, self.manifest.input
        height, width = frame.shape[:2]
        with self._stream:
            preprocess_on(
                frame, spec.height, spec.width, spec.colour_order, spec.mean, spec.std,
                self._kernels, out=self._tensor,
            )
            cp.copyto(self._inbuf, self._tensor, casting="same_kind")
            if not self._context.execute_async_v3(self._stream.ptr):
                raise EngineError("TensorRT execution failed (see its log)")
            result = self._outbuf[0]
            if self.manifest.output.kind == "logits":
                logits = result.astype(cp.float32, copy=False)
                return upsampled_argmax_on(logits, height, width, self._kernels)
            return upsampled_nearest_on(result, height, width, self._kernels)


def _one(names: list[str], wanted: str | None, what: str, plan: Path) -> str:
    if wanted is not None:
        if wanted not in names:
            raise ModelError(f"plan {plan}: no {what} {wanted!r}; it has {names}")
        return wanted
    if len(names) != 1:
        raise ModelError(f"plan {plan}: {len(names)} {what}s; name one in the manifest")
    return names[0]
