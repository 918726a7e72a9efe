"""The ONNX Runtime analyzer (CPU), checked against the model manifest at load."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from daemon.analysis.host import HostPass, check_model_file, first_line
from daemon.analysis.manifest import Manifest
from daemon.analysis.model_io import Port, check_io
from daemon.analysis.multiscale import MultiScaleAnalyzer
from daemon.config import TilingConfig
from daemon.errors import EngineError, ModelError
from daemon.types import Image, LabelMap

log = logging.getLogger(__name__)

# ONNX Runtime's pybind errors share no base class but Exception; these are all it defines,
# plus what numpy/ORT raise for bad buffers and a failed allocation.
_ORT_ERRORS: tuple[type[Exception], ...] = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.NoSuchFile,
    ort_state.NoModel,
    ort_state.EngineError,
    ort_state.RuntimeException,
    ort_state.InvalidProtobuf,
    ort_state.ModelLoaded,
    ort_state.NotImplemented,
    ort_state.InvalidGraph,
    ort_state.EPFail,
    RuntimeError,
    ValueError,
    MemoryError,
)

class OnnxAnalyzer(MultiScaleAnalyzer):
    """The analyzer for any manifest-described ONNX segmentation model, on ONNX Runtime."""

    backend = "ONNX Runtime (CPU, fp32)"

    def __init__(
        self,
        model_path: Path,
        manifest: Manifest,
        *,
        threads: int = 0,
        tiling: TilingConfig | None = None,
        protected: Sequence[int] = (),
    ) -> None:
        """Load, check against `manifest`, warm up; ModelError (one line) if anything disagrees.

        threads: ONNX Runtime intra-op threads (0: its default, all cores). tiling (None: off)
        and `protected` as for MultiScaleAnalyzer.
        """
        super().__init__(manifest, tiling, protected)
        self._path = model_path
        self._session = self._open(threads)
        self._input, self._output, input_dtype = self._check_io()
        self._host = HostPass(manifest, input_dtype)
        self._warm_up(self._path)
        log.info("analyzer ready: %s, model %s (%s), %d classes", self.describe, manifest.name,
                 model_path, len(manifest.classes))

    def _open(self, threads: int) -> ort.InferenceSession:
        path = self._path
        check_model_file(path, self.manifest)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # ORT's own warnings would bypass our logging
        try:
            return ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except _ORT_ERRORS as exc:
            raise ModelError(
                f"model {path}: not a loadable ONNX model: {first_line(exc)}"
            ) from exc

    def _check_io(self) -> tuple[str, str, str]:
        def ports(args: list[ort.NodeArg]) -> list[Port]:
            return [Port(a.name, a.type, tuple(a.shape)) for a in args]

        return check_io(ports(self._session.get_inputs()), ports(self._session.get_outputs()),
                        self.manifest, self._path)

    def infer(self, image: Image) -> np.ndarray:
        """The model's raw output (1 x C x h x w logits or 1 x h x w ids) for one BGR image."""
        tensor = self._host.preprocess(image)
        try:
            # onnxruntime has no type information: its outputs are Any to mypy
            output: np.ndarray = self._session.run([self._output], {self._input: tensor})[0]
            return output
        except _ORT_ERRORS as exc:
            raise EngineError(f"inference failed: {first_line(exc)}") from exc

    def _pass(self, image: Image) -> LabelMap:
        return self._host.labels(self.infer(image), *image.shape[:2])
