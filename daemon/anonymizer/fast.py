"""The fast CPU path of the mask-symmetric blur: the oracle's semantics, compiled with numba.

Same entry point as the oracle (`blur_objects_fast(frame, objects)`), same tap rule, two
separable passes. Per line (a row, then a column of the object's box) it finds the runs of the
object's pixels and, when the Gaussian is flat enough (sigma = 10 K by default makes it flat to
0.2 %), replaces the K-tap sum by prefix-sum queries: with O the owned taps inside the window and
M their mirror image about the pixel, the mask-symmetric sum is 2 S(O) - S(O & M) + F(p) C, where
C counts the taps whose both mirror positions are unowned. That makes the cost independent of K.
When the weights are not flat enough for the +-1 grey-level guarantee, the exact per-tap loop
runs instead (float32, k = -r..r, bit-identical to the oracle).
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import NDArray

from daemon.anonymizer.objects import ObjectMap, gaussian_weights
from daemon.types import Image

Pixels = NDArray[np.uint8] | NDArray[np.float32]  # one line of n x 3 values (pass 1: uint8)
Mask = NDArray[np.bool_]  # which of the line's pixels the object owns

# Worst-case error of the uniform-weight approximation over both passes, in grey levels, is
# 255 * sum|g_k - 1/K| (each pass errs by at most 127.5 * sum|g_k - 1/K|). Below 0.9 the rounded
# result stays within 1 grey level of the oracle.
FLAT_ERROR_BUDGET = 0.9
_ROUND_MAGIC = np.float32(2.0**23)


def uniform_error_bound(weights: np.ndarray) -> float:
    """Grey levels the two-pass uniform approximation can be off by, at most."""
    w = weights.astype(np.float64)
    return float(255.0 * np.abs(w - 1.0 / len(w)).sum())


@numba.njit(cache=True, nogil=True)
def _find_runs(own: np.ndarray, n: int, starts: np.ndarray, ends: np.ndarray) -> int:
    count = 0
    i = 0
    while i < n:
        if own[i]:
            starts[count] = i
            while i + 1 < n and own[i + 1]:
                i += 1
            ends[count] = i
            count += 1
        i += 1
    return count


@numba.njit(cache=True, nogil=True)
def _exact_line(
    line: Pixels, own: Mask, n: int, weights: NDArray[np.float32], res: NDArray[np.float32]
) -> None:
    r = (weights.shape[0] - 1) // 2
    for x in range(n):
        if not own[x]:
            continue
        for c in range(3):
            acc = np.float32(0.0)
            for i in range(2 * r + 1):
                k = i - r
                p = x + k
                q = x - k
                if 0 <= p < n and own[p]:
                    v = line[p, c]
                elif 0 <= q < n and own[q]:
                    v = line[q, c]
                else:
                    v = line[x, c]
                acc += weights[i] * np.float32(v)
            res[x, c] = acc


@numba.njit(cache=True, nogil=True)
def _flat_line(
    line: Pixels,
    own: Mask,
    n: int,
    r: int,
    pref: NDArray[np.float64],
    starts: NDArray[np.int64],
    ends: NDArray[np.int64],
    res: NDArray[np.float32],
) -> None:
    nruns = _find_runs(own, n, starts, ends)
    if nruns == 0:
        return
    # Queries only ever span owned pixels, so the prefix may include unowned values.
    first = starts[0]
    acc0 = 0.0
    acc1 = 0.0
    acc2 = 0.0
    pref[first, 0] = 0.0
    pref[first, 1] = 0.0
    pref[first, 2] = 0.0
    for i in range(first, ends[nruns - 1] + 1):
        acc0 += line[i, 0]
        acc1 += line[i, 1]
        acc2 += line[i, 2]
        pref[i + 1, 0] = acc0
        pref[i + 1, 1] = acc1
        pref[i + 1, 2] = acc2
    taps = 2 * r + 1
    inv = 1.0 / taps
    lo = 0
    for j in range(nruns):
        s = starts[j]
        e = ends[j]
        while ends[lo] < s - r:
            lo += 1
        hi = j
        while hi + 1 < nruns and starts[hi + 1] <= e + r:
            hi += 1
        if lo == j and hi == j:
            # One run in reach: O = [x-L, x+R], O & M = [x-m, x+m].
            for x in range(s, e + 1):
                left = min(x - s, r)
                right = min(e - x, r)
                if left == r and right == r:
                    # The whole window is owned: a plain box sum.
                    for c in range(3):
                        res[x, c] = np.float32((pref[x + r + 1, c] - pref[x - r, c]) * inv)
                    continue
                m = min(left, right)
                unowned = taps - (2 * (left + right + 1) - (2 * m + 1))
                hi_a = x + right + 1
                lo_a = x - left
                hi_b = x + m + 1
                lo_b = x - m
                for c in range(3):
                    a = pref[hi_a, c] - pref[lo_a, c]
                    b = pref[hi_b, c] - pref[lo_b, c]
                    res[x, c] = np.float32((2.0 * a - b + line[x, c] * unowned) * inv)
            continue
        runs_in_reach = hi - lo + 1
        for x in range(s, e + 1):
            if runs_in_reach * runs_in_reach > taps:
                # Fragmented masks: walking the K taps is cheaper than pairing the runs.
                _uniform_taps_pixel(line, own, n, x, r, inv, res)
            else:
                _general_pixel(line, x, r, lo, hi, pref, starts, ends, inv, res)


@numba.njit(cache=True, nogil=True, inline="always")
def _uniform_taps_pixel(
    line: Pixels, own: Mask, n: int, x: int, r: int, inv: float, res: NDArray[np.float32]
) -> None:
    s0 = s1 = s2 = 0.0
    for k in range(-r, r + 1):
        p = x + k
        q = x - k
        if 0 <= p < n and own[p]:
            t = p
        elif 0 <= q < n and own[q]:
            t = q
        else:
            t = x
        s0 += line[t, 0]
        s1 += line[t, 1]
        s2 += line[t, 2]
    res[x, 0] = np.float32(s0 * inv)
    res[x, 1] = np.float32(s1 * inv)
    res[x, 2] = np.float32(s2 * inv)


@numba.njit(cache=True, nogil=True, inline="always")
def _general_pixel(
    line: Pixels,
    x: int,
    r: int,
    lo: int,
    hi: int,
    pref: NDArray[np.float64],
    starts: NDArray[np.int64],
    ends: NDArray[np.int64],
    inv: float,
    res: NDArray[np.float32],
) -> None:
    # Several runs of the object in reach: O and O & M are unions of intervals.
    taps = 2 * r + 1
    count_o = 0
    count_both = 0
    o0 = o1 = o2 = 0.0
    b0 = b1 = b2 = 0.0
    for a in range(lo, hi + 1):
        sa = max(starts[a], x - r)
        ea = min(ends[a], x + r)
        if sa > ea:
            continue
        count_o += ea - sa + 1
        o0 += pref[ea + 1, 0] - pref[sa, 0]
        o1 += pref[ea + 1, 1] - pref[sa, 1]
        o2 += pref[ea + 1, 2] - pref[sa, 2]
        for b in range(lo, hi + 1):
            sb = max(starts[b], x - r)
            eb = min(ends[b], x + r)
            if sb > eb:
                continue
            lo_i = max(sa, 2 * x - eb)
            hi_i = min(ea, 2 * x - sb)
            if lo_i > hi_i:
                continue
            count_both += hi_i - lo_i + 1
            b0 += pref[hi_i + 1, 0] - pref[lo_i, 0]
            b1 += pref[hi_i + 1, 1] - pref[lo_i, 1]
            b2 += pref[hi_i + 1, 2] - pref[lo_i, 2]
    unowned = taps - (2 * count_o - count_both)
    res[x, 0] = np.float32((2.0 * o0 - b0 + line[x, 0] * unowned) * inv)
    res[x, 1] = np.float32((2.0 * o1 - b1 + line[x, 1] * unowned) * inv)
    res[x, 2] = np.float32((2.0 * o2 - b2 + line[x, 2] * unowned) * inv)


@numba.njit(cache=True, nogil=True)
def _line(
    line: Pixels,
    own: Mask,
    n: int,
    r: int,
    weights: NDArray[np.float32],
    flat: bool,
    pref: NDArray[np.float64],
    starts: NDArray[np.int64],
    ends: NDArray[np.int64],
    res: NDArray[np.float32],
) -> None:
    if flat:
        _flat_line(line, own, n, r, pref, starts, ends, res)
    else:
        _exact_line(line, own, n, weights, res)


@numba.njit(cache=True, nogil=True)
def horizontal_pass(
    values: Image, own: Mask, weights: NDArray[np.float32], flat: bool, out: NDArray[np.float32]
) -> None:
    """The mask-symmetric pass along rows of `values` (h x w x 3) into float32 `out`.

    Only owned pixels of `out` are written; the caller zeroes the rest (the vertical pass's
    prefix sums run over them).
    """
    rows, n = own.shape
    r = (weights.shape[0] - 1) // 2
    pref = np.zeros((n + 1, 3), np.float64)
    starts = np.zeros(n, np.int64)
    ends = np.zeros(n, np.int64)
    for y in range(rows):
        _line(values[y], own[y], n, r, weights, flat, pref, starts, ends, out[y])


_BLOCK = 16  # columns gathered at once, so the vertical pass reads and writes whole cache lines


@numba.njit(cache=True, nogil=True)
def vertical_pass_to_uint8(
    values: NDArray[np.float32], own: Mask, weights: NDArray[np.float32], flat: bool, out: Image
) -> None:
    """The pass along columns of `values` (float32, h x w x 3), rounded into `out` (uint8).

    Columns are gathered in blocks into contiguous lines, so the pass needs no transposed copy
    of the frame. Rounding is to nearest, ties to even (like rint), then clamped to 0..255;
    only owned pixels of `out` are written.
    """
    h, w = own.shape
    r = (weights.shape[0] - 1) // 2
    pref = np.zeros((h + 1, 3), np.float64)
    starts = np.zeros(h, np.int64)
    ends = np.zeros(h, np.int64)
    block = np.zeros((_BLOCK, h, 3), np.float32)
    block_own = np.zeros((_BLOCK, h), np.bool_)
    res = np.zeros((_BLOCK, h, 3), np.float32)
    for x0 in range(0, w, _BLOCK):
        width = min(_BLOCK, w - x0)
        for y in range(h):
            for b in range(width):
                block_own[b, y] = own[y, x0 + b]
                for c in range(3):
                    block[b, y, c] = values[y, x0 + b, c]
        for b in range(width):
            _line(block[b], block_own[b], h, r, weights, flat, pref, starts, ends, res[b])
        for y in range(h):
            for b in range(width):
                if block_own[b, y]:
                    for c in range(3):
                        v = min(max(res[b, y, c], np.float32(0.0)), np.float32(255.0))
                        # Adding and removing 2^23 rounds a float32 in [0, 2^22] half to even.
                        v = (v + _ROUND_MAGIC) - _ROUND_MAGIC
                        out[y, x0 + b, c] = np.uint8(v)


def blur_objects_fast(frame: Image, objects: ObjectMap) -> Image:
    """Blur every owned pixel with its object's kernel; within 1 grey level of the oracle."""
    out = frame.copy()
    for index, obj in enumerate(objects.objects):
        box = np.s_[obj.y : obj.y + obj.h, obj.x : obj.x + obj.w]
        own = objects.owner[box] == index
        weights = gaussian_weights(obj.kernel, obj.sigma)
        flat = uniform_error_bound(weights) < FLAT_ERROR_BUDGET
        horizontal = np.zeros((obj.h, obj.w, 3), np.float32)
        horizontal_pass(np.ascontiguousarray(frame[box]), own, weights, flat, horizontal)
        vertical_pass_to_uint8(horizontal, own, weights, flat, out[box])
    return out
