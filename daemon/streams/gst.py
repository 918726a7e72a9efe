"""GStreamer through PyGObject: one-time init, the GLib main loop thread, URL redaction."""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from daemon.errors import BackendUnavailable

log = logging.getLogger(__name__)

_lock = threading.Lock()
_modules: dict[str, Any] = {}

_USERINFO = re.compile(r"(rtsps?|https?)://[^/@\s]*@", re.IGNORECASE)
_SECRET_FIELDS = re.compile(r"((?:user-id|user-pw|password|passwd)\s*=\s*)(\"[^\"]*\"|\S+)")


def redact(text: str) -> str:
    """Remove credentials from a log line: `rtsp://user:pass@host` -> `rtsp://***@host`."""
    return _SECRET_FIELDS.sub(r"\1***", _USERINFO.sub(r"\1://***@", text))


def gst() -> tuple[Any, Any, Any, Any]:
    """(Gst, GLib, GstApp, GstRtspServer), initialised once; BackendUnavailable if missing."""
    with _lock:
        if not _modules:
            try:
                import gi

                gi.require_version("Gst", "1.0")
                gi.require_version("GstApp", "1.0")
                gi.require_version("GstRtspServer", "1.0")
                gi.require_version("GstRtsp", "1.0")
                gi.require_version("GstVideo", "1.0")
                from gi.repository import GLib, Gst, GstApp, GstRtspServer
            except (ImportError, ValueError) as exc:
                raise BackendUnavailable(
                    f"GStreamer with the RTSP server is not usable here ({exc}); install the"
                    " packages listed in README 'Running the daemon'"
                ) from exc
            Gst.init(None)
            _modules.update(Gst=Gst, GLib=GLib, GstApp=GstApp, GstRtspServer=GstRtspServer)
        return _modules["Gst"], _modules["GLib"], _modules["GstApp"], _modules["GstRtspServer"]


def require_elements(*names: str) -> None:
    """BackendUnavailable naming every GStreamer element that is not installed."""
    Gst = gst()[0]
    missing = [n for n in names if Gst.ElementFactory.find(n) is None]
    if missing:
        raise BackendUnavailable(f"GStreamer elements missing: {', '.join(missing)}")


class MainLoopThread:
    """A GLib main loop with its own context, running in a daemon thread until `stop()`."""

    def __init__(self, name: str) -> None:
        _, GLib, _, _ = gst()
        self._GLib = GLib
        self.context = GLib.MainContext.new()
        self.loop = GLib.MainLoop.new(self.context, False)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        self.context.push_thread_default()
        try:
            self.loop.run()
        finally:
            self.context.pop_thread_default()

    def start(self) -> None:
        self._thread.start()

    def call(self, fn: Any, *args: Any) -> None:
        """Run `fn(*args)` once on the loop's thread (GLib objects are not thread-safe)."""

        def once(*_args: Any) -> bool:
            try:
                fn(*args)
            except Exception:
                log.exception("error in the GLib main loop")
            return False

        source = self._GLib.idle_source_new()
        source.set_callback(once)
        source.attach(self.context)

    def stop(self, timeout: float) -> None:
        if self._thread.is_alive():
            self.call(self.loop.quit)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("GLib main loop %s did not stop within %.1f s", self._thread.name,
                            timeout)
