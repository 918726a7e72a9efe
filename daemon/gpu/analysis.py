"""Analyzer steps on the executor: preprocessing and frame-resolution labels (kernels.cu).

Mirror `OnnxAnalyzer._preprocess` and `daemon.analysis.upsample`: the taps are the host
functions' own (`linear_taps`, OpenCV's nearest convention), uploaded once per geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from daemon.analysis.tiling import Tile
from daemon.analysis.upsample import linear_taps
from daemon.gpu.kernels import Kernels


def nearest_taps(src: int, dst: int) -> NDArray[np.int32]:
    """Source index of each of `dst` samples, as cv2's INTER_NEAREST_EXACT picks them."""
    index = np.arange(src, dtype=np.float32)[None, :]
    resized = cv2.resize(index, (dst, 1), interpolation=cv2.INTER_NEAREST_EXACT)
    taps: NDArray[np.int32] = resized[0].astype(np.int32)  # cv2's stubs: indexing gives Any
    return taps


class LinearTapsOn:
    """upsample.linear_taps(src, dst) as int32 / float32 executor arrays."""

    def __init__(self, src: int, dst: int, kernels: Kernels) -> None:
        taps = linear_taps(src, dst)
        xp = kernels.xp
        self.lo = xp.asarray(taps.lo.astype(np.int32))
        self.hi = xp.asarray(taps.hi.astype(np.int32))
        self.frac = xp.asarray(taps.frac)


def preprocess_on(
    frame: Any,
    height: int,
    width: int,
    colour_order: str,
    mean: Sequence[float],
    std: Sequence[float],
    kernels: Kernels,
    out: Any = None,
) -> Any:
    """1 x 3 x height x width float32: the BGR frame stretched (bilinear), channels in
    `colour_order`, (pixel - mean) / std. Within one grey level of OpenCV's uint8 resize."""
    xp = kernels.xp
    frame_height, frame_width = frame.shape[:2]
    ys = LinearTapsOn(frame_height, height, kernels)
    xs = LinearTapsOn(frame_width, width, kernels)
    order = (2, 1, 0) if colour_order == "RGB" else (0, 1, 2)
    tensor = out if out is not None else xp.empty((1, 3, height, width), dtype=xp.float32)
    kernels.launch(
        "preprocess",
        height * width,
        frame,
        np.int32(frame_width),
        ys.lo,
        ys.hi,
        ys.frac,
        xs.lo,
        xs.hi,
        xs.frac,
        np.int32(height),
        np.int32(width),
        *(np.int32(c) for c in order),
        *(np.float32(m) for m in mean),
        *(np.float32(s) for s in std),
        tensor,
    )
    return tensor


def upsampled_argmax_on(logits: Any, height: int, width: int, kernels: Kernels) -> Any:
    """upsample.upsampled_argmax_reference on the executor: C x h x w float32 logits to
    height x width uint8 labels (bilinear per class, first index of the maximum)."""
    xp = kernels.xp
    classes, src_height, src_width = logits.shape
    ys = LinearTapsOn(src_height, height, kernels)
    xs = LinearTapsOn(src_width, width, kernels)
    labels = xp.empty((height, width), dtype=xp.uint8)
    kernels.launch(
        "upsampled_argmax",
        height * width,
        xp.ascontiguousarray(logits, dtype=xp.float32),
        np.int32(classes),
        np.int32(src_height),
        np.int32(src_width),
        ys.lo,
        ys.hi,
        ys.frac,
        xs.lo,
        xs.hi,
        xs.frac,
        labels,
        np.int32(height),
        np.int32(width),
    )
    return labels


def upsampled_nearest_on(ids: Any, height: int, width: int, kernels: Kernels) -> Any:
    """upsample.upsampled_nearest on the executor: h x w class ids to height x width uint8."""
    xp = kernels.xp
    src_height, src_width = ids.shape
    labels = xp.empty((height, width), dtype=xp.uint8)
    kernels.launch(
        "upsampled_nearest",
        height * width,
        xp.ascontiguousarray(ids, dtype=xp.int32),
        np.int32(src_width),
        xp.asarray(nearest_taps(src_height, height)),
        xp.asarray(nearest_taps(src_width, width)),
        labels,
        np.int32(height),
        np.int32(width),
    )
    return labels


def merge_protected_on(labels: Any, tile: Tile, tile_labels: Any, protected: Any) -> None:
    """tiling.merge_protected on numpy or cupy arrays (no synchronisation): in place, a tile
    pixel of a protected class overrides an unprotected label; `protected` is the 256-entry
    bool table of tiling.protected_lookup on the same executor."""
    window = labels[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width]
    claim = protected[tile_labels] & ~protected[window]
    # A select by arithmetic: boolean-mask assignment would synchronise a device (its size).
    window[...] = window * ~claim + tile_labels * claim
