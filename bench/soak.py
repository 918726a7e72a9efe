"""Soak: one 720p30 camera through the daemon for a long time; memory growth and raw frames.

The daemon runs the default model, with the tests' checkerboard square forced into the person
mask (tests/rtsp_camera.py MarkedAnalyzer), so every published frame must hide it; a viewer
scores every frame (a raw frame shows the checkerboard). The camera is killed and restarted
every --restart-every seconds. Memory: the daemon's RSS (sampled every 10 s), median of the
first 2 minutes after a 1-minute warm-up vs median of the last 2 minutes (single samples swing
by +-20 MB with glibc's per-thread arenas and 2.7 MB frames).

Usage: .venv/bin/python bench/soak.py [--minutes 10] [--restart-every 150]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import itertools

from rtsp import (
    CLIP,
    CodeClient,
    Setup,
    bench_clip,
    metric,
    metrics_text,
    rss_bytes,
)
from rtsp_camera import leak_score

RAW_SCORE = 0.3  # leak_score above this: the checkerboard is visible (raw ~0.9, hidden ~0)
WARMUP_S = 60.0


class GstViewer:
    """A second, GStreamer viewer (rtspsrc over TCP, the daemon's own reader class used as a
    client): scores every frame it receives. ffmpeg 5.1 viewers were seen to stop receiving
    after 80-115 s of 720p30 from GstRtspServer 1.22.0 while this client kept going."""

    def __init__(self, url: str) -> None:
        from daemon.config import IngestConfig
        from daemon.streams.ingest import CameraReader, CameraSource

        self.frames = 0
        self.raw = 0
        self.max_score = 0.0
        self.disconnects = 0
        self._reader = CameraReader("soak-viewer", CameraSource.parse(url),
                                    IngestConfig(watchdog_s=5.0, stale_frames=0),
                                    self._frame, self._state)
        self._reader.start()

    def _frame(self, frame) -> None:
        score = leak_score(frame.image)
        self.frames += 1
        self.raw += score > RAW_SCORE
        self.max_score = max(self.max_score, score)

    def _state(self, connected: bool, _reason: str) -> None:
        self.disconnects += not connected

    def stop(self) -> None:
        self._reader.stop(5.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--restart-every", type=float, default=150.0)
    args = parser.parse_args()
    seconds = args.minutes * 60
    clip = bench_clip(600, int(seconds // 20) + 8)
    with tempfile.TemporaryDirectory() as tmp:
        control = Path(tmp) / "control"
        control.mkdir()
        (control / "real").write_text("")
        setup = Setup(clip, Path(tmp), "bracket", lifetime=seconds + 300, fake=control)
        viewer = CodeClient(setup.output_url, 1280, 720, timeout=seconds + 120)
        gst_viewer = GstViewer(setup.output_url)
        samples: list[tuple[float, int, int]] = []  # (s, RSS, frames the viewer got)
        restarts = 0
        try:
            start = time.monotonic()
            next_restart = start + args.restart_every
            while (now := time.monotonic()) - start < seconds:
                samples.append((now - start, rss_bytes(setup.daemon.pid), viewer.frames))
                if now >= next_restart:
                    setup.camera.kill()
                    time.sleep(3)
                    setup.camera.start()
                    restarts += 1
                    next_restart = now + args.restart_every
                time.sleep(10)
            samples.append((time.monotonic() - start, rss_bytes(setup.daemon.pid),
                            viewer.frames))
            text = metrics_text(setup.metrics_port)
            alive = viewer.alive()
        finally:
            gst_viewer.stop()
            stderr = viewer.stop()
            code = setup.close()
    if viewer.error is not None:
        print(f"viewer thread failed: {viewer.error!r}")
    stalls = [f"{t:.0f}s" for (t, _, n), (_, _, m) in itertools.pairwise(samples)
              if m == n]
    print("ffmpeg viewer frames per sample:", " ".join(str(n) for _, _, n in samples))
    if stalls:
        print(f"viewer got no frame in the 10 s before: {', '.join(stalls)}")
        print("viewer stderr (end):", stderr[-800:])
    warm = [(t, rss) for t, rss, _ in samples if t >= WARMUP_S]
    window = 120.0
    first = [rss for t, rss in warm if t < warm[0][0] + window]
    last = [rss for t, rss in warm if t > warm[-1][0] - window]
    base, end, peak = statistics.median(first), statistics.median(last), max(r for _, r in warm)
    raw = sum(1 for s in viewer.scores if s > RAW_SCORE)
    print(f"GStreamer viewer (rtspsrc, newest frame only): {gst_viewer.frames} frames,"
          f" {gst_viewer.raw} raw, max score {gst_viewer.max_score:.2f},"
          f" {gst_viewer.disconnects} disconnects")
    print(f"machine: {os.cpu_count()} CPUs; clip {CLIP.name} 1280x720 at 30 fps looped; default"
          f" model + forced sensitive square; camera restarted every {args.restart_every:.0f} s")
    print("minutes | frames viewed | raw frames | max score | anonymized | fail-closed |"
          " reconnects | RSS first 2 min MiB | RSS last 2 min MiB | RSS peak MiB | growth % |"
          " viewer alive | exit")
    print(f"{args.minutes:g} | {viewer.frames} | {raw} | {max(viewer.scores):.2f} | "
          f"{metric(text, 'frames_published_anonymized_total'):.0f} | "
          f"{metric(text, 'frames_published_fail_closed_total'):.0f} | "
          f"{metric(text, 'reconnects_total'):.0f} ({restarts} restarts) | "
          f"{base / 2**20:.1f} | {end / 2**20:.1f} | {peak / 2**20:.1f} | "
          f"{100 * (end - base) / base:.2f} | {alive} | {code}")
    return 0 if raw == 0 and gst_viewer.raw == 0 and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
