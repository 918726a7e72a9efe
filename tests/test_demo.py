"""`anonymizer demo`: started as a user would, read with ffprobe/ffmpeg, stopped with Ctrl-C.

Real parts only: the bundled clip, the test camera child process, the real model (OpenVINO,
default config), the daemon's RTSP server, ffmpeg as the viewer.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
from rtsp_camera import FfmpegClient, free_port, http_get, metric, wait_for

from daemon.demo.command import SAMPLE_CLIP

pytestmark = pytest.mark.slow

WIDTH, HEIGHT = 768, 576
BLOCK = 16


def _clip_frames() -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(SAMPLE_CLIP))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def _block_means(image: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    h, w = (s // BLOCK * BLOCK for s in gray.shape)
    return gray[:h, :w].reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK)


def _detail(image: np.ndarray) -> np.ndarray:
    """Per 16x16 block: the mean absolute Laplacian (fine detail a blur removes)."""
    lap = np.abs(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_32F))
    h, w = (s // BLOCK * BLOCK for s in lap.shape)
    return lap[:h, :w].reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK).mean(axis=(1, 3))


def _compare(published: np.ndarray, raw_frames: list[np.ndarray]) -> tuple[float, float]:
    """(share of blocks kept, share of blocks blurred) against the raw frame it came from.

    The source frame is the raw frame nearest in content; a block is kept when its detail is
    within 35 % of the raw block's, blurred when it lost more than 70 % of a textured block's.
    """
    means = _block_means(published).mean(axis=(1, 3))
    raw = min(raw_frames, key=lambda f: float(np.abs(_block_means(f).mean(axis=(1, 3))
                                                     - means).mean()))
    ours, theirs = _detail(published), _detail(raw)
    textured = theirs > 4.0
    kept = float((np.abs(ours - theirs) <= 0.35 * theirs + 1.0).mean())
    blurred = float((textured & (ours < 0.3 * theirs)).sum() / max(1, textured.sum()))
    return kept, blurred


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_demo_serves_anonymized_frames_and_stops_on_ctrl_c() -> None:
    port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "demo", "--port", str(port),
         "--metrics-port", str(metrics_port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout or []],
                     daemon=True).start()
    errors: list[str] = []
    threading.Thread(target=lambda: errors.extend(proc.stderr or []), daemon=True).start()
    viewer: FfmpegClient | None = None
    try:
        url = None
        deadline = time.monotonic() + 180
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line.startswith("anonymized stream:"):
                url = line.split(":", 1)[1].strip()
        assert url == f"rtsp://127.0.0.1:{port}/demo", "".join(errors[-20:])
        assert lines.get(timeout=5).split() == [
            "metrics:", f"http://127.0.0.1:{metrics_port}/metrics"]
        camera = _children(proc.pid)
        assert len(camera) == 1, "the test camera runs as one child process"

        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-show_entries",
             "stream=codec_name,width,height", "-of", "csv=p=0", url],
            capture_output=True, text=True, timeout=30)
        assert probe.stdout.strip() == f"h264,{WIDTH},{HEIGHT}", probe.stderr

        viewer = FfmpegClient(url, WIDTH, HEIGHT, keep_every=5, timeout=150)
        assert viewer.wait_frames(60, 60), f"viewer got {viewer.frames} frames"
        assert wait_for(lambda: metric(http_get(metrics_port, "/metrics")[1],
                                       "frames_published_anonymized_total", camera="demo") >= 60,
                        20)
        raw_frames = _clip_frames()
        # every published frame is blurred somewhere (anonymized, or fail-closed while the
        # analysis is late: a loaded machine); enough of them are anonymized, not fail-closed:
        # most of the scene kept, the walkers' blocks blurred
        results: dict[int, tuple[float, float]] = {}

        def enough_anonymized() -> bool:
            for index, frame in list(viewer.kept):
                if index not in results:
                    results[index] = _compare(frame, raw_frames)
            return sum(kept > 0.6 for kept, _ in results.values()) >= 5

        assert wait_for(enough_anonymized, 90, step=1.0), sorted(results.items())
        blurred = min(b for _, b in results.values())
        anonymized = [(k, b) for k, b in results.values() if k > 0.6]
        print(f"demo: {len(results)} frames compared, {len(anonymized)} anonymized (median kept"
              f" {np.median([k for k, _ in anonymized]):.3f}, blurred"
              f" {np.median([b for _, b in anonymized]):.3f}), least blurred {blurred:.3f}")
        assert blurred > 0.01, "a published frame looks raw"
        viewer.stop()
        viewer = None

        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the process group
        assert proc.wait(30) == 0, "".join(errors[-20:])
        assert wait_for(lambda: all(not os.path.exists(f"/proc/{pid}") for pid in camera), 10)
        log = "".join(errors)
        assert "Traceback" not in log and "stopped" in log
    finally:
        if viewer is not None:
            viewer.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
