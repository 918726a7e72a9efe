"""Network output to frame-resolution labels: exact "bilinear logits, then argmax", sparsely.

`upsampled_argmax_reference` is the spec: resize every class's logits to the frame with OpenCV's
INTER_LINEAR convention (half-pixel centres, edge taps clamped), then take the argmax (first
index on ties). `upsampled_argmax` gives the identical result (same float32 operations, same
order) while interpolating only where it can matter: a frame pixel's interpolated logits are a
convex combination of its 4 source samples, so where those 4 agree on the argmax (by a margin
larger than float32 rounding can erase) the interpolated argmax is that label. Only pixels of
the remaining cells (class boundaries, a few percent of the frame) interpolate all classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from daemon.types import LabelMap

Logits = NDArray[np.float32]  # C x h x w, channel index = class id

# A corner whose winning logit leads the runner-up by less than this fraction of the largest
# |logit| is treated as a tie: float32 rounding in the interpolation (~1e-6 relative) could
# flip the argmax there, so such cells are interpolated in full.
_MARGIN_RELATIVE = 1e-5


@dataclass(frozen=True)
class LinearTaps:
    """OpenCV INTER_LINEAR taps on one axis: dst[i] = src[lo] * (1 - frac) + src[hi] * frac."""

    lo: NDArray[np.intp]
    hi: NDArray[np.intp]
    frac: NDArray[np.float32]


def linear_taps(src: int, dst: int) -> LinearTaps:
    """The taps OpenCV's resize uses for `dst` samples from `src` (half-pixel centres, clamped)."""
    scale = 1.0 / (dst / src)  # OpenCV: scale_x = 1 / inv_scale_x, inv_scale_x = dst / src
    pos = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    lo = np.floor(pos).astype(np.intp)
    frac = (pos - lo.astype(np.float32)).astype(np.float32)
    before = lo < 0
    lo[before] = 0
    frac[before] = 0.0
    after = lo >= src - 1
    lo[after] = src - 1
    frac[after] = 0.0
    hi = np.minimum(lo + 1, src - 1)
    return LinearTaps(lo, hi, frac)


def _lerp(
    a: NDArray[np.float32], b: NDArray[np.float32], t: NDArray[np.float32]
) -> NDArray[np.float32]:
    """a * (1 - t) + b * t in float32, in the one order both implementations share."""
    mixed: NDArray[np.float32] = a * (np.float32(1.0) - t) + b * t  # numpy's stubs: Any
    return mixed


def upsampled_argmax_reference(logits: Logits, height: int, width: int) -> NDArray[np.integer]:
    """The spec: interpolate every class to height x width, then argmax (dense; memory C*H*W*4).

    uint8 class ids (a LabelMap) for C <= 256, the argmax's intp beyond.
    """
    channels = logits.shape[0]
    ys = linear_taps(logits.shape[1], height)
    xs = linear_taps(logits.shape[2], width)
    hwc = np.ascontiguousarray(logits.transpose(1, 2, 0))
    fx = xs.frac[None, :, None]
    top = _lerp(hwc[ys.lo][:, xs.lo], hwc[ys.lo][:, xs.hi], fx)
    bottom = _lerp(hwc[ys.hi][:, xs.lo], hwc[ys.hi][:, xs.hi], fx)
    values = _lerp(top, bottom, ys.frac[:, None, None])
    labels: NDArray[np.intp] = values.argmax(axis=2)
    return labels.astype(np.uint8) if channels <= 256 else labels


def _argmax_channels(logits: Logits) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """(argmax over C, first index on ties; the max): ndarray.argmax(axis=0) is ~2x slower."""
    top1 = logits.max(axis=0)
    low = np.full(top1.shape, logits.shape[0] - 1, dtype=np.uint8)
    hit = np.empty(top1.shape, dtype=np.bool_)
    for channel in range(logits.shape[0] - 2, -1, -1):
        np.equal(logits[channel], top1, out=hit)
        np.copyto(low, np.uint8(channel), where=hit)
    return low, top1


def _uncertain_cells(
    logits: Logits, low: NDArray[np.uint8], top1: NDArray[np.float32]
) -> NDArray[np.bool_]:
    """h x w: True where the cell with top-left sample (i, j) may not keep label low[i, j].

    A cell's corners are (i, j), (i, j+1), (i+1, j), (i+1, j+1), clamped at the last row and
    column as the taps are.
    """
    h, w = low.shape
    down = np.minimum(np.arange(h) + 1, h - 1)
    right = np.minimum(np.arange(w) + 1, w - 1)
    runner_up = logits.copy()
    np.put_along_axis(runner_up, low[None], -np.inf, axis=0)
    margin = top1 - runner_up.max(axis=0)
    scale = float(np.abs(top1).max()) + float(np.abs(logits.min()))
    thin = ~(margin > _MARGIN_RELATIVE * scale)  # also True for NaN
    uncertain: NDArray[np.bool_] = thin | thin[:, right]
    uncertain |= uncertain[down]
    rows = low[down]
    uncertain |= (low != low[:, right]) | (low != rows) | (low != rows[:, right])
    return uncertain


def upsampled_argmax(logits: Logits, height: int, width: int) -> LabelMap:
    """Equal to `upsampled_argmax_reference(logits, height, width)`, interpolating only near ties.

    `logits` must be float32, C x h x w with C <= 256 and finite.
    """
    h, w = logits.shape[1:]
    low, top1 = _argmax_channels(logits)
    if (h, w) == (height, width):
        return low  # identity taps (weights 1 and 0): the interpolation is the logits themselves
    ys = linear_taps(h, height)
    xs = linear_taps(w, width)
    labels = low.take(ys.lo, axis=0).take(xs.lo, axis=1)

    uncertain = _uncertain_cells(logits, low, top1)
    # Per source row i and frame column x: does the cell (i, xs.lo[x]) need interpolating?
    rows_per_cell = np.bincount(ys.lo, minlength=h)
    first_row = np.cumsum(rows_per_cell) - rows_per_cell
    cell_rows, cols = np.nonzero(uncertain[:, xs.lo] & (rows_per_cell > 0)[:, None])
    if cell_rows.size == 0:
        return labels

    hwc = np.ascontiguousarray(logits.transpose(1, 2, 0))
    below = np.minimum(cell_rows + 1, h - 1)
    fx = xs.frac[cols][:, None]
    lo_x, hi_x = xs.lo[cols], xs.hi[cols]
    top = _lerp(hwc[cell_rows, lo_x], hwc[cell_rows, hi_x], fx)
    bottom = _lerp(hwc[below, lo_x], hwc[below, hi_x], fx)

    # Each (source row, column) pair serves every frame row that maps to that source row:
    # broadcast over up to `most` rows (pairs with fewer rows compute a clamped spare one).
    repeats = rows_per_cell[cell_rows]
    most = int(repeats.max())
    frame_rows = np.minimum(first_row[cell_rows][:, None] + np.arange(most), height - 1)
    values = _lerp(top[:, None, :], bottom[:, None, :], ys.frac[frame_rows][:, :, None])
    winners = values.argmax(axis=2).astype(np.uint8)
    valid = np.arange(most) < repeats[:, None]
    labels[frame_rows[valid], np.broadcast_to(cols[:, None], valid.shape)[valid]] = winners[valid]
    return labels


def upsampled_nearest(labels: NDArray[np.integer], height: int, width: int) -> LabelMap:
    """Class ids h x w to height x width by nearest neighbour (half-pixel centres)."""
    source = np.ascontiguousarray(labels, dtype=np.uint8)
    if source.shape == (height, width):
        return source
    resized = cv2.resize(source, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    return resized.astype(np.uint8, copy=False)


def upsampled_argmax_opencv(logits: Logits, height: int, width: int) -> LabelMap:
    """cv2.resize of all classes, then argmax: the brute force the refinement replaces."""
    hwc = np.ascontiguousarray(logits.transpose(1, 2, 0))
    resized = cv2.resize(hwc, (width, height), interpolation=cv2.INTER_LINEAR)
    if resized.ndim == 2:
        resized = resized[:, :, None]
    labels: LabelMap = resized.argmax(axis=2).astype(np.uint8)
    return labels
