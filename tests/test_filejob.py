"""The file job core: output planning, fail-closed frames, per-input failures, the summary."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from media_helpers import decode_all, psnr

from daemon.anonymizer.cpu import CpuAnonymizer
from daemon.config import BlurConfig
from daemon.errors import ConfigError, EngineError
from daemon.filejob import (
    FileJob,
    FileOptions,
    FrameGuard,
    exit_status,
    format_summary,
    plan_jobs,
    run_files,
)
from daemon.media.image import read_image
from daemon.media.labels import UNKNOWN_LABEL
from daemon.safe import SafeFrame, fail_closed_frame

PERSON = 15
NAMES = {0: "background", PERSON: "person"}
KINETICS = "kinetics_style_armwrestling_340x256.mp4"


class RaisingAnalyzer:
    """The analyzer interface, failing the way a broken inference engine does."""

    def __init__(self) -> None:
        self.calls = 0

    def labels(self, frame: np.ndarray) -> np.ndarray:
        self.calls += 1
        raise EngineError("inference failed: device lost")


class BoxAnalyzer:
    """Labels one fixed box as a person; every `fail_every`-th frame (0, n, 2n...) raises."""

    def __init__(self, fail_every: int = 0) -> None:
        self.fail_every = fail_every
        self.calls = 0

    def labels(self, frame: np.ndarray) -> np.ndarray:
        index = self.calls
        self.calls += 1
        if self.fail_every and index % self.fail_every == 0:
            raise EngineError(f"frame {index}: inference failed")
        labels = np.zeros(frame.shape[:2], np.uint8)
        labels[40:200, 100:220] = PERSON
        return labels


def anonymizer() -> CpuAnonymizer:
    return CpuAnonymizer((PERSON,), BlurConfig())




# --- planning ------------------------------------------------------------------------------


def test_one_input_goes_to_the_named_file(tmp_path):
    jobs = plan_jobs([tmp_path / "a.mp4"], tmp_path / "out" / "b.mkv", save_masks=True)
    assert jobs == [FileJob(tmp_path / "a.mp4", tmp_path / "out" / "b.mkv",
                            tmp_path / "out" / "b.labels")]
    image = plan_jobs([tmp_path / "a.jpg"], tmp_path / "b.png", save_masks=True)
    assert image[0].masks == tmp_path / "b.labels.png"


def test_several_inputs_go_to_a_directory_under_their_names(tmp_path):
    inputs = [tmp_path / "x" / "a.mp4", tmp_path / "y" / "b.png"]
    jobs = plan_jobs(inputs, tmp_path / "out")
    assert [j.output for j in jobs] == [tmp_path / "out" / "a.mp4", tmp_path / "out" / "b.png"]
    assert all(j.masks is None for j in jobs)
    (tmp_path / "dir").mkdir()
    assert plan_jobs(inputs[:1], tmp_path / "dir")[0].output == tmp_path / "dir" / "a.mp4"


def test_planning_refuses_unsafe_outputs(tmp_path):
    src = tmp_path / "a.png"
    src.write_bytes(b"")
    with pytest.raises(ConfigError, match="is an input; refusing to overwrite it"):
        plan_jobs([src], tmp_path / "a.png", overwrite=True)
    with pytest.raises(ConfigError, match="is an input"):
        plan_jobs([src], tmp_path)  # the directory output would be the input itself
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"b.png: exists \(use --overwrite"):
        plan_jobs([src], tmp_path / "b.png")
    assert plan_jobs([src], tmp_path / "b.png", overwrite=True)[0].output == tmp_path / "b.png"
    (tmp_path / "c.labels.png").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"c\.labels\.png: exists"):
        plan_jobs([src], tmp_path / "c.png", save_masks=True)
    with pytest.raises(ConfigError, match="would both write"):
        plan_jobs([tmp_path / "x" / "a.mp4", tmp_path / "y" / "a.mp4"], tmp_path / "out")
    with pytest.raises(ConfigError, match="needs a video output extension"):
        plan_jobs([tmp_path / "a.mp4"], tmp_path / "a.png")
    with pytest.raises(ConfigError, match="not a directory"):
        plan_jobs([src, tmp_path / "z.png"], tmp_path / "b.png")


# --- fail closed -----------------------------------------------------------------------------


def test_the_frame_guard_hands_out_only_safe_frames() -> None:
    frame = np.random.default_rng(2).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    guard = FrameGuard(BoxAnalyzer(fail_every=2), anonymizer(), "black", Path("clip.mp4"))
    failed, no_labels = guard.process(frame, 0)  # frame 0: the analyzer raises
    assert type(failed) is SafeFrame and failed.kind == "fail_closed" and no_labels is None
    assert failed.reason == "analyzer_error" and not failed.image.any()
    done, labels = guard.process(frame, 1)
    assert type(done) is SafeFrame and done.kind == "anonymized" and labels is not None
    assert not np.shares_memory(done.image, frame) and not done.image.flags.writeable
    assert (guard.frames, guard.failed, dict(guard.objects)) == (2, 1, {PERSON: 1})


def test_failing_analyzer_on_an_image_writes_the_fail_closed_frame(shared_data, tmp_path):
    src = shared_data / "stills" / "messi5.jpg"
    job = FileJob(src, tmp_path / "out.png", tmp_path / "out.labels.png")
    analyzer = RaisingAnalyzer()
    reports = run_files([job], analyzer, anonymizer(), FileOptions(fail_closed="blur"))
    original = read_image(src)
    np.testing.assert_array_equal(read_image(job.output), fail_closed_frame(original, "blur"))
    assert psnr(read_image(job.output), original) < 25  # the fail-closed frame is not the input
    masks = cv2.imread(str(job.masks), cv2.IMREAD_UNCHANGED)
    assert masks.shape == original.shape[:2] and (masks == UNKNOWN_LABEL).all()
    assert analyzer.calls == 1
    assert reports[0].error is None and reports[0].failed_closed == 1
    assert exit_status(reports) == 1
    assert "fail-closed frames: 1" in format_summary(reports, NAMES).splitlines()[-1]


@pytest.mark.parametrize("style", ["blur", "black"])
def test_failing_analyzer_on_a_video_writes_only_fail_closed_frames(
    clip_segment, tmp_path, style
):
    src = clip_segment(KINETICS, 12)
    job = FileJob(src, tmp_path / "out.mp4")
    options = FileOptions(fail_closed=style, preset="veryfast")
    reports = run_files([job], RaisingAnalyzer(), anonymizer(), options)
    inputs, outputs = decode_all(src), decode_all(job.output)
    assert len(outputs) == len(inputs) == 12
    for raw, out in zip(inputs, outputs, strict=True):
        expected = fail_closed_frame(raw, style)
        # H.264 is lossy: the output is close to the fail-closed frame and far from the raw one
        # (measured: >= 39.5 dB to the fail-closed frame, <= 18.5 dB to the raw one)
        assert psnr(out, expected) > 35
        assert psnr(out, raw) < psnr(out, expected) - 10
    (report,) = reports
    assert (report.frames, report.failed_closed, report.error) == (12, 12, None)
    assert exit_status(reports) == 1
    lines = format_summary(reports, NAMES).splitlines()
    assert "12 frames" in lines[0] and "fail-closed frames: 12" in lines[0]
    assert "fail-closed frames: 12" in lines[-1]


def test_some_frames_fail_closed_and_the_others_are_anonymized(clip_segment, tmp_path):
    src = clip_segment(KINETICS, 9)
    job = FileJob(src, tmp_path / "out.mp4", tmp_path / "out.labels")
    reports = run_files([job], BoxAnalyzer(fail_every=3), anonymizer(),
                        FileOptions(preset="veryfast"))
    inputs, outputs = decode_all(src), decode_all(job.output)
    box = (slice(40, 200), slice(100, 220))
    outside = np.ones(inputs[0].shape[:2], bool)
    outside[30:210, 90:230] = False  # the box plus the mask dilation and a margin
    for index, (raw, out) in enumerate(zip(inputs, outputs, strict=True)):
        mask = cv2.imread(str(job.masks / f"{index:06d}.png"), cv2.IMREAD_UNCHANGED)
        if index % 3 == 0:
            assert psnr(out, fail_closed_frame(raw, "blur")) > 35
            assert (mask == UNKNOWN_LABEL).all()
        else:
            assert psnr(out[outside], raw[outside]) > 35  # background untouched (bar H.264)
            assert psnr(out[box], raw[box]) < 25  # the "person" is blurred
            assert set(np.unique(mask)) == {0, PERSON}
    (report,) = reports
    assert (report.frames, report.failed_closed) == (9, 3)
    assert report.objects == {PERSON: 6}
    assert "objects blurred: person 6" in format_summary(reports, NAMES)


def test_good_run_exits_zero(shared_data, tmp_path):
    job = FileJob(shared_data / "stills" / "messi5.jpg", tmp_path / "out.jpg")
    reports = run_files([job], BoxAnalyzer(), anonymizer(), FileOptions())
    assert reports[0].ok and exit_status(reports) == 0
    assert reports[0].objects == {PERSON: 1}


def test_a_bad_input_does_not_stop_the_others(shared_data, tmp_path, capsys):
    (tmp_path / "text.mp4").write_text("not a video\n")
    jobs = [
        FileJob(tmp_path / "missing.png", tmp_path / "out" / "missing.png"),
        FileJob(tmp_path / "text.mp4", tmp_path / "out" / "text.mp4"),
        FileJob(shared_data / "stills" / "messi5.jpg", tmp_path / "out" / "messi5.jpg"),
    ]
    (tmp_path / "out").mkdir()
    analyzer = BoxAnalyzer()
    reports = run_files(jobs, analyzer, anonymizer(), FileOptions())
    assert [r.error is None for r in reports] == [False, False, True]
    assert analyzer.calls == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["messi5.jpg"]
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        f"anonymizer: error: {tmp_path / 'missing.png'}: no such file",
        f"anonymizer: error: {tmp_path / 'text.mp4'}: not a readable video: "
        "Invalid data found when processing input",
    ]
    assert exit_status(reports) == 1
    summary = format_summary(reports, NAMES).splitlines()
    assert summary[-1].startswith("total: 3 inputs (2 failed), 1 frames")
