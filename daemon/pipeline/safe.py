"""`SafeFrame`: the only kind of frame the publisher accepts, made only in this module.

A SafeFrame is either the anonymizer's output (`anonymized`) or a frame that reveals nothing
(`fail_closed`). Its pixels never share memory with the raw camera frame and are read-only, so
nothing downstream can hold or restore a raw frame through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from daemon.anonymizer.cpu import fail_closed_frame
from daemon.anonymizer.objects import BlurObject
from daemon.errors import EngineError
from daemon.interfaces import Anonymizer
from daemon.types import Image, LabelMap, check_image

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
