"""Objects, kernel sizes and pixel ownership from a label map (DESIGN.md 2, steps 1 and 2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numba
import numpy as np
from numpy.typing import NDArray

# BlurObject lives in daemon.types (a leaf the SafeFrame gate can import without numba)
from daemon.types import BlurObject as BlurObject
from daemon.types import LabelMap, Ownership


@dataclass(frozen=True)
class BlurParams:
    """Parameters of the adaptive blur; defaults are the paper's."""

    kernel_fraction: float = 0.25
    sigma_factor: float = 10.0
    min_kernel: int = 3
    max_kernel: int = 255
    mask_dilation: int = 0


@dataclass(frozen=True)
class ObjectMap:
    """Every object of a frame and, per pixel, the index of the object that owns it (-1: none)."""

    objects: tuple[BlurObject, ...]
    owner: Ownership


def kernel_size(w: int, h: int, params: BlurParams) -> int:
    """Nearest odd integer to kernel_fraction x mean side (ties up), clamped to the limits."""
    s = params.kernel_fraction * (w + h) / 2.0
    k = 2 * int(np.floor(s / 2.0)) + 1
    return int(min(max(k, params.min_kernel), params.max_kernel))


def gaussian_weights(kernel: int, sigma: float) -> NDArray[np.float32]:
    """The normalised 1-D weights g_k, k = -r..r, as float32 (the arithmetic of the spec)."""
    r = (kernel - 1) // 2
    k = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(k * k) / (2.0 * sigma * sigma))
    weights: NDArray[np.float32] = (g / g.sum()).astype(np.float32)  # numpy's stubs: Any
    return weights


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a boolean mask by `pixels` in every direction (a (2p+1)^2 square: over-masking side)."""
    if pixels <= 0:
        return mask
    element = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.dilate(mask.view(np.uint8), element).view(bool)


def _components(mask: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int, int, int]]]:
    """8-connected components in raster order of their first pixel: (label, x, y, w, h) each."""
    count, comp, stats, _ = cv2.connectedComponentsWithStats(
        mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    found = []
    for label in range(1, count):
        x, y, w, h = (int(v) for v in stats[label, :4])
        first_x = x + int(np.argmax(comp[y, x : x + w] == label))
        found.append((y, first_x, label, x, w, h))
    # OpenCV's label order depends on its scan algorithm; the spec's order is raster order.
    found.sort()
    return comp, [(label, x, y, w, h) for y, _, label, x, w, h in found]


@numba.njit(cache=True, nogil=True)
def _paint(
    comp: np.ndarray,
    lut: NDArray[np.int32],
    kernels: NDArray[np.int32],
    owner: Ownership,
    owner_kernel: NDArray[np.int32],
) -> None:
    h, w = comp.shape
    for y in range(h):
        for x in range(w):
            label = comp[y, x]
            if label == 0:
                continue
            k = kernels[label]
            if owner[y, x] < 0 or k > owner_kernel[y, x]:
                owner[y, x] = lut[label]
                owner_kernel[y, x] = k


def find_objects(labels: LabelMap, classes: Sequence[int], params: BlurParams) -> ObjectMap:
    """Objects per class (in `classes` order, then raster order) and the ownership map.

    Where dilated objects of different classes overlap, the pixel goes to the object with the
    larger kernel (the stronger blur wins); on equal kernels to the object found first.
    """
    height, width = labels.shape
    owner = np.full(labels.shape, -1, np.int32)
    owner_kernel = np.zeros(labels.shape, np.int32)
    objects: list[BlurObject] = []
    grow = params.mask_dilation
    for class_id in classes:
        mask = labels == class_id
        bx, by, bw, bh = cv2.boundingRect(mask.view(np.uint8))
        if bw == 0:
            continue
        # Work in the class's bounding box (plus the dilation margin): masks are sparse.
        x0, y0 = max(bx - grow, 0), max(by - grow, 0)
        x1, y1 = min(bx + bw + grow, width), min(by + bh + grow, height)
        region = np.s_[y0:y1, x0:x1]
        comp, found = _components(dilate(mask[region], grow))
        lut = np.full(len(found) + 1, -1, np.int32)
        kernels = np.zeros_like(lut)
        for label, x, y, w, h in found:
            k = kernel_size(w, h, params)
            lut[label] = len(objects)
            kernels[label] = k
            objects.append(BlurObject(class_id, x0 + x, y0 + y, w, h, k, params.sigma_factor * k))
        _paint(comp, lut, kernels, owner[region], owner_kernel[region])
    return ObjectMap(tuple(objects), owner)
