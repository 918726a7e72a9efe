"""One viewer's RTSP connection: its requests, its one session, its RTP.

A session lives in the connection that created it and nowhere else: a request naming any other
Session id gets 454, so a session cannot be taken over, probed or torn down from another
connection (daemon.streams.rtsp_server has the rules and the limits)."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from daemon.streams.rtp import CLOCK_RATE, PAYLOAD_TYPE, StreamFormat
from daemon.streams.rtsp_messages import (
    DigestAuth,
    Interleaved,
    MessageBuffer,
    MessageError,
    Request,
    new_nonce,
    new_session_id,
    response,
)
from daemon.streams.viewer import Viewer

log = logging.getLogger("daemon.streams.rtsp_server")  # one logger for the whole server

_PUBLIC = "OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, GET_PARAMETER, SET_PARAMETER"
_SESSION_TIMEOUT_S = 60  # announced to viewers; they send keep-alives within it
_IDLE_S = 60.0  # an authenticated connection with no session is closed after this long idle
_MAX_AUTH_FAILURES = 3
_SEND_BUFFER = 256 * 1024  # kernel send buffer per viewer: bounds how much lag hides there
TICK_S = 0.5


class Mount(Protocol):
    """A camera's published stream, as the server sees it (daemon.streams.publish)."""

    name: str
    ssrc: int

    def stream_format(self, timeout: float) -> StreamFormat | None: ...

    def attach(self, viewer: Viewer) -> None: ...

    def detach(self, viewer: Viewer) -> None: ...


class ServerEvents(Protocol):
    """Where the server reports what happened to viewers (daemon.metrics in the daemon)."""

    def viewer_dropped(self, camera: str, frames: int) -> None: ...

    def viewer_disconnected(self, camera: str, reason: str) -> None: ...

    def auth_failed(self) -> None: ...


class NoEvents:
    def viewer_dropped(self, camera: str, frames: int) -> None:
        pass

    def viewer_disconnected(self, camera: str, reason: str) -> None:
        pass

    def auth_failed(self) -> None:
        pass


@dataclass(frozen=True)
class ServerSettings:
    bind: str = "127.0.0.1"
    port: int = 8554
    users: Mapping[str, str] | None = None  # user -> password; None: no authentication
    max_connections: int = 128
    max_unauthenticated: int = 16
    login_timeout_s: float = 10.0
    max_sessions: int = 64
    max_sessions_per_user: int = 16
    viewer_max_lag_s: float = 1.0
    viewer_stall_s: float = 10.0

    def __repr__(self) -> str:  # never the passwords
        users = "off" if self.users is None else sorted(self.users)
        return f"ServerSettings({self.bind}:{self.port}, users={users})"



class ConnectionHost(Protocol):
    """What a connection needs from its server (daemon.streams.rtsp_server.RtspServer)."""

    settings: ServerSettings
    auth: DigestAuth | None
    events: ServerEvents

    def mount_for(self, path: str) -> Mount | None: ...

    def session_refusal(self, user: str | None) -> str: ...

    def forget(self, connection: ViewerConnection) -> None: ...


@dataclass
class _Session:
    id: str
    user: str | None
    mount: Mount
    control: str  # the URL the viewer SETUP
    channel: int
    viewer: Viewer | None = None  # while playing
    started: float = field(default_factory=time.monotonic)


class _Closed(Exception):
    pass


class ViewerConnection:
    """One viewer's TCP connection: requests in (this thread), RTP out (a sender thread)."""

    def __init__(self, server: ConnectionHost, sock: socket.socket, peer: tuple[str, int]) -> None:
        self.server = server
        self.peer = f"{peer[0]}:{peer[1]}"
        self.sock = sock
        self.opened = time.monotonic()
        self.last_request = self.opened
        self.authenticated = False
        self.user: str | None = None
        self.session: _Session | None = None
        self.closed = threading.Event()
        self.close_reason = ""
        self._nonce = new_nonce()
        self._failures = 0
        self._write = threading.Lock()
        self._closing = threading.Lock()
        self._out = sock.dup()  # its own timeout: a stalled viewer, not a slow request
        self._out.settimeout(server.settings.viewer_stall_s)
        self._sender: threading.Thread | None = None
        sock.settimeout(TICK_S)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    @property
    def who(self) -> str:
        return f"{self.user or 'anonymous'}@{self.peer}"

    # --- reading ----------------------------------------------------------------------------

    def run(self) -> None:
        buffer = MessageBuffer()
        try:
            while not self.closed.is_set():
                try:
                    while (message := buffer.next()) is not None:
                        if isinstance(message, Request):
                            self.last_request = time.monotonic()
                            self._handle(message)
                        elif isinstance(message, Interleaved):
                            self.last_request = time.monotonic()  # RTCP: the viewer is alive
                except MessageError as exc:
                    self._send(response(exc.status, None))
                    self.close(f"bad request: {exc}")
                    break
                self._check_deadlines()
                try:
                    chunk = self.sock.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    self.close("viewer closed the connection")
                    break
                buffer.feed(chunk)
        except (_Closed, OSError) as exc:
            self.close(self.close_reason or f"connection error: {exc}")
        finally:
            self.close(self.close_reason or "closed")
            self.server.forget(self)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        settings = self.server.settings
        if not self.authenticated and now - self.opened > settings.login_timeout_s:
            self.close(f"did not authenticate within {settings.login_timeout_s:g} s")
            raise _Closed
        if self.authenticated and self.session is None and now - self.last_request > _IDLE_S:
            self.close(f"idle for {_IDLE_S:g} s without a session")
            raise _Closed
        session = self.session
        if session is not None and session.viewer is None and \
                now - self.last_request > _SESSION_TIMEOUT_S:
            self.close(f"session not played nor kept alive for {_SESSION_TIMEOUT_S} s")
            raise _Closed

    def _send(self, data: bytes) -> None:
        if self.closed.is_set():
            raise _Closed
        with self._write:
            try:
                self._out.sendall(data)
            except TimeoutError:
                self.close(f"stalled: it took nothing for {self.server.settings.viewer_stall_s:g}"
                           " s, disconnected", event="stalled")
                raise _Closed from None

    def _reply(self, request: Request, status: int, headers: Mapping[str, str] | None = None,
               body: bytes = b"") -> None:
        all_headers = dict(headers or {})
        if self.session is not None and status < 300 and request.session_id:
            all_headers.setdefault("Session", f"{self.session.id};timeout={_SESSION_TIMEOUT_S}")
        self._send(response(status, request.cseq, all_headers, body))

    # --- requests ---------------------------------------------------------------------------

    def _handle(self, request: Request) -> None:
        if request.method == "OPTIONS":
            self._reply(request, 200, {"Public": _PUBLIC})
            return
        if not self._authenticate(request):
            return
        handler = {
            "DESCRIBE": self._describe, "SETUP": self._setup, "PLAY": self._play,
            "PAUSE": self._pause, "TEARDOWN": self._teardown,
            "GET_PARAMETER": self._parameter, "SET_PARAMETER": self._parameter,
        }.get(request.method)
        if handler is None:
            status = 405 if request.method in ("ANNOUNCE", "RECORD", "REDIRECT") else 501
            self._reply(request, status, {"Allow": _PUBLIC})
            return
        handler(request)

    def _authenticate(self, request: Request) -> bool:
        auth = self.server.auth
        if auth is None:
            self.authenticated = True
            return True
        user = auth.check(request, self._nonce)
        if user is not None and (self.user is None or user == self.user):
            if not self.authenticated:
                self.authenticated = True
                self.user = user
                log.debug("viewer %s: authenticated", self.who)
            return True
        if request.header("authorization") is not None:
            self._failures += 1
            self.server.events.auth_failed()
            if self._failures >= _MAX_AUTH_FAILURES:
                self._reply(request, 401, {"WWW-Authenticate": auth.challenge(self._nonce)})
                self.close(f"{self._failures} failed logins", level=logging.WARNING)
                raise _Closed
        self._reply(request, 401, {"WWW-Authenticate": auth.challenge(self._nonce)})
        return False

    def _own_session(self, request: Request) -> _Session | None:
        """This connection's session if the request names it; None (and a 454) otherwise."""
        session = self.session
        named = request.session_id
        if session is None or named is None or named != session.id or session.user != self.user:
            self._reply(request, 454)
            return None
        return session

    def _describe(self, request: Request) -> None:
        mount = self.server.mount_for(request.path)
        if mount is None:
            self._reply(request, 404)
            return
        fmt = mount.stream_format(2.0)
        fmtp = "packetization-mode=1"
        if fmt is not None and fmt.profile_level_id:
            fmtp += f";profile-level-id={fmt.profile_level_id}"
        if fmt is not None and fmt.sprop:
            fmtp += f";sprop-parameter-sets={fmt.sprop}"
        host = self.sock.getsockname()[0]
        sdp = "\r\n".join([
            "v=0", f"o=- {mount.ssrc} 1 IN IP4 {host}", f"s={mount.name}", "c=IN IP4 0.0.0.0",
            "t=0 0", "a=tool:anonymizer", "a=type:broadcast", "a=control:*",
            "a=range:npt=now-", f"m=video 0 RTP/AVP {PAYLOAD_TYPE}",
            f"a=rtpmap:{PAYLOAD_TYPE} H264/{CLOCK_RATE}", f"a=fmtp:{PAYLOAD_TYPE} {fmtp}",
            "a=control:stream=0", "",
        ]).encode()
        base = request.uri.rstrip("/") + "/"
        self._reply(request, 200, {"Content-Base": base, "Content-Type": "application/sdp"},
                    sdp)

    def _setup(self, request: Request) -> None:
        path = request.path
        if path.endswith("/stream=0"):
            path = path[: -len("/stream=0")]
        mount = self.server.mount_for(path)
        if mount is None:
            self._reply(request, 404)
            return
        if request.session_id is not None:
            session = self._own_session(request)
            if session is None:
                return
            if session.mount is not mount:
                self._reply(request, 459)
                return
        elif self.session is not None:
            self._reply(request, 455)  # one session per connection
            return
        channel = _interleaved_channel(request.header("transport") or "")
        if channel is None:
            self._reply(request, 461)
            return
        if self.session is None:
            refusal = self.server.session_refusal(self.user)
            if refusal:
                log.warning("viewer %s: SETUP %s refused: %s", self.who, mount.name, refusal)
                self._reply(request, 453)
                return
            self.session = _Session(new_session_id(), self.user, mount, request.uri, channel)
        else:
            self.session.channel = channel
        self._reply(request, 200, {
            "Transport": f"RTP/AVP/TCP;unicast;interleaved={channel}-{channel + 1}"
                         f";ssrc={mount.ssrc:08X};mode=\"PLAY\"",
            "Session": f"{self.session.id};timeout={_SESSION_TIMEOUT_S}",
        })

    def _play(self, request: Request) -> None:
        session = self._own_session(request)
        if session is None:
            return
        if session.viewer is None:
            viewer = Viewer(f"{self.who} on {session.mount.name}", session.channel,
                            self.server.settings.viewer_max_lag_s)
            session.viewer = viewer
            self._reply(request, 200, {"Range": "npt=now-",
                                       "RTP-Info": f"url={session.control};seq={viewer.first_seq}"})
            if self._sender is None:
                self._sender = threading.Thread(target=self._send_loop, daemon=True,
                                                name=f"rtsp-send-{self.peer}")
                self._sender.start()
            session.mount.attach(viewer)
            log.info("viewer %s: playing %s", self.who, session.mount.name)
        else:
            self._reply(request, 200, {"Range": "npt=now-"})

    def _pause(self, request: Request) -> None:
        session = self._own_session(request)
        if session is None:
            return
        self._stop_viewer(session)
        self._reply(request, 200)

    def _teardown(self, request: Request) -> None:
        session = self._own_session(request)
        if session is None:
            return
        self._end_session("teardown")
        self._reply(request, 200)

    def _parameter(self, request: Request) -> None:
        if request.session_id is not None and self._own_session(request) is None:
            return
        if request.method == "SET_PARAMETER" and request.body.strip():
            self._reply(request, 451)
            return
        self._reply(request, 200)

    # --- the viewer ---------------------------------------------------------------------------

    def _send_loop(self) -> None:
        last_report = 0.0
        try:
            while not self.closed.is_set():
                session = self.session
                viewer = session.viewer if session is not None else None
                if viewer is None:
                    time.sleep(0.05)
                    continue
                data = viewer.take(TICK_S)
                now = time.monotonic()
                if viewer.stats.throttled and now - last_report >= 10.0:
                    # the first time it falls behind, then at most every 10 s
                    self._report_drops(viewer, session)
                    last_report = now
                if data is not None:
                    self._send(data)
        except (_Closed, OSError):
            pass
        finally:
            self.close(self.close_reason or "sending failed")

    def _report_drops(self, viewer: Viewer, session: _Session | None) -> None:
        dropped = viewer.unreported_drops()
        if dropped and session is not None:
            log.warning("viewer %s: too slow (behind by more than %.1f s): %d frames dropped for"
                        " it alone, resuming at keyframes (%d frames sent so far)",
                        viewer.label, self.server.settings.viewer_max_lag_s, dropped,
                        viewer.stats.sent)
            self.server.events.viewer_dropped(session.mount.name, dropped)

    def _stop_viewer(self, session: _Session) -> None:
        viewer, session.viewer = session.viewer, None
        if viewer is not None:
            session.mount.detach(viewer)
            self._report_drops(viewer, session)

    def _end_session(self, reason: str, event: str | None = None) -> None:
        session = self.session
        if session is None:
            return
        viewer = session.viewer
        self._stop_viewer(session)
        self.session = None
        stats = viewer.stats if viewer is not None else None
        log.info("viewer %s: session on %s ended (%s) after %.0f s%s", self.who,
                 session.mount.name, reason, time.monotonic() - session.started,
                 f": {stats.sent} frames sent, {stats.dropped} dropped" if stats else "")
        if event is not None:
            self.server.events.viewer_disconnected(session.mount.name, event)

    def close(self, reason: str, *, event: str | None = None, level: int = logging.INFO) -> None:
        """End the connection (once; from any thread). `event`: the metric's reason label
        when the server, not the viewer, ended it."""
        with self._closing:
            if self.closed.is_set():
                return
            self.close_reason = reason
            self.closed.set()
        if self.session is not None:
            if level < logging.WARNING and reason not in ("viewer closed the connection",
                                                          "closed"):
                level = logging.WARNING
            log.log(level, "viewer %s: disconnected: %s", self.who, reason)
            self._end_session(reason, event)
        elif reason not in ("viewer closed the connection", "closed"):
            log.log(level, "connection %s: closed: %s", self.who, reason)
        for sock in (self.sock, self._out):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for sock in (self._out, self.sock):
            with contextlib.suppress(OSError):
                sock.close()


def _interleaved_channel(transport: str) -> int | None:
    """The RTP channel of the first RTP/AVP/TCP option of a Transport header (0 if it names
    none); None if it offers no TCP transport."""
    for option in transport.split(","):
        parts = [p.strip() for p in option.split(";")]
        if parts[0].upper() != "RTP/AVP/TCP":
            continue
        for part in parts[1:]:
            if part.lower().startswith("interleaved="):
                try:
                    channel = int(part.split("=", 1)[1].split("-")[0])
                except ValueError:
                    return None
                return channel if 0 <= channel <= 254 else None
        return 0
    return None
