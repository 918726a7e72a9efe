"""A real RTSP camera on 127.0.0.1 that serves a clip: `anonymizer demo`'s built-in camera and
the tests' camera. Always run in a process of its own (`python -m daemon.demo.camera`, see
`main`): tests kill and pause it like a real camera, and GStreamer initialised before OpenVINO's
Core in a process that has cv2 loaded crashes OpenVINO (SIGSEGV, OpenVINO 2025 + GStreamer 1.22).

Two ways to serve a clip:
- `stream_copy`: the clip's own H.264, paced by the RTSP server's clock; it ends with the clip.
- `looped`: the clip decoded and re-encoded live (x264, a keyframe every 2 s), forever: a
  camera that never ends, whatever the clip's keyframe interval or length.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import cv2

from daemon.errors import BackendUnavailable, StreamError
from daemon.streams.gst import gst

log = logging.getLogger(__name__)


def _rtsp_server_modules() -> tuple[Any, Any, Any, Any]:
    """(Gst, GLib, GstRtsp, GstRtspServer), initialised; BackendUnavailable if missing."""
    Gst, GLib, _ = gst()
    try:
        import gi

        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GstRtsp, GstRtspServer
    except (ImportError, ValueError) as exc:
        raise BackendUnavailable(
            f"the test camera needs GStreamer's RTSP server ({exc}); run ./install.sh --daemon"
        ) from exc
    return Gst, GLib, GstRtsp, GstRtspServer


def stream_copy_launch(clip: Path) -> str:
    demux = "matroskademux" if clip.suffix == ".mkv" else "qtdemux"
    return (f"( filesrc location={clip} ! {demux} ! h264parse ! "
            "rtph264pay name=pay0 pt=96 config-interval=1 )")


class _LoopedFrames:
    """Feeds one media's appsrc with the clip's frames, from the start again at its end."""

    def __init__(self, clip: Path, fps: float) -> None:
        self._clip = clip
        self._capture = cv2.VideoCapture(str(clip))
        self._frame_ns = int(1e9 / fps)
        self._count = 0

    def need_data(self, appsrc: Any, _length: int) -> None:
        from gi.repository import Gst

        ok, frame = self._capture.read()
        if not ok:  # the end: start over (a camera never ends)
            self._capture.release()
            self._capture = cv2.VideoCapture(str(self._clip))
            ok, frame = self._capture.read()
            if not ok:
                appsrc.emit("end-of-stream")
                return
        buffer = Gst.Buffer.new_wrapped(frame.tobytes())
        buffer.pts = self._count * self._frame_ns
        buffer.duration = self._frame_ns
        self._count += 1
        appsrc.emit("push-buffer", buffer)


def clip_geometry(clip: Path) -> tuple[int, int, float]:
    """(width, height, fps) of a video file; StreamError if it cannot be read."""
    capture = cv2.VideoCapture(str(clip))
    try:
        ok, frame = capture.read()
        if not ok:
            raise StreamError(f"{clip}: not a readable video")
        fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
        return frame.shape[1], frame.shape[0], float(fps)
    finally:
        capture.release()


class ClipCamera:
    """GstRtspServer on `host:port` serving `clip` at `path`, optionally behind Digest auth.

    `start()` runs the server on its own GLib main context in a thread; `stop()` ends it.
    """

    def __init__(self, clip: Path, port: int, *, host: str = "127.0.0.1", path: str = "/cam",
                 looped: bool = False, user: str | None = None,
                 password: str | None = None) -> None:
        self.clip = clip.resolve()
        self.host, self.port, self.path = host, port, path
        self.looped = looped
        self._user, self._password = user, password
        self._loop: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self.port}{self.path}"

    def _factory(self, GstRtspServer: Any) -> Any:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_shared(True)
        if not self.looped:
            factory.set_launch(stream_copy_launch(self.clip))
            return factory
        width, height, fps = clip_geometry(self.clip)
        rate = max(1, round(fps))
        factory.set_launch(
            f"( appsrc name=frames format=time caps=video/x-raw,format=BGR,width={width},"
            f"height={height},framerate={rate}/1 ! videoconvert ! video/x-raw,format=I420 ! "
            f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={2 * rate} bframes=0 "
            "! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )")

        def configure(_factory: Any, media: Any) -> None:
            appsrc = media.get_element().get_child_by_name("frames")
            frames = _LoopedFrames(self.clip, rate)
            appsrc.connect("need-data", frames.need_data)

        factory.connect("media-configure", configure)
        return factory

    def _secure(self, server: Any, factory: Any, GstRtsp: Any, GstRtspServer: Any) -> None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "cam")
        auth.add_digest(self._user, self._password or "", token)
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("cam", "media.factory.access", True)
        permissions.add_permission_for_role("cam", "media.factory.construct", True)
        factory.set_permissions(permissions)

    def start(self) -> ClipCamera:
        """Listen; StreamError if the clip is unreadable or the port is taken."""
        if not self.clip.is_file():
            raise StreamError(f"{self.clip}: no such clip")
        _Gst, GLib, GstRtsp, GstRtspServer = _rtsp_server_modules()
        context = GLib.MainContext.new()
        server = GstRtspServer.RTSPServer()
        server.set_address(self.host)
        server.set_service(str(self.port))
        factory = self._factory(GstRtspServer)
        if self._user:
            self._secure(server, factory, GstRtsp, GstRtspServer)
        server.get_mount_points().add_factory(self.path, factory)
        if not server.attach(context):
            raise StreamError(f"test camera: cannot listen on {self.host}:{self.port}")
        self._loop = GLib.MainLoop.new(context, False)
        self._server = server  # keep it alive as long as the loop runs
        self._thread = threading.Thread(target=self._loop.run, name="test-camera", daemon=True)
        self._thread.start()
        log.info("test camera: serving %s at %s%s", self.clip.name, self.url,
                 " (looped)" if self.looped else "")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.quit()
        if self._thread is not None:
            self._thread.join(5.0)
        self._loop = self._thread = None


def main(argv: list[str] | None = None) -> int:
    """`python -m daemon.demo.camera --port P --clip FILE ...`: prints READY once listening, runs
    until SIGTERM/SIGINT or --lifetime seconds."""
    parser = argparse.ArgumentParser(prog="python -m daemon.demo.camera")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clip", type=Path, required=True)
    parser.add_argument("--path", default="/cam")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--lifetime", type=float, default=600.0, help="seconds; 0: forever")
    parser.add_argument("--looped", action="store_true", help="re-encode live, forever")
    args = parser.parse_args(argv)
    camera = ClipCamera(args.clip, args.port, path=args.path, looped=args.looped,
                        user=args.user, password=args.password)
    try:
        camera.start()
    except (StreamError, BackendUnavailable) as exc:
        print(f"test camera: {exc}", file=sys.stderr, flush=True)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print("READY", flush=True)
    stop.wait(args.lifetime or None)
    camera.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
