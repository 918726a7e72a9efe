"""One camera through the daemon, measured: output fps, analysis fps, added latency, CPU.

A 720p30 real clip (car_plate_approach) is re-encoded once with a frame-number barcode in the
top-right corner (and the tests' sensitive checkerboard), served by the tests' GstRtspServer
test camera, anonymized by `anonymizer run` (the default model, a subprocess) and read by two
ffmpeg viewers: one on the camera, one on the daemon (both decode full frames and pass the
top 160 rows, barcode and checkerboard, to Python). Added latency = arrival of a frame
number at the daemon's viewer minus its arrival at the camera's viewer (same machine, same
decoder, so only the daemon's share remains). CPU = the daemon process's CPU time / wall time.
Viewer-side timing: a third viewer, the raw-socket client (tests/rtsp_client.py, RTSP over TCP
interleaved, no decoding) in a subprocess of its own, notes each RTP packet's arrival
(CLOCK_MONOTONIC, shared with this process): per frame (marker bit, RTP channel only, RTCP
left out) "arrival_jitter" = |arrival delta - 1/30 s| (p50/p95 ms, not the deltas themselves),
"arrival_gap_max" the longest gap; "rtp_delta" the spacing of consecutive RTP timestamps (p50/
p95 ms, 90 kHz clock) and "rtp_off_nominal" the share of those not 1/30 s +- 2 ms; "rtp_seq_gaps"
counts RTP sequence jumps (frames the server dropped for this viewer). A fourth viewer, the
same raw client on the camera, gives "camera_arrival_jitter": the machine's own share.
The daemon runs the default config (multi-scale analysis on: the full frame and 6 native tiles
scheduled round robin); "multiscale_fps" counts complete multi-scale analyses (every region
once more), "passes_fps" single inferences. Leak check: the real model with the checkerboard
added as a person in every region that overlaps it (tests' MarkedAnalyzer); "raw_frames" counts
published frames showing the checkerboard (leak score > 0.5; raw ~0.9-1.0, blurred < 0.2).

Usage: .venv/bin/python bench/rtsp.py [--seconds 60] [--temporal bracket|hold|both]
           [--pacing-delay-ms MS] [--repeat N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
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
NOMINAL_FPS = 30.0  # the bench clip's rate
RTP_CLOCK = 90_000  # H.264 over RTP (RFC 6184)
RTP_CHANNEL = 0  # the raw viewer's SETUP asks for interleaved=0-1 (1: RTCP)
KEEPALIVE_S = 20.0  # GET_PARAMETER on the session (GstRtspServer times sessions out at 60 s)


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


def raw_viewer_main(url: str, out: Path) -> int:
    """`--raw-viewer URL OUT`: the raw client on URL until SIGTERM; every interleaved packet as
    [arrival, channel, seq, timestamp, marker, size] to OUT (JSON), with the error if any."""
    from urllib.parse import urlsplit

    from rtsp_client import RawRtspClient

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    parts = urlsplit(url)
    client = RawRtspClient(parts.hostname or "127.0.0.1", parts.port or 554, timeout=30.0)
    error = ""
    try:
        session = client.play_url(url)
        keepalive = time.monotonic() + KEEPALIVE_S
        while not stop.is_set():
            start = time.monotonic()
            client.read_rtp(0.5)
            if time.monotonic() - start < 0.45 and not stop.is_set():
                error = "the server closed the connection"
                break
            if time.monotonic() > keepalive:
                reply = client.request("GET_PARAMETER", url, {"Session": session})
                if reply.status != 200:
                    error = f"GET_PARAMETER keepalive answered {reply.status}"
                keepalive = time.monotonic() + KEEPALIVE_S
    except (AssertionError, OSError, ConnectionError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    packets = [[t, p.channel, p.seq, p.timestamp, int(p.marker), p.size] for t, p in client.rtp]
    out.write_text(json.dumps({"error": error, "packets": packets}))
    return 0


class RawViewer:
    """The raw-socket viewer subprocess (`--raw-viewer`): no decoder and no GIL shared with the
    ffmpeg readers of this process, so its arrival times are the socket's."""

    def __init__(self, url: str, folder: Path, lifetime: float, name: str = "raw_viewer") -> None:
        self.out = folder / f"{name}.json"
        self.log = (folder / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(
            ["timeout", "-s", "KILL", str(lifetime), sys.executable, str(Path(__file__).resolve()),
             "--raw-viewer", url, str(self.out)], stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> dict:
        """SIGTERM, then what it saw ({"error": ..., "packets": [...]})."""
        pid = self.proc.pid
        # `timeout` forwards SIGTERM to the python child
        os.kill(pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()
        if not self.out.exists():
            log = Path(self.log.name).read_text(errors="replace")[-2000:]
            return {"error": f"raw viewer wrote nothing (exit {self.proc.returncode}): {log}",
                    "packets": []}
        return json.loads(self.out.read_text())


def viewer_timing(packets: list[list], t0: float, t1: float) -> dict[str, float | int]:
    """Frame timing at the raw viewer over [t0, t1] (see the module docstring)."""
    rtp = [p for p in packets if p[1] == RTP_CHANNEL and t0 <= p[0] <= t1]
    frames = [(p[0], p[3]) for p in rtp if p[4]]
    nominal = 1.0 / NOMINAL_FPS
    arrivals = np.array([a for a, _ in frames], dtype=np.float64)
    stamps = np.array([ts for _, ts in frames], dtype=np.int64)
    deltas = np.diff(arrivals)
    jitter = np.abs(deltas - nominal)
    steps = ((np.diff(stamps) + 2**31) % 2**32 - 2**31) / RTP_CLOCK
    seqs = np.array([p[2] for p in rtp], dtype=np.int64)
    seq_gaps = int((np.diff(seqs) % 65536 != 1).sum()) if len(seqs) > 1 else 0

    def ms(values: np.ndarray, q: float) -> float:
        return round(float(np.percentile(values, q)) * 1000, 1) if len(values) else float("nan")

    return {
        "raw_viewer_fps": round(len(frames) / (t1 - t0), 2),
        "arrival_jitter_p50_ms": ms(jitter, 50),
        "arrival_jitter_p95_ms": ms(jitter, 95),
        "arrival_gap_max_ms": round(float(deltas.max()) * 1000, 1) if len(deltas) else
        float("nan"),
        "rtp_delta_p50_ms": ms(steps, 50),
        "rtp_delta_p95_ms": ms(steps, 95),
        "rtp_off_nominal": round(float((np.abs(steps - nominal) > 0.002).mean()), 3)
        if len(steps) else float("nan"),
        "rtp_seq_gaps": seq_gaps,
    }


def daemon_version() -> str:
    """REPO's commit (short), "+dirty" if daemon/ has changes not committed."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=False).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+dirty" if git(
        "status", "--porcelain", "--", "daemon") else "")


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
                 fake: Path | None = None, ingest_latency_ms: int = 100,
                 pacing_delay_ms: int | None = None) -> None:
        self.camera = CameraProcess(clip, lifetime=lifetime).start()
        self.rtsp_port, self.metrics_port = free_port(), free_port()
        config = folder / "config.yaml"
        pacing = f", pacing_delay_ms: {pacing_delay_ms}" if pacing_delay_ms is not None else ""
        config.write_text(
            f"server: {{port: {self.rtsp_port}{pacing}}}\n"
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


def run(seconds: float, temporal: str, ingest_latency_ms: int,
        pacing_delay_ms: int | None = None) -> dict[str, float | str]:
    clip = bench_clip(600, max(2, int(seconds // 20) + 4))
    load_before = "/".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        control = Path(tmp) / "control"
        control.mkdir()
        (control / "real").write_text("")  # the real model + the checkerboard as a person
        setup = Setup(clip, Path(tmp), temporal, lifetime=seconds + 180, fake=control,
                      ingest_latency_ms=ingest_latency_ms, pacing_delay_ms=pacing_delay_ms)
        raw: RawViewer | None = None
        raw_camera: RawViewer | None = None
        seen: dict = {"error": "not started", "packets": []}
        seen_camera: dict = {"error": "not started", "packets": []}
        try:
            direct = CodeClient(setup.camera.url, 1280, 720, crop_rows=CROP_ROWS,
                                timeout=seconds + 60)
            output = CodeClient(setup.output_url, 1280, 720, crop_rows=CROP_ROWS,
                                timeout=seconds + 60)
            raw = RawViewer(setup.output_url, Path(tmp), lifetime=seconds + 90)
            raw_camera = RawViewer(setup.camera.url, Path(tmp), lifetime=seconds + 90,
                                   name="raw_camera")
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
            if raw is not None:
                seen = raw.stop()
            if raw_camera is not None:
                seen_camera = raw_camera.stop()
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
        "daemon": daemon_version(),
        "pacing_delay_ms": "default" if pacing_delay_ms is None else pacing_delay_ms,
        "temporal": temporal,
        "ingest_latency_ms": ingest_latency_ms,
        "load_before": load_before,
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
        **viewer_timing(seen["packets"], t0, t1),
        "raw_viewer_error": "; ".join(
            [seen["error"]] * bool(seen["error"])
            + [f"camera: {seen_camera['error']}"] * bool(seen_camera["error"])) or "-",
        **{f"camera_{k}": v for k, v in viewer_timing(seen_camera["packets"], t0, t1).items()
           if k in ("arrival_jitter_p50_ms", "arrival_jitter_p95_ms")},
        # absent before the paced server (metric() reads 0)
        "paced_late": metric(m1, "frames_paced_late") - metric(m0, "frames_paced_late"),
        "viewer_dropped": (metric(m1, "viewer_frames_dropped_total")
                           - metric(m0, "viewer_frames_dropped_total")),
        "daemon_cpu_cores": round((cpu1 - cpu0) / wall, 2),
        "daemon_exit": code if code is not None else -1,
    }


def median_row(rows: list[dict[str, float | str]]) -> dict[str, float | str]:
    """Per column: the median of the numbers, or the values joined if they differ."""
    result: dict[str, float | str] = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if all(v == values[0] for v in values):
            result[key] = values[0]
        elif all(isinstance(v, int | float) for v in values):
            result[key] = round(float(np.median(values)), 3)
        else:
            texts = list(dict.fromkeys(str(v) for v in values))
            result[key] = texts[0] if len(texts) == 1 else ", ".join(texts)
    result["run"] = f"median of {len(rows)}"
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--temporal", choices=["bracket", "hold", "both"], default="bracket",
                        help="analysis.temporal (bracket: the default config)")
    parser.add_argument("--ingest-latency-ms", type=int, default=100,
                        help="the daemon's rtspsrc jitter buffer (config ingest.latency_ms)")
    parser.add_argument("--pacing-delay-ms", type=int,
                        help="config server.pacing_delay_ms (default: not set; the daemon's"
                        " default; a daemon before the paced server refuses it)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per mode; more than one adds a median row per mode")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--raw-viewer", nargs=2, metavar=("URL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_viewer:
        return raw_viewer_main(args.raw_viewer[0], Path(args.raw_viewer[1]))
    import daemon

    if not Path(daemon.__file__).resolve().is_relative_to(REPO):
        sys.exit(f"daemon imported from {daemon.__file__}, not {REPO} (an editable install of"
                 f" another checkout?): run with PYTHONPATH={REPO}")
    modes = ["bracket", "hold"] if args.temporal == "both" else [args.temporal]
    results = []
    for mode in modes:
        rows = []
        for index in range(args.repeat):
            rows.append({"run": str(index + 1), **run(args.seconds, mode, args.ingest_latency_ms,
                                                      args.pacing_delay_ms)})
            print(" | ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
        results += rows
        if len(rows) > 1:
            results.append(median_row(rows))
    print(f"machine: {os.cpu_count()} CPUs, {os.uname().machine}; clip {CLIP.name} (1280x720 at"
          " 30 fps); default model; the daemon, camera and the three viewers share the machine")
    keys = list(results[0])
    print(" | ".join(keys))
    for r in results:
        print(" | ".join(str(r[k]) for k in keys))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
