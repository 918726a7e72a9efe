"""Which analyses anonymize which frame (bracketing vs hold), and when frames fail closed."""

import numpy as np
import pytest

from daemon.config import AnalysisConfig
from daemon.pipeline.temporal import (
    FULL_FRAME,
    Analysis,
    Anonymize,
    FailClosed,
    Wait,
    decide,
    union_labels,
)

PERSON = 15
FRAME_S = 1 / 30  # the tests' camera: 30 fps, frame s arrives at s / 30 s


def _decide(epoch, seq, age_s, analyses, config, plan=FULL_FRAME):
    return decide(epoch, seq, age_s, analyses, config, plan, arrived=seq * FRAME_S)


def _ok(epoch: int, seq: int) -> Analysis:
    return Analysis(epoch, seq, np.zeros((8, 8), np.uint8), arrived=seq * FRAME_S)


BRACKET = AnalysisConfig(temporal="bracket", budget_ms=500, bracket_dilation=2)
HOLD = AnalysisConfig(temporal="hold", hold_ms=100, hold_dilation=5, budget_ms=500)


def test_bracket_uses_the_analyses_before_and_after() -> None:
    analyses = [_ok(1, 0), _ok(1, 5), _ok(1, 10)]
    decision = _decide(1, 7, 0.1, analyses, BRACKET)
    assert isinstance(decision, Anonymize)
    assert [a.seq for a in decision.analyses] == [5, 10]
    assert decision.dilation == 2


def test_bracket_frame_analyzed_itself_uses_only_its_own_analysis() -> None:
    decision = _decide(1, 5, 0.1, [_ok(1, 0), _ok(1, 5)], BRACKET)
    assert isinstance(decision, Anonymize)
    assert [a.seq for a in decision.analyses] == [5]


def test_bracket_waits_for_the_next_analysis_within_budget_then_fails_closed() -> None:
    analyses = [_ok(1, 0)]
    assert isinstance(_decide(1, 3, 0.2, analyses, BRACKET), Wait)
    assert _decide(1, 3, 0.6, analyses, BRACKET) == FailClosed("analyzer_late")


def test_first_frames_of_a_connection_fail_closed() -> None:
    # analyses of the previous connection (epoch 1) never cover frames of epoch 2
    analyses = [_ok(1, 0), _ok(1, 9), _ok(2, 4)]
    assert _decide(2, 2, 0.1, analyses, BRACKET) == FailClosed("connecting")
    assert _decide(2, 2, 0.1, analyses, HOLD) == FailClosed("connecting")


def test_a_failed_analysis_next_to_a_frame_fails_it_closed() -> None:
    failed = Analysis(1, 5, None, "EngineError: boom")
    assert _decide(1, 3, 0.1, [_ok(1, 0), failed], BRACKET) == FailClosed("analyzer_error")
    assert _decide(1, 7, 0.1, [failed, _ok(1, 9)], BRACKET) == FailClosed("analyzer_error")
    assert _decide(1, 6, 0.0, [_ok(1, -3), _ok(1, 0), failed], HOLD) == FailClosed(
        "analyzer_error")


def test_hold_reuses_the_last_analysis_for_n_frames_with_more_dilation() -> None:
    analyses = [_ok(1, 1), _ok(1, 4)]
    decision = _decide(1, 7, 0.0, analyses, HOLD)
    assert isinstance(decision, Anonymize) and decision.dilation == 5
    assert _decide(1, 8, 0.0, analyses, HOLD) == FailClosed("analyzer_late")
    own = _decide(1, 4, 0.0, analyses, HOLD)
    assert isinstance(own, Anonymize) and own.dilation == 0


def test_union_covers_both_analyses_and_grows_them() -> None:
    a = np.zeros((20, 20), np.uint8)
    b = np.zeros((20, 20), np.uint8)
    a[2:4, 2:4] = PERSON
    b[15:17, 15:17] = PERSON
    b[10, 0] = 7  # another protected class, owned already
    union = union_labels([Analysis(1, 0, a), Analysis(1, 3, b)], (PERSON, 7), dilation=1)
    assert (union[1:5, 1:5] == PERSON).all()
    assert (union[14:18, 14:18] == PERSON).all()
    assert union[10, 0] == 7
    assert union[10, 10] == 0


def test_union_refuses_a_failed_analysis() -> None:
    with pytest.raises(ValueError):
        union_labels([Analysis(1, 0, None, "x")], (PERSON,), 0)


# --- per-region bracketing (the daemon's scheduled multi-scale plan) ---------------------------

from daemon.analysis.tiling import Tile  # noqa: E402
from daemon.pipeline.temporal import still_needed  # noqa: E402

FULL = Tile(0, 0, 40, 60)
LEFT = Tile(0, 0, 40, 30)
RIGHT = Tile(0, 30, 40, 30)
PLAN = (FULL, LEFT, RIGHT)


def _at(region: Tile, seq: int, epoch: int = 1, person: tuple[int, int] | None = None
        ) -> Analysis:
    labels = np.zeros((region.height, region.width), np.uint8)
    if person is not None:  # a 2 x 2 person at frame coordinates (y, x)
        y, x = person[0] - region.y, person[1] - region.x
        labels[y : y + 2, x : x + 2] = PERSON
    return Analysis(epoch, seq, labels, region=region, arrived=seq * FRAME_S)


def _round_robin(frames: int, person_at) -> list[Analysis]:
    """Frame s is analyzed for region PLAN[s % 3] (one pass per frame, like the daemon);
    person_at(s) is where the person is on frame s; only the tile holding it finds it."""
    out = []
    for seq in range(frames):
        region = PLAN[seq % len(PLAN)]
        y, x = person_at(seq)
        seen = region is not FULL and region.x <= x < region.x + region.width - 1
        out.append(_at(region, seq, person=(y, x) if seen else None))
    return out


def test_bracket_picks_the_analyses_around_the_frame_in_every_region() -> None:
    analyses = [_at(FULL, 0), _at(LEFT, 1), _at(RIGHT, 2), _at(FULL, 3), _at(LEFT, 4),
                _at(RIGHT, 5)]
    decision = _decide(1, 2, 0.1, analyses, BRACKET, PLAN)
    assert isinstance(decision, Anonymize)
    assert sorted((a.region.x, a.region.width, a.seq) for a in decision.analyses) == [
        (0, 30, 1), (0, 30, 4), (0, 60, 0), (0, 60, 3), (30, 30, 2)]  # RIGHT at 2: itself


def test_bracket_waits_until_every_region_has_an_analysis_after_the_frame() -> None:
    analyses = [_at(FULL, 0), _at(LEFT, 1), _at(RIGHT, 2), _at(FULL, 3), _at(LEFT, 4)]
    assert isinstance(_decide(1, 3, 0.1, analyses, BRACKET, PLAN), Wait)  # RIGHT after 3: none
    assert _decide(1, 3, 0.6, analyses, BRACKET, PLAN) == FailClosed("analyzer_late")


def test_a_region_never_analyzed_in_this_connection_fails_closed() -> None:
    analyses = [_at(FULL, 0), _at(LEFT, 1), _at(FULL, 3), _at(LEFT, 4), _at(RIGHT, 5)]
    assert _decide(1, 2, 0.1, analyses, BRACKET, PLAN) == FailClosed("connecting")
    failed = Analysis(1, 5, None, "EngineError: boom", region=RIGHT)
    analyses = [_at(FULL, 0), _at(LEFT, 1), _at(RIGHT, 2), _at(FULL, 3), _at(LEFT, 4), failed]
    assert _decide(1, 3, 0.1, analyses, BRACKET, PLAN) == FailClosed("analyzer_error")


def test_hold_needs_every_region_recent_enough() -> None:
    analyses = [_at(FULL, 0), _at(LEFT, 2), _at(RIGHT, -2),  # each region's previous one
                _at(FULL, 3), _at(LEFT, 4), _at(RIGHT, 1)]
    held = _decide(1, 4, 0.0, analyses, HOLD, PLAN)
    assert isinstance(held, Anonymize) and held.dilation == 5
    assert _decide(1, 5, 0.0, analyses, HOLD, PLAN) == FailClosed("analyzer_late")  # RIGHT: 4 old


def test_a_still_person_only_a_tile_sees_is_in_every_frames_mask() -> None:
    analyses = _round_robin(30, lambda seq: (10, 40))
    covered = 0
    for seq in range(30):
        decision = _decide(1, seq, 0.0, analyses, BRACKET, PLAN)
        if not isinstance(decision, Anonymize):
            assert seq < 2 or seq > 27, (seq, decision)  # the first and last cycle only
            continue
        union = union_labels(decision.analyses, (PERSON,), 0, (40, 60))
        assert (union[10:12, 40:42] == PERSON).all(), seq
        covered += 1
    assert covered >= 25


def test_a_slow_person_crossing_tiles_is_covered_by_the_bracketing_union() -> None:
    # 1 px per frame, tiles analyzed every 3 frames: both bracketing analyses of the tile
    # holding the person are at most 3 px away, so a dilation of 3 covers every frame
    path = lambda seq: (20, 10 + seq)  # noqa: E731
    analyses = _round_robin(40, path)
    config = AnalysisConfig(temporal="bracket", budget_ms=500, bracket_dilation=3)
    for seq in range(3, 36):
        decision = _decide(1, seq, 0.0, analyses, config, PLAN)
        assert isinstance(decision, Anonymize), seq
        union = union_labels(decision.analyses, (PERSON,), config.bracket_dilation, (40, 60))
        y, x = path(seq)
        if 28 <= x <= 31:  # on the tile border the person is seen by neither tile: skip
            continue
        assert (union[y : y + 2, x : x + 2] == PERSON).all(), seq


def test_union_places_tile_labels_in_their_window() -> None:
    full, tile = _at(FULL, 0), _at(RIGHT, 0, person=(5, 50))
    union = union_labels([full, tile], (PERSON,), 0, (40, 60))
    assert union.shape == (40, 60)
    assert (union[5:7, 50:52] == PERSON).all() and (union == PERSON).sum() == 4
    with pytest.raises(ValueError, match="whole frame"):
        union_labels([tile], (PERSON,), 0, (40, 60))


def test_still_needed_keeps_per_region_the_last_two_before_and_everything_after() -> None:
    # hold measures velocities against the analysis before the last: two are kept per region
    analyses = [_at(LEFT, -2), _at(FULL, -3), _at(FULL, 0), _at(LEFT, 1), _at(RIGHT, 2),
                _at(FULL, 3), _at(LEFT, 4), _at(RIGHT, 5), _at(FULL, 6), _at(LEFT, 0, epoch=0)]
    kept = still_needed(analyses, epoch=1, oldest_seq=4)
    assert sorted((a.seq, a.region.x, a.region.width) for a in kept) == [
        (0, 0, 60), (1, 0, 30), (2, 30, 30), (3, 0, 60), (4, 0, 30), (5, 30, 30), (6, 0, 60)]
    # what it keeps still decides frame 4 exactly as everything did
    pruned, whole = (_decide(1, 4, 0.1, a, BRACKET, PLAN) for a in (kept, analyses))
    assert isinstance(pruned, Anonymize) and isinstance(whole, Anonymize)
    assert [a.seq for a in pruned.analyses] == [a.seq for a in whole.analyses]


def test_tile_specks_are_dropped_and_objects_kept() -> None:
    from daemon.analysis.tiling import drop_specks, protected_lookup, speck_area

    tile = Tile(0, 0, 384, 384)
    area = speck_area(tile, 513, 513)  # 144 input px at 384/513 scale
    assert area == round(144 * 384 * 384 / 513 / 513)
    labels = np.zeros((384, 384), np.uint8)
    labels[10:13, 10:13] = PERSON  # 9 px: a speck
    labels[100:140, 100:120] = PERSON  # 800 px: an object
    labels[200:203, 200:203] = 3  # not protected: untouched
    drop_specks(labels, protected_lookup((PERSON,)), area)
    assert (labels[10:13, 10:13] == 0).all()
    assert (labels[100:140, 100:120] == PERSON).all()
    assert (labels[200:203, 200:203] == 3).all()
