"""Which analyses anonymize which frame (bracketing vs hold), and when frames fail closed."""

import numpy as np
import pytest

from daemon.config import AnalysisConfig
from daemon.pipeline.temporal import (
    Analysis,
    Anonymize,
    FailClosed,
    Wait,
    decide,
    union_labels,
)

PERSON = 15


def _ok(epoch: int, seq: int) -> Analysis:
    return Analysis(epoch, seq, np.zeros((8, 8), np.uint8))


BRACKET = AnalysisConfig(temporal="bracket", budget_ms=500, bracket_dilation=2)
HOLD = AnalysisConfig(temporal="hold", hold_frames=3, hold_dilation=5, budget_ms=500)


def test_bracket_uses_the_analyses_before_and_after() -> None:
    analyses = [_ok(1, 0), _ok(1, 5), _ok(1, 10)]
    decision = decide(1, 7, 0.1, analyses, BRACKET)
    assert isinstance(decision, Anonymize)
    assert [a.seq for a in decision.analyses] == [5, 10]
    assert decision.dilation == 2


def test_bracket_frame_analyzed_itself_uses_only_its_own_analysis() -> None:
    decision = decide(1, 5, 0.1, [_ok(1, 0), _ok(1, 5)], BRACKET)
    assert isinstance(decision, Anonymize)
    assert [a.seq for a in decision.analyses] == [5]


def test_bracket_waits_for_the_next_analysis_within_budget_then_fails_closed() -> None:
    analyses = [_ok(1, 0)]
    assert isinstance(decide(1, 3, 0.2, analyses, BRACKET), Wait)
    assert decide(1, 3, 0.6, analyses, BRACKET) == FailClosed("analyzer_late")


def test_first_frames_of_a_connection_fail_closed() -> None:
    # analyses of the previous connection (epoch 1) never cover frames of epoch 2
    analyses = [_ok(1, 0), _ok(1, 9), _ok(2, 4)]
    assert decide(2, 2, 0.1, analyses, BRACKET) == FailClosed("connecting")
    assert decide(2, 2, 0.1, analyses, HOLD) == FailClosed("connecting")


def test_a_failed_analysis_next_to_a_frame_fails_it_closed() -> None:
    failed = Analysis(1, 5, None, "EngineError: boom")
    assert decide(1, 3, 0.1, [_ok(1, 0), failed], BRACKET) == FailClosed("analyzer_error")
    assert decide(1, 7, 0.1, [failed, _ok(1, 9)], BRACKET) == FailClosed("analyzer_error")
    assert decide(1, 6, 0.0, [_ok(1, 0), failed], HOLD) == FailClosed("analyzer_error")


def test_hold_reuses_the_last_analysis_for_n_frames_with_more_dilation() -> None:
    analyses = [_ok(1, 4)]
    decision = decide(1, 7, 0.0, analyses, HOLD)
    assert isinstance(decision, Anonymize) and decision.dilation == 5
    assert decide(1, 8, 0.0, analyses, HOLD) == FailClosed("analyzer_late")
    own = decide(1, 4, 0.0, analyses, HOLD)
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
