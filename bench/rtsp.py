"""One camera through the daemon, measured: output fps, analysis fps, added latency, CPU.

A 720p30 real clip (car_plate_approach) is re-encoded once with a frame-number barcode in the
top-right corner (and the tests' sensitive checkerboard), served by the tests' GstRtspServer
test camera, anonymized by `anonymizer run` (the default model, a subprocess) and read by two
ffmpeg viewers: one on the camera, one on the daemon (both decode full frames and pass the
top 160 rows, barcode and checkerboard, to Python). Added latency = arrival of a frame
number at the daemon's viewer minus its arrival at the camera's viewer (same machine, same
decoder, so only the daemon's share remains). CPU = the daemon process's CPU time / wall time.
The daemon runs the default config (multi-scale analysis on: the full frame and 6 native tiles
scheduled round robin); "multiscale_fps" counts complete multi-scale analyses (every region
once more), "passes_fps" single inferences. Leak check: the real model with the checkerboard
added as a person in every region that overlaps it (tests' MarkedAnalyzer); "raw_frames" counts
published frames showing the checkerboard (leak score > 0.5; raw ~0.9-1.0, blurred < 0.2).

Usage: .venv/bin/python bench/rtsp.py [--seconds 60] [--temporal bracket|hold|both] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from rtsp_camera import (  # noqa: E402  (test helpers: camera process, ffmpeg viewer)
    MARK_BOX,
    CameraProcess,
    CodeClient,
    free_port,
    mark_pattern,
    metric,
    paint_code,
    wait_port,
)

CLIP = REPO.parent / "shared" / "data" / "clips" / "car_plate_approach_1280x720.mp4"
CROP_ROWS = 160  # viewers decode the full frame but hand only the top rows to Python
CACHE = Path(tempfile.gettempdir()) / "anonymizer-bench"
HELPER = REPO / "tests" / "rtsp_camera.py"


def bench_clip(frames: int, loops: int) -> Path:
    """CLIP re-encoded for `frames` frames with barcode + checkerboard, then looped."""
    import av

    CACHE.mkdir(exist_ok=True)
    coded = CACHE / f"coded-{frames}.mp4"
    if not coded.exists():
        x, y, w, h = MARK_BOX
        pattern = mark_pattern(h, w)
        partial = coded.with_suffix(".partial.mp4")
        with av.open(str(partial), "w") as out:
            stream = out.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
            stream.options = {"preset": "veryfast", "crf": "20", "g": "30", "bf": "0"}
            number = 0
            while number < frames:
                with av.open(str(CLIP)) as src:
                    for frame in src.decode(video=0):
                        if number == frames:
                            break
                        image = frame.to_ndarray(format="bgr24")
                        image[y:y + h, x:x + w] = pattern
                        paint_code(image, number)
                        new = av.VideoFrame.from_ndarray(image, format="bgr24")
                        new.pts = number
                        out.mux(stream.encode(new))
                        number += 1
            out.mux(stream.encode(None))
        partial.rename(coded)
    looped = CACHE / f"looped-{frames}x{loops}.mp4"
    if not looped.exists():
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-stream_loop",
                        str(loops - 1), "-i", str(coded), "-c", "copy", str(looped)],
                       check=True, timeout=300)
    return looped


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


class Setup:
    """Camera process + daemon subprocess (killed by itself after `lifetime`)."""

    def __init__(self, clip: Path, folder: Path, temporal: str, lifetime: float,
                 fake: Path | None = None, ingest_latency_ms: int = 100) -> None:
        self.camera = CameraProcess(clip, lifetime=lifetime).start()
        self.rtsp_port, self.metrics_port = free_port(), free_port()
        config = folder / "config.yaml"
        config.write_text(
            f"server: {{port: {self.rtsp_port}}}\n"
            f"metrics: {{port: {self.metrics_port}}}\n"
            "viewers: {auth: false}\n"
            f"analysis: {{temporal: {temporal}}}\n"
            f"ingest: {{latency_ms: {ingest_latency_ms}}}\n"
            f"cameras:\n  - name: cam\n    url: {self.camera.url}\n")
        self.log = (folder / "daemon.log").open("wb")
        self.daemon = subprocess.Popen(
            [sys.executable, str(HELPER), "daemon", str(lifetime), str(fake) if fake else "-",
             "run", "-c", str(config)], stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "MALLOC_ARENA_MAX": "2"})  # as systemd/anonymizer.service
        if not wait_port(self.rtsp_port, 120):
            self.close()
            raise RuntimeError(f"daemon did not start; see {folder / 'daemon.log'}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if metric(metrics_text(self.metrics_port), "frames_published_anonymized_total"):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        self.output_url = f"rtsp://127.0.0.1:{self.rtsp_port}/cam"

    def close(self) -> int | None:
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(5)
        self.camera.kill()
        self.log.close()
        return self.daemon.returncode


def latencies(direct: CodeClient, output: CodeClient) -> list[float]:
    """Per output frame with a readable code: its arrival minus the latest direct arrival
    of the same code before it."""
    seen: dict[int, float] = {}
    events = sorted(
        [(t, 0, c) for t, c in zip(direct.arrivals, direct.codes, strict=False)]
        + [(t, 1, c) for t, c in zip(output.arrivals, output.codes, strict=False)])
    result = []
    for t, kind, code in events:
        if code is None:
            continue
        if kind == 0:
            seen[code] = t
        elif code in seen and t - seen[code] < 10.0:
            result.append(t - seen[code])
    return result


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run(seconds: float, temporal: str, ingest_latency_ms: int) -> dict[str, float | str]:
    clip = bench_clip(600, max(2, int(seconds // 20) + 4))
    with tempfile.TemporaryDirectory() as tmp:
        control = Path(tmp) / "control"
        control.mkdir()
        (control / "real").write_text("")  # the real model + the checkerboard as a person
        setup = Setup(clip, Path(tmp), temporal, lifetime=seconds + 180, fake=control,
                      ingest_latency_ms=ingest_latency_ms)
        try:
            direct = CodeClient(setup.camera.url, 1280, 720, crop_rows=CROP_ROWS,
                                timeout=seconds + 60)
            output = CodeClient(setup.output_url, 1280, 720, crop_rows=CROP_ROWS,
                                timeout=seconds + 60)
            if not (direct.wait_frames(30, 30) and output.wait_frames(30, 30)):
                raise RuntimeError("viewers got no frames")
            time.sleep(2)
            t0, cpu0 = time.monotonic(), cpu_seconds(setup.daemon.pid)
            m0 = metrics_text(setup.metrics_port)
            n0 = output.frames
            s0 = len(output.scores)
            time.sleep(seconds)
            t1, cpu1 = time.monotonic(), cpu_seconds(setup.daemon.pid)
            m1 = metrics_text(setup.metrics_port)
            n1 = output.frames
        finally:
            direct.stop()
            output.stop()
            code = setup.close()
    wall = t1 - t0
    lat = latencies(direct, output)
    analyses = metric(m1, "analyses_total") - metric(m0, "analyses_total")
    cycles = metric(m1, "analysis_cycles_total") - metric(m0, "analysis_cycles_total")
    scores = np.array(output.scores[s0:])
    fail_closed = (metric(m1, "frames_published_fail_closed_total")
                   - metric(m0, "frames_published_fail_closed_total"))
    published = (metric(m1, "frames_published_anonymized_total")
                 - metric(m0, "frames_published_anonymized_total"))
    return {
        "temporal": temporal,
        "ingest_latency_ms": ingest_latency_ms,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "seconds": round(wall, 1),
        "output_fps_client": round((n1 - n0) / wall, 2),
        "published_anonymized_fps": round(published / wall, 2),
        "fail_closed_frames": fail_closed,
        "passes_fps": round(analyses / wall, 2),
        "multiscale_fps": round(cycles / wall, 2),
        "frames_scored": len(scores),
        "raw_frames": int((scores > 0.5).sum()),
        "max_leak_score": round(float(scores.max()), 3) if len(scores) else float("nan"),
        "latency_p50_ms": round(percentile(lat, 50) * 1000, 1),
        "latency_p95_ms": round(percentile(lat, 95) * 1000, 1),
        "latency_samples": len(lat),
        "daemon_cpu_cores": round((cpu1 - cpu0) / wall, 2),
        "daemon_exit": code if code is not None else -1,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--temporal", choices=["bracket", "hold", "both"], default="bracket",
                        help="analysis.temporal (bracket: the default config)")
    parser.add_argument("--ingest-latency-ms", type=int, default=100,
                        help="the daemon's rtspsrc jitter buffer (config ingest.latency_ms)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    modes = ["bracket", "hold"] if args.temporal == "both" else [args.temporal]
    results = [run(args.seconds, mode, args.ingest_latency_ms) for mode in modes]
    print(f"machine: {os.cpu_count()} CPUs, {os.uname().machine}; clip {CLIP.name} (1280x720 at"
          " 30 fps); default model; the daemon, camera and both viewers share the machine")
    keys = list(results[0])
    print(" | ".join(keys))
    for r in results:
        print(" | ".join(str(r[k]) for k in keys))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
