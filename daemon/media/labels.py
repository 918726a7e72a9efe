"""Label maps on disk: single-channel PNGs whose pixel values are class ids."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import numpy as np

from daemon.errors import MediaError
from daemon.media.atomic import AtomicPath
from daemon.media.image import encode_image, write_encoded
from daemon.types import LabelMap

UNKNOWN_LABEL = 255
"""Written where no label map exists (a frame that failed closed): 'not analysed'."""


def unknown_labels(height: int, width: int) -> LabelMap:
    """An H x W map of UNKNOWN_LABEL, saved for frames whose analysis failed."""
    return np.full((height, width), UNKNOWN_LABEL, np.uint8)


def _check(labels: np.ndarray) -> None:
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"expected an H x W uint8 label map, got {labels.shape} {labels.dtype}")


def write_label_map(path: Path, labels: LabelMap) -> None:
    """Write one label map as a grey PNG, atomically."""
    _check(labels)
    write_encoded(path, encode_image(path, labels))


class LabelFolderWriter:
    """A folder of per-frame label maps `000000.png`, `000001.png`, ... (frame index order).

    Filled under a temporary name and renamed when the block exits without an exception,
    like the video it goes with; deleted on failure.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._target: AtomicPath | None = None

    def __enter__(self) -> LabelFolderWriter:
        self._target = AtomicPath(self.path)
        try:
            self._target.tmp.mkdir()
        except OSError as exc:
            raise MediaError(f"{self.path}: cannot create: {exc.strerror or exc}") from None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._target is None:
            return
        if exc_type is not None:
            self._target.discard()
            return
        try:
            self._target.commit()
        except OSError as exc:
            self._target.discard()
            raise MediaError(f"{self.path}: cannot write: {exc.strerror or exc}") from None

    def write(self, index: int, labels: LabelMap) -> None:
        """Write the label map of frame `index`."""
        if self._target is None:
            raise RuntimeError(f"{self.path}: writer not open (use it as a context manager)")
        _check(labels)
        name = self._target.tmp / f"{index:06d}.png"
        try:
            name.write_bytes(encode_image(name, labels))
        except OSError as exc:
            raise MediaError(f"{self.path}: cannot write: {exc.strerror or exc}") from None
