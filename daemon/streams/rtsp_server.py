"""The RTSP server viewers connect to: authentication, sessions, limits, one thread pair per
viewer connection.

Security rules (each one tested with a raw-socket client in tests/test_rtsp_server.py):
- with `viewers.auth` on, every method but OPTIONS needs a valid Digest answer, on every
  request; before that, every path gets the same 401, known or not;
- a session belongs to the connection and the user that created it: it is looked up only in
  that connection, so a Session id from anywhere else is unknown (454), whatever it is;
- session ids and nonces are 128 bits from `secrets` (the OS's cryptographic source);
- limits: connections in all, connections that have not authenticated (and a deadline for them
  to do so), playing sessions in all and per user; past a limit the connection is refused.

Media: RTP/AVP/TCP interleaved only (UDP SETUPs get 461; ffmpeg, GStreamer and VLC then retry
over TCP). Each playing viewer has a `Viewer` queue fed by its camera's encoder and a sender
thread; a viewer whose socket takes nothing for `viewer_stall_s` is disconnected, with a log
line; one that only falls behind is caught up at the next keyframe (daemon.streams.viewer).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import replace

from daemon.errors import StreamError
from daemon.streams.rtsp_connection import (
    TICK_S,
    Mount,
    NoEvents,
    ServerEvents,
    ServerSettings,
    ViewerConnection,
)
from daemon.streams.rtsp_messages import DigestAuth

__all__ = ["Mount", "RtspServer", "ServerEvents", "ServerSettings"]

log = logging.getLogger(__name__)


class RtspServer:
    """Listens in its own thread; `mount`/`unmount` and `configure` while it runs."""

    def __init__(self, settings: ServerSettings, events: ServerEvents | None = None) -> None:
        self.settings = settings
        self.events: ServerEvents = events or NoEvents()
        self.auth = DigestAuth(settings.users) if settings.users is not None else None
        self.heartbeat = time.monotonic()
        self._mounts: dict[str, Mount] = {}
        self._connections: set[ViewerConnection] = set()
        self._lock = threading.RLock()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._refused_logged = 0.0

    @property
    def bind(self) -> str:
        return self.settings.bind

    @property
    def port(self) -> int:
        return self.settings.port

    # --- listening ----------------------------------------------------------------------------

    @staticmethod
    def _listen(bind: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind, port))
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise StreamError(f"cannot listen on {bind}:{port}: {exc.strerror or exc}") from None
        sock.settimeout(TICK_S)
        return sock

    def start(self) -> None:
        """Listen; StreamError if the address cannot be bound."""
        self._listener = self._listen(self.settings.bind, self.settings.port)
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept_loop, args=(self._listener,),
                                        name="rtsp-server", daemon=True)
        self._thread.start()
        log.info("RTSP server listening on rtsp://%s:%d/ (viewer auth %s)", self.settings.bind,
                 self.settings.port, "on" if self.auth is not None else "OFF")

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set() and listener is self._listener:
            self.heartbeat = time.monotonic()
            try:
                sock, peer = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if listener is not self._listener or self._stop.is_set():
                    return
                time.sleep(TICK_S)
                continue
            refusal = self._connection_refusal()
            if refusal:
                now = time.monotonic()
                if now - self._refused_logged > 10.0:
                    log.warning("RTSP connection from %s:%d refused: %s", peer[0], peer[1],
                                refusal)
                    self._refused_logged = now
                sock.close()
                continue
            connection = ViewerConnection(self, sock, peer)
            with self._lock:
                self._connections.add(connection)
            threading.Thread(target=connection.run, name=f"rtsp-{connection.peer}",
                             daemon=True).start()

    def _connection_refusal(self) -> str:
        with self._lock:
            connections = list(self._connections)
        settings = self.settings
        if len(connections) >= settings.max_connections:
            return f"server.max_connections ({settings.max_connections}) reached"
        pending = sum(1 for c in connections if not c.authenticated)
        if pending >= settings.max_unauthenticated:
            return (f"server.max_unauthenticated ({settings.max_unauthenticated}) connections"
                    " are waiting to log in")
        return ""

    def session_refusal(self, user: str | None) -> str:
        with self._lock:
            sessions = [c.session for c in self._connections if c.session is not None]
        settings = self.settings
        if len(sessions) >= settings.max_sessions:
            return f"server.max_sessions ({settings.max_sessions}) reached"
        if user is not None and sum(1 for s in sessions if s.user == user) >= \
                settings.max_sessions_per_user:
            return f"viewers.max_sessions_per_user ({settings.max_sessions_per_user}) reached"
        return ""

    def forget(self, connection: ViewerConnection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def viewers(self, name: str) -> int:
        with self._lock:
            return sum(1 for c in self._connections if c.session is not None
                       and c.session.viewer is not None and c.session.mount.name == name)

    # --- mounts -------------------------------------------------------------------------------

    def mount_for(self, path: str) -> Mount | None:
        with self._lock:
            return self._mounts.get(path.lstrip("/"))

    def mount(self, mount: Mount) -> None:
        with self._lock:
            self._mounts[mount.name] = mount
        log.info("stream %s: serving at rtsp://%s:%d/%s", mount.name, self.settings.bind,
                 self.settings.port, mount.name)

    def unmount(self, mount: Mount) -> None:
        """Stop serving `mount`; its viewers are disconnected now (they see EOF)."""
        with self._lock:
            if self._mounts.get(mount.name) is mount:
                del self._mounts[mount.name]
            doomed = [c for c in self._connections
                      if c.session is not None and c.session.mount is mount]
        for connection in doomed:
            connection.close("the camera was removed or restarted", event="camera_removed")
        log.info("stream %s: unmounted (%d viewers disconnected)", mount.name, len(doomed))

    # --- reload -------------------------------------------------------------------------------

    def configure(self, settings: ServerSettings) -> None:
        """Apply new settings to the running server: limits now; users and auth for every
        request from now on, and the sessions of users who lost access end; a new address is
        bound first (StreamError, and nothing changes, if it cannot be), then the old one and
        every connection are closed so that viewers reconnect."""
        old = self.settings
        rebind = (settings.bind, settings.port) != (old.bind, old.port)
        new_listener = self._listen(settings.bind, settings.port) if rebind else None
        with self._lock:
            self.settings = replace(settings)
            self.auth = DigestAuth(settings.users) if settings.users is not None else None
            connections = list(self._connections)
        for connection in connections:
            reason = "server address changed" if rebind else _revoked(connection, old, settings)
            if reason:
                connection.close(reason, event="revoked" if not rebind else "rebind")
        if new_listener is not None:
            old_listener, self._listener = self._listener, new_listener
            if old_listener is not None:
                _close_listener(old_listener)
            self._thread = threading.Thread(target=self._accept_loop, args=(new_listener,),
                                            name="rtsp-server", daemon=True)
            self._thread.start()
            log.info("RTSP server moved from %s:%d to %s:%d", old.bind, old.port, settings.bind,
                     settings.port)
        if (old.users is None) != (settings.users is None):
            log.info("RTSP viewer auth now %s", "OFF" if settings.users is None else "on")

    def stop(self, timeout: float) -> None:
        self._stop.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            _close_listener(listener)
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close("server stopping", event="server_stopping")
        if self._thread is not None:
            self._thread.join(max(0.1, timeout))
        log.info("RTSP server stopped")


def _close_listener(listener: socket.socket) -> None:
    """Stop listening now (shutdown wakes the accept loop; close alone waits for it)."""
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)
    listener.close()


def _revoked(connection: ViewerConnection, old: ServerSettings, new: ServerSettings) -> str:
    """Why `connection` may no longer watch under `new` ('' if it may)."""
    if new.users is None or not connection.authenticated:
        return ""
    if connection.user is None:
        return "viewers.auth was turned on"
    if connection.user not in new.users:
        return f"user {connection.user} was removed from viewers.users"
    if old.users is not None and old.users.get(connection.user) != new.users[connection.user]:
        return f"the password of {connection.user} changed"
    return ""
