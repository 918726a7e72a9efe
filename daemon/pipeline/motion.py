"""Where a protected object may be between two analyses: the motion rule of the temporal masks.

Analyses run at a few per second; frames in between must be covered wherever the object went.
Geometry runs on a grid of CELL x CELL pixel blocks (a block is covered if any of its pixels
is), so the rule costs a few milliseconds per frame whatever the resolution. Each analysis
keeps its protected pixels on that grid (`ObjectCells`); a frame's analyses before it (and, in
bracket mode, after it) are merged over the plan's regions, so that an object cut by tile
borders is one object, and split into objects (`Blob`: 8-connected cells of one class). With
`speed` the fastest motion covered (`analysis.max_speed`, in cells per frame):

- bracket (frame t between the merged analyses before it and after it): each object before
  is paired with its nearest object after, and each object after with its nearest before, of
  one class, among pairs close enough for one object to have gone from one to the other at
  `speed` (between the mean frames of the analyses that saw them). A pair may
  be one object, which swept the convex hull of both: every pair's hull is covered, grown by
  a fifth of the distance between the two (exact for motion along a straight line, whatever
  its speed profile; the slack takes a walk's sway and turns). An object that is not the
  nearest of its own nearest (it appeared, vanished, was missed by the analyses on the other
  side, or another object is nearer to its partner) is also held where it was seen, grown by
  `speed` x the frames between, up to half its own larger side.
- hold (frame t after the merged latest analyses, no later one): an object paired (same
  reach rule) with one of the merged analyses before those has a velocity; every cell it
  covers as it moves on to t along a straight line (its sweep) is covered, grown by three
  quarters of that shift (speed changes). An object with no earlier partner is held as above.
Objects are merged after joining fragments within 2 cells of each other (a head above its
body, a person cut by a pole), so that they move as one.
Not covered: objects faster than `speed`, objects that appear far from where an analysis
then sees them (a door, the frame's edge) before that analysis, and, in hold mode, objects
that start or turn sharply between analyses; bracket is the default.

Every cover is grown by one more cell (rounding to the grid), plus the caller's dilation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from daemon.analysis.tiling import Tile
from daemon.types import LabelMap

CELL = 4  # pixels per side of a grid block
_SWEEP_SLACK = 0.2  # bracket: a swept hull is grown by this fraction of the distance swept
_HOLD_SLACK = 0.75  # hold: a predicted shift is trusted to within this fraction of its length
# An object seen on one side of a frame only grows by at most this fraction of its own larger
# side: in real scenes such objects are mostly detection flicker (there, in about the same
# place); growing them by the full speed x time blurred 41-100 % of real clips' frames
# (bench/motion_overmask.py), this 3.8-20.5 % (the union alone: 2.1-35.2 %).
_HELD_GROWTH = 0.5

_JOIN = np.ones((2 * 2 + 1, 2 * 2 + 1), np.uint8)  # fragments within 2 cells (8 px) are joined
_STILL = np.zeros(2, np.float32)
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
    """One object on the grid: class, box (x0, y0, x1, y1 in cells, end exclusive), its cells
    inside the box (uint8, 1 = the object), and the frames of the analyses that saw it: the
    first, the last and their mean (where its centre was)."""

    class_id: int
    box: tuple[int, int, int, int]
    cells: np.ndarray
    first: int
    last: int
    at: float

    @property
    def center(self) -> np.ndarray:
        x0, y0, x1, y1 = self.box
        return np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0], np.float32)

    @functools.cached_property
    def hull(self) -> np.ndarray:
        """The (x, y) frame cells of the convex hull of the object's cells (computed once:
        blobs are cached per set of analyses, and painted on every frame between them)."""
        ys, xs = np.nonzero(self.cells)
        points = np.stack([xs + self.box[0], ys + self.box[1]], axis=1).astype(np.int32)
        return np.asarray(cv2.convexHull(points).reshape(-1, 2), np.int32)


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
        # fragments a few cells apart are one object (a head above its body, a person cut by
        # a pole): joined before labelling, so that they move as one
        joined = cv2.dilate(grid, _JOIN)
        count, comp, stats, _ = cv2.connectedComponentsWithStats(
            joined, connectivity=8, ltype=cv2.CV_32S)
        seen_by: list[list[int]] = [[] for _ in range(count)]
        for seq, window, seen in placed:
            for label in np.unique(comp[window][seen]):
                seen_by[int(label)].append(seq)
        for label in range(1, count):
            bx, by, bw, bh = (int(v) for v in stats[label, :4])
            # the object's own cells (not the joining margin), and their box
            own = ((comp[by:by + bh, bx:bx + bw] == label)
                   & (grid[by:by + bh, bx:bx + bw] > 0)).astype(np.uint8)
            ys, xs = np.nonzero(own)
            oy, ox = int(ys.min()), int(xs.min())
            own = own[oy:int(ys.max()) + 1, ox:int(xs.max()) + 1]
            bx, by, bh, bw = bx + ox, by + oy, own.shape[0], own.shape[1]
            seqs = seen_by[label]
            blobs.append(Blob(class_id, (bx, by, bx + bw, by + bh), own, min(seqs), max(seqs),
                              float(np.mean(seqs))))
    return tuple(blobs)


def _gap(a: Blob, b: Blob) -> float:
    """Distance, in cells, between the boxes of two blobs (0 if they touch or overlap)."""
    dx = max(0, a.box[0] - b.box[2], b.box[0] - a.box[2])
    dy = max(0, a.box[1] - b.box[3], b.box[1] - a.box[3])
    return math.hypot(dx, dy)


class Cover:
    """Cell-grid masks, one per class, that objects are painted into."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape
        self.masks: dict[int, np.ndarray] = {}

    def sweep(self, blob: Blob, shift: np.ndarray, grow: float) -> None:
        """Paint every cell `blob` covers as it moves by `shift` (x, y cells) along a straight
        line (its Minkowski sum with the segment, in steps of at most one cell), grown by
        `grow` cells (+1 for grid rounding) in every direction (a square)."""
        mask = self.masks.get(blob.class_id)
        if mask is None:
            mask = self.masks[blob.class_id] = np.zeros(self.shape, np.uint8)
        pad = math.ceil(grow) + 1
        dx, dy = float(shift[0]), float(shift[1])
        x0, y0, x1, y1 = blob.box
        left, top = x0 + min(0, math.floor(dx)) - pad, y0 + min(0, math.floor(dy)) - pad
        width = x1 - x0 + math.ceil(abs(dx)) + 2 * pad + 1
        height = y1 - y0 + math.ceil(abs(dy)) + 2 * pad + 1
        canvas = np.zeros((height, width), np.uint8)
        steps = max(1, math.ceil(max(abs(dx), abs(dy))))
        h, w = blob.cells.shape
        for k in range(steps + 1):
            ox = x0 - left + round(dx * k / steps)
            oy = y0 - top + round(dy * k / steps)
            np.maximum(canvas[oy:oy + h, ox:ox + w], blob.cells,
                       out=canvas[oy:oy + h, ox:ox + w])
        canvas = np.asarray(cv2.dilate(canvas, np.ones((2 * pad + 1, 2 * pad + 1), np.uint8)),
                            np.uint8)
        # paste the canvas into the frame's grid, clipped to it
        fy0, fx0 = max(0, top), max(0, left)
        fy1, fx1 = min(self.shape[0], top + height), min(self.shape[1], left + width)
        if fy1 > fy0 and fx1 > fx0:
            part = canvas[fy0 - top:fy1 - top, fx0 - left:fx1 - left]
            np.maximum(mask[fy0:fy1, fx0:fx1], part, out=mask[fy0:fy1, fx0:fx1])

    def hull(self, blobs: Sequence[Blob], grow: float) -> None:
        """Paint the convex hull of `blobs` (of one class; one object seen at several places),
        grown by `grow` cells (+1 for grid rounding) in every direction (a square)."""
        points = np.concatenate([b.hull for b in blobs]).astype(np.float32)
        corners = (points[:, None, :] + _SQUARE[None] * (grow + 1.0)).reshape(-1, 2)
        hull = cv2.convexHull(np.round(corners).astype(np.int32))
        mask = self.masks.get(blobs[0].class_id)
        if mask is None:
            mask = self.masks[blobs[0].class_id] = np.zeros(self.shape, np.uint8)
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
    the first to the second at `speed` between the mean frames of the analyses that saw them
    (a merged object's box spans where they saw it), nearest first."""
    return sorted(
        (_gap(a, b), i, j) for i, a in enumerate(first) for j, b in enumerate(second)
        if a.class_id == b.class_id and _gap(a, b) <= speed * max(1.0, b.at - a.at) + 1.0)


def _held(blob: Blob, speed: float, frames: int) -> float:
    """Cells a blob seen only on one side of a frame is grown by: `speed` x the frames
    between, up to half its own larger side (see the module docstring)."""
    x0, y0, x1, y1 = blob.box
    return min(speed * max(0, frames), _HELD_GROWTH * max(x1 - x0, y1 - y0))


def bracket_cover(seq: int, before: Sequence[Blob], after: Sequence[Blob], speed: float,
                  margin: float, shape: tuple[int, int]) -> Cover:
    """Where the objects `before` frame `seq` (merged analyses at or before it) and `after`
    it may be at `seq`; `margin` more cells all round (module docstring)."""
    cover = Cover(shape)
    matched_before: set[int] = set()
    matched_after: set[int] = set()
    held_before: set[int] = set(range(len(before)))
    held_after: set[int] = set(range(len(after)))
    for _, i, j in _pairs(before, after, speed):  # nearest first
        # each object's nearest partner on the other side, seen from either side: a spurious
        # object nearer to one end of a real pair cannot take both ends' partners
        if i in matched_before and j in matched_after:
            continue
        a, b = before[i], after[j]
        # a walk is not a straight line (legs, a head, a turn): a fifth of the way all round
        slack = margin + _SWEEP_SLACK * float(np.hypot(*(b.center - a.center)))
        if i not in matched_before and j not in matched_after:  # mutual: one object
            held_before.discard(i)
            held_after.discard(j)
        cover.hull([a, b], slack)
        matched_before.add(i)
        matched_after.add(j)
    # what has no partner of its own (appeared, vanished, missed by the analyses on the other
    # side, or only the second choice of an object that has a nearer one) is also held
    for i in held_before:
        a = before[i]
        cover.sweep(a, _STILL, margin + _held(a, speed, seq - a.first))
    for j in held_after:
        b = after[j]
        cover.sweep(b, _STILL, margin + _held(b, speed, b.last - seq))
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
        if j not in partners:  # no velocity yet (just appeared, or missed before)
            cover.sweep(x, _STILL, margin + _held(x, speed, seq - x.first))
            continue
        for p in partners[j]:
            shift = (x.center - p.center) * ((seq - x.at) / (x.at - p.at))
            slack = margin + _HOLD_SLACK * float(np.hypot(*shift))
            cover.sweep(x, shift, slack)
    return cover
