"""Array aliases shared by every stage, with the boundary checks that go with them, and the
plain record of one blurred object (a leaf module: numpy only)."""

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Image = NDArray[np.uint8]  # H x W x 3, BGR
LabelMap = NDArray[np.uint8]  # H x W, class ids at frame resolution
Ownership = NDArray[np.int32]  # H x W, object index owning each pixel, -1 for none


def check_image(frame: np.ndarray) -> Image:
    """Raise ValueError unless `frame` is an H x W x 3 uint8 array."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 frame, got {frame.shape} {frame.dtype}")
    return frame


def check_labels(labels: np.ndarray, frame: np.ndarray) -> LabelMap:
    """Raise ValueError unless `labels` is an H x W uint8 map matching `frame`."""
    if labels.ndim != 2 or labels.dtype != np.uint8 or labels.shape != frame.shape[:2]:
        raise ValueError(
            f"expected an H x W uint8 label map of shape {frame.shape[:2]}, "
            f"got {labels.shape} {labels.dtype}"
        )
    return labels


@dataclass(frozen=True)
class BlurObject:
    """One 8-connected object of one class, with its bounding box and Gaussian."""

    class_id: int
    x: int
    y: int
    w: int
    h: int
    kernel: int
    sigma: float

    @property
    def radius(self) -> int:
        return (self.kernel - 1) // 2


@dataclass(frozen=True)
class FrameTime:
    """When a camera frame arrived and the timestamp its camera gave it (what the publisher
    paces and stamps output frames by; never the pixels)."""

    epoch: int  # the camera connection it came from (timestamps restart with each)
    arrived: float  # time.monotonic()
    pts_ns: int | None
