"""RTSP ingest: one thread per camera, newest frame only, no-frame watchdog, capped backoff."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from daemon.config import IngestConfig, parse_camera_url
from daemon.errors import ConfigError, StreamError
from daemon.streams.gst import gst
from daemon.types import FrameTime, Image

log = logging.getLogger(__name__)

_PULL_TIMEOUT_S = 0.1
_TEARDOWN_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class CameraFrame:
    """A decoded camera frame. `epoch` counts (re)connects; frames of an old epoch are stale."""

    image: Image  # H x W x 3 BGR
    epoch: int
    seq: int  # per epoch, from 0
    arrived: float  # time.monotonic() when the reader got it
    pts_ns: int | None  # the stream's timestamp, if any
    fps: float  # the stream's nominal frame rate (0: unknown)

    @property
    def time(self) -> FrameTime:
        return FrameTime(self.epoch, self.arrived, self.pts_ns)


@dataclass(frozen=True)
class CameraSource:
    """Where a camera is: the URL without credentials, and the credentials apart."""

    location: str
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str, username: str | None = None, password: str | None = None
              ) -> CameraSource:
        """Split `user:pass@` out of `url` (daemon.config.parse_camera_url: percent-decoded,
        ambiguous URLs refused with a ConfigError that never shows the password); an explicit
        username or password replaces the URL's pair."""
        try:
            parsed = parse_camera_url(url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if username is not None or password is not None:
            return cls(parsed.location, username, password)
        return cls(parsed.location, parsed.username, parsed.password)

    def __repr__(self) -> str:  # never print the password, even by accident
        return f"CameraSource({self.location!r}, user={'***' if self.username else None})"


def i420_to_bgr(data: bytes | memoryview, width: int, height: int,
                strides: tuple[int, int, int], offsets: tuple[int, int, int]) -> Image:
    """An I420 buffer (any plane strides/offsets GStreamer chose) as H x W x 3 BGR."""
    if width % 2 or height % 2:
        raise StreamError(f"expected an even frame size for I420, got {width}x{height}")
    buf = np.frombuffer(data, np.uint8)
    cw, ch = width // 2, height // 2
    if strides == (width, cw, cw) and offsets == (0, width * height, width * height + cw * ch):
        packed = buf[: width * height * 3 // 2].reshape(height * 3 // 2, width)
    else:  # padded rows: repack the planes the way cv2 expects them
        packed = np.empty((height * 3 // 2, width), np.uint8)
        y = np.lib.stride_tricks.as_strided(buf[offsets[0]:], (height, width), (strides[0], 1))
        packed[:height] = y
        chroma = packed[height:].reshape(-1)
        for plane in (1, 2):
            src = np.lib.stride_tricks.as_strided(
                buf[offsets[plane]:], (ch, cw), (strides[plane], 1)
            )
            chroma[(plane - 1) * cw * ch: plane * cw * ch] = src.reshape(-1)
    bgr: Image = np.asarray(cv2.cvtColor(packed, cv2.COLOR_YUV2BGR_I420), np.uint8)
    return bgr


class CameraReader:
    """Pulls one camera in its own thread and hands every decoded frame to `on_frame`.

    rtspsrc raises no error when a camera hangs, so a watchdog rebuilds the pipeline when no
    frame came for `watchdog_s`; reconnects wait with a doubling, capped backoff. The appsink
    keeps only the newest frame, so a slow consumer never builds a backlog (drops are counted
    from timestamp gaps). `on_state(connected)` reports connection changes.
    """

    def __init__(
        self,
        name: str,
        source: CameraSource,
        config: IngestConfig,
        on_frame: Callable[[CameraFrame], None],
        on_state: Callable[[bool, str], None],
        on_dropped: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.name = name
        self._source = source
        self._config = config
        self._on_frame = on_frame
        self._on_state = on_state
        self._on_dropped = on_dropped
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ingest-{name}", daemon=True)
        self.epoch = 0
        self.reconnects = 0
        self.heartbeat = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("camera %s: ingest thread did not stop within %.1f s", self.name, timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        backoff = self._config.backoff_initial_s
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            got_frames = False
            try:
                got_frames = self._session()
            except StreamError as exc:
                reason = str(exc)
            except Exception as exc:  # a bug in one session must not end the camera's thread
                log.exception("camera %s: unexpected ingest error", self.name)
                reason = f"{type(exc).__name__}: {exc}"
            else:
                reason = "stopped"
            if self._stop.is_set():
                break
            if got_frames:
                backoff = self._config.backoff_initial_s
            self.reconnects += 1
            self._on_state(False, reason)
            log.info("camera %s: disconnected (%s); reconnecting in %.1f s",
                     self.name, reason, backoff)
            if self._wait(backoff):
                break
            backoff = min(backoff * 2, self._config.backoff_max_s)

    def _wait(self, seconds: float) -> bool:
        """Sleep `seconds` (True if stopped meanwhile), staying visibly alive: a camera that is
        down for long is the camera's problem, not a hung daemon for the systemd watchdog."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.heartbeat = time.monotonic()
            if self._stop.wait(min(left, 0.5)):
                return True
        self.heartbeat = time.monotonic()
        return False

    def _build(self) -> tuple[Any, Any]:  # Gst.Pipeline, GstApp.AppSink (untyped gi)
        Gst = gst()[0]
        description = (
            f"rtspsrc name=src protocols=tcp latency={self._config.latency_ms} "
            "drop-on-latency=true ! rtph264depay ! h264parse ! avdec_h264 ! "
            "video/x-raw,format=I420 ! "
            "appsink name=sink sync=false max-buffers=1 drop=true emit-signals=false"
        )
        pipeline = Gst.parse_launch(description)
        src = pipeline.get_by_name("src")
        src.set_property("location", self._source.location)
        if self._source.username:
            src.set_property("user-id", self._source.username)
        if self._source.password is not None:
            src.set_property("user-pw", self._source.password)
        src.set_property("tcp-timeout", int(self._config.connect_timeout_s * 1_000_000))
        return pipeline, pipeline.get_by_name("sink")

    def _session(self) -> bool:
        """One connection: frames until an error, EOS, the watchdog or stop(). True if any."""
        Gst = gst()[0]
        from gi.repository import GstVideo  # after gst(): Gst is initialised

        pipeline, sink = self._build()
        self.epoch += 1
        epoch = self.epoch
        bus = pipeline.get_bus()
        seq = 0
        skip = self._config.stale_frames
        started = time.monotonic()
        last_frame = started
        last_pts: int | None = None
        connected = False
        try:
            if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
                raise StreamError(f"cannot start the pipeline for {self._source.location}")
            log.info("camera %s: connecting to %s", self.name, self._source.location)
            while not self._stop.is_set():
                now = time.monotonic()
                self.heartbeat = now
                self._check_bus(bus)
                limit = self._config.watchdog_s if connected else self._config.connect_timeout_s
                if now - last_frame > limit:
                    raise StreamError(f"no frame for {now - last_frame:.1f} s (watchdog)")
                sample = sink.try_pull_sample(int(_PULL_TIMEOUT_S * Gst.SECOND))
                if sample is None:
                    if sink.is_eos():
                        raise StreamError("the camera ended the stream")
                    continue
                last_frame = time.monotonic()
                caps = sample.get_caps()
                info = GstVideo.VideoInfo.new_from_caps(caps)
                buffer = sample.get_buffer()
                pts = buffer.pts if buffer.pts != Gst.CLOCK_TIME_NONE else None
                fps = info.fps_n / info.fps_d if info.fps_d and info.fps_n else 0.0
                if pts is not None and last_pts is not None and fps > 0:
                    gap = round((pts - last_pts) * fps / Gst.SECOND) - 1
                    if 0 < gap < 10 * fps:
                        self._on_dropped(gap)
                last_pts = pts
                if skip > 0:  # the first frames after a (re)connect may be stale: drop them
                    skip -= 1
                    continue
                ok, mapped = buffer.map(Gst.MapFlags.READ)
                if not ok:
                    raise StreamError("cannot map a decoded buffer")
                try:
                    image = i420_to_bgr(
                        mapped.data, info.width, info.height,
                        tuple(info.stride[:3]), tuple(info.offset[:3]),
                    )
                finally:
                    buffer.unmap(mapped)
                if not connected:
                    connected = True
                    log.info("camera %s: connected (%dx%d at %.2f fps)",
                             self.name, info.width, info.height, fps)
                    self._on_state(True, "connected")
                self._on_frame(CameraFrame(image, epoch, seq, last_frame, pts, fps))
                seq += 1
        finally:
            _teardown(pipeline, self.name)
        return connected

    def _check_bus(self, bus: Any) -> None:
        Gst = gst()[0]
        while True:
            message = bus.pop_filtered(
                Gst.MessageType.ERROR | Gst.MessageType.EOS | Gst.MessageType.WARNING
            )
            if message is None:
                return
            if message.type == Gst.MessageType.ERROR:
                error, debug = message.parse_error()
                log.debug("camera %s: GStreamer error detail: %s", self.name, debug or "")
                raise StreamError(f"{message.src.get_name()}: {error.message}")
            if message.type == Gst.MessageType.EOS:
                raise StreamError("the camera ended the stream")
            warning, _ = message.parse_warning()
            log.debug("camera %s: GStreamer warning: %s", self.name, warning.message)


def _teardown(pipeline: Any, name: str) -> None:
    """Set the pipeline to NULL off-thread: rtspsrc can block on a hung camera's socket."""
    Gst = gst()[0]
    done = threading.Event()

    def stop() -> None:
        pipeline.set_state(Gst.State.NULL)
        done.set()

    threading.Thread(target=stop, name=f"teardown-{name}", daemon=True).start()
    if not done.wait(_TEARDOWN_TIMEOUT_S):
        log.warning("camera %s: pipeline teardown still blocked after %.1f s; abandoning it",
                    name, _TEARDOWN_TIMEOUT_S)
