"""GStreamer through PyGObject: one-time init; GStreamer's debug output through Python logging."""

from __future__ import annotations

import atexit
import ctypes
import logging
import threading
from typing import Any

from daemon import logsafety
from daemon.errors import BackendUnavailable

log = logging.getLogger(__name__)
gst_log = logging.getLogger("gstreamer")
"""Where GStreamer's own debug output (GST_DEBUG=...) goes once routed: through the root
handlers and so through the log filter (daemon.logsafety)."""

_lock = threading.Lock()
_modules: dict[str, Any] = {}

# GstLogFunction: (category, level, file, function, line, object, message, user_data). The
# object is taken as a bare pointer and never touched: PyGObject's own binding
# (Gst.debug_add_log_function) wraps it, which aborts the process on objects under
# construction or in finalisation (GST_DEBUG=*:9), and reading its name takes the object's
# lock, which the thread that logs may hold.
_LOG_FUNCTION = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p,
                                 ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_void_p)
_LEVELS = {1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO, 4: logging.INFO}
_route: dict[str, Any] = {}


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value else ""


def _forward(category: int | None, level: int, file: bytes | None, function: bytes | None,
             line: int, _object: int | None, message: int | None, _data: int | None) -> None:
    """One GStreamer debug message to the `gstreamer` logger (never raises into C)."""
    try:
        lib = _route["lib"]
        text = _text(lib.gst_debug_message_get(message))
        name = _text(lib.gst_debug_category_get_name(category))
        ident = _text(lib.gst_debug_message_get_id(message)) if _route["ids"] else ""
        source = _text(file).rsplit("/", 1)[-1]
        gst_log.log(_LEVELS.get(level, logging.DEBUG), "%s %s %s:%d:%s:<%s> %s",
                    _text(lib.gst_debug_level_get_name(level)).strip(), name, source, line,
                    _text(function), ident, text)
    except Exception:  # a debug line is not worth an exception raised into C
        pass


def route_debug_log(Gst: Any) -> None:
    """Send GStreamer's debug messages to the `gstreamer` logger instead of stderr: the
    default log function (which prints straight to stderr or GST_DEBUG_FILE, unfiltered) is
    removed. GST_DEBUG alone decides what is logged (the logger passes every level). Where
    the C library cannot be reached, GStreamer's debug output is switched off rather than
    left unfiltered."""
    if _route:
        return
    try:
        lib = ctypes.CDLL("libgstreamer-1.0.so.0")
        for name in ("gst_debug_message_get", "gst_debug_category_get_name",
                     "gst_debug_level_get_name"):
            getattr(lib, name).restype = ctypes.c_char_p
        lib.gst_debug_message_get.argtypes = [ctypes.c_void_p]
        lib.gst_debug_category_get_name.argtypes = [ctypes.c_void_p]
        lib.gst_debug_level_get_name.argtypes = [ctypes.c_int]
        ids = hasattr(lib, "gst_debug_message_get_id")  # GStreamer 1.22
        if ids:
            lib.gst_debug_message_get_id.restype = ctypes.c_char_p
            lib.gst_debug_message_get_id.argtypes = [ctypes.c_void_p]
        lib.gst_debug_add_log_function.argtypes = [_LOG_FUNCTION, ctypes.c_void_p,
                                                   ctypes.c_void_p]
        lib.gst_debug_remove_log_function.argtypes = [_LOG_FUNCTION]
        lib.gst_debug_remove_log_function.restype = ctypes.c_uint
    except (OSError, AttributeError) as exc:
        Gst.debug_set_active(False)
        log.warning("GStreamer debug output switched off: it cannot be routed through the"
                    " log filter (%s)", exc)
        _route["off"] = True
        return
    callback = _LOG_FUNCTION(_forward)
    _route.update(lib=lib, ids=ids, callback=callback)  # the callback must outlive GStreamer's use
    gst_log.setLevel(logging.DEBUG)
    Gst.debug_remove_log_function(None)  # None: GStreamer's default (stderr) log function
    lib.gst_debug_add_log_function(callback, None, None)
    atexit.register(_unroute)


def _unroute() -> None:
    """At exit: GStreamer threads may still log while Python shuts down; stop calling it."""
    callback = _route.get("callback")
    if callback is not None:
        _route["lib"].gst_debug_remove_log_function(callback)


def gst() -> tuple[Any, Any, Any]:
    """(Gst, GLib, GstApp), initialised once; BackendUnavailable if missing. Once the log
    filter is installed (the daemon), GStreamer's debug output goes through logging."""
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
            if logsafety.installed():
                route_debug_log(Gst)
            _modules.update(Gst=Gst, GLib=GLib, GstApp=GstApp)
        return _modules["Gst"], _modules["GLib"], _modules["GstApp"]


def require_elements(*names: str) -> None:
    """BackendUnavailable naming every GStreamer element that is not installed."""
    Gst = gst()[0]
    missing = [n for n in names if Gst.ElementFactory.find(n) is None]
    if missing:
        raise BackendUnavailable(f"GStreamer elements missing: {', '.join(missing)}")
