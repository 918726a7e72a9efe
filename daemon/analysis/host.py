"""Host-side steps every CPU backend shares: the model file check, preprocessing and turning
the model's output into labels at the image's resolution (numpy in, numpy out)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from daemon.analysis.manifest import Manifest, sha256_file
from daemon.analysis.upsample import upsampled_argmax, upsampled_nearest
from daemon.errors import EngineError, ModelError
from daemon.types import Image, LabelMap


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def show_shape(shape: Sequence[object]) -> str:
    return " x ".join(str(d) if isinstance(d, int) else "?" for d in shape)


def check_model_file(path: Path, manifest: Manifest) -> None:
    """ModelError unless `path` is a file whose sha256 is the manifest's (when it states one)."""
    if not path.is_file():
        raise ModelError(f"model file {path} not found")
    expected = manifest.sha256
    if expected is not None:
        actual = sha256_file(path)
        if actual != expected:
            raise ModelError(
                f"model {path}: sha256 is {actual}, manifest {manifest.name!r} says "
                f"{expected} (wrong file or wrong manifest)"
            )


class HostPass:
    """Preprocessing and output decoding of one inference for `manifest`, on the CPU."""

    def __init__(self, manifest: Manifest, input_dtype: str = "float32") -> None:
        spec = manifest.input
        self.manifest = manifest
        self.size = (spec.width, spec.height)
        self.input_dtype = input_dtype
        self._mean = np.asarray(spec.mean, dtype=np.float32)
        self._std = np.asarray(spec.std, dtype=np.float32)

    def preprocess(self, image: Image) -> NDArray[np.floating]:
        """Stretch to the input size (bilinear), reorder channels, normalise, 1 x 3 x H x W."""
        if image.shape[1::-1] != self.size:
            try:
                # cv2's stubs lose the dtype: uint8 in, uint8 out
                image = cv2.resize(  # type: ignore[assignment]
                    image, self.size, interpolation=cv2.INTER_LINEAR)
            except cv2.error as exc:
                raise EngineError(f"cannot resize the frame: {first_line(exc)}") from exc
        if self.manifest.input.colour_order == "RGB":
            image = image[:, :, ::-1]
        tensor = (image.astype(np.float32) - self._mean) / self._std
        return np.ascontiguousarray(tensor.transpose(2, 0, 1)[None], dtype=self.input_dtype)

    def labels(self, result: np.ndarray, height: int, width: int) -> LabelMap:
        """Labels at height x width from the model's raw output (logits or class ids)."""
        if self.manifest.output.kind == "logits":
            return upsampled_argmax(self._logits(result), height, width)
        return upsampled_nearest(self._class_ids(result), height, width)

    def _logits(self, result: np.ndarray) -> NDArray[np.float32]:
        classes = len(self.manifest.classes)
        if result.ndim != 4 or result.shape[:2] != (1, classes):
            raise EngineError(
                f"model output is {show_shape(result.shape)}, expected 1 x {classes} x h x w"
                " logits"
            )
        logits = np.ascontiguousarray(result[0], dtype=np.float32)
        if not np.isfinite(logits).all():
            raise EngineError("model output has NaN or infinite logits")
        return logits

    def _class_ids(self, result: np.ndarray) -> NDArray[np.integer]:
        if result.ndim != 3 or result.shape[0] != 1 or not np.issubdtype(result.dtype, np.integer):
            raise EngineError(
                f"model output is {result.dtype} {show_shape(result.shape)}, expected integer"
                " 1 x h x w"
            )
        ids: NDArray[np.integer] = result[0]
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) > 255):
            raise EngineError(
                f"model output has class ids outside 0..255: {ids.min()}..{ids.max()}"
            )
        return ids
