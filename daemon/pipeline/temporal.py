"""Which analyses anonymize which frame, region by region. Pure decisions, no threads: the
camera pipeline applies them.

An analysis covers one region of the analyzer's multi-scale plan (the full frame, or one
tile); the daemon schedules the regions over successive frames. The rule, per region:
- bracket: frame t is blurred with, for every region of its plan, the last analysis of that
  region at or before t and the first at or after t (the union of their masks, grown by
  `bracket_dilation`), plus where their objects may have moved in between (`motion`).
  A frame waits until every region has an analysis at or after it.
- hold: for every region, the last analysis at or before t (its frame arrived at most
  `hold_ms` before t's), grown by `hold_dilation`, plus where its objects moved on at the
  velocity measured against the region's analysis before it (`motion`).
So a small person whom only a tile finds is covered on every frame between two analyses of
that tile, exactly as the full-frame pass covers large people. In both modes a frame older
than `budget_ms` fails closed, whatever analyses exist.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from daemon.analysis.tiling import Tile
from daemon.anonymizer.objects import dilate
from daemon.config import AnalysisConfig
from daemon.pipeline.motion import (
    CELL,
    Blob,
    Cover,
    ObjectCells,
    bracket_cover,
    grid_shape,
    hold_cover,
    merged_blobs,
)
from daemon.types import LabelMap

FULL_FRAME: tuple[Tile | None, ...] = (None,)  # the plan of an analyzer without tiles


@dataclass(frozen=True, eq=False)  # compared by identity: labels are arrays
class Analysis:
    """The analyzer's result for `region` of frame `seq` of connection `epoch`.

    labels: region.height x region.width class ids (the whole frame for region None), or None
    when the analysis failed. arrived: when the analyzed frame arrived (monotonic seconds);
    cells: its protected pixels on the motion grid (`motion.object_cells`), if known.
    """

    epoch: int
    seq: int
    labels: LabelMap | None
    error: str = ""
    region: Tile | None = None
    arrived: float = 0.0
    cells: ObjectCells | None = None


@dataclass(frozen=True)
class Anonymize:
    """Blur frame `seq` with the union of the masks of `before` and `after` (bracket; hold:
    `before` only), grown by `dilation` pixels, plus the motion cover (`motion_cover`).
    `previous`: hold only, the analysis before each of `before` (for velocities)."""

    seq: int
    before: tuple[Analysis, ...]
    after: tuple[Analysis, ...]
    previous: tuple[Analysis, ...]
    dilation: int

    @property
    def analyses(self) -> tuple[Analysis, ...]:
        """The analyses whose masks are unioned, each once."""
        return _unique(self.before + self.after)

    @property
    def still(self) -> bool:
        """True when every analysis used is of this very frame (no motion to cover)."""
        return all(a.seq == self.seq for a in self.analyses)


@dataclass(frozen=True)
class FailClosed:
    reason: str  # a metrics label: connecting, analyzer_error, analyzer_late, pipeline_error


@dataclass(frozen=True)
class Wait:
    """An analysis after this frame is not in yet and the frame is within its budget."""


Decision = Anonymize | FailClosed | Wait


def decide(
    epoch: int,
    seq: int,
    age_s: float,
    analyses: Sequence[Analysis],
    config: AnalysisConfig,
    plan: Sequence[Tile | None] = FULL_FRAME,
    *,
    arrived: float = 0.0,
) -> Decision:
    """What to do with frame `seq` of `epoch`, which arrived at `arrived`, `age_s` ago.

    `analyses` are the recent ones (any epochs, regions, order); `plan` the regions the frame
    must be covered by. A frame older than its budget fails closed (late), whatever analyses
    exist; a frame some region of which has no successful analysis before it in its own
    connection fails closed (just (re)connected); a failed analysis next to a frame fails it
    closed; hold: a mask whose frame arrived more than `hold_ms` before this one fails it
    closed (late).
    """
    if age_s > config.budget_ms / 1000.0:
        return FailClosed("analyzer_late")
    own = [a for a in analyses if a.epoch == epoch]
    before: list[Analysis | None] = []
    after: list[Analysis | None] = []
    previous: list[Analysis] = []
    for region in plan:
        mine = sorted((a for a in own if a.region == region), key=lambda a: a.seq)
        earlier = [a for a in mine if a.seq <= seq]
        before.append(earlier[-1] if earlier else None)
        previous.extend(earlier[-2:-1])
        after.append(next((a for a in mine if a.seq >= seq), None))
    match config.temporal:
        case "bracket":
            if any(a is None for a in after):
                return Wait()
            picks = _picked(before + after)
            if picks is None:
                return FailClosed("connecting")
            if any(a.labels is None for a in picks):
                return FailClosed("analyzer_error")
            return Anonymize(seq, _picked(before) or (), _picked(after) or (), (),
                             config.bracket_dilation)
        case "hold":
            picks = _picked(before)
            if picks is None or len(previous) < len(plan):
                # hold moves objects on at their velocity: a connection's frames fail closed
                # until every region has two analyses to measure it from
                return FailClosed("connecting")
            if any(a.labels is None for a in picks):
                return FailClosed("analyzer_error")
            if any(arrived - a.arrived > config.hold_ms / 1000.0 for a in picks):
                return FailClosed("analyzer_late")
            usable = tuple(a for a in previous if a.labels is not None)
            own_frame = all(a.seq == seq for a in picks)
            return Anonymize(seq, picks, (), usable, 0 if own_frame else config.hold_dilation)
    raise ValueError(f"unknown temporal mode {config.temporal!r}")


def _picked(found: Iterable[Analysis | None]) -> tuple[Analysis, ...] | None:
    """The analyses found, each once, in order; None if one is missing."""
    picks: list[Analysis] = []
    for analysis in found:
        if analysis is None:
            return None
        picks.append(analysis)
    return _unique(picks)


def _unique(analyses: Iterable[Analysis]) -> tuple[Analysis, ...]:
    picks: list[Analysis] = []
    for analysis in analyses:
        if all(p is not analysis for p in picks):
            picks.append(analysis)
    return tuple(picks)


def motion_cover(decision: Anonymize, speed: float, shape: tuple[int, int]) -> Cover | None:
    """Where the objects of the decision's analyses may have moved by its frame (see
    `motion`), or None when there is nothing to cover (the frame's own analyses, or no
    objects). `speed`: fastest motion covered, grid cells per frame; `shape`: the frame's."""
    if decision.still:
        return None
    grid = grid_shape(*shape)
    margin = decision.dilation / CELL
    before = _blobs(decision.before, grid)
    if decision.after:
        after = _blobs(decision.after, grid)
        if not before and not after:
            return None
        return bracket_cover(decision.seq, before, after, speed, margin, grid)
    if not before:
        return None
    return hold_cover(decision.seq, before, _blobs(decision.previous, grid), speed, margin,
                      grid)


@functools.lru_cache(maxsize=16)
def _blobs(analyses: tuple[Analysis, ...], grid: tuple[int, int]) -> tuple[Blob, ...]:
    """The objects of `analyses` merged over their regions (cached: consecutive frames share
    their analyses)."""
    return merged_blobs([a.cells for a in analyses if a.cells is not None], grid)


def still_needed(
    analyses: Iterable[Analysis], epoch: int, oldest_seq: int
) -> list[Analysis]:
    """The analyses a frame of `epoch` at or after `oldest_seq` may still use: per region the
    last two at or before `oldest_seq` (hold measures velocities against the second) and
    every later one (older epochs are dropped)."""
    kept = [a for a in analyses if a.epoch >= epoch]
    before: dict[Tile | None, list[int]] = {}
    for a in kept:
        if a.epoch == epoch and a.seq <= oldest_seq:
            before.setdefault(a.region, []).append(a.seq)
    floor = {region: sorted(seqs)[-2:][0] for region, seqs in before.items()}
    return [a for a in kept
            if a.epoch != epoch or a.seq >= floor.get(a.region, a.seq)]


def union_labels(
    analyses: Sequence[Analysis],
    protected: Sequence[int],
    dilation: int,
    shape: tuple[int, int] | None = None,
) -> LabelMap:
    """One frame-sized label map whose protected pixels are the union of every analysis'
    protected pixels (each in its region), each class grown by `dilation` pixels (over-masking
    is the privacy-safe side). `shape` is the frame's (default: that of a full-frame analysis).
    Unprotected pixels keep the labels of the last full-frame analysis."""
    maps = [a.labels for a in analyses if a.labels is not None]
    if len(maps) != len(analyses) or not maps:
        raise ValueError("union_labels needs successful analyses only")
    full = [a for a in analyses if _covers(a, shape)]
    if not full:
        raise ValueError("union_labels needs an analysis of the whole frame")
    base = full[-1].labels
    assert base is not None
    if len(analyses) == 1 and dilation == 0:
        return base.copy()
    combined = base.copy()
    ids = np.asarray(protected, np.uint8)
    for c in protected:
        grown = np.zeros(combined.shape, bool)
        for a in analyses:
            assert a.labels is not None
            window = _window(grown, a.region)
            if window.shape != a.labels.shape:
                raise ValueError(f"analysis of {a.region} has labels {a.labels.shape}")
            window |= a.labels == c
        grown = dilate(grown, dilation)
        # a pixel another protected class already owns keeps its class
        combined[grown & ~np.isin(combined, ids)] = c
    return combined


def _covers(analysis: Analysis, shape: tuple[int, int] | None) -> bool:
    region = analysis.region
    if region is None:
        return shape is None or (analysis.labels is not None and analysis.labels.shape == shape)
    whole = (region.y, region.x, region.height, region.width) == (0, 0, *shape) if shape else False
    return whole


def _window(array: np.ndarray, region: Tile | None) -> np.ndarray:
    if region is None:
        return array
    return array[region.y : region.y + region.height, region.x : region.x + region.width]


def with_cover(labels: LabelMap, cover: Cover | None, protected: Sequence[int]) -> LabelMap:
    """`labels` (not changed) plus every protected pixel of `cover`; a pixel another protected
    class already owns keeps its class."""
    if cover is None or not cover.masks:
        return labels
    out = labels.copy()
    ids = np.asarray(protected, np.uint8)
    h, w = out.shape
    for c in protected:
        found = cover.pixels(c, h, w) if c in cover.masks else None
        if found is None:
            continue
        window, mask = found
        part = out[window]
        part[mask & ~np.isin(part, ids)] = c
    return out
