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


def gst() -> tuple[Any, Any, Any]:
    """(Gst, GLib, GstApp), initialised once; BackendUnavailable if missing."""
    with _lock:
        if not _modules:
            try:
                import gi

                gi.require_version("Gst", "1.0")
                gi.require_version("GstApp", "1.0")
                gi.require_version("GstRtsp", "1.0")
                gi.require_version("GstVideo", "1.0")
                from gi.repository import GLib, Gst, GstApp
            except (ImportError, ValueError) as exc:
                raise BackendUnavailable(
                    f"GStreamer is not usable here ({exc}); install the"
                    " packages listed in README 'Running the daemon'"
                ) from exc
            Gst.init(None)
            _modules.update(Gst=Gst, GLib=GLib, GstApp=GstApp)
        return _modules["Gst"], _modules["GLib"], _modules["GstApp"]


def require_elements(*names: str) -> None:
    """BackendUnavailable naming every GStreamer element that is not installed."""
    Gst = gst()[0]
    missing = [n for n in names if Gst.ElementFactory.find(n) is None]
    if missing:
        raise BackendUnavailable(f"GStreamer elements missing: {', '.join(missing)}")
