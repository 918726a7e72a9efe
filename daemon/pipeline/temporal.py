"""Which analyses anonymize which frame, region by region. Pure decisions, no threads: the
camera pipeline applies them.

An analysis covers one region of the analyzer's multi-scale plan (the full frame, or one
tile); the daemon schedules the regions over successive frames. The rule, per region:
- bracket: frame t is blurred with, for every region of its plan, the last analysis of that
  region at or before t and the first at or after t (the union of their masks, grown by
  `bracket_dilation`). A frame waits until every region has an analysis at or after it.
- hold: for every region, the last analysis at or before t, no older than `hold_frames`.
So a small person whom only a tile finds is covered on every frame between two analyses of
that tile, exactly as the full-frame pass covers large people.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from daemon.analysis.tiling import Tile
from daemon.anonymizer.objects import dilate
from daemon.config import AnalysisConfig
from daemon.types import LabelMap

FULL_FRAME: tuple[Tile | None, ...] = (None,)  # the plan of an analyzer without tiles


@dataclass(frozen=True, eq=False)  # compared by identity: labels are arrays
class Analysis:
    """The analyzer's result for `region` of frame `seq` of connection `epoch`.

    labels: region.height x region.width class ids (the whole frame for region None), or None
    when the analysis failed.
    """

    epoch: int
    seq: int
    labels: LabelMap | None
    error: str = ""
    region: Tile | None = None


@dataclass(frozen=True)
class Anonymize:
    """Blur the frame with the union of `analyses`' masks, grown by `dilation` pixels."""

    analyses: tuple[Analysis, ...]
    dilation: int


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
) -> Decision:
    """What to do with frame `seq` of `epoch`, `age_s` after it arrived.

    `analyses` are the recent ones (any epochs, regions, order); `plan` the regions the frame
    must be covered by. A frame some region of which has no successful analysis before it in
    its own connection fails closed (just (re)connected); a failed analysis next to a frame
    fails it closed; a frame waiting past its budget fails closed (analyzer late).
    """
    own = [a for a in analyses if a.epoch == epoch]
    budget_s = config.budget_ms / 1000.0
    before: list[Analysis | None] = []
    after: list[Analysis | None] = []
    for region in plan:
        mine = sorted((a for a in own if a.region == region), key=lambda a: a.seq)
        before.append(next((a for a in reversed(mine) if a.seq <= seq), None))
        after.append(next((a for a in mine if a.seq >= seq), None))
    match config.temporal:
        case "bracket":
            if any(a is None for a in after):
                return FailClosed("analyzer_late") if age_s > budget_s else Wait()
            picks = _picked(before + after)
            if picks is None:
                return FailClosed("connecting")
            if any(a.labels is None for a in picks):
                return FailClosed("analyzer_error")
            return Anonymize(picks, config.bracket_dilation)
        case "hold":
            picks = _picked(before)
            if picks is None:
                return FailClosed("connecting")
            if any(a.labels is None for a in picks):
                return FailClosed("analyzer_error")
            if age_s > budget_s or any(seq - a.seq > config.hold_frames for a in picks):
                return FailClosed("analyzer_late")
            own_frame = all(a.seq == seq for a in picks)
            return Anonymize(picks, 0 if own_frame else config.hold_dilation)
    raise ValueError(f"unknown temporal mode {config.temporal!r}")


def _picked(found: Iterable[Analysis | None]) -> tuple[Analysis, ...] | None:
    """The analyses found, each once, in order; None if one is missing."""
    picks: list[Analysis] = []
    for analysis in found:
        if analysis is None:
            return None
        if all(p is not analysis for p in picks):
            picks.append(analysis)
    return tuple(picks)


def still_needed(
    analyses: Iterable[Analysis], epoch: int, oldest_seq: int
) -> list[Analysis]:
    """The analyses a frame of `epoch` at or after `oldest_seq` may still use: per region the
    last one at or before `oldest_seq` and every later one (older epochs are dropped)."""
    kept = [a for a in analyses if a.epoch >= epoch]
    latest_before: dict[tuple[int, Tile | None], int] = {}
    for a in kept:
        if a.epoch == epoch and a.seq <= oldest_seq:
            key = (a.epoch, a.region)
            latest_before[key] = max(latest_before.get(key, a.seq), a.seq)
    return [a for a in kept
            if a.epoch != epoch or a.seq >= latest_before.get((a.epoch, a.region), a.seq)]


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
