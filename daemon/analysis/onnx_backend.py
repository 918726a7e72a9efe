"""The CPU analyzer: ONNX Runtime inference, checked against the model manifest at load."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from daemon.analysis.manifest import Manifest, sha256_file
from daemon.analysis.tiling import (
    analysis_tiles,
    describe_tiling,
    merge_protected,
    protected_lookup,
)
from daemon.analysis.upsample import upsampled_argmax, upsampled_nearest
from daemon.config import TilingConfig
from daemon.errors import ConfigError, EngineError, ModelError
from daemon.types import Image, LabelMap, check_image

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

_FLOAT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}
_INT_TYPES = {f"tensor({t})" for t in ("uint8", "int8", "uint16", "int16", "int32", "int64")}

Dim = int | str | None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__



def _show(shape: Sequence[Dim]) -> str:
    return " x ".join(str(d) if isinstance(d, int) else "?" for d in shape)


def _agrees(actual: Sequence[Dim], expected: Sequence[int | None]) -> bool:
    """An int expects that int (a symbolic dim also fits it); None expects a symbolic dim."""
    if len(actual) != len(expected):
        return False
    for have, want in zip(actual, expected, strict=True):
        if want is None:
            if isinstance(have, int):
                return False
        elif isinstance(have, int) and have != want:
            return False
    return True


def _pick(args: Sequence[ort.NodeArg], name: str | None, what: str, path: Path) -> ort.NodeArg:
    if name is not None:
        for arg in args:
            if arg.name == name:
                return arg
        names = ", ".join(repr(a.name) for a in args)
        raise ModelError(f"model {path}: the manifest names {what} {name!r}; the ONNX has {names}")
    if len(args) != 1:
        raise ModelError(
            f"model {path}: has {len(args)} {what}s; name the one to use in the manifest"
        )
    return args[0]


class OnnxAnalyzer:
    """`labels(frame)` for any manifest-described ONNX segmentation model, on the CPU."""

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

        threads: ONNX Runtime intra-op threads (0: its default, all cores). tiling: the
        multi-scale option; `protected` are the class ids (to anonymize) that win its merge.
        """
        self.manifest = manifest
        self._path = model_path
        self._tiling = tiling if tiling is not None else TilingConfig()
        if self._tiling.enabled and not protected:
            raise ConfigError("analysis.tiling needs the class ids to anonymize to merge tiles")
        self._protected = protected_lookup(tuple(protected))
        spec = manifest.input
        self._size = (spec.width, spec.height)
        self._mean = np.asarray(spec.mean, dtype=np.float32)
        self._std = np.asarray(spec.std, dtype=np.float32)
        self._session = self._open(threads)
        self._input, self._output, self._input_dtype = self._check_io()
        self._warm_up()
        log.info(
            "analyzer ready: ONNX Runtime (CPU), model %s (%s), %d classes, tiling %s",
            manifest.name,
            model_path,
            len(manifest.classes),
            describe_tiling(self._tiling),
        )

    def _open(self, threads: int) -> ort.InferenceSession:
        path = self._path
        if not path.is_file():
            raise ModelError(f"model file {path} not found")
        expected = self.manifest.sha256
        if expected is not None:
            actual = sha256_file(path)
            if actual != expected:
                raise ModelError(
                    f"model {path}: sha256 is {actual}, manifest {self.manifest.name!r} says "
                    f"{expected} (wrong file or wrong manifest)"
                )
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
                f"model {path}: not a loadable ONNX model: {_first_line(exc)}"
            ) from exc

    def _check_io(self) -> tuple[str, str, str]:
        path, spec, out = self._path, self.manifest.input, self.manifest.output
        source = _pick(self._session.get_inputs(), spec.name, "input", path)
        if source.type not in _FLOAT_TYPES:
            raise ModelError(
                f"model {path}: input {source.name!r} is {source.type}, expected float"
            )
        hw: list[int | None] = [spec.height, spec.width] if spec.size == "fixed" else [None, None]
        if not _agrees(source.shape, [1, 3, *hw]):
            raise ModelError(
                f"model {path}: input {source.name!r} is {_show(source.shape)}; manifest "
                f"{self.manifest.name!r} says 1 x 3 x {spec.height} x {spec.width} "
                f"({spec.size} size, NCHW)"
            )
        target = _pick(self._session.get_outputs(), out.name, "output", path)
        classes = len(self.manifest.classes)
        if out.kind == "logits":
            ok = target.type in _FLOAT_TYPES and len(target.shape) == 4
            ok = ok and _agrees(target.shape[:2], [1, classes])
            wanted = f"float 1 x {classes} x h x w logits"
        else:
            ok = target.type in _INT_TYPES and len(target.shape) == 3
            ok = ok and _agrees(target.shape[:1], [1])
            wanted = "integer 1 x h x w labels"
        if not ok:
            raise ModelError(
                f"model {path}: output {target.name!r} is {target.type} {_show(target.shape)}; "
                f"manifest {self.manifest.name!r} says {wanted}"
            )
        return source.name, target.name, _FLOAT_TYPES[source.type]

    def _warm_up(self) -> None:
        """One run at load: the first inference allocates and is slow; a broken graph fails here."""
        blank = np.zeros((self._size[1], self._size[0], 3), dtype=np.uint8)
        try:
            self._labels_at(blank)
        except EngineError as exc:
            raise ModelError(f"model {self._path}: warm-up run failed: {exc}") from exc

    def labels(self, frame: Image) -> LabelMap:
        """H x W class ids for an H x W x 3 BGR frame; EngineError on any failure (fail closed)."""
        try:
            check_image(frame)
        except ValueError as exc:
            raise EngineError(str(exc)) from exc
        if frame.shape[0] == 0 or frame.shape[1] == 0:
            raise EngineError(f"expected a non-empty frame, got {frame.shape}")
        labels = self._labels_at(frame)
        height, width = frame.shape[:2]
        for tile in analysis_tiles(height, width, self._size[1], self._size[0], self._tiling):
            window = frame[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width]
            merge_protected(labels, tile, self._labels_at(window), self._protected)
        return labels

    def _preprocess(self, image: Image) -> NDArray[np.floating]:
        """Stretch to the input size (bilinear), reorder channels, normalise, 1 x 3 x H x W."""
        if image.shape[1::-1] != self._size:
            try:
                image = cv2.resize(image, self._size, interpolation=cv2.INTER_LINEAR)
            except cv2.error as exc:
                raise EngineError(f"cannot resize the frame: {_first_line(exc)}") from exc
        if self.manifest.input.colour_order == "RGB":
            image = image[:, :, ::-1]
        tensor = (image.astype(np.float32) - self._mean) / self._std
        return np.ascontiguousarray(tensor.transpose(2, 0, 1)[None], dtype=self._input_dtype)

    def infer(self, image: Image) -> np.ndarray:
        """The model's raw output (1 x C x h x w logits or 1 x h x w ids) for one BGR image."""
        tensor = self._preprocess(image)
        try:
            return self._session.run([self._output], {self._input: tensor})[0]
        except _ORT_ERRORS as exc:
            raise EngineError(f"inference failed: {_first_line(exc)}") from exc

    def _labels_at(self, image: Image) -> LabelMap:
        """Labels at `image`'s own resolution from one inference."""
        result = self.infer(image)
        height, width = image.shape[:2]
        if self.manifest.output.kind == "logits":
            return upsampled_argmax(self._logits(result), height, width)
        return upsampled_nearest(self._class_ids(result), height, width)

    def _logits(self, result: np.ndarray) -> NDArray[np.float32]:
        classes = len(self.manifest.classes)
        if result.ndim != 4 or result.shape[:2] != (1, classes):
            raise EngineError(
                f"model output is {_show(result.shape)}, expected 1 x {classes} x h x w logits"
            )
        logits = np.ascontiguousarray(result[0], dtype=np.float32)
        if not np.isfinite(logits).all():
            raise EngineError("model output has NaN or infinite logits")
        return logits

    def _class_ids(self, result: np.ndarray) -> NDArray[np.integer]:
        if result.ndim != 3 or result.shape[0] != 1 or not np.issubdtype(result.dtype, np.integer):
            raise EngineError(
                f"model output is {result.dtype} {_show(result.shape)}, expected integer 1 x h x w"
            )
        ids = result[0]
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) > 255):
            raise EngineError(
                f"model output has class ids outside 0..255: {ids.min()}..{ids.max()}"
            )
        return ids
