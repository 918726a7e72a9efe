"""Every output (the publisher, the image and video writers) accepts only SafeFrames, which
only the anonymizer or fail-closed path make; and the gate is a leaf module."""

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from daemon import safe
from daemon.anonymizer.cpu import AnonymizedFrame, CpuAnonymizer
from daemon.config import BlurConfig
from daemon.errors import EngineError
from daemon.safe import SafeFrame

PERSON = 15


def _raw() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)


def test_a_safe_frame_cannot_be_made_from_raw_pixels() -> None:
    with pytest.raises(TypeError):
        SafeFrame(_raw(), "anonymized", (), "")


def test_publisher_refuses_anything_but_a_safe_frame() -> None:
    from daemon.streams.publish import CameraPublisher, PacingDelay

    publisher = CameraPublisher("cam", 30.0, PacingDelay(0.0, 1.0))
    try:
        raw = _raw()
        for thing in (raw, AnonymizedFrame(raw, ())):
            with pytest.raises(TypeError):
                publisher.publish(thing)  # type: ignore[arg-type]
        publisher.publish(safe.fail_closed(raw, "black", "test"))  # no viewer: accepted, dropped
    finally:
        publisher.close()


def test_anonymized_frame_never_shares_memory_with_the_raw_frame() -> None:
    class Identity:  # an anonymizer that (wrongly) hands back the raw array itself
        def anonymize(self, frame, labels):
            return AnonymizedFrame(frame, ())

    raw = _raw()
    out = safe.anonymized(Identity(), raw, np.zeros(raw.shape[:2], np.uint8))
    assert not np.shares_memory(out.image, raw)
    assert not out.image.flags.writeable
    raw[:] = 0  # later changes to the camera buffer do not reach the published frame
    assert out.image.any()


def test_anonymized_blurs_the_protected_object() -> None:
    raw = _raw()
    labels = np.zeros(raw.shape[:2], np.uint8)
    labels[10:40, 20:60] = PERSON
    out = safe.anonymized(CpuAnonymizer((PERSON,), BlurConfig()), raw, labels)
    assert out.kind == "anonymized" and len(out.objects) == 1
    inside = (slice(14, 36), slice(24, 56))
    assert out.image[inside].std() < raw[inside].std() / 3
    assert (out.image[50:, :] == raw[50:, :]).all()


def test_wrong_shape_from_the_anonymizer_is_an_engine_error() -> None:
    class Broken:
        def anonymize(self, frame, labels):
            return AnonymizedFrame(frame[:10], ())

    with pytest.raises(EngineError):
        safe.anonymized(Broken(), _raw(), np.zeros((64, 96), np.uint8))


@pytest.mark.parametrize("style", ["blur", "black"])
def test_fail_closed_reveals_no_detail(style: str) -> None:
    raw = _raw()
    out = safe.fail_closed(raw, style, "analyzer_error")
    assert out.kind == "fail_closed" and out.reason == "analyzer_error"
    assert out.image.shape == raw.shape
    assert float(np.abs(np.diff(out.image.astype(int), axis=1)).mean()) < 5


def test_the_gate_imports_neither_numba_nor_the_blur_code() -> None:
    code = ("import sys, daemon.safe; print(' '.join(m for m in sys.modules if m == 'numba' or "
            "m.startswith(('numba.', 'daemon.anonymizer', 'daemon.pipeline', 'daemon.streams'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_the_image_writer_takes_only_a_safe_frame(tmp_path: Path, ext: str) -> None:
    from daemon.media.image import read_image, write_image

    raw = _raw()
    for thing in (raw, AnonymizedFrame(raw, ())):
        with pytest.raises(TypeError, match=r"write_image\(\) takes a SafeFrame"):
            write_image(tmp_path / f"raw{ext}", thing)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
    write_image(tmp_path / f"out{ext}", safe.fail_closed(raw, "black", "test"))
    assert not read_image(tmp_path / f"out{ext}").any()


def test_the_video_writer_takes_only_a_safe_frame(tmp_path: Path) -> None:
    from daemon.media.video_reader import VideoInfo
    from daemon.media.video_writer import VideoWriter

    raw = _raw()
    info = VideoInfo(96, 64, Fraction(1, 25), Fraction(25), 0, "h264", "mp4")
    with pytest.raises(TypeError, match=r"VideoWriter.write\(\) takes a SafeFrame"), \
            VideoWriter(tmp_path / "raw.mp4", info, preset="ultrafast") as writer:
        writer.write(raw, 0)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the partial file
    with VideoWriter(tmp_path / "out.mp4", info, preset="ultrafast") as writer:
        for pts in range(3):
            writer.write(safe.fail_closed(raw, "blur", "test"), pts)
    assert writer.frames_written == 3 and (tmp_path / "out.mp4").stat().st_size > 0
