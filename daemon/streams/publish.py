"""The in-process RTSP server: one shared media factory per camera, fed with SafeFrames only."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from daemon.errors import StreamError
from daemon.safe import SafeFrame, pixels
from daemon.streams.gst import MainLoopThread, gst, require_elements

log = logging.getLogger(__name__)

_ROLE = "viewer"


@dataclass(frozen=True)
class ViewerLogin:
    username: str
    password: str

    def __repr__(self) -> str:
        return f"ViewerLogin({self.username!r}, password=***)"


def encoder_description(fps: float) -> str:
    """The H.264 encoder: nvh264enc where present, else x264enc (no NVENC on an H100)."""
    gop = max(1, round(fps))
    Gst = gst()[0]
    if Gst.ElementFactory.find("nvh264enc") is not None:
        return f"nvh264enc zerolatency=true gop-size={gop} bitrate=4000"
    return (f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate=4000"
            " threads=2")


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


class CameraPublisher:
    """The mount point of one camera. `publish()` is thread-safe and never blocks for long.

    The media is shared by every viewer and rebuilt per viewer session (GstRtspServer unprepares
    it when the last one leaves): the appsrc is taken in `media-configure` and forgotten on
    `unprepared`. A frame of a new size updates the caps, which makes the encoder rebuild.
    """

    def __init__(self, name: str, fps: float) -> None:
        _, _, _, GstRtspServer = gst()
        self.name = name
        self.path = f"/{name}"
        self.viewers = 0
        self._fps = fps if fps > 0 else 30.0
        self._lock = threading.Lock()
        self._appsrc = None
        self._size: tuple[int, int] | None = None
        self.factory = GstRtspServer.RTSPMediaFactory()
        self.factory.set_shared(True)
        self.factory.set_launch(
            "( appsrc name=src is-live=true format=time do-timestamp=true leaky-type=downstream"
            " max-buffers=2 ! queue max-size-buffers=2 leaky=downstream ! "
            f"{encoder_description(self._fps)} ! "
            "rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
        self.factory.connect("media-configure", self._on_media_configure)

    def _caps(self) -> Any:  # a Gst.Caps (PyGObject is untyped: its objects are Any)
        Gst = gst()[0]
        width, height = self._size or (640, 360)
        num, den = Gst.util_double_to_fraction(self._fps)
        rate = f"{num}/{den}"
        return Gst.Caps.from_string(
            f"video/x-raw,format=I420,width={width},height={height},framerate={rate}"
        )

    def _on_media_configure(self, _factory: object, media: Any) -> None:
        appsrc = media.get_element().get_by_name("src")
        appsrc.set_property("caps", self._caps())
        media.connect("unprepared", self._on_unprepared)
        with self._lock:
            self._appsrc = appsrc
        log.info("stream %s: media prepared for viewers", self.name)

    def _on_unprepared(self, _media: object) -> None:
        with self._lock:
            self._appsrc = None
        log.info("stream %s: no more viewers, media released", self.name)

    def publish(self, frame: SafeFrame) -> None:
        """Send one frame to every viewer. Only SafeFrames are accepted (never a raw array)."""
        image = pixels(frame, "publish()")  # the one gate of every output (daemon.safe)
        Gst = gst()[0]
        with self._lock:
            if frame.size != self._size:
                old, self._size = self._size, frame.size
                if self._appsrc is not None:
                    self._appsrc.set_property("caps", self._caps())
                if old is not None:
                    log.info("stream %s: output size %dx%d -> %dx%d, encoder rebuilt",
                             self.name, *old, *frame.size)
            appsrc = self._appsrc
        if appsrc is None:
            return
        buffer = Gst.Buffer.new_wrapped(bgr_to_gst_i420(image))
        buffer.duration = int(Gst.SECOND / self._fps)
        appsrc.emit("push-buffer", buffer)

    def set_fps(self, fps: float) -> None:
        if fps > 0:
            with self._lock:
                self._fps = fps


class RtspServer:
    """GstRtspServer in its own GLib main loop thread; mounts come and go while it runs."""

    def __init__(self, bind: str, port: int, logins: Sequence[ViewerLogin] | None) -> None:
        require_elements("appsrc", "x264enc", "rtph264pay", "rtspsrc", "rtph264depay",
                         "h264parse", "avdec_h264", "appsink")
        _, _, _, GstRtspServer = gst()
        self.bind = bind
        self.port = port
        self._loop = MainLoopThread("rtsp-server")
        self._server = GstRtspServer.RTSPServer()
        self._server.set_address(bind)
        self._server.set_service(str(port))
        # each viewer connection in its own thread: a slow media preparation for one viewer
        # must not stall the others (or the heartbeat of the main loop)
        self._server.get_thread_pool().set_max_threads(16)
        self._logins = tuple(logins) if logins is not None else None
        self._publishers: dict[str, CameraPublisher] = {}
        self._clients: dict[int, set[str]] = {}
        self._source_id: int | None = None
        self.heartbeat = 0.0
        if self._logins is not None:
            self._server.set_auth(self._auth())
        self._server.connect("client-connected", self._on_client)

    def _auth(self) -> Any:  # a GstRtspServer.RTSPAuth
        from gi.repository import GstRtsp

        _, _, _, GstRtspServer = gst()
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", _ROLE)
        for login in self._logins or ():
            auth.add_digest(login.username, login.password, token)
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        return auth

    def start(self) -> None:
        """Listen; StreamError if the address cannot be bound."""
        started = threading.Event()
        failure: list[str] = []

        def attach() -> None:
            try:
                self._source_id = self._server.attach(self._loop.context)
            except Exception as exc:
                failure.append(str(exc))
            if not self._source_id:
                failure.append(f"cannot listen on {self.bind}:{self.port}")
            started.set()

        self.heartbeat = time.monotonic()
        self._loop.start()
        self._loop.call(attach)
        self._beat()
        if not started.wait(5.0) or failure:
            self._loop.stop(2.0)
            raise StreamError(failure[0] if failure else "RTSP server did not start")
        log.info("RTSP server listening on rtsp://%s:%d/ (viewer auth %s)", self.bind,
                 self.port, "on" if self._logins is not None else "OFF")

    def _beat(self) -> None:
        """Heartbeat from inside the GLib loop: proves the server thread is not stuck."""
        _, GLib, _, _ = gst()

        def tick(*_args: object) -> bool:
            self.heartbeat = time.monotonic()
            return True

        source = GLib.timeout_source_new(500)
        source.set_callback(tick)
        source.attach(self._loop.context)

    def mount(self, publisher: CameraPublisher) -> None:
        _, _, _, GstRtspServer = gst()
        if self._logins is not None:
            permissions = GstRtspServer.RTSPPermissions()
            permissions.add_permission_for_role(_ROLE, "media.factory.access", True)
            permissions.add_permission_for_role(_ROLE, "media.factory.construct", True)
            publisher.factory.set_permissions(permissions)
        self._publishers[publisher.path] = publisher
        mounts = self._server.get_mount_points()
        mounts.add_factory(publisher.path, publisher.factory)
        log.info("stream %s: serving at rtsp://%s:%d%s", publisher.name, self.bind, self.port,
                 publisher.path)

    def unmount(self, publisher: CameraPublisher) -> None:
        _, _, _, GstRtspServer = gst()
        self._server.get_mount_points().remove_factory(publisher.path)
        self._publishers.pop(publisher.path, None)
        path = publisher.path

        def drop_sessions() -> None:
            def session_filter(_client: object, session: Any) -> Any:
                for media in session.filter(None):
                    if media.get_path() == path:
                        return GstRtspServer.RTSPFilterResult.REMOVE
                return GstRtspServer.RTSPFilterResult.KEEP

            def client_filter(_server: object, client: Any) -> Any:
                client.session_filter(session_filter)
                return GstRtspServer.RTSPFilterResult.KEEP

            self._server.client_filter(client_filter)

        self._loop.call(drop_sessions)
        log.info("stream %s: unmounted", publisher.name)

    def _on_client(self, _server: object, client: Any) -> None:
        key = id(client)
        self._clients[key] = set()

        def on_play(_client: object, ctx: Any) -> None:
            path = ctx.uri.abspath if ctx.uri is not None else ""
            publisher = self._publishers.get(path)
            if publisher is not None and path not in self._clients.get(key, set()):
                self._clients.setdefault(key, set()).add(path)
                publisher.viewers += 1
                log.info("stream %s: viewer connected (%d watching)", publisher.name,
                         publisher.viewers)

        def on_gone(*_args: object) -> None:
            for path in self._clients.pop(key, set()):
                publisher = self._publishers.get(path)
                if publisher is not None:
                    publisher.viewers = max(0, publisher.viewers - 1)
                    log.info("stream %s: viewer left (%d watching)", publisher.name,
                             publisher.viewers)

        client.connect("play-request", on_play)
        client.connect("teardown-request", on_gone)
        client.connect("closed", on_gone)

    def stop(self, timeout: float) -> None:
        _, _, _, GstRtspServer = gst()

        def close() -> None:
            self._server.client_filter(lambda *_: GstRtspServer.RTSPFilterResult.REMOVE)
            if self._source_id:
                source = self._loop.context.find_source_by_id(self._source_id)
                if source is not None:
                    source.destroy()

        self._loop.call(close)
        self._loop.stop(timeout)
        log.info("RTSP server stopped")

