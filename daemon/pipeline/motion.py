"""Where a protected object may be between two analyses: the motion rule of the temporal masks.

Analyses run at a few per second; frames in between must be covered wherever the object went.
Geometry runs on a grid of CELL x CELL pixel blocks (a block is covered if any of its pixels
is), so the rule costs a few milliseconds per frame whatever the resolution. Each analysis
keeps its protected pixels on that grid (`ObjectCells`); a frame's analyses before it (and, in
bracket mode, after it) are merged over the plan's regions, so that an object cut by tile
borders is one object, and split into objects (`Blob`: 8-connected cells of one class). With
`speed` the fastest motion covered (`analysis.max_speed`, in cells per frame):

- bracket (frame t between the merged analyses before it, the oldest of frame a, and after
  it, the newest of frame b): an object before and one after, of one class, close enough for
  one object to have gone from one to the other at `speed` in b - a frames, may be the same
  object, which swept the convex hull of both: every such hull is covered (exact for motion
  along a straight line, whatever its speed profile). Objects are then matched one to one,
  nearest first; those left over appeared, vanished or moved faster than `speed`: left-over
  objects before and after of one class are hulled together (the fast object), and each is
  also grown by `speed` x (t - a) (vanished) or (b - t) (appeared).
- hold (frame t after the merged latest analyses, no later one): an object paired (same
  reach rule) with one of the merged analyses before those has a velocity; the hull of the
  object and of it moved on to t is covered, grown by a quarter of that shift (speed
  changes). An object with no earlier partner (it just appeared) is grown by `speed` x
  (t - a). Hold cannot cover what appears between analyses or turns sharply: bracket is the
  default.

Every cover is grown by one more cell (rounding to the grid), plus the caller's dilation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from daemon.analysis.tiling import Tile
from daemon.types import LabelMap

CELL = 4  # pixels per side of a grid block
_HOLD_SLACK = 0.25  # hold: a predicted shift is trusted to within this fraction of its length

_SQUARE = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float32)


def grid_shape(height: int, width: int) -> tuple[int, int]:
    return -(-height // CELL), -(-width // CELL)


@dataclass(frozen=True, eq=False)
class ObjectCells:
    """One analysis' (of frame `seq`) protected pixels on the grid: per class, the cells of
    its region (255 where any pixel is the class), placed at cell row `y`, column `x` of the
    frame's grid."""

    seq: int
    y: int
    x: int
    masks: dict[int, np.ndarray]


def object_cells(labels: LabelMap, region: Tile | None, seq: int, protected: Iterable[int]
                 ) -> ObjectCells:
    """The protected classes of one analysis' labels (of `region` of frame `seq`) on the
    grid."""
    y, x = (0, 0) if region is None else (region.y, region.x)
    pad_y, pad_x = y % CELL, x % CELL  # the region's blocks line up with the frame's grid
    h, w = labels.shape
    rows, cols = -(-(h + pad_y) // CELL), -(-(w + pad_x) // CELL)
    masks: dict[int, np.ndarray] = {}
    for class_id in protected:
        mask = np.where(labels == class_id, np.uint8(255), np.uint8(0))
        if not cv2.countNonZero(mask):
            continue
        padded = cv2.copyMakeBorder(mask, pad_y, rows * CELL - h - pad_y, pad_x,
                                    cols * CELL - w - pad_x, cv2.BORDER_CONSTANT, value=0)
        # an exact box average: a block with any object pixel is >= 255 / CELL^2 > 0
        masks[int(class_id)] = np.asarray(
            cv2.resize(padded, (cols, rows), interpolation=cv2.INTER_AREA), np.uint8)
    return ObjectCells(seq, y // CELL, x // CELL, masks)


@dataclass(frozen=True, eq=False)
class Blob:
    """One object on the grid: class, box (x0, y0, x1, y1 in cells, end exclusive), the
    (x, y) cells of its convex hull (frame-absolute), and the frames of the analyses that saw
    it: the first, the last and their mean (where its centre was)."""

    class_id: int
    box: tuple[int, int, int, int]
    points: np.ndarray
    first: int
    last: int
    at: float

    @property
    def center(self) -> np.ndarray:
        x0, y0, x1, y1 = self.box
        return np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0], np.float32)


def merged_blobs(cells: Sequence[ObjectCells], shape: tuple[int, int]) -> tuple[Blob, ...]:
    """The objects of several analyses' cells merged on the frame's grid of `shape`."""
    classes = sorted({c for found in cells for c in found.masks})
    blobs: list[Blob] = []
    for class_id in classes:
        grid = np.zeros(shape, np.uint8)
        placed: list[tuple[int, tuple[slice, slice], np.ndarray]] = []
        for found in cells:
            mask = found.masks.get(class_id)
            if mask is None:
                continue
            window = (slice(found.y, found.y + mask.shape[0]),
                      slice(found.x, found.x + mask.shape[1]))
            part = grid[window]
            seen = mask[:part.shape[0], :part.shape[1]] > 0
            part[seen] = 255
            placed.append((found.seq, window, seen))
        count, comp, stats, _ = cv2.connectedComponentsWithStats(
            grid, connectivity=8, ltype=cv2.CV_32S)
        seen_by: list[list[int]] = [[] for _ in range(count)]
        for seq, window, seen in placed:
            for label in np.unique(comp[window][seen]):
                seen_by[int(label)].append(seq)
        for label in range(1, count):
            bx, by, bw, bh = (int(v) for v in stats[label, :4])
            ys, xs = np.nonzero(comp[by:by + bh, bx:bx + bw] == label)
            pts = np.stack([xs + bx, ys + by], axis=1).astype(np.int32)
            hull = cv2.convexHull(pts).reshape(-1, 2).astype(np.float32)
            seqs = seen_by[label]
            blobs.append(Blob(class_id, (bx, by, bx + bw, by + bh), hull, min(seqs), max(seqs),
                              float(np.mean(seqs))))
    return tuple(blobs)


def _gap(a: Blob, b: Blob) -> float:
    """Distance, in cells, between the boxes of two blobs (0 if they touch or overlap)."""
    dx = max(0, a.box[0] - b.box[2], b.box[0] - a.box[2])
    dy = max(0, a.box[1] - b.box[3], b.box[1] - a.box[3])
    return math.hypot(dx, dy)


class Cover:
    """Cell-grid masks, one per class, that hulls are painted into."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape
        self.masks: dict[int, np.ndarray] = {}

    def hull(self, class_id: int, groups: Sequence[tuple[np.ndarray, float]]) -> None:
        """Paint the convex hull of every (points, margin) group, each point grown to a square
        of half-side margin (+1 cell for grid rounding)."""
        points = np.concatenate([
            (pts[:, None, :] + _SQUARE[None] * (margin + 1.0)).reshape(-1, 2)
            for pts, margin in groups])
        hull = cv2.convexHull(np.round(points).astype(np.int32))
        mask = self.masks.get(class_id)
        if mask is None:
            mask = self.masks[class_id] = np.zeros(self.shape, np.uint8)
        cv2.fillConvexPoly(mask, hull, 1)

    def pixels(self, class_id: int, height: int, width: int
               ) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """The cover of `class_id` in frame pixels: (the window of the frame it lies in, its
        boolean mask there), or None if it is empty."""
        mask = self.masks[class_id]
        gx, gy, gw, gh = cv2.boundingRect(mask)
        if gw == 0 or gh == 0:
            return None
        crop = mask[gy:gy + gh, gx:gx + gw].astype(bool)
        full = np.repeat(np.repeat(crop, CELL, axis=0), CELL, axis=1)
        y0, x0 = gy * CELL, gx * CELL
        y1, x1 = min(height, y0 + full.shape[0]), min(width, x0 + full.shape[1])
        return (slice(y0, y1), slice(x0, x1)), full[:y1 - y0, :x1 - x0]


def _pairs(first: Sequence[Blob], second: Sequence[Blob], speed: float
           ) -> list[tuple[float, int, int]]:
    """(gap, i, j) of every pair of one class close enough for one object to have gone from
    the first to the second at `speed` (from the first's earliest frame to the second's
    latest), nearest first."""
    return sorted(
        (_gap(a, b), i, j) for i, a in enumerate(first) for j, b in enumerate(second)
        if a.class_id == b.class_id and _gap(a, b) <= speed * max(1, b.last - a.first) + 1.0)


def bracket_cover(seq: int, before: Sequence[Blob], after: Sequence[Blob], speed: float,
                  margin: float, shape: tuple[int, int]) -> Cover:
    """Where the objects `before` frame `seq` (merged analyses at or before it) and `after`
    it may be at `seq`; `margin` more cells all round (module docstring)."""
    cover = Cover(shape)
    pairs = _pairs(before, after, speed)
    for _, i, j in pairs:  # any reachable pair may be one object: every hull is covered
        cover.hull(before[i].class_id, [(before[i].points, margin), (after[j].points, margin)])
    matched_before: set[int] = set()
    matched_after: set[int] = set()
    for _, i, j in pairs:  # one to one, nearest first
        if i not in matched_before and j not in matched_after:
            matched_before.add(i)
            matched_after.add(j)
    alone_before = [a for i, a in enumerate(before) if i not in matched_before]
    alone_after = [b for j, b in enumerate(after) if j not in matched_after]
    for a in alone_before:
        for b in alone_after:
            if a.class_id == b.class_id:  # one object faster than `speed` swept the hull
                cover.hull(a.class_id, [(a.points, margin), (b.points, margin)])
    for a in alone_before:  # vanished after it was seen: no further than speed x the time
        cover.hull(a.class_id, [(a.points, margin + speed * max(0, seq - a.first))])
    for b in alone_after:  # appeared before it was seen
        cover.hull(b.class_id, [(b.points, margin + speed * max(0, b.last - seq))])
    return cover


def hold_cover(seq: int, latest: Sequence[Blob], previous: Sequence[Blob], speed: float,
               margin: float, shape: tuple[int, int]) -> Cover:
    """Where the objects of `latest` (merged analyses before frame `seq`) may be at `seq`,
    moving on at the velocity measured against `previous` (the analyses before those)."""
    cover = Cover(shape)
    partners: dict[int, list[Blob]] = {}
    for _, i, j in _pairs(previous, latest, speed):
        if previous[i].at < latest[j].at:
            partners.setdefault(j, []).append(previous[i])
    for j, x in enumerate(latest):
        if j not in partners:  # no velocity yet: it may have gone anywhere at `speed`
            cover.hull(x.class_id, [(x.points, margin + speed * max(0, seq - x.first))])
            continue
        for p in partners[j]:
            shift = (x.center - p.center) * ((seq - x.at) / (x.at - p.at))
            slack = margin + _HOLD_SLACK * float(np.hypot(*shift))
            cover.hull(x.class_id, [(x.points, slack), (x.points + shift, slack)])
    return cover
