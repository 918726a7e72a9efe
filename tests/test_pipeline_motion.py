"""The temporal masks' motion rule (`pipeline.motion` through `temporal.decide`): objects that
move, appear and vanish between analyses are covered on every frame in between."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from daemon.config import AnalysisConfig
from daemon.pipeline.motion import CELL, grid_shape, merged_blobs, object_cells
from daemon.pipeline.temporal import (
    Analysis,
    Anonymize,
    FailClosed,
    decide,
    motion_cover,
    union_labels,
    with_cover,
)

PERSON, PLATE = 1, 2
H, W, FPS = 240, 320, 30.0
Box = tuple[int, int, int, int]  # x, y, w, h; None: not in the frame


def _labels(boxes: list[tuple[int, Box]]) -> np.ndarray:
    labels = np.zeros((H, W), np.uint8)
    for class_id, (x, y, w, h) in boxes:
        labels[max(0, y):max(0, y + h), max(0, x):max(0, x + w)] = class_id
    return labels


def _analysis(seq: int, boxes: list[tuple[int, Box]]) -> Analysis:
    labels = _labels(boxes)
    return Analysis(1, seq, labels, arrived=seq / FPS,
                    cells=object_cells(labels, None, seq, (PERSON, PLATE)))


def _masks(config: AnalysisConfig, scene: Callable[[int], list[tuple[int, Box]]], frames: int,
           every: int, *, motion: bool = True) -> dict[int, np.ndarray]:
    """The label map each frame 0..frames-1 would be blurred with, analyses every `every`
    frames (frame seq analyzed at seq % every == 0); frames that do not anonymize: absent."""
    analyses = [_analysis(s, scene(s)) for s in range(0, frames, every)]
    speed = config.max_speed * max(H, W) / FPS / CELL
    out = {}
    for seq in range(frames):
        decision = decide(1, seq, 0.0, analyses, config, arrived=seq / FPS)
        if not isinstance(decision, Anonymize):
            continue
        base = union_labels(decision.analyses, (PERSON, PLATE), decision.dilation, (H, W))
        cover = motion_cover(decision, speed, (H, W)) if motion else None
        out[seq] = with_cover(base, cover, (PERSON, PLATE))
    return out


def _uncovered(masks: dict[int, np.ndarray], scene) -> dict[int, float]:
    """Per frame, the share of the true objects' pixels the frame's mask leaves unprotected."""
    leaks = {}
    for seq, labels in masks.items():
        truth = _labels(scene(seq)) > 0
        if truth.any():
            leaks[seq] = float((truth & (labels == 0)).sum() / truth.sum())
    return leaks


BRACKET = AnalysisConfig(temporal="bracket", bracket_dilation=0, max_speed=1.0)
HOLD = AnalysisConfig(temporal="hold", hold_dilation=4, hold_ms=1000, max_speed=1.0)


def _walker(speed: float, x0: int = 10) -> Callable[[int], list[tuple[int, Box]]]:
    return lambda seq: [(PERSON, (int(x0 + speed * seq), 100, 16, 48))]


@pytest.mark.parametrize("speed", [2.0, 6.0, 10.0])
def test_bracket_covers_a_person_moving_between_analyses(speed: float) -> None:
    # max_speed 1.0 frame widths per second = 10.7 px per frame here
    scene = _walker(speed)
    frames = int((W - 40) / speed)
    masks = _masks(BRACKET, scene, frames, every=8)
    leaks = _uncovered(masks, scene)
    assert len(leaks) >= frames - 8
    assert max(leaks.values()) == 0.0
    # the rule is what covers it: the union of the bracketing masks alone leaks
    if speed * 8 > 16:
        plain = _uncovered(_masks(BRACKET, scene, frames, every=8, motion=False), scene)
        assert max(plain.values()) > 0.3


def test_bracket_holds_a_person_who_appears_and_one_who_vanishes() -> None:
    def scene(seq: int) -> list[tuple[int, Box]]:
        boxes = []
        if seq >= 6:  # walks in at 4 px/frame after analysis 0 (or analysis 0 missed him)
            boxes.append((PERSON, (200 + 4 * (seq - 6), 40, 16, 40)))
        if seq < 11:  # walks away and is gone before analysis 16 (out of the frame at 11)
            boxes.append((PERSON, (250 + 8 * seq, 150, 20, 40)))
        return boxes

    masks = _masks(BRACKET, scene, 30, every=8)
    leaks = _uncovered(masks, scene)
    assert max(leaks.values()) == 0.0
    # held, not grown without bound: at most half the object's size around it
    assert (masks[7][:, :150] == PERSON).sum() == 0


def test_bracket_keeps_two_people_apart_and_covers_a_plate_passing_a_standing_person() -> None:
    def scene(seq: int) -> list[tuple[int, Box]]:
        return [(PERSON, (150, 60, 20, 60)), (PLATE, (10 + 9 * seq, 180, 24, 8))]

    masks = _masks(BRACKET, scene, 30, every=6)
    assert max(_uncovered(masks, scene).values()) == 0.0
    # the plate's sweep is painted as a plate; the standing person stays a person-sized mask
    some = masks[9]
    assert (some[60:120, 150:170] == PERSON).all()
    assert (some == PERSON).sum() < 3 * 20 * 60


@pytest.mark.parametrize("speed", [2.0, 6.0, 10.0])
def test_hold_covers_a_person_moving_at_constant_velocity(speed: float) -> None:
    scene = _walker(speed)
    frames = int((W - 40) / speed)
    masks = _masks(HOLD, scene, frames, every=6)
    leaks = _uncovered(masks, scene)
    assert len(leaks) == frames - 6  # the first analysis alone gives no velocity
    assert max(leaks.values()) == 0.0


def test_hold_fails_a_connection_closed_until_velocities_can_be_measured() -> None:
    analyses = [_analysis(0, _walker(8.0)(0))]
    for seq in range(6):
        assert decide(1, seq, 0.0, analyses, HOLD, arrived=seq / FPS) == FailClosed("connecting")
    analyses.append(_analysis(6, _walker(8.0)(6)))
    assert isinstance(decide(1, 7, 0.0, analyses, HOLD, arrived=7 / FPS), Anonymize)


def test_hold_is_bounded_in_time_not_frames() -> None:
    config = AnalysisConfig(temporal="hold", hold_ms=200)
    for fps in (30.0, 5.0):
        held = [Analysis(1, s, np.zeros((8, 8), np.uint8), arrived=s / fps) for s in (-1, 0)]
        frames_ok = [seq for seq in range(1, 40)
                     if isinstance(decide(1, seq, 0.0, held, config, arrived=seq / fps),
                                   Anonymize)]
        assert frames_ok == list(range(1, int(0.2 * fps) + 1)), fps


@pytest.mark.parametrize("mode", ["bracket", "hold"])
def test_a_frame_past_its_budget_fails_closed_whatever_analyses_exist(mode: str) -> None:
    config = AnalysisConfig(temporal=mode, budget_ms=300)
    analyses = [Analysis(1, s, np.zeros((8, 8), np.uint8), arrived=s / FPS) for s in (0, 4)]
    assert isinstance(decide(1, 4, 0.29, analyses, config, arrived=4 / FPS), Anonymize)
    assert decide(1, 4, 0.31, analyses, config, arrived=4 / FPS) == FailClosed("analyzer_late")


def test_objects_cut_by_tiles_are_merged_on_the_frame_grid() -> None:
    from daemon.analysis.tiling import Tile

    left, right = Tile(y=6, x=10, height=40, width=40), Tile(y=6, x=42, height=40, width=40)
    a = np.zeros((40, 40), np.uint8)
    a[4:8, 26:40] = PERSON  # frame rows 10..13, columns 36..49: cut by the tile's edge
    b = np.zeros((40, 40), np.uint8)
    b[4:8, 0:10] = PERSON  # columns 42..51: the rest of it, seen by the next tile
    cells = [object_cells(a, left, 3, (PERSON,)), object_cells(b, right, 5, (PERSON,))]
    (blob,) = merged_blobs(cells, grid_shape(100, 100))
    assert blob.class_id == PERSON and (blob.first, blob.last, blob.at) == (3, 5, 4.0)
    assert blob.box == (36 // CELL, 10 // CELL, 51 // CELL + 1, 13 // CELL + 1)


@pytest.mark.parametrize("mode", ["bracket", "hold"])
def test_a_person_crossing_tiles_analyzed_at_different_frames_is_covered(mode: str) -> None:
    # the daemon's plan: the full frame and two tiles, one region analyzed every 2 frames;
    # the person (12 px/frame) is seen by whichever regions hold it, at their own frames, and
    # a tile that does not hold it must not skew its timing
    from daemon.analysis.tiling import Tile

    plan = (None, Tile(0, 0, H, W // 2 + 20), Tile(0, W // 2 - 20, H, W // 2 + 20))
    scene = _walker(12.0)

    def analysis(seq: int, region: Tile | None) -> Analysis:
        labels = _labels(scene(seq))
        if region is not None:
            labels = labels[region.y:region.y + region.height, region.x:region.x + region.width]
        return Analysis(1, seq, labels.copy(), region=region, arrived=seq / FPS,
                        cells=object_cells(labels, region, seq, (PERSON,)))

    analyses = [analysis(s, plan[(s // 2) % 3]) for s in range(0, 24, 2)]
    config = BRACKET if mode == "bracket" else HOLD
    speed = config.max_speed * max(H, W) / FPS / CELL
    leaks = {}
    for seq in range(10, 17):
        decision = decide(1, seq, 0.0, analyses, config, plan, arrived=seq / FPS)
        assert isinstance(decision, Anonymize), (seq, decision)
        base = union_labels(decision.analyses, (PERSON,), decision.dilation, (H, W))
        labels = with_cover(base, motion_cover(decision, speed, (H, W)), (PERSON,))
        leaks[seq] = _uncovered({seq: labels}, scene)[seq]
    assert max(leaks.values()) == 0.0, leaks
