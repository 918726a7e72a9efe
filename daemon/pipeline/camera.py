"""One camera's pipeline: ingest thread -> analysis thread -> output thread -> publisher.

The analysis thread runs one region of the analyzer's multi-scale plan (the full frame, then
each tile, round robin) at a time, always on the newest frame. The output thread publishes at
the camera's frame rate: each frame is anonymized with the analyses that `temporal.decide`
picks for every region (plus where their objects moved: `temporal.motion_cover`), or fails
closed; only SafeFrames reach the publisher. A frame is published within `budget_ms` of its
arrival or fails closed, and the queue of frames waiting for analyses is bounded.
A run of fail-closed frames repeats one frozen fail-closed picture (a run of blurred shifted
frames would give an attacker many looks); during an outage it keeps viewers' stream alive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from daemon import safe
from daemon.analysis.tiling import Tile
from daemon.config import AnalysisConfig, IngestConfig
from daemon.interfaces import Analyzer, Anonymizer
from daemon.metrics import Metrics
from daemon.pipeline.motion import CELL, object_cells
from daemon.pipeline.temporal import (
    Analysis,
    Anonymize,
    FailClosed,
    Wait,
    decide,
    motion_cover,
    still_needed,
    union_labels,
    with_cover,
)
from daemon.safe import SafeFrame
from daemon.streams.ingest import CameraFrame, CameraReader, CameraSource
from daemon.types import FrameTime, Image, LabelMap

log = logging.getLogger(__name__)

_MAX_ANALYSES = 512  # a backstop only: still_needed() keeps what pending frames may use
_MAX_PENDING_S = 2.0  # frames waiting for analyses, in budgets: older ones are dropped
_PLACEHOLDER = (640, 360)
_PLACEHOLDER_FPS = 10.0

_UnionCache = tuple[tuple[object, ...], LabelMap] | None


class FramePublisher(Protocol):
    def publish(self, frame: SafeFrame, when: FrameTime | None = None) -> None: ...

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

    def __init__(self, setup: CameraSetup, analyzer: Analyzer, anonymizer: Anonymizer,
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
        self._latest: CameraFrame | None = None  # the newest frame, to analyze next
        self._analyses: deque[Analysis] = deque(maxlen=_MAX_ANALYSES)
        self._epoch = 0
        self._connected = False
        self._fps = 0.0
        self._last_arrival = 0.0
        self._analysis_failing = False
        self._publish_failing = False
        self._fail_state: str | None = "connecting"
        self._frozen: SafeFrame | None = None  # the fail-closed picture of the current run
        self._refused_size: tuple[int, int] | None = None  # a frame size above max_pixels
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
        if not self._size_allowed(frame.image):
            self._metrics.dropped.inc(self.name, "too_large")
            return
        with self._cv:
            if frame.epoch != self._epoch:
                stale = sum(1 for f in self._pending if f.epoch != frame.epoch)
                if stale:
                    self._metrics.dropped.inc(self.name, "stale", amount=stale)
                self._pending = deque(f for f in self._pending if f.epoch == frame.epoch)
                self._epoch = frame.epoch
            self._pending.append(frame)
            limit = max(8, int(_MAX_PENDING_S * self.setup.analysis.budget_ms / 1000.0
                               * (frame.fps or self._fps or 25.0)))
            if len(self._pending) > limit:  # output far behind: the oldest are past budget
                self._pending.popleft()
                self._metrics.dropped.inc(self.name, "backlog")
            self._latest = frame
            self._fps = frame.fps or self._fps or 25.0
            self._last_arrival = frame.arrived
            self._cv.notify_all()

    def _size_allowed(self, image: Image) -> bool:
        """False (logged once per size) for frames above ingest.max_pixels."""
        h, w = image.shape[:2]
        if h * w <= self.setup.ingest.max_pixels:
            if self._refused_size is not None:
                log.info("camera %s: stream is %dx%d now, within ingest.max_pixels", self.name,
                         w, h)
                self._refused_size = None
            return True
        if self._refused_size != (w, h):
            self._refused_size = (w, h)
            log.error("camera %s: stream is %dx%d (%d pixels), above ingest.max_pixels (%d):"
                      " frames refused, publishing fail-closed frames", self.name, w, h, h * w,
                      self.setup.ingest.max_pixels)
        return False

    def _on_state(self, connected: bool, reason: str) -> None:
        with self._cv:
            self._connected = connected
            self._cv.notify_all()
        if not connected:
            self._metrics.reconnects.inc(self.name)

    def _on_dropped(self, count: int) -> None:
        self._metrics.dropped.inc(self.name, "ingest", amount=count)

    # --- analysis thread -------------------------------------------------------------------

    def _plan(self, image: Image) -> tuple[Tile, ...]:
        return self._analyzer.plan(image.shape[0], image.shape[1])

    def _analysis_loop(self) -> None:
        """Round robin over the plan's regions, each on the newest frame not yet analyzed for
        that region (as many at once as the analyzer runs concurrently); a cycle is complete
        when the last region of the plan has had its turn."""
        done: dict[Tile, tuple[int, int]] = {}  # region -> (epoch, seq) of its last analysis
        cursor = 0
        while not self._stop.is_set():
            with self._cv:
                self.heartbeats["analysis"] = time.monotonic()
                frame = self._latest
                plan = self._plan(frame.image) if frame is not None else ()
                todo = [i for i, region in enumerate(plan)
                        if frame is not None and done.get(region) != (frame.epoch, frame.seq)]
                if frame is None or not todo:
                    self._cv.wait(0.2)
                    continue
            start = next((k for k, i in enumerate(todo) if i >= cursor), 0)
            picked = (todo[start:] + todo[:start])[:max(1, self._analyzer.parallel)]
            regions = [plan[i] for i in picked]
            for region in regions:
                done[region] = (frame.epoch, frame.seq)
            results = self._analyze(frame, regions)
            for i in picked:
                if i == len(plan) - 1:
                    self._metrics.analysis_cycles.inc(self.name)
            cursor = (picked[-1] + 1) % len(plan)
            with self._cv:
                self._analyses.extend(results)
                self.heartbeats["analysis"] = time.monotonic()
                self._cv.notify_all()

    def _analyze(self, frame: CameraFrame, regions: list[Tile]) -> list[Analysis]:
        started = time.monotonic()
        self._analysis_started = started
        try:
            labels = self._analyzer.regions_labels(frame.image, regions)
            for region, region_labels in zip(regions, labels, strict=True):
                if (region_labels.shape != (region.height, region.width)
                        or region_labels.dtype != np.uint8):
                    raise ValueError(f"analyzer returned {region_labels.shape} "
                                     f"{region_labels.dtype} labels for a {region.height} x "
                                     f"{region.width} region")
            results = [
                Analysis(frame.epoch, frame.seq, region_labels, region=region,
                         arrived=frame.arrived,
                         cells=object_cells(region_labels, region, frame.seq,
                                            self.setup.protected))
                for region, region_labels in zip(regions, labels, strict=True)]
            error = ""
        except Exception as exc:  # any analyzer failure: the frames around it fail closed
            error = f"{type(exc).__name__}: {exc}"
            results = [Analysis(frame.epoch, frame.seq, None, error, region=region,
                                arrived=frame.arrived) for region in regions]
        finally:
            self._analysis_started = None
        self._metrics.analysis_seconds.observe(self.name, value=time.monotonic() - started)
        self._metrics.analyses.inc(self.name, "error" if error else "ok", amount=len(regions))
        if bool(error) != self._analysis_failing:
            self._analysis_failing = bool(error)
            if self._analysis_failing:
                log.warning("camera %s: analyzer failing (%s): frames fail closed",
                            self.name, error)
            else:
                log.info("camera %s: analyzer recovered", self.name)
        return results

    # --- output thread ---------------------------------------------------------------------

    def _output_loop(self) -> None:
        last_raw: Image | None = None
        outage_frame: SafeFrame | None = None
        last_publish = 0.0
        union_cache: _UnionCache = None
        render_s = 0.0  # how long anonymizing one frame takes (moving average)
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
                                      self.setup.analysis, self._plan(frame.image),
                                      arrived=frame.arrived)
                    if isinstance(decision, Wait):
                        break
                    ready.append((self._pending.popleft(), decision))
                waiting = bool(self._pending)
                if ready:
                    self._forget_analyses()
                last_arrival = self._last_arrival
            budget_s = self.setup.analysis.budget_ms / 1000.0
            for frame, decision in ready:
                started = time.monotonic()
                if (isinstance(decision, Anonymize)
                        and started - frame.arrived + render_s > budget_s):
                    # it could not be out in time: fail it closed now rather than spend a
                    # render on it that would make the frames behind it late as well
                    decision = FailClosed("output_late")
                out, reason, union_cache = self._render(frame, decision, union_cache)
                if out.kind == "anonymized":
                    took = time.monotonic() - started
                    render_s = took if render_s == 0.0 else 0.8 * render_s + 0.2 * took
                    if time.monotonic() - frame.arrived > budget_s:  # rendering was too slow
                        out, reason = self._fail(frame.image), "output_late"
                self._emit(out, reason, frame.time)
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
                        else self._fail(last_raw)
                    )
                    last_raw = None
                self._emit(outage_frame, "outage")
                last_publish = now
            with self._cv:
                if not self._stop.is_set():
                    self._cv.wait(min(interval, 0.05))

    def _forget_analyses(self) -> None:
        """Drop the analyses no pending (or future) frame can use any more (under _cv)."""
        oldest = self._pending[0] if self._pending else self._latest
        if oldest is None:
            return
        keep = still_needed(self._analyses, oldest.epoch, oldest.seq)
        if len(keep) != len(self._analyses):
            self._analyses = deque(keep, maxlen=_MAX_ANALYSES)

    def _render(self, frame: CameraFrame, decision: FailClosed | Anonymize, cache: _UnionCache
                ) -> tuple[SafeFrame, str | None, _UnionCache]:
        """The frame to publish, the fail-closed reason (None if anonymized), the cache."""
        if isinstance(decision, FailClosed):
            return self._fail(frame.image), decision.reason, cache
        try:
            shape = frame.image.shape[:2]
            # the same analyses with another dilation or frame size are another mask; the key
            # holds the analyses themselves (compared by identity), never a reusable id()
            key = (decision.dilation, shape, *decision.analyses)
            if cache is None or cache[0] != key:
                labels = union_labels(decision.analyses, self.setup.protected, decision.dilation,
                                      shape)
                cache = (key, labels)
            cover = motion_cover(decision, self._speed(frame), shape)
            labels = with_cover(cache[1], cover, self.setup.protected)
            return safe.anonymized(self._anonymizer, frame.image, labels), None, cache
        except Exception as exc:  # a pipeline bug must never publish the raw frame
            log.debug("camera %s: rendering failed: %s", self.name, exc)
            self._note_fail("pipeline_error", f"{type(exc).__name__}: {exc}")
            return self._fail(frame.image), "pipeline_error", None

    def _speed(self, frame: CameraFrame) -> float:
        """analysis.max_speed in motion-grid cells per frame of this camera."""
        h, w = frame.image.shape[:2]
        fps = float(frame.fps or self._fps or 25.0)
        return float(self.setup.analysis.max_speed * max(h, w) / fps / CELL)

    def _fail(self, image: Image) -> SafeFrame:
        """The frozen fail-closed picture of this run of failed frames (made from the first
        one; remade only if the frame size changes)."""
        frozen = self._frozen
        if frozen is not None and frozen.image.shape == image.shape:
            return frozen
        try:
            frozen = safe.fail_closed(image, self.setup.fail_style, "fail_closed")
        except Exception:
            log.exception("camera %s: fail-closed rendering failed; sending black", self.name)
            h, w = image.shape[:2] if image.ndim >= 2 else _PLACEHOLDER[::-1]
            frozen = safe.placeholder(w, h)
        self._frozen = frozen
        return frozen

    def _note_fail(self, reason: str, detail: str = "") -> None:
        if self._fail_state != reason:
            self._fail_state = reason
            log.warning("camera %s: publishing fail-closed frames (%s%s)", self.name, reason,
                        f": {detail}" if detail else "")

    def _emit(self, frame: SafeFrame, reason: str | None = None,
              when: FrameTime | None = None) -> None:
        """Publish `frame`; `reason`: why a fail-closed frame is (default: its own tag)."""
        if frame.kind == "anonymized":
            self._frozen = None  # the run of fail-closed frames is over
            if self._fail_state is not None:
                log.info("camera %s: publishing anonymized frames", self.name)
                self._fail_state = None
            self._metrics.published_anonymized.inc(self.name)
            for obj in frame.objects:
                self._metrics.objects.inc(
                    self.name, self.setup.class_names.get(obj.class_id, str(obj.class_id)))
            self.last_anonymized = time.monotonic()
        else:
            reason = reason or frame.reason
            self._note_fail(reason)
            self._metrics.published_fail_closed.inc(self.name, reason)
        if self._fps:
            self._publisher.set_fps(self._fps)
        try:
            self._publisher.publish(frame, when)
        except Exception:
            if not self._publish_failing:
                log.exception("camera %s: publishing failed (logged once until it works)",
                              self.name)
            self._publish_failing = True
            self._metrics.dropped.inc(self.name, "output")
        else:
            self._publish_failing = False

