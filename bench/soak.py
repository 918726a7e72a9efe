"""Soak: 720p30 from the daemon to three viewers at once and a deliberately slow fourth.

One camera (the tests' GstRtspServer test camera serving the bench clip, 1280x720 at 30 fps,
looped) through `anonymizer run`: the default model and config, plus viewer authentication
(`viewers.users`: a user nvr with a random password; every viewer logs in with Digest) and the
tests' checkerboard square forced into the person mask (tests/rtsp_camera.py MarkedAnalyzer),
so a viewer that scores frames sees a raw one. Four viewers watch at once, all over
RTP/AVP/TCP interleaved:

- ffmpeg copy: `ffmpeg -rtsp_transport tcp -i URL -c copy -f null -`, with `-progress pipe:1
  -stats_period 1`; its frames are the progress output's `frame=`, which comes once a second,
  so its count can shift by up to a second's frames between neighbouring windows;
- ffmpeg decode: the tests' CodeClient, which decodes every frame (the top 160 rows reach
  Python) and scores the checkerboard in each (`raw` = leak score > 0.3); its stderr is read
  as it comes (decoder errors per window; a full pipe would block it);
- GStreamer: rtspsrc (TCP) ! avdec_h264, the daemon's own CameraReader used as a client; its
  appsink keeps the newest frame only, so frames it skipped locally are counted apart
  ("local skips": this process, not the daemon);
- slow: a raw-socket RTSP client here (Digest login, DESCRIBE/SETUP/PLAY, a GET_PARAMETER
  keep-alive every 20 s like ffmpeg's) that takes at most SLOW_FPS = 15 frames a second off its
  socket, half the camera's 30, with a 32 KiB receive buffer (SO_RCVBUF, so the kernel hides
  little lag): it falls behind by half a second every second while it keeps reading. The
  daemon's rule (server.viewer_max_lag_s, 1 s): frames are dropped for it alone up to the next
  keyframe, with a WARNING naming it ("too slow"); a viewer that takes nothing for
  server.viewer_stall_s is disconnected with a log line. If the daemon disconnects it, it logs
  in again 2 s later. (Not `ffmpeg -readrate 0.5`, not tried here: ffmpeg 5.1 paces packets
  by their timestamps against the wall clock, so once the server catches it up at a keyframe
  the next packets are seconds "early" and it would read nothing for longer and longer: one
  stall disconnect, not a steady half rate.)

Every 10 s the frames each viewer received in that window are recorded, with the daemon's log
lines that name a viewer it throttled ("too slow") or disconnected, its RSS and the viewer
metrics. PASS: each of the three normal viewers got frames in every window after a 20 s
warm-up, the daemon's log names the slow viewer, and it names none of the normal viewers.
The exit status is 0 only on PASS with no raw frame and a clean daemon exit.

Usage: .venv/bin/python bench/soak.py [--minutes 15] [--json OUT]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rtsp import (
    CLIP,
    HELPER,
    REPO,
    CodeClient,
    Setup,
    bench_clip,
    metric,
    metrics_text,
    rss_bytes,
)
from rtsp_camera import CameraProcess, free_port, leak_score, wait_port
from rtsp_client import RawRtspClient, frames_of

RAW_SCORE = 0.3  # leak_score above this: the checkerboard is visible (raw ~0.9, hidden ~0)
WINDOW_S = 10.0
WARMUP_S = 20.0  # windows starting earlier are shown but not judged
USER = "nvr"
SLOW_FPS = 15.0  # the slow viewer's reading rate: half the camera's 30 fps
SLOW_RCVBUF = 32 * 1024
SLOW_CHUNK = 4096  # it reads in small bites, so it never takes much more than its share
NORMAL = ("ffmpeg copy", "ffmpeg decode", "gstreamer")
VIEWERS = (*NORMAL, "slow viewer")
# the daemon's lines about viewers it throttled or disconnected (not those that left by
# themselves): "viewer nvr@127.0.0.1:PORT on cam: too slow ...", "viewer nvr@...: disconnected:"
VIEWER_LINE = re.compile(r"viewer [^@\s]+@[\d.]+:(\d+)(?: on \S+)?: (too slow|disconnected: (.*))")
BENIGN = ("viewer closed the connection", "closed")


class AuthSetup(Setup):
    """bench/rtsp.py's Setup (camera process + daemon), with viewer authentication on."""

    def __init__(self, clip: Path, folder: Path, lifetime: float, fake: Path,
                 password: str) -> None:
        self.camera = CameraProcess(clip, lifetime=lifetime).start()
        self.rtsp_port, self.metrics_port = free_port(), free_port()
        config = folder / "config.yaml"
        config.write_text(
            f"server: {{port: {self.rtsp_port}}}\n"
            f"metrics: {{port: {self.metrics_port}}}\n"
            f"viewers:\n  users:\n    - {{username: {USER}, password: \"{password}\"}}\n"
            f"cameras:\n  - name: cam\n    url: {self.camera.url}\n")
        self.log_path = folder / "daemon.log"
        self.log = self.log_path.open("wb")
        self.daemon = subprocess.Popen(
            [sys.executable, str(HELPER), "daemon", str(lifetime), str(fake), "run", "-c",
             str(config)], stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "MALLOC_ARENA_MAX": "2"})  # as systemd/anonymizer.service
        if not wait_port(self.rtsp_port, 120):
            self.close()
            raise RuntimeError(f"daemon did not start; see {self.log_path}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if metric(metrics_text(self.metrics_port), "frames_published_anonymized_total"):
                    break
            time.sleep(0.5)
        self.output_url = f"rtsp://{USER}:{password}@127.0.0.1:{self.rtsp_port}/cam"


class CopyViewer:
    """`ffmpeg -rtsp_transport tcp -i URL -c copy -f null -`; `frames` from its -progress."""

    def __init__(self, url: str, timeout: float, stderr: Path) -> None:
        self.frames = 0
        self._stderr = stderr.open("wb")
        self.proc = subprocess.Popen(
            ["timeout", "-s", "KILL", str(timeout), "ffmpeg", "-nostdin", "-loglevel", "warning",
             "-rtsp_transport", "tcp", "-i", url, "-c", "copy", "-f", "null",
             "-progress", "pipe:1", "-stats_period", "1", "-"],
            stdout=subprocess.PIPE, stderr=self._stderr, start_new_session=True)
        self._thread = threading.Thread(target=self._read, daemon=True, name="copy-viewer")
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(b"frame="):
                with contextlib.suppress(ValueError):
                    self.frames = int(line[6:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        stop_group(self.proc)
        self._thread.join(5)
        self._stderr.close()


class GstViewer:
    """The GStreamer viewer (rtspsrc over TCP, the daemon's own reader class used as a
    client): scores every frame it receives; its appsink keeps the newest frame only, so
    `skipped` counts frames it decoded but skipped locally (timestamp gaps)."""

    def __init__(self, url: str) -> None:
        from daemon.config import IngestConfig
        from daemon.streams.ingest import CameraReader, CameraSource

        self.frames = 0
        self.raw = 0
        self.max_score = 0.0
        self.disconnects = 0
        self.skipped = 0
        self._reader = CameraReader("soak-viewer", CameraSource.parse(url),
                                    IngestConfig(watchdog_s=5.0, stale_frames=0),
                                    self._frame, self._state, self._skipped)
        self._reader.start()

    def _frame(self, frame) -> None:
        score = leak_score(frame.image)
        self.frames += 1
        self.raw += score > RAW_SCORE
        self.max_score = max(self.max_score, score)

    def _state(self, connected: bool, _reason: str) -> None:
        self.disconnects += not connected

    def _skipped(self, count: int) -> None:
        self.skipped += count

    def stop(self) -> None:
        self._reader.stop(5.0)


class StderrLines:
    """A subprocess's stderr, read line by line as it comes (arrival time, line): read all
    along, the pipe never fills (a full pipe would block the viewer's ffmpeg)."""

    def __init__(self, pipe) -> None:
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True,
                                        name="stderr")
        self._thread.start()

    def _read(self, pipe) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in pipe:
                self.lines.append((time.monotonic(), line.decode(errors="replace").rstrip()))

    def join(self) -> None:
        self._thread.join(5)


def equal_dts(line: str) -> bool:
    return "non monotonically increasing dts" in line


class SlowViewer:
    """A raw-socket RTSP viewer (tests/rtsp_client.py) that takes at most `fps` frames a second
    off its socket; it logs in again whenever it is disconnected."""

    def __init__(self, port: int, password: str, fps: float = SLOW_FPS) -> None:
        self.port, self.password, self.fps = port, password, fps
        self.frames = 0
        self.ports: list[int] = []  # its local port, per connection (the daemon logs it)
        self.ends: list[str] = []  # why each connection ended
        self.keepalive_failures = 0
        self.steps: list[int] = []  # RTP timestamp steps between the frames it got (90 kHz)
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._client: RawRtspClient | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="slow-viewer")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._session()
            except (OSError, AssertionError) as exc:
                if not self._stop.is_set():
                    self.ends.append(f"{time.monotonic() - self._started:.0f} s:"
                                     f" {type(exc).__name__}: {exc}")
            if self._stop.wait(2.0):
                return

    def _session(self) -> None:
        login = (USER, self.password)
        with RawRtspClient("127.0.0.1", self.port, timeout=30.0, rcvbuf=SLOW_RCVBUF) as client:
            self._client = client
            self.ports.append(client.sock.getsockname()[1])
            url = f"rtsp://127.0.0.1:{self.port}/cam"
            session = client.play_url(url, auth=login)
            started = time.monotonic()
            taken = self._count(client)
            keepalive = started + 20.0
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= keepalive:  # its reply comes in the stream, after the queued RTP
                    client.send_request("GET_PARAMETER", url, {"Session": session}, auth=login)
                    keepalive = now + 20.0
                if taken >= self.fps * (now - started):
                    time.sleep(0.01)
                    continue
                client.sock.settimeout(30.0)
                chunk = client.sock.recv(SLOW_CHUNK)
                if not chunk:
                    raise ConnectionError("the server closed the connection")
                replies = client.feed(chunk)
                self.keepalive_failures += sum(r.status != 200 for r in replies)
                taken += self._count(client)

    def _count(self, client: RawRtspClient) -> int:
        """Frames (RTP marker bit) received since the last call, their timestamp steps kept."""
        frames = frames_of(client.rtp)
        client.rtp.clear()
        for _, stamp in frames:
            if self._last_ts is not None:
                self.steps.append((stamp - self._last_ts) % 2**32)
            self._last_ts = stamp
        self.frames += len(frames)
        return len(frames)

    _last_ts: int | None = None

    def stop(self) -> None:
        self._stop.set()
        client = self._client
        if client is not None:
            with contextlib.suppress(OSError):
                client.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to a subprocess started in a session of its own (`timeout`
    and the ffmpeg under it)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[3]) == sid:
                    pids.append(int(entry.name))
    return pids


def client_ports(pids: list[int], server_port: int) -> set[int]:
    """Local ports of the TCP connections of `pids` to `server_port` (from /proc)."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes and int(fields[2].rsplit(":", 1)[1], 16) == server_port:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class LogTail:
    """New lines of the daemon's log since the last call."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0

    def lines(self) -> list[str]:
        with self._path.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        return data[:end].decode(errors="replace").splitlines()


def viewer_events(lines: list[str]) -> list[tuple[int, str]]:
    """(viewer port, line) for each line where the daemon throttled or disconnected one."""
    events = []
    for line in lines:
        match = VIEWER_LINE.search(line)
        if match and (match.group(3) is None or match.group(3) not in BENIGN):
            events.append((int(match.group(1)), line))
    return events


def viewer_metrics(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if line.startswith(("anonymizer_viewer", "anonymizer_auth"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--json", type=Path, help="write every number here as well")
    args = parser.parse_args()
    seconds = args.minutes * 60
    windows = max(1, math.ceil(seconds / WINDOW_S))
    clip = bench_clip(600, int(seconds // 20) + 8)
    password = secrets.token_urlsafe(12)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        control = folder / "control"
        control.mkdir()
        (control / "real").write_text("")  # the real model + the checkerboard as a person
        setup = AuthSetup(clip, folder, lifetime=seconds + 300, fake=control,
                          password=password)
        tail = LogTail(setup.log_path)
        tail.lines()  # start-up
        copy = decode = gst = slow = decode_log = None
        start = time.monotonic()
        rows: list[dict] = []
        events: list[tuple[float, int, str]] = []  # (window start, port, line)
        others: list[str] = []  # the daemon's other warnings and errors
        ports: dict[str, set[int]] = {name: set() for name in VIEWERS}
        try:
            copy = CopyViewer(setup.output_url, seconds + 120, folder / "copy.stderr")
            decode = CodeClient(setup.output_url, 1280, 720, crop_rows=160,
                                timeout=seconds + 120)
            decode_log = StderrLines(decode.proc.stderr)
            gst = GstViewer(setup.output_url)
            slow = SlowViewer(setup.rtsp_port, password)

            def counts() -> list[int]:
                return [copy.frames, decode.frames, gst.frames, slow.frames]

            def note_ports() -> None:
                ports["ffmpeg copy"] |= client_ports(session_pids(copy.proc.pid),
                                                     setup.rtsp_port)
                ports["ffmpeg decode"] |= client_ports(session_pids(decode.proc.pid),
                                                       setup.rtsp_port)
                ports["slow viewer"] |= set(slow.ports)
                ports["gstreamer"] |= (client_ports([os.getpid()], setup.rtsp_port)
                                       - ports["slow viewer"])

            def published() -> tuple[float, float]:
                text = metrics_text(setup.metrics_port)
                return (metric(text, "frames_published_anonymized_total")
                        + metric(text, "frames_published_fail_closed_total"),
                        metric(text, "frames_published_fail_closed_total"))

            start = time.monotonic()
            before = counts()
            published_before = published()
            for index in range(windows):
                end = start + min((index + 1) * WINDOW_S, seconds)
                while (left := end - time.monotonic()) > 0:
                    time.sleep(min(left, 1.0))
                    if index == 0 and time.monotonic() - start > 5 and not ports["gstreamer"]:
                        note_ports()
                now = counts()
                lines = tail.lines()
                window_events = viewer_events(lines)
                events += [(index * WINDOW_S, port, line) for port, line in window_events]
                others += [line for line in lines if line.startswith(("WARNING", "ERROR",
                                                                      "CRITICAL"))
                           and not VIEWER_LINE.search(line)]
                text = metrics_text(setup.metrics_port)
                published_now = published()
                rows.append({
                    "start_s": index * WINDOW_S,
                    "frames": [b - a for a, b in zip(before, now, strict=True)],
                    "daemon_published": published_now[0] - published_before[0],
                    "daemon_fail_closed": published_now[1] - published_before[1],
                    "daemon_dropped_total": metric(text, "viewer_frames_dropped_total"),
                    "daemon_viewers": metric(text, "viewers"),
                    "log_events": len(window_events),
                    "decode_messages": sum(
                        1 for t, line in decode_log.lines
                        if end - WINDOW_S <= t < end and not equal_dts(line)),
                    "rss": rss_bytes(setup.daemon.pid),
                })
                before, published_before = now, published_now
            note_ports()
            text = metrics_text(setup.metrics_port)
            alive = {"ffmpeg copy": copy.alive(), "ffmpeg decode": decode.alive(),
                     "gstreamer": gst._reader.alive}
        finally:
            for viewer in (slow, gst, copy):
                if viewer is not None:
                    viewer.stop()
            rest = decode.stop() if decode is not None else ""
            if decode_log is not None:
                decode_log.join()
            decode_lines = [(t - start, line) for t, line in
                            (decode_log.lines if decode_log is not None else [])]
            decode_lines += [(math.nan, line) for line in rest.splitlines()]
            code = setup.close()
            copy_stderr = (folder / "copy.stderr").read_text(errors="replace")
    load_end = os.getloadavg()
    return report(args, rows, events, others, ports, text, alive, copy, decode, gst, slow,
                  decode_lines, copy_stderr, code, load_start, load_end)


def report(args, rows, events, others, ports, text, alive, copy, decode, gst, slow,
           decode_lines, copy_stderr, code, load_start, load_end) -> int:
    judged = [r for r in rows if r["start_s"] >= WARMUP_S]
    totals = [sum(r["frames"][i] for r in rows) for i in range(len(VIEWERS))]
    minima = [min((r["frames"][i] for r in judged), default=0) for i in range(len(VIEWERS))]
    empty = [sum(1 for r in judged if r["frames"][i] == 0) for i in range(len(VIEWERS))]
    named = {name: [line for _, port, line in events if port in ports[name]]
             for name in VIEWERS}
    unknown = [line for _, port, line in events
               if not any(port in p for p in ports.values())]
    raw = sum(1 for s in decode.scores if s > RAW_SCORE)

    print(f"machine: {os.cpu_count()} CPUs; clip {CLIP.name} 1280x720 at 30 fps looped;"
          " default model + forced sensitive square; viewer auth on (Digest, user"
          f" {USER}); {args.minutes:g} min; slow viewer takes {SLOW_FPS:g} frames/s")
    print(f"load average (1, 5, 15 min): start {fmt_load(load_start)}, end {fmt_load(load_end)}")
    print()
    print("window start (s) | " + " | ".join(VIEWERS) + " | daemon: published (fail-closed)"
          " | daemon: frames dropped for viewers (total) | daemon: viewers"
          " | daemon: throttle/disconnect lines | decode viewer: ffmpeg errors | RSS MiB")
    print("---|" + "---|" * len(VIEWERS) + "---|---|---|---|---|---")
    for r in rows:
        print(f"{r['start_s']:.0f}{'' if r['start_s'] >= WARMUP_S else ' (warm-up)'} | "
              + " | ".join(str(n) for n in r["frames"])
              + f" | {r['daemon_published']:.0f} ({r['daemon_fail_closed']:.0f})"
              f" | {r['daemon_dropped_total']:.0f} | {r['daemon_viewers']:.0f}"
              f" | {r['log_events']} | {r['decode_messages']} | {r['rss'] / 2**20:.0f}")
    published = sum(r["daemon_published"] for r in rows)
    fail_closed = sum(r["daemon_fail_closed"] for r in rows)
    print("total | " + " | ".join(str(n) for n in totals)
          + f" | {published:.0f} ({fail_closed:.0f}) | | | | |")
    print(f"min per window after {WARMUP_S:.0f} s | " + " | ".join(str(n) for n in minima)
          + " | | | | | |")
    print(f"windows with 0 frames after {WARMUP_S:.0f} s | "
          + " | ".join(str(n) for n in empty) + " | | | | | |")
    print()
    print("viewers' ports (as the daemon's log names them): "
          + "; ".join(f"{name} {sorted(p)}" for name, p in ports.items()))
    print(f"daemon log: {len(events)} lines naming a viewer it throttled or disconnected:"
          + "".join(f" {name} {len(lines)};" for name, lines in named.items())
          + f" unknown port {len(unknown)}")
    for start_s, _, line in events[:5]:
        print(f"  [{start_s:.0f} s window] {line}")
    if len(events) > 5:
        print(f"  ... and the last: {events[-1][2]}")
    if others:
        print(f"daemon log: {len(others)} other WARNING/ERROR lines; the most frequent:")
        for line, count in collections.Counter(others).most_common(5):
            print(f"  {count} x {line}")
    print("viewer metrics at the end:")
    for line in viewer_metrics(text):
        print(f"  {line}")
    print(f"slow viewer: {len(slow.ports)} connections, ends: {slow.ends or 'none'},"
          f" keep-alive failures {slow.keepalive_failures}")
    period = 90000 // 30
    off_grid = sum(1 for s in slow.steps if min(s % period, period - s % period) > 90)
    if slow.steps:
        print(f"published RTP timestamps (as the slow viewer got them): steps"
              f" {min(slow.steps) / 90:.1f}-{max(slow.steps) / 90:.1f} ms, median"
              f" {statistics.median(slow.steps) / 90:.1f} ms; {off_grid} of {len(slow.steps)}"
              " more than 1 ms off the camera's 1/30 s grid")
    refused = sum(1 for _, line in decode_lines if equal_dts(line))
    messages = [(t, line) for t, line in decode_lines if not equal_dts(line)]
    print(f"GStreamer viewer: {gst.raw} raw of {gst.frames}, max score {gst.max_score:.2f},"
          f" {gst.disconnects} disconnects, {gst.skipped} local skips (its appsink, not the"
          " daemon)")
    print(f"ffmpeg decode viewer: {raw} raw of {len(decode.scores)} scored,"
          f" max score {max(decode.scores, default=0.0):.2f}; its rawvideo muxer refused"
          f" {refused} frames for a dts equal to the previous one (lost to it: ffmpeg rounds"
          " timestamps to its 1/30 s time base)")
    print(f"normal viewers alive at the end: {alive}; daemon exit {code}")
    rss = [r["rss"] for r in rows]
    print(f"daemon RSS MiB: first {rss[0] / 2**20:.1f}, last {rss[-1] / 2**20:.1f},"
          f" peak {max(rss) / 2**20:.1f}" + memory_growth(rows))
    print(f"ffmpeg decode viewer: {len(messages)} other stderr lines (decoder errors and"
          " its own exit), the first:")
    for t, line in messages[:8]:
        print(f"  [{t:.1f} s] {line}")
    if copy_stderr.strip():
        print(f"ffmpeg copy stderr (end): {copy_stderr.strip()[-600:]}")

    starving = [name for i, name in enumerate(NORMAL) if empty[i] or not judged]
    disturbed = [name for name in NORMAL if named[name]]
    checks = {
        "normal viewers got frames in every window after the warm-up": not starving,
        "the daemon's log names the slow viewer": bool(named["slow viewer"]),
        "the daemon's log names no normal viewer": not disturbed,
    }
    passed = all(checks.values())
    print()
    print(("PASS" if passed else "FAIL") + ": " + "; ".join(
        f"{what}: {'yes' if ok else 'NO'}" for what, ok in checks.items())
        + (f" (starving: {', '.join(starving)})" if starving else "")
        + (f" (named: {', '.join(disturbed)})" if disturbed else ""))
    if args.json:
        args.json.write_text(json.dumps({
            "minutes": args.minutes, "cpus": os.cpu_count(), "slow_fps": SLOW_FPS,
            "viewers": list(VIEWERS), "windows": rows, "totals": totals,
            "min_per_window_after_warmup": minima, "empty_windows_after_warmup": empty,
            "log_events": [{"window_start_s": s, "port": p, "line": line}
                           for s, p, line in events],
            "log_other_warnings": others, "ports": {k: sorted(v) for k, v in ports.items()},
            "viewer_metrics": viewer_metrics(text), "slow_viewer_ends": slow.ends,
            "gst": {"raw": gst.raw, "frames": gst.frames, "disconnects": gst.disconnects,
                    "local_skips": gst.skipped},
            "decode_raw": raw, "decode_scored": len(decode.scores), "alive": alive,
            "decode_refused_equal_dts": refused, "rtp_steps_off_grid": off_grid,
            "decode_stderr": [{"t_s": None if math.isnan(t) else round(t, 2), "line": line}
                              for t, line in messages[:200]],
            "rtp_steps": len(slow.steps),
            "load_start": load_start, "load_end": load_end, "daemon_exit": code,
            "checks": checks, "pass": passed,
        }, indent=2))
    return 0 if passed and raw == 0 and gst.raw == 0 and code == 0 else 1


def fmt_load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def memory_growth(rows: list[dict]) -> str:
    """Median RSS of the first 2 minutes after a 1-minute warm-up vs of the last 2 minutes
    (single samples swing by +-20 MB with glibc's arenas and 2.7 MB frames); runs of 6
    minutes or more."""
    warm = [(r["start_s"], r["rss"]) for r in rows if r["start_s"] >= 60.0]
    if not warm or warm[-1][0] - warm[0][0] < 300:
        return ""
    first = [rss for t, rss in warm if t < warm[0][0] + 120]
    last = [rss for t, rss in warm if t > warm[-1][0] - 120]
    base, end = statistics.median(first), statistics.median(last)
    return (f"; median first 2 min after 1 min {base / 2**20:.1f}, last 2 min"
            f" {end / 2**20:.1f}: growth {100 * (end - base) / base:.2f} %")


if __name__ == "__main__":
    sys.exit(main())
