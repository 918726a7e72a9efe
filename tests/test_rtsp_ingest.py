"""The camera reader against a real GstRtspServer test camera: frames, hang watchdog, backoff,
credentials (and their redaction), I420 layouts."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from rtsp_camera import CameraProcess, free_port, marked_clip

from daemon.config import IngestConfig
from daemon.streams.ingest import CameraFrame, CameraReader, CameraSource, i420_to_bgr

SIZE = (340, 256)


@pytest.fixture(scope="module")
def feed(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return marked_clip(shared_data / "clips" / "kinetics_style_armwrestling_340x256.mp4",
                       tmp_path_factory.mktemp("ingest") / "marked.mp4", 12)


class Recorder:
    def __init__(self) -> None:
        self.frames: list[CameraFrame] = []
        self.states: list[tuple[float, bool, str]] = []
        self.lock = threading.Lock()

    def frame(self, frame: CameraFrame) -> None:
        with self.lock:
            self.frames.append(frame)

    def state(self, connected: bool, reason: str) -> None:
        with self.lock:
            self.states.append((time.monotonic(), connected, reason))

    def wait(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self):
                    return True
            time.sleep(0.05)
        return False


FAST = IngestConfig(watchdog_s=1.0, connect_timeout_s=2.0, backoff_initial_s=0.2,
                    backoff_max_s=0.8)


def _reader(source: CameraSource, rec: Recorder, config: IngestConfig = FAST) -> CameraReader:
    return CameraReader("cam", source, config, rec.frame, rec.state)


def test_frames_hang_watchdog_and_reconnect(feed: Path) -> None:
    camera = CameraProcess(feed, lifetime=120).start()
    rec = Recorder()
    reader = _reader(CameraSource.parse(camera.url), rec)
    reader.start()
    try:
        assert rec.wait(lambda r: len(r.frames) >= 20, 20)
        first = rec.frames[0]
        assert first.image.shape == (SIZE[1], SIZE[0], 3) and first.fps == pytest.approx(28)
        assert [f.seq for f in rec.frames[:5]] == [0, 1, 2, 3, 4]
        camera.pause()  # hung: the socket stays open, nothing arrives, GStreamer says nothing
        paused = time.monotonic()
        assert rec.wait(lambda r: any(not c for _, c, _ in r.states), 5)
        detected = next(t for t, c, _ in rec.states if not c)
        assert detected - paused < FAST.watchdog_s + 1.5
        assert "watchdog" in next(reason for _, c, reason in rec.states if not c)
        assert time.monotonic() - reader.heartbeat < 1.0
        camera.resume()
        assert rec.wait(lambda r: r.frames[-1].epoch > first.epoch, 15)
        later = [f for f in rec.frames if f.epoch > first.epoch]
        assert later[0].seq == 0  # a new connection starts a new sequence
    finally:
        reader.stop(5)
        camera.kill()
    assert not reader.alive


def test_unreachable_camera_backs_off_and_stays_alive() -> None:
    rec = Recorder()
    reader = _reader(CameraSource.parse(f"rtsp://127.0.0.1:{free_port()}/none"), rec)
    reader.start()
    try:
        assert rec.wait(lambda r: len(r.states) >= 4, 15)
        times = [t for t, _, _ in rec.states]
        gaps = np.diff(times)
        assert gaps[-1] > gaps[0]  # 0.2, 0.4, 0.8 s: doubling
        assert max(gaps) < FAST.backoff_max_s + 1.5  # capped
        assert time.monotonic() - reader.heartbeat < 1.0  # alive during the backoff
        assert rec.frames == []
    finally:
        reader.stop(5)


def test_credentials_are_used_and_never_logged(feed: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    secret = "pw-Zebra-77"
    camera = CameraProcess(feed, user="admin", password=secret, lifetime=60).start()
    caplog.set_level(logging.DEBUG)
    wrong = Recorder()
    reader = _reader(CameraSource.parse(f"rtsp://admin:{secret}x@127.0.0.1:{camera.port}/cam"),
                     wrong)
    reader.start()
    try:
        assert wrong.wait(lambda r: len(r.states) >= 1, 10)
        assert wrong.frames == []
    finally:
        reader.stop(5)
    right = Recorder()
    source = CameraSource.parse(camera.url, "admin", secret)
    reader = _reader(source, right)
    reader.start()
    try:
        assert right.wait(lambda r: len(r.frames) >= 5, 15)
    finally:
        reader.stop(5)
        camera.kill()
    assert caplog.records
    assert secret not in caplog.text
    assert "connecting to rtsp://127.0.0.1" in caplog.text


@pytest.mark.parametrize("width", [340, 640, 322])
def test_i420_padded_and_packed_layouts_agree(width: int) -> None:
    rng = np.random.default_rng(0)
    height = 64
    bgr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    packed = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).reshape(-1)
    cw, ch = width // 2, height // 2
    ys, cs = (width + 3) & ~3, (cw + 3) & ~3
    padded = np.zeros(ys * height + 2 * cs * ch, np.uint8)
    padded[: ys * height].reshape(height, ys)[:, :width] = packed[: width * height].reshape(
        height, width)
    for plane in range(2):
        src = packed[width * height + plane * cw * ch:][: cw * ch].reshape(ch, cw)
        start = ys * height + plane * cs * ch
        padded[start:start + cs * ch].reshape(ch, cs)[:, :cw] = src
    offsets = (0, ys * height, ys * height + cs * ch)
    out = i420_to_bgr(padded.tobytes(), width, height, (ys, cs, cs), offsets)
    ref = cv2.cvtColor(packed.reshape(height * 3 // 2, width), cv2.COLOR_YUV2BGR_I420)
    assert (out == ref).all()
