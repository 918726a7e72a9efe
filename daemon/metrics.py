"""Prometheus metrics and /healthz over a dependency-free HTTP server (127.0.0.1 by default)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "anonymizer"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Family:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str]) -> None:
        self.name = f"{PREFIX}_{name}"
        self.help = help_text
        self.label_names = tuple(label_names)
        self._lock = threading.Lock()

    def _key(self, values: Sequence[str]) -> Labels:
        if len(values) != len(self.label_names):
            raise ValueError(f"{self.name}: expected labels {self.label_names}, got {values}")
        return tuple(zip(self.label_names, (str(v) for v in values), strict=True))

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def forget(self, label: str, value: str) -> None:
        """Drop every series whose `label` is `value` (a removed camera)."""
        with self._lock:
            store = self._store()
            for key in [k for k in store if (label, value) in k]:
                del store[key]

    def _store(self) -> dict[Labels, Any]:
        raise NotImplementedError


class Counter(_Family):
    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str]) -> None:
        super().__init__(name, help_text, label_names)
        self._values: dict[Labels, float] = {}

    def _store(self) -> dict[Labels, Any]:
        return self._values

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [*self.header(), *(f"{self.name}{_labels(k)} {v:g}" for k, v in items)]


class Gauge(Counter):
    kind = "gauge"

    def set(self, *labels: str, value: float) -> None:
        with self._lock:
            self._values[self._key(labels)] = value


class Histogram(_Family):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str],
                 buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help_text, label_names)
        self.buckets = tuple(buckets)
        self._series: dict[Labels, list[float]] = {}  # bucket counts..., +Inf count, sum

    def _store(self) -> dict[Labels, Any]:
        return self._series

    def observe(self, *labels: str, value: float) -> None:
        key = self._key(labels)
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += 1
            series[-1] += value

    def count(self, *labels: str) -> float:
        with self._lock:
            series = self._series.get(self._key(labels))
            return series[-2] if series else 0.0

    def render(self) -> list[str]:
        lines = self.header()
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        for key, series in items:
            for bound, count in zip(self.buckets, series, strict=False):
                le = f'le="{bound:g}"'
                lines.append(f"{self.name}_bucket{_labels(key, le)} {count:g}")
            inf = 'le="+Inf"'
            lines.append(f"{self.name}_bucket{_labels(key, inf)} {series[-2]:g}")
            lines.append(f"{self.name}_count{_labels(key)} {series[-2]:g}")
            lines.append(f"{self.name}_sum{_labels(key)} {series[-1]:g}")
        return lines


class Metrics:
    """Every metric the daemon exports; `camera` is the only per-stream label."""

    def __init__(self) -> None:
        self.frames_in = Counter("frames_in_total", "frames decoded from the camera", ["camera"])
        self.published_anonymized = Counter(
            "frames_published_anonymized_total", "frames published after anonymization",
            ["camera"])
        self.published_fail_closed = Counter(
            "frames_published_fail_closed_total",
            "frames published fully blurred or black instead (never raw), by reason",
            ["camera", "reason"])
        self.dropped = Counter(
            "frames_dropped_total", "frames dropped, by stage (ingest, stale, output)",
            ["camera", "stage"])
        self.analysis_seconds = Histogram(
            "analysis_latency_seconds", "time of one analyzer call (one or more regions)",
            ["camera"])
        self.analyses = Counter(
            "analyses_total", "analyzer passes (one region each), by result (ok, error)",
            ["camera", "result"])
        self.analysis_cycles = Counter(
            "analysis_cycles_total",
            "complete multi-scale analyses: every region of the plan (full frame and tiles)"
            " analyzed once more", ["camera"])
        self.objects = Counter(
            "objects_total", "objects blurred in published frames, by class", ["camera", "class"])
        self.reconnects = Counter("reconnects_total", "camera reconnects", ["camera"])
        self.viewers = Gauge("viewers", "RTSP viewers watching the stream", ["camera"])
        self.up = Gauge("camera_up", "1 while the camera publishes anonymized frames", ["camera"])
        self.viewer_dropped = Counter(
            "viewer_frames_dropped_total",
            "frames dropped for one slow viewer alone (it resumed at the next keyframe)",
            ["camera"])
        self.viewer_disconnects = Counter(
            "viewer_disconnects_total",
            "viewers the server disconnected, by reason (stalled, revoked, rebind,"
            " camera_removed, server_stopping)", ["camera", "reason"])
        self.auth_failures = Counter(
            "rtsp_auth_failures_total", "RTSP requests with a wrong user name or password", [])
        self.paced_late = Gauge(
            "frames_paced_late", "frames released after their paced slot (sent at once), since"
            " the camera started", ["camera"])
        self.families: list[_Family] = [
            self.frames_in, self.published_anonymized, self.published_fail_closed, self.dropped,
            self.analysis_seconds, self.analyses, self.analysis_cycles, self.objects,
            self.reconnects, self.viewers, self.up, self.viewer_dropped,
            self.viewer_disconnects, self.auth_failures, self.paced_late,
        ]

    def forget_camera(self, camera: str) -> None:
        for family in self.families:
            family.forget("camera", camera)

    def render(self) -> str:
        lines: list[str] = []
        for family in self.families:
            lines.extend(family.render())  # type: ignore[attr-defined]
        return "\n".join(lines) + "\n"


HealthCheck = Callable[[], tuple[bool, Iterable[str]]]


class MetricsServer:
    """`/metrics` (Prometheus text) and `/healthz` (200 when healthy, else 503) in a thread."""

    def __init__(self, bind: str, port: int, metrics: Metrics, health: HealthCheck,
                 before_render: Callable[[], None] = lambda: None) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    owner._before_render()
                    self._reply(200, owner._metrics.render(), "text/plain; version=0.0.4")
                elif path == "/healthz":
                    ok, lines = owner._health()
                    body = ("ok\n" if ok else "unhealthy\n") + "".join(f"{x}\n" for x in lines)
                    self._reply(200 if ok else 503, body, "text/plain")
                else:
                    self._reply(404, "not found\n", "text/plain")

            def _reply(self, status: int, body: str, kind: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("http: " + format, *args)

        self._metrics = metrics
        self._health = health
        self._before_render = before_render
        self._httpd = ThreadingHTTPServer((bind, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.2}, name="metrics",
                                        daemon=True)
        self.address = self._httpd.server_address

    def start(self) -> None:
        self._thread.start()
        log.info("metrics and health at http://%s:%d/metrics and /healthz", *self.address[:2])

    def stop(self, timeout: float) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout)
