"""One camera's pipeline: ingest thread -> analysis thread -> output thread -> publisher.

The output thread publishes at the camera's frame rate. Each frame is anonymized with the
analyses that `temporal.decide` picks, or fails closed; only SafeFrames reach the publisher.
During an outage the last fail-closed frame is repeated, so viewers keep a live stream.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

from daemon.config import AnalysisConfig, IngestConfig
from daemon.metrics import Metrics
from daemon.pipeline import safe
from daemon.pipeline.safe import FrameAnonymizer, SafeFrame
from daemon.pipeline.temporal import (
    Analysis,
    Anonymize,
    FailClosed,
    Wait,
    decide,
    union_labels,
)
from daemon.streams.ingest import CameraFrame, CameraReader, CameraSource
from daemon.types import Image, LabelMap, check_labels

log = logging.getLogger(__name__)

_KEEP_ANALYSES = 16
_PLACEHOLDER = (640, 360)
_PLACEHOLDER_FPS = 10.0


class FrameAnalyzer(Protocol):
    def labels(self, frame: Image) -> LabelMap: ...


class FramePublisher(Protocol):
    def publish(self, frame: SafeFrame) -> None: ...

    def set_fps(self, fps: float) -> None: ...


@dataclass(frozen=True)
class CameraSetup:
    """Everything one camera pipeline needs (resolved from the config by the supervisor)."""

    name: str
    source: CameraSource
    protected: tuple[int, ...]  # class ids to blur
    class_names: dict[int, str]
    fail_style: Literal["blur", "black"]
    analysis: AnalysisConfig
    ingest: IngestConfig


class CameraPipeline:
    """Runs one camera; `start()`, `stop(timeout)`, heartbeats for the watchdog, health."""

    def __init__(self, setup: CameraSetup, analyzer: FrameAnalyzer, anonymizer: FrameAnonymizer,
                 publisher: FramePublisher, metrics: Metrics) -> None:
        self.setup = setup
        self.name = setup.name
        self._analyzer = analyzer
        self._anonymizer = anonymizer
        self._publisher = publisher
        self._metrics = metrics
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._pending: deque[CameraFrame] = deque()
        self._to_analyze: CameraFrame | None = None
        self._analyses: deque[Analysis] = deque(maxlen=_KEEP_ANALYSES)
        self._epoch = 0
        self._connected = False
        self._fps = 0.0
        self._last_arrival = 0.0
        self._analysis_failing = False
        self._publish_failing = False
        self._fail_state: str | None = "connecting"
        self.last_anonymized = 0.0  # monotonic time of the last anonymized frame published
        self._analysis_started: float | None = None
        now = time.monotonic()
        self.heartbeats = {"analysis": now, "output": now}
        self._reader = CameraReader(setup.name, setup.source, setup.ingest, self._on_frame,
                                    self._on_state, self._on_dropped)
        self._threads = [
            threading.Thread(target=self._analysis_loop, name=f"analysis-{self.name}",
                             daemon=True),
            threading.Thread(target=self._output_loop, name=f"output-{self.name}", daemon=True),
        ]

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._reader.start()

    def stop(self, timeout: float) -> None:
        """Stop every thread of this camera within about `timeout` seconds."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        self._reader.stop(max(0.1, deadline - time.monotonic()))
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("camera %s: thread %s did not stop in time", self.name, thread.name)

    def stale_stages(self, max_age_s: float) -> list[str]:
        """Stages whose heartbeat is older than `max_age_s` (a slow analysis call counts as
        alive only up to `max_age_s`: a hung analyzer stops the systemd watchdog)."""
        now = time.monotonic()
        beats = {**self.heartbeats, "ingest": self._reader.heartbeat}
        return [f"{self.name}/{stage}" for stage, t in beats.items() if now - t > max_age_s]

    def publishing(self, window_s: float) -> bool:
        """True while anonymized frames went out within the last `window_s` seconds."""
        return time.monotonic() - self.last_anonymized < window_s

    # --- ingest callbacks (ingest thread) ---------------------------------------------------

    def _on_frame(self, frame: CameraFrame) -> None:
        self._metrics.frames_in.inc(self.name)
        with self._cv:
            if frame.epoch != self._epoch:
                stale = sum(1 for f in self._pending if f.epoch != frame.epoch)
                if stale:
                    self._metrics.dropped.inc(self.name, "stale", amount=stale)
                self._pending = deque(f for f in self._pending if f.epoch == frame.epoch)
                self._epoch = frame.epoch
            self._pending.append(frame)
            self._to_analyze = frame
            self._fps = frame.fps or self._fps or 25.0
            self._last_arrival = frame.arrived
            self._cv.notify_all()

    def _on_state(self, connected: bool, reason: str) -> None:
        with self._cv:
            self._connected = connected
            self._cv.notify_all()
        if not connected:
            self._metrics.reconnects.inc(self.name)

    def _on_dropped(self, count: int) -> None:
        self._metrics.dropped.inc(self.name, "ingest", amount=count)

    # --- analysis thread -------------------------------------------------------------------

    def _analysis_loop(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                self.heartbeats["analysis"] = time.monotonic()
                if self._to_analyze is None:
                    self._cv.wait(0.2)
                    continue
                frame, self._to_analyze = self._to_analyze, None
            started = time.monotonic()
            self._analysis_started = started
            try:
                labels = check_labels(self._analyzer.labels(frame.image), frame.image)
                result = Analysis(frame.epoch, frame.seq, labels)
            except Exception as exc:  # any analyzer failure: the frames around it fail closed
                result = Analysis(frame.epoch, frame.seq, None, f"{type(exc).__name__}: {exc}")
            finally:
                self._analysis_started = None
            elapsed = time.monotonic() - started
            self._metrics.analysis_seconds.observe(self.name, value=elapsed)
            self._metrics.analyses.inc(self.name, "ok" if result.labels is not None else "error")
            if (result.labels is None) != self._analysis_failing:
                self._analysis_failing = result.labels is None
                if self._analysis_failing:
                    log.warning("camera %s: analyzer failing (%s): frames fail closed",
                                self.name, result.error)
                else:
                    log.info("camera %s: analyzer recovered", self.name)
            with self._cv:
                self._analyses.append(result)
                self.heartbeats["analysis"] = time.monotonic()
                self._cv.notify_all()

    # --- output thread ---------------------------------------------------------------------

    def _output_loop(self) -> None:
        last_raw: Image | None = None
        outage_frame: SafeFrame | None = None
        last_publish = 0.0
        union_cache: tuple[tuple[tuple[int, int], ...], LabelMap] | None = None
        while not self._stop.is_set():
            now = time.monotonic()
            self.heartbeats["output"] = now
            ready: list[tuple[CameraFrame, FailClosed | Anonymize]] = []
            with self._cv:
                fps = self._fps
                analyses = tuple(self._analyses)
                while self._pending:
                    frame = self._pending[0]
                    decision = decide(frame.epoch, frame.seq, now - frame.arrived, analyses,
                                      self.setup.analysis)
                    if isinstance(decision, Wait):
                        break
                    ready.append((self._pending.popleft(), decision))
                waiting = bool(self._pending)
                last_arrival = self._last_arrival
            for frame, decision in ready:
                out, union_cache = self._render(frame, decision, union_cache)
                self._emit(out)
                last_raw = frame.image
                outage_frame = None
                last_publish = time.monotonic()
            interval = 1.0 / (fps or _PLACEHOLDER_FPS)
            now = time.monotonic()
            if not ready and not waiting and now - last_publish >= interval and (
                last_arrival == 0.0 or now - last_arrival > 2.5 * interval
            ):
                # camera late or gone: keep the stream alive without ever showing raw pixels
                if outage_frame is None:
                    outage_frame = (
                        safe.placeholder(*_PLACEHOLDER) if last_raw is None
                        else safe.fail_closed(last_raw, self.setup.fail_style, "outage")
                    )
                    last_raw = None
                self._emit(outage_frame, "outage")
                last_publish = now
            with self._cv:
                if not self._stop.is_set():
                    self._cv.wait(min(interval, 0.05))

    def _render(self, frame: CameraFrame, decision: FailClosed | Anonymize,
                cache: tuple[tuple[tuple[int, int], ...], LabelMap] | None
                ) -> tuple[SafeFrame, tuple[tuple[tuple[int, int], ...], LabelMap] | None]:
        if isinstance(decision, FailClosed):
            return self._fail(frame.image, decision.reason), cache
        try:
            key = tuple((a.epoch, a.seq) for a in decision.analyses)
            if cache is None or cache[0] != key:
                labels = union_labels(decision.analyses, self.setup.protected, decision.dilation)
                cache = (key, labels)
            return safe.anonymized(self._anonymizer, frame.image, cache[1]), cache
        except Exception as exc:  # a pipeline bug must never publish the raw frame
            log.debug("camera %s: rendering failed: %s", self.name, exc)
            self._note_fail("pipeline_error", f"{type(exc).__name__}: {exc}")
            return self._fail(frame.image, "pipeline_error"), None

    def _fail(self, image: Image, reason: str) -> SafeFrame:
        try:
            return safe.fail_closed(image, self.setup.fail_style, reason)
        except Exception:
            log.exception("camera %s: fail-closed rendering failed; sending black", self.name)
            h, w = image.shape[:2] if image.ndim >= 2 else _PLACEHOLDER[::-1]
            return safe.placeholder(w, h)

    def _note_fail(self, reason: str, detail: str = "") -> None:
        if self._fail_state != reason:
            self._fail_state = reason
            log.warning("camera %s: publishing fail-closed frames (%s%s)", self.name, reason,
                        f": {detail}" if detail else "")

    def _emit(self, frame: SafeFrame, outage_reason: str | None = None) -> None:
        if frame.kind == "anonymized":
            if self._fail_state is not None:
                log.info("camera %s: publishing anonymized frames", self.name)
                self._fail_state = None
            self._metrics.published_anonymized.inc(self.name)
            for obj in frame.objects:
                self._metrics.objects.inc(
                    self.name, self.setup.class_names.get(obj.class_id, str(obj.class_id)))
            self.last_anonymized = time.monotonic()
        else:
            reason = outage_reason or frame.reason
            self._note_fail(reason)
            self._metrics.published_fail_closed.inc(self.name, reason)
        if self._fps:
            self._publisher.set_fps(self._fps)
        try:
            self._publisher.publish(frame)
        except Exception:
            if not self._publish_failing:
                log.exception("camera %s: publishing failed (logged once until it works)",
                              self.name)
            self._publish_failing = True
            self._metrics.dropped.inc(self.name, "output")
        else:
            self._publish_failing = False

