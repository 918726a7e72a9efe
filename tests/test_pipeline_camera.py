"""The camera pipeline's output stage without threads: the mask cache, the frozen fail-closed
picture, the ingest size cap. Real anonymizer, real analyses; no camera is opened."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.anonymizer import CpuAnonymizer
from daemon.config import AnalysisConfig, BlurConfig, IngestConfig
from daemon.metrics import Metrics
from daemon.pipeline.camera import CameraPipeline, CameraSetup
from daemon.pipeline.motion import object_cells
from daemon.pipeline.temporal import Analysis, Anonymize, FailClosed, decide
from daemon.safe import SafeFrame
from daemon.streams.ingest import CameraFrame, CameraSource

PERSON = 1
H, W = 120, 160


class Published:
    def __init__(self) -> None:
        self.frames: list[SafeFrame] = []

    def publish(self, frame: SafeFrame) -> None:
        self.frames.append(frame)

    def set_fps(self, fps: float) -> None:
        pass


def _pipeline(analysis: AnalysisConfig, ingest: IngestConfig | None = None) -> CameraPipeline:
    setup = CameraSetup(
        name="cam", source=CameraSource.parse("rtsp://127.0.0.1:9/none"), protected=(PERSON,),
        class_names={PERSON: "person"}, fail_style="blur", analysis=analysis,
        ingest=ingest or IngestConfig())
    anonymizer = CpuAnonymizer((PERSON,), BlurConfig())
    return CameraPipeline(setup, analyzer=None, anonymizer=anonymizer,  # type: ignore[arg-type]
                          publisher=Published(), metrics=Metrics())


def _frame(seq: int, rng: np.random.Generator) -> CameraFrame:
    image = rng.integers(0, 256, (H, W, 3), np.uint8)
    return CameraFrame(image, epoch=1, seq=seq, arrived=seq / 30, pts_ns=None, fps=30.0)


def _person_at(seq: int, x: int, *, blobs: bool = True) -> Analysis:
    labels = np.zeros((H, W), np.uint8)
    labels[40:80, x:x + 20] = PERSON
    cells = object_cells(labels, None, seq, (PERSON,)) if blobs else None
    return Analysis(1, seq, labels, arrived=seq / 30, cells=cells)


def test_the_order_frames_are_rendered_in_does_not_change_a_held_mask() -> None:
    config = AnalysisConfig(temporal="hold", hold_dilation=12, hold_ms=1000)
    rng = np.random.default_rng(0)
    frames = [_frame(s, rng) for s in (4, 5)]
    # no motion-grid objects: the held frame's margin comes from the dilation alone
    analyses = [_person_at(0, 60, blobs=False), _person_at(4, 60, blobs=False)]
    decisions = [decide(1, f.seq, 0.0, analyses, config, arrived=f.arrived) for f in frames]
    assert [d.dilation for d in decisions if isinstance(d, Anonymize)] == [0, 12]

    def held_after(order: list[int]) -> np.ndarray:
        pipeline, cache = _pipeline(config), None
        out = {}
        for i in order:
            out[i], _, cache = pipeline._render(frames[i], decisions[i], cache)
        return out[1].image

    # the analyzed frame first (its undilated mask cached), or the held frame alone
    after_own, alone = held_after([0, 1]), held_after([1])
    np.testing.assert_array_equal(after_own, alone)
    changed = (after_own != frames[1].image).any(axis=2)
    assert changed[40:80, 60 - 10:80 + 10].mean() > 0.9  # the margin is blurred as well


def test_a_run_of_failed_frames_repeats_one_frozen_picture() -> None:
    pipeline = _pipeline(AnalysisConfig())
    rng = np.random.default_rng(1)
    first, second = _frame(0, rng), _frame(1, rng)
    a, reason_a, _ = pipeline._render(first, FailClosed("analyzer_error"), None)
    b, reason_b, _ = pipeline._render(second, FailClosed("analyzer_late"), None)
    assert (reason_a, reason_b) == ("analyzer_error", "analyzer_late")
    assert b is a and a.kind == "fail_closed"  # the second shifted frame is never shown
    # an anonymized frame ends the run: the next failure freezes a new picture
    pipeline._emit(pipeline._render(second, decide(1, 1, 0.0, [_person_at(1, 10)],
                                                   AnalysisConfig(), arrived=1 / 30), None)[0])
    c, _, _ = pipeline._render(second, FailClosed("analyzer_error"), None)
    assert c is not a


@pytest.mark.parametrize("size, refused", [((2160, 3840), False), ((2161, 3840), True)])
def test_frames_above_max_pixels_are_refused_and_counted(size: tuple[int, int],
                                                         refused: bool) -> None:
    pipeline = _pipeline(AnalysisConfig())
    frame = CameraFrame(np.zeros((*size, 3), np.uint8), 1, 0, 0.0, None, 30.0)
    pipeline._on_frame(frame)
    assert (pipeline._latest is None) == refused
    assert pipeline._metrics.dropped.value("cam", "too_large") == (1.0 if refused else 0.0)
