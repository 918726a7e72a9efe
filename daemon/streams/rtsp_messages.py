"""RTSP/1.0 messages (RFC 2326) and Digest authentication (RFC 2617): parsing and formatting.

No sockets here: `MessageBuffer` takes bytes as they arrive and yields requests and interleaved
data frames; `response()` formats an answer; `DigestAuth` makes challenges and checks answers.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

MAX_HEADER_BYTES = 8192  # a request line plus headers; more is refused (400) and closed
MAX_BODY_BYTES = 4096  # SET_PARAMETER / GET_PARAMETER bodies
REALM = "anonymizer"

REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
    405: "Method Not Allowed", 453: "Not Enough Bandwidth", 454: "Session Not Found",
    455: "Method Not Valid in This State", 459: "Aggregate Operation Not Allowed",
    461: "Unsupported Transport", 500: "Internal Server Error", 501: "Not Implemented",
    503: "Service Unavailable", 505: "RTSP Version Not Supported", 451: "Parameter Not Understood",
}

_AUTH_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


class MessageError(Exception):
    """The peer sent something that is not RTSP: answer `status` and close the connection."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    uri: str
    headers: Mapping[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def cseq(self) -> str | None:
        return self.header("cseq")

    @property
    def path(self) -> str:
        """The URI's path, %-decoded, without a trailing slash ('' for `*`)."""
        if self.uri == "*":
            return ""
        return unquote(urlsplit(self.uri).path).rstrip("/")

    @property
    def session_id(self) -> str | None:
        value = self.header("session")
        return value.split(";", 1)[0].strip() if value else None


@dataclass(frozen=True)
class Interleaved:
    """A `$`-framed data packet from the viewer (RTCP receiver reports): read and ignored."""

    channel: int
    size: int


@dataclass
class MessageBuffer:
    """Bytes in, whole messages out. Raises MessageError on anything malformed or too big."""

    data: bytearray = field(default_factory=bytearray)

    def feed(self, chunk: bytes) -> None:
        self.data += chunk

    def next(self) -> Request | Interleaved | None:
        data = self.data
        if not data:
            return None
        if data[0] == 0x24:  # '$' channel length(16) payload
            if len(data) < 4:
                return None
            size = int.from_bytes(data[2:4], "big")
            if len(data) < 4 + size:
                return None
            channel = data[1]
            del data[: 4 + size]
            return Interleaved(channel, size)
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > MAX_HEADER_BYTES:
                raise MessageError(400, "request header too large")
            return None
        if end > MAX_HEADER_BYTES:
            raise MessageError(400, "request header too large")
        head = bytes(data[:end]).decode("utf-8", "replace").split("\r\n")
        parts = head[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("RTSP/"):
            raise MessageError(400, f"not an RTSP request line: {head[0][:80]!r}")
        method, uri, version = parts
        if version != "RTSP/1.0":
            raise MessageError(505, f"unsupported version {version[:16]}")
        headers: dict[str, str] = {}
        for line in head[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                raise MessageError(400, f"bad header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise MessageError(400, "bad Content-Length") from None
        if length < 0 or length > MAX_BODY_BYTES:
            raise MessageError(400, f"body of {length} bytes refused")
        if len(data) < end + 4 + length:
            return None
        body = bytes(data[end + 4: end + 4 + length])
        del data[: end + 4 + length]
        return Request(method.upper(), uri, headers, body)


def response(status: int, cseq: str | None, headers: Mapping[str, str] | None = None,
             body: bytes = b"") -> bytes:
    lines = [f"RTSP/1.0 {status} {REASONS.get(status, 'Error')}"]
    if cseq is not None:
        lines.append(f"CSeq: {cseq}")
    lines.append("Server: anonymizer")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def new_nonce() -> str:
    return secrets.token_hex(16)


def new_session_id() -> str:
    """128 random bits from the OS's cryptographic source, in RTSP's session-id alphabet."""
    return secrets.token_urlsafe(16)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class DigestAuth:
    """RTSP Digest authentication against a fixed set of accounts (user -> password).

    Challenges carry a nonce the caller keeps per connection; an answer is accepted only with
    that nonce. Qop-less answers (what GStreamer, ffmpeg and VLC send to a qop-less challenge)
    and qop=auth answers are accepted."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._ha1 = {user: _md5(f"{user}:{REALM}:{password}") for user, password in
                     users.items()}

    @property
    def users(self) -> frozenset[str]:
        return frozenset(self._ha1)

    def challenge(self, nonce: str) -> str:
        return f'Digest realm="{REALM}", nonce="{nonce}"'

    def check(self, request: Request, nonce: str) -> str | None:
        """The user name if `request` carries a valid answer to `nonce`, else None."""
        value = request.header("authorization")
        if not value or value[:7].lower() != "digest ":
            return None
        params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
                  for m in _AUTH_PARAM.finditer(value[7:])}
        user = params.get("username")
        answer = params.get("response")
        if (user is None or answer is None or params.get("realm") != REALM
                or not hmac.compare_digest(params.get("nonce", ""), nonce)):
            return None
        ha1 = self._ha1.get(user)
        if ha1 is None:
            _md5("x")  # about the same work for an unknown user
            return None
        ha2 = _md5(f"{request.method}:{params.get('uri', request.uri)}")
        qop = params.get("qop")
        if qop == "auth":
            expected = _md5(f"{ha1}:{nonce}:{params.get('nc', '')}:{params.get('cnonce', '')}"
                            f":auth:{ha2}")
        elif qop is None:
            expected = _md5(f"{ha1}:{nonce}:{ha2}")
        else:
            return None
        return user if hmac.compare_digest(expected, answer.lower()) else None
