"""One camera's published stream: SafeFrames in, paced and encoded, out to its viewers.

`publish()` takes a frame when the camera pipeline releases it (each analysis releases the
frames it brackets at once) and encodes it. The pacer sends each encoded frame to the viewers
at its camera arrival time (`CameraClock`: the camera's timestamps, free of network and
decoding jitter) plus a constant delay (`PacingDelay`), so frames leave at the camera's
cadence, stamped with the camera's own timestamps (RTP timestamps follow them; a frame that
has none, an outage frame or the first after a reconnect, gets the time since the previous
frame). A frame released after its slot goes out at once. Frames are encoded only while
someone watches (or has just asked for the stream's description); a new viewer asks for a
keyframe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from daemon.safe import SafeFrame, pixels
from daemon.streams.rtp import H264RtpEncoder, RtpFrame, StreamFormat
from daemon.streams.viewer import Viewer
from daemon.types import FrameTime

log = logging.getLogger(__name__)

_WANTED_AFTER_DESCRIBE_S = 10.0  # keep encoding this long after a DESCRIBE without a PLAY
_MAX_STEP_NS = 5_000_000_000  # a larger camera timestamp step is a reset, not a gap
_MAX_QUEUED_S = 5.0  # frames queued beyond this much time are dropped (a stuck encoder)
_PTS_TOLERANCE_NS = 1_000_000  # an encoder may round timestamps
_MAX_IN_ENCODER = 120  # frames whose slot is kept while the encoder works on them
_LAG_WINDOW = 300  # frames whose release lag a learned delay follows
_LAG_QUANTILE = 0.98
_MARGIN_S = 0.05
_MIN_DELAY_S = 0.05
_EASE = 0.05  # a learned delay falls by at most this share of each frame interval
_REANCHOR_S = 0.5


class CameraClock:
    """When a frame would have arrived without network and decoding jitter: the camera's
    timestamps mapped onto time.monotonic(). Jitter only ever delays a frame, so the mapping
    follows the earliest arrival seen for its timestamp; a camera clock that drifts late by
    more than `_REANCHOR_S`, a new connection or a frame without a timestamp starts anew."""

    def __init__(self) -> None:
        self._anchor: tuple[int, float] | None = None  # (epoch, monotonic time of pts 0)

    def arrival(self, when: FrameTime) -> float:
        if when.pts_ns is None:
            self._anchor = None
            return when.arrived
        base = when.arrived - when.pts_ns / 1e9
        anchor = self._anchor
        if anchor is None or anchor[0] != when.epoch or base < anchor[1] \
                or base - anchor[1] > _REANCHOR_S:
            self._anchor = anchor = (when.epoch, base)
        return anchor[1] + when.pts_ns / 1e9


class PacingDelay:
    """How long after its arrival a frame leaves: fixed, or learned from how late frames are
    released (the wait for analyses, rendering). A learned delay starts at `cap_s`, rises at
    once when frames come later than it, and falls slowly, so that the cadence stays even."""

    def __init__(self, fixed_s: float | None, cap_s: float) -> None:
        self.learned = fixed_s is None
        self.value = cap_s if fixed_s is None else fixed_s
        self._cap = cap_s
        self._lags: deque[float] = deque(maxlen=_LAG_WINDOW)

    def observe(self, lag_s: float, frame_s: float) -> float:
        """Note that a frame was released `lag_s` after its arrival; the delay for it."""
        if self.learned:
            self._lags.append(lag_s)
            if len(self._lags) >= 30:
                ranked = sorted(self._lags)
                target = ranked[min(len(ranked) - 1, int(_LAG_QUANTILE * len(ranked)))]
                target = min(self._cap, max(_MIN_DELAY_S, target + _MARGIN_S))
                if target > self.value:
                    self.value = target
                elif target < self.value:
                    self.value = max(target, self.value - _EASE * frame_s)
        return self.value


def bgr_to_gst_i420(image: np.ndarray) -> bytes:
    """H x W x 3 BGR (even W, H) as an I420 buffer in GStreamer's default layout (rows padded
    to 4 bytes: a 340 px wide frame has 172-byte chroma rows, not cv2's 170)."""
    height, width = image.shape[:2]
    i420 = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
    cw, ch = width // 2, height // 2
    ys, cs = _round4(width), _round4(cw)
    if ys == width and cs == cw:
        return i420.tobytes()
    flat = i420.reshape(-1)
    out = np.zeros(ys * height + 2 * cs * ch, np.uint8)
    out[: ys * height].reshape(height, ys)[:, :width] = flat[: width * height].reshape(height,
                                                                                      width)
    for plane in range(2):
        src = flat[width * height + plane * cw * ch: width * height + (plane + 1) * cw * ch]
        start = ys * height + plane * cs * ch
        out[start: start + cs * ch].reshape(ch, cs)[:, :cw] = src.reshape(ch, cw)
    return out.tobytes()


def _round4(n: int) -> int:
    return (n + 3) & ~3


@dataclass(frozen=True)
class _Slot:
    due: float
    frame: RtpFrame


class CameraPublisher:
    """The mount of one camera (the RTSP server's `Mount`). `publish()` is thread-safe and
    never blocks for long; `close()` stops the pacer and the encoder.

    A frame is encoded when it is published and its RTP packets wait for its slot (a few kB
    per frame, not the 2.7 MB of a 720p picture), then go out to every viewer."""

    def __init__(self, name: str, fps: float, delay: PacingDelay) -> None:
        self.name = name
        self.delay = delay
        self._clock = CameraClock()
        self._fps = fps if fps > 0 else 30.0
        self._encoder = H264RtpEncoder(name, self._fps, self._encoded)
        self.ssrc = self._encoder.ssrc
        self._viewers: set[Viewer] = set()
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._slots: deque[_Slot] = deque()
        self._due: dict[int, float] = {}  # output pts -> slot, of frames in the encoder
        self._wanted_until = 0.0
        self._feeding = False
        self._last: tuple[float, int] | None = None  # (due, pts) of the last frame published
        self._last_camera: tuple[int, int] | None = None  # (epoch, camera pts) of that frame
        self._closed = False
        self.late = 0  # frames released after their slot (sent at once)
        self._pacer = threading.Thread(target=self._pace, name=f"pace-{name}", daemon=True)
        self._pacer.start()

    @property
    def viewers(self) -> int:
        with self._lock:
            return len(self._viewers)

    # --- the camera side -----------------------------------------------------------------------

    def publish(self, frame: SafeFrame, when: FrameTime | None = None) -> None:
        """Encode one frame for its slot. Only SafeFrames are accepted (never a raw array)."""
        image = pixels(frame, "publish()")  # the one gate of every output (daemon.safe)
        now = time.monotonic()
        with self._lock:
            if when is not None:
                arrived = self._clock.arrival(when)
                due = arrived + self.delay.observe(now - arrived, 1.0 / self._fps)
            else:
                due = now + self.delay.value
            if self._last is not None:
                due = max(due, self._last[0])
            pts = self._timestamp(when, due)
            self._last = (due, pts)
            feed = bool(self._viewers) or now < self._wanted_until
            start = feed and not self._feeding
            self._feeding = feed
            if feed:
                self._due[pts] = due
                while len(self._due) > _MAX_IN_ENCODER:  # frames the encoder dropped
                    del self._due[next(iter(self._due))]
        if not feed:
            return
        try:
            height, width = image.shape[:2]
            self._encoder.push(bgr_to_gst_i420(image), width, height, pts)
            if start:
                self._encoder.request_key_unit()
        except Exception:
            log.exception("stream %s: encoding a frame failed", self.name)

    def _timestamp(self, when: FrameTime | None, due: float) -> int:
        """The output timestamp: the camera's step since the previous frame where it has
        one, else the wall-clock step (under the lock)."""
        camera = (when.epoch, when.pts_ns) if when is not None and when.pts_ns is not None \
            else None
        previous, self._last_camera = self._last_camera, camera
        if self._last is None:
            return 0
        last_due, last_pts = self._last
        step = 0
        if camera is not None and previous is not None and camera[0] == previous[0]:
            step = camera[1] - previous[1]
        if not 0 < step <= _MAX_STEP_NS:
            step = int((due - last_due) * 1e9)
        return last_pts + max(1_000_000, min(step, _MAX_STEP_NS))

    def set_fps(self, fps: float) -> None:
        if fps > 0:
            self._fps = fps

    def _encoded(self, frame: RtpFrame) -> None:
        """From the encoder's thread: queue the frame's packets for its slot."""
        now = time.monotonic()
        with self._cv:
            due = now
            while frame.pts_ns is not None and self._due:  # in order; skip frames it dropped
                pts = next(iter(self._due))
                if pts > frame.pts_ns + _PTS_TOLERANCE_NS:
                    break
                slot = self._due.pop(pts)
                if abs(pts - frame.pts_ns) <= _PTS_TOLERANCE_NS:
                    due = slot
            while self._slots and now - self._slots[0].due > _MAX_QUEUED_S:
                self._slots.popleft()
            self._slots.append(_Slot(due, frame))
            self._cv.notify()

    def _pace(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self._slots:
                    self._cv.wait(0.5)
                if self._closed:
                    return
                slot = self._slots[0]
                wait = slot.due - time.monotonic()
                if wait > 0:
                    self._cv.wait(min(wait, 0.5))
                    continue
                self._slots.popleft()
                if wait < -0.05:
                    self.late += 1
                viewers = list(self._viewers)
            for viewer in viewers:
                viewer.offer(slot.frame)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._viewers.clear()
            self._cv.notify_all()
        self._pacer.join(2.0)
        self._encoder.close()

    # --- the viewer side (daemon.streams.rtsp_server.Mount) -------------------------------------

    def stream_format(self, timeout: float) -> StreamFormat | None:
        with self._lock:
            self._wanted_until = time.monotonic() + _WANTED_AFTER_DESCRIBE_S
        return self._encoder.wait_format(timeout)

    def attach(self, viewer: Viewer) -> None:
        with self._lock:
            self._viewers.add(viewer)
            count = len(self._viewers)
        self._encoder.request_key_unit()
        log.info("stream %s: viewer %s connected (%d watching)", self.name, viewer.label, count)

    def detach(self, viewer: Viewer) -> None:
        with self._lock:
            if viewer not in self._viewers:
                return
            self._viewers.discard(viewer)
            count = len(self._viewers)
        log.info("stream %s: viewer %s left (%d watching)", self.name, viewer.label, count)
