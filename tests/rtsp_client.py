"""A raw-socket RTSP/1.0 client for tests and benches: every byte it sends is spelled out here,
so a test can send exactly the request an attacker would (a replayed Session id, no
credentials, an unknown path) and see exactly what comes back, RTP included.

    client = RawRtspClient("127.0.0.1", port)
    reply = client.request("DESCRIBE", "rtsp://127.0.0.1:8554/cam", auth=("nvr", "pw"))
    client.play_url("rtsp://127.0.0.1:8554/cam", auth=("nvr", "pw"))   # DESCRIBE, SETUP, PLAY
    packets = client.read_rtp(5.0)   # [(arrival monotonic, RtpPacket), ...]
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def session(self) -> str | None:
        value = self.header("session")
        return value.split(";", 1)[0].strip() if value else None


@dataclass(frozen=True)
class RtpPacket:
    channel: int
    seq: int
    timestamp: int
    marker: bool
    ssrc: int
    size: int


@dataclass
class RawRtspClient:
    host: str
    port: int
    timeout: float = 10.0
    rcvbuf: int | None = None  # SO_RCVBUF before connecting (a small one: a slow reader)
    sock: socket.socket = field(init=False)
    _buffer: bytearray = field(init=False, default_factory=bytearray)
    _cseq: int = field(init=False, default=0)
    _nonce: str | None = field(init=False, default=None)
    _realm: str = field(init=False, default="")
    rtp: list[tuple[float, RtpPacket]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        if self.rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        self.sock.settimeout(self.timeout)
        try:
            self.sock.connect((self.host, self.port))
        except OSError:
            self.sock.close()
            raise

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawRtspClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests ----------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, uri: str, headers: dict[str, str] | None = None, *,
                auth: tuple[str, str] | None = None, body: bytes = b"") -> Reply:
        """Send one request (answering the last Digest challenge if `auth` is given; after a
        401 it retries once with the new challenge) and return the reply (RTP is kept)."""
        reply = self._once(method, uri, headers, auth, body)
        if reply.status == 401 and auth is not None and self._nonce is not None:
            reply = self._once(method, uri, headers, auth, body)
        return reply

    def _once(self, method: str, uri: str, headers: dict[str, str] | None,
              auth: tuple[str, str] | None, body: bytes) -> Reply:
        self.send_request(method, uri, headers, auth=auth, body=body)
        return self._challenged(self.read_reply())

    def send_request(self, method: str, uri: str, headers: dict[str, str] | None = None, *,
                     auth: tuple[str, str] | None = None, body: bytes = b"") -> None:
        """Send a request without waiting for its reply (a keep-alive in the RTP stream)."""
        self._cseq += 1
        lines = [f"{method} {uri} RTSP/1.0", f"CSeq: {self._cseq}", "User-Agent: raw-test"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if auth is not None and self._nonce is not None:
            lines.append("Authorization: " + digest(auth[0], auth[1], self._realm, self._nonce,
                                                     method, uri))
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def _challenged(self, reply: Reply) -> Reply:
        challenge = reply.header("www-authenticate")
        if reply.status == 401 and challenge:
            params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            self._realm, self._nonce = params.get("realm", ""), params.get("nonce")
        return reply

    def play_url(self, url: str, *, auth: tuple[str, str] | None = None) -> str:
        """DESCRIBE, SETUP (TCP interleaved 0-1), PLAY: the session id (AssertionError if any
        step fails)."""
        described = self.request("DESCRIBE", url, {"Accept": "application/sdp"}, auth=auth)
        assert described.status == 200, described
        base = described.header("content-base") or url.rstrip("/") + "/"
        control = base + "stream=0"
        setup = self.request("SETUP", control,
                             {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"}, auth=auth)
        assert setup.status == 200, setup
        session = setup.session
        assert session
        played = self.request("PLAY", url, {"Session": session, "Range": "npt=0-"}, auth=auth)
        assert played.status == 200, played
        return session

    # --- reading -----------------------------------------------------------------------------

    def _fill(self, deadline: float) -> bool:
        """Read more bytes; False on EOF, TimeoutError past the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self._buffer += chunk
        return True

    def _next_rtp(self) -> bool:
        """Take one interleaved packet off the buffer if a whole one is there."""
        data = self._buffer
        if len(data) < 4 or data[0] != 0x24:
            return False
        size = int.from_bytes(data[2:4], "big")
        if len(data) < 4 + size:
            return False
        channel, payload = data[1], bytes(data[4: 4 + size])
        del data[: 4 + size]
        if len(payload) >= 12:
            self.rtp.append((time.monotonic(), RtpPacket(
                channel, int.from_bytes(payload[2:4], "big"),
                int.from_bytes(payload[4:8], "big"), bool(payload[1] & 0x80),
                int.from_bytes(payload[8:12], "big"), size)))
        return True

    def feed(self, chunk: bytes) -> list[Reply]:
        """Bytes read from `sock` by the caller: RTP goes to `rtp`; the replies are returned."""
        self._buffer += chunk
        replies = []
        while True:
            while self._next_rtp():
                pass
            reply = self._take_reply()
            if reply is None:
                return replies
            replies.append(reply)

    def _take_reply(self) -> Reply | None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or self._buffer[:1] == b"$":
            return None
        head = bytes(self._buffer[:end]).decode(errors="replace").split("\r\n")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(self._buffer) < end + 4 + length:
            return None
        body = bytes(self._buffer[end + 4: end + 4 + length])
        del self._buffer[: end + 4 + length]
        return Reply(int(head[0].split(" ")[1]), headers, body)

    def read_reply(self, timeout: float | None = None) -> Reply:
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            while self._next_rtp():
                pass
            reply = self._take_reply()
            if reply is not None:
                return reply
            if not self._fill(deadline):
                raise ConnectionError("the server closed the connection")

    def read_rtp(self, seconds: float) -> list[tuple[float, RtpPacket]]:
        """Read for `seconds` (or until EOF); the RTP packets that arrived in that time."""
        start = len(self.rtp)
        deadline = time.monotonic() + seconds
        try:
            while True:
                while self._next_rtp():
                    pass
                if not self._fill(deadline):
                    break
        except TimeoutError:
            pass
        return self.rtp[start:]

    def closed_by_server(self, timeout: float) -> bool:
        """True if the server closes the connection within `timeout` (RTP is drained)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._buffer.clear()
                if not self._fill(deadline):
                    return True
        except TimeoutError:
            return False
        except OSError:
            return True


def digest(user: str, password: str, realm: str, nonce: str, method: str, uri: str) -> str:
    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1, ha2 = md5(f"{user}:{realm}:{password}"), md5(f"{method}:{uri}")
    return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}",'
            f' response="{md5(f"{ha1}:{nonce}:{ha2}")}"')


def frames_of(packets: list[tuple[float, RtpPacket]], channel: int = 0
              ) -> list[tuple[float, int]]:
    """(arrival of its last packet, RTP timestamp) of each whole frame (marker bit) on the RTP
    channel (RTCP on the next channel has the same bit set in every packet)."""
    return [(arrived, p.timestamp) for arrived, p in packets if p.marker and p.channel == channel]
