"""The numpy oracle of the mask-symmetric separable blur (DESIGN.md 2, step 3): the spec in code.

Deliberately plain: one object at a time, one tap at a time, float32 arithmetic accumulated from
k = -r to r exactly as the spec states. Every fast path is tested against this module.
"""

from __future__ import annotations

import numpy as np

from daemon.anonymizer.objects import ObjectMap, gaussian_weights
from daemon.types import Image


def _shift(a: np.ndarray, k: int, axis: int, fill: float | bool) -> np.ndarray:
    """out[..., i, ...] = a[..., i + k, ...] along `axis`, `fill` where i + k is outside."""
    out = np.full_like(a, fill)
    n = a.shape[axis]
    if abs(k) >= n:
        return out
    src = [slice(None)] * a.ndim
    dst = [slice(None)] * a.ndim
    src[axis] = slice(max(k, 0), n + min(k, 0))
    dst[axis] = slice(max(-k, 0), n - max(k, 0))
    out[tuple(dst)] = a[tuple(src)]
    return out


def symmetric_pass(
    values: np.ndarray, own: np.ndarray, weights: np.ndarray, axis: int
) -> np.ndarray:
    """One 1-D pass: tap p+k if owned, else p-k if owned, else p itself; float32 accumulation."""
    r = (len(weights) - 1) // 2
    own3 = own[:, :, None]
    acc = np.zeros(values.shape, np.float32)
    for i, k in enumerate(range(-r, r + 1)):
        plus_own = _shift(own3, k, axis, False)
        minus_own = _shift(own3, -k, axis, False)
        tap = np.where(
            plus_own,
            _shift(values, k, axis, 0.0),
            np.where(minus_own, _shift(values, -k, axis, 0.0), values),
        )
        acc += weights[i] * tap
    return acc


def blur_objects_oracle(frame: Image, objects: ObjectMap) -> Image:
    """Blur every owned pixel with its object's kernel; all other pixels stay bit-identical."""
    out = frame.copy()
    for index, obj in enumerate(objects.objects):
        box = np.s_[obj.y : obj.y + obj.h, obj.x : obj.x + obj.w]
        own = objects.owner[box] == index
        if not own.any():
            continue
        weights = gaussian_weights(obj.kernel, obj.sigma)
        values = frame[box].astype(np.float32)
        horizontal = symmetric_pass(values, own, weights, axis=1)
        both = symmetric_pass(horizontal, own, weights, axis=0)
        blurred = np.clip(np.rint(both), 0, 255).astype(np.uint8)
        out[box][own] = blurred[own]
    return out
