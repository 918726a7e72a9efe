"""The device anonymizer: objects, kernels, ownership and the blur of DESIGN.md 2 in kernels.cu.

Mirrors `daemon.anonymizer` function by function: `find_objects` (objects.py) and
`blur_objects` (oracle.py) take the same arguments plus the `Kernels` that run them, so the very
same code runs on a GPU (CupyKernels, cupy arrays) and, in CI, on the CPU through the g++ shim
(CpuKernels, numpy arrays), where it is compared with the oracle bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from daemon.anonymizer.cpu import AnonymizedFrame, blur_params, global_blur
from daemon.anonymizer.objects import BlurObject, BlurParams, gaussian_weights
from daemon.config import BlurConfig
from daemon.gpu.kernels import Kernels
from daemon.types import check_image, check_labels

OBJECT_COLUMNS = 6  # class, x, y, w, h, kernel (one int32 row per object, see kernels.cu)


@dataclass(frozen=True)
class DeviceObjectMap:
    """ObjectMap on the executor: N x 6 int32 object rows and the H x W int32 owner map."""

    table: Any
    owner: Any

    def objects(self, params: BlurParams) -> tuple[BlurObject, ...]:
        """The object rows as BlurObjects (one small download from a device)."""
        rows = self.table.get() if hasattr(self.table, "get") else self.table
        return tuple(
            BlurObject(int(c), int(x), int(y), int(w), int(h), int(k), params.sigma_factor * int(k))
            for c, x, y, w, h, k in np.asarray(rows).tolist()
        )


@dataclass(frozen=True)
class WeightTable:
    """gaussian_weights of every odd kernel up to max_kernel, end to end, on the executor:
    kernel K's taps start at weights[offsets[(K - 1) // 2]] (host-computed float32 values)."""

    weights: Any
    offsets: Any


def weight_table(params: BlurParams, kernels: Kernels) -> WeightTable:
    xp = kernels.xp
    parts = [
        gaussian_weights(k, params.sigma_factor * k) for k in range(1, params.max_kernel + 1, 2)
    ]
    offsets = np.cumsum([0] + [len(p) for p in parts[:-1]]).astype(np.int32)
    return WeightTable(xp.asarray(np.concatenate(parts)), xp.asarray(offsets))


def find_objects(
    labels: Any, classes: Sequence[int], params: BlurParams, kernels: Kernels
) -> DeviceObjectMap:
    """objects.find_objects on the executor: per class (in `classes` order) the 8-connected
    components of the (dilated) mask in raster order of their first pixel, their boxes and
    kernels, and the ownership map (larger kernel wins, ties to the object found first).

    Synchronises once per class that has pixels (to size its object rows).
    """
    xp = kernels.xp
    height, width = labels.shape
    n = height * width
    h32, w32, n64 = np.int32(height), np.int32(width), np.int64(n)
    owner = xp.full((height, width), -1, dtype=xp.int32)
    owner_kernel = xp.zeros((height, width), dtype=xp.int32)
    mask = xp.empty((height, width), dtype=xp.uint8)
    spare = xp.empty_like(mask)
    parent = xp.empty((height, width), dtype=xp.int32)
    roots = xp.empty((height, width), dtype=xp.int32)
    box_x0, box_x1, box_y1 = (xp.empty((height, width), dtype=xp.int32) for _ in range(3))
    tables = []
    first = 0
    for class_id in classes:
        kernels.launch("class_mask", n, labels, np.int32(class_id), mask, n64)
        if params.mask_dilation > 0:
            grow = np.int32(params.mask_dilation)
            kernels.launch("dilate_rows", n, mask, spare, h32, w32, grow)
            kernels.launch("dilate_cols", n, spare, mask, h32, w32, grow)
        kernels.launch("components_init", n, mask, parent, n64)
        kernels.launch("components_merge", n, mask, parent, h32, w32)
        kernels.launch("components_compress", n, parent, n64)
        kernels.launch("component_roots", n, parent, roots, box_x0, box_x1, box_y1, n64)
        rank = xp.cumsum(roots.ravel(), dtype=xp.int32)
        count = int(rank[-1])
        if count == 0:
            continue
        table = xp.empty((count, OBJECT_COLUMNS), dtype=xp.int32)
        kernels.launch("component_boxes", n, parent, box_x0, box_x1, box_y1, h32, w32)
        kernels.launch(
            "collect_objects",
            n,
            parent,
            rank,
            box_x0,
            box_x1,
            box_y1,
            np.int32(class_id),
            np.float64(params.kernel_fraction),
            np.int32(params.min_kernel),
            np.int32(params.max_kernel),
            table,
            h32,
            w32,
        )
        kernels.launch(
            "paint_owner", n, parent, rank, np.int32(first), table, owner, owner_kernel, n64
        )
        tables.append(table)
        first += count
    empty = xp.zeros((0, OBJECT_COLUMNS), dtype=xp.int32)
    table = xp.concatenate(tables) if tables else empty
    return DeviceObjectMap(table, owner)


def blur_objects(
    frame: Any, objects: DeviceObjectMap, weights: WeightTable, kernels: Kernels
) -> Any:
    """oracle.blur_objects_oracle on the executor: a new frame, only owned pixels changed."""
    xp = kernels.xp
    height, width = frame.shape[:2]
    n = height * width
    h32, w32 = np.int32(height), np.int32(width)
    rows = xp.empty((height, width, 3), dtype=xp.float32)
    out = xp.empty_like(frame)
    table = objects.table if len(objects.table) else xp.zeros((1, OBJECT_COLUMNS), xp.int32)
    kernels.launch(
        "blur_rows", n, frame, objects.owner, table, weights.weights, weights.offsets, rows, h32,
        w32,
    )
    kernels.launch(
        "blur_cols",
        n,
        frame,
        objects.owner,
        table,
        weights.weights,
        weights.offsets,
        rows,
        out,
        h32,
        w32,
    )
    return out


class DeviceAnonymizer:
    """`anonymize(frame, labels)` with kernels.cu on `kernels` (a GPU via CuPy, or the CPU shim).

    Frames and labels may be host (numpy) or executor arrays; the result is one download of
    the finished frame (plus the small object table). Global mode runs on the host (cv2).
    """

    def __init__(self, class_ids: Sequence[int], blur: BlurConfig, kernels: Kernels) -> None:
        self.class_ids = tuple(class_ids)
        self.blur = blur
        self.params = blur_params(blur)
        self.kernels = kernels
        stream = getattr(kernels, "stream", None)
        with stream if stream is not None else contextlib.nullcontext():
            self.weights = weight_table(self.params, kernels)

    def anonymize(self, frame: Any, labels: Any) -> AnonymizedFrame:
        xp = self.kernels.xp
        host_frame = frame if isinstance(frame, np.ndarray) else None
        check_labels(_shape_probe(labels), check_image(_shape_probe(frame)))
        if self.blur.mode == "global":
            k = self.blur.global_kernel
            image = host_frame if host_frame is not None else frame.get()
            return AnonymizedFrame(global_blur(image, k, self.blur.sigma_factor * k), ())
        stream = getattr(self.kernels, "stream", None)
        with stream if stream is not None else contextlib.nullcontext():
            frame_x = xp.ascontiguousarray(xp.asarray(frame))
            labels_x = xp.ascontiguousarray(xp.asarray(labels))
            objects = find_objects(labels_x, self.class_ids, self.params, self.kernels)
            found = objects.objects(self.params)
            if not found:
                return AnonymizedFrame(_to_host(frame_x).copy(), ())
            out = blur_objects(frame_x, objects, self.weights, self.kernels)
            return AnonymizedFrame(_to_host(out), found)


def _to_host(array: Any) -> np.ndarray:
    host: np.ndarray = array.get() if hasattr(array, "get") else array  # CuPy or numpy
    return host


class _ShapeProbe:
    """Shape and dtype of a numpy or cupy array, for the shared boundary checks."""

    def __init__(self, array: Any) -> None:
        self.shape = tuple(array.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(array.dtype)


def _shape_probe(array: Any) -> Any:
    return array if isinstance(array, np.ndarray) else _ShapeProbe(array)
