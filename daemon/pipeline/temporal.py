"""Which analysis anonymizes which frame: bracketing (union of the analyses around a frame) or
holding the last one for N frames. Pure decisions, no threads: the camera pipeline applies them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from daemon.anonymizer.objects import dilate
from daemon.config import AnalysisConfig
from daemon.types import LabelMap


@dataclass(frozen=True)
class Analysis:
    """The analyzer's result for frame `seq` of connection `epoch`; labels None: it failed."""

    epoch: int
    seq: int
    labels: LabelMap | None
    error: str = ""


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
    """The analysis after this frame is not in yet and the frame is within its budget."""


Decision = Anonymize | FailClosed | Wait


def decide(
    epoch: int, seq: int, age_s: float, analyses: Sequence[Analysis], config: AnalysisConfig
) -> Decision:
    """What to do with frame `seq` of `epoch`, `age_s` after it arrived.

    `analyses` are the recent ones, in the order they finished (any epochs). A frame with no
    successful analysis before it in its own connection fails closed (just (re)connected); a
    failed analysis next to a frame fails it closed; a frame waiting past its budget fails
    closed (analyzer late).
    """
    own = sorted((a for a in analyses if a.epoch == epoch), key=lambda a: a.seq)
    before = [a for a in own if a.seq <= seq]
    after = [a for a in own if a.seq >= seq]
    prev = before[-1] if before else None
    budget_s = config.budget_ms / 1000.0
    match config.temporal:
        case "bracket":
            following = after[0] if after else None
            if following is None:
                return FailClosed("analyzer_late") if age_s > budget_s else Wait()
            if prev is None:
                return FailClosed("connecting")
            if prev.labels is None or following.labels is None:
                return FailClosed("analyzer_error")
            pair = (prev,) if prev is following else (prev, following)
            return Anonymize(pair, config.bracket_dilation)
        case "hold":
            if prev is None:
                return FailClosed("connecting")
            if prev.labels is None:
                return FailClosed("analyzer_error")
            if seq - prev.seq > config.hold_frames or age_s > budget_s:
                return FailClosed("analyzer_late")
            return Anonymize((prev,), config.hold_dilation if prev.seq != seq else 0)
    raise ValueError(f"unknown temporal mode {config.temporal!r}")


def union_labels(analyses: Sequence[Analysis], protected: Sequence[int], dilation: int
                 ) -> LabelMap:
    """One label map whose protected pixels are the union of every analysis' protected
    pixels, each class grown by `dilation` pixels (over-masking is the privacy-safe side)."""
    maps = [a.labels for a in analyses if a.labels is not None]
    if len(maps) != len(analyses) or not maps:
        raise ValueError("union_labels needs successful analyses only")
    combined = maps[-1].copy()
    if len(maps) == 1 and dilation == 0:
        return combined
    ids = np.asarray(protected, np.uint8)
    for c in protected:
        grown = np.zeros(combined.shape, bool)
        for labels in maps:
            grown |= labels == c
        grown = dilate(grown, dilation)
        # a pixel another protected class already owns keeps its class
        combined[grown & ~np.isin(combined, ids)] = c
    return combined
