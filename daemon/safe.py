"""`SafeFrame`: the only kind of frame an output accepts, made only in this module.

Both outputs go through this one gate: the RTSP publisher (`daemon.streams.publish`) and the
file writers (`daemon.media.image.write_image`, `daemon.media.video_writer.VideoWriter`) take a
SafeFrame and refuse a plain array (`pixels()`). A SafeFrame is either the anonymizer's output
(`anonymized`) or a frame that reveals nothing (`fail_closed`, `placeholder`). Its pixels never
share memory with the raw frame and are read-only, so nothing downstream can hold or restore a
raw frame through it.

A leaf module (numpy, OpenCV and the package's plain types only; never numba or the blur code),
so that the streams, the media writers and the pipeline can all import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

from daemon.errors import EngineError
from daemon.interfaces import Anonymizer
from daemon.types import BlurObject, Image, LabelMap, check_image

Kind = Literal["anonymized", "fail_closed"]

_TOKEN = object()


class SafeFrame:
    """Pixels fit to publish. Construct only through `anonymized()` or `fail_closed()`."""

    __slots__ = ("image", "kind", "objects", "reason")

    def __init__(self, image: Image, kind: Kind, objects: Sequence[BlurObject], reason: str,
                 *, _token: object = None) -> None:
        if _token is not _TOKEN:
            raise TypeError("a SafeFrame is made only by anonymized() or fail_closed()")
        image.setflags(write=False)
        self.image = image
        self.kind: Kind = kind
        self.objects = tuple(objects)
        self.reason = reason

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.image.shape[1], self.image.shape[0]


def pixels(frame: object, consumer: str) -> Image:
    """The read-only pixels of `frame` for `consumer` to output; TypeError unless a SafeFrame.

    The check is on the exact type: a plain array (possibly a raw camera frame), an
    anonymizer's result or anything else is refused with a message that says how to make one.
    """
    if type(frame) is not SafeFrame:
        raise TypeError(
            f"{consumer} takes a SafeFrame (made only by daemon.safe.anonymized(), fail_closed() "
            f"or placeholder()), got {type(frame).__name__}: a plain array may be a raw frame"
        )
    return frame.image


def fail_closed_frame(frame: Image, style: Literal["blur", "black"]) -> Image:
    """A frame that reveals nothing: black, or blurred far beyond recognition.

    The blur is a downscale to at most 16 pixels on the long side and back: every output pixel
    mixes a sixteenth of the frame, which no face or plate survives.
    """
    if style == "black":
        return np.zeros_like(frame)
    h, w = frame.shape[:2]
    scale = 16.0 / max(h, w)
    tiny = cv2.resize(
        frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
    )
    # cv2's stubs lose the dtype: uint8 in, uint8 out
    out = cv2.resize(tiny, (w, h), interpolation=cv2.INTER_LINEAR)
    return out.astype(np.uint8, copy=False)


def _detached(image: Image, raw: Image) -> Image:
    if image is raw or np.shares_memory(image, raw):
        return image.copy()
    return image


def anonymized(anonymizer: Anonymizer, raw: Image, labels: LabelMap) -> SafeFrame:
    """Blur `raw` with `labels`; EngineError if the anonymizer returns something unusable."""
    result = anonymizer.anonymize(raw, labels)
    if result.frame.shape != raw.shape or result.frame.dtype != raw.dtype:
        raise EngineError(f"anonymizer returned {result.frame.shape} {result.frame.dtype}"
                          f" for a {raw.shape} {raw.dtype} frame")
    return SafeFrame(_detached(result.frame, raw), "anonymized", result.objects, "",
                     _token=_TOKEN)


def fail_closed(raw: Image, style: Literal["blur", "black"], reason: str) -> SafeFrame:
    """A frame that reveals nothing of `raw` (see `fail_closed_frame`), tagged with why."""
    check_image(raw)
    return SafeFrame(_detached(fail_closed_frame(raw, style), raw), "fail_closed", (), reason,
                     _token=_TOKEN)


def placeholder(width: int, height: int) -> SafeFrame:
    """A black frame for a stream that has no camera picture yet (viewers still get video)."""
    return SafeFrame(np.zeros((height, width, 3), np.uint8), "fail_closed", (), "no signal",
                     _token=_TOKEN)
