"""No secret in the log: ONE logging filter, on the root handler(s), redacts every line.

It removes, from the message (its %-args included), the exception traceback and the stack:

- every secret the daemon has been told about (`add_secrets`: camera and viewer passwords from
  any source, query-string tokens of camera URLs, a camera's Basic-auth `user:password` in
  base64), as written and in any percent-encoded form (`a/b` also as `a%2Fb`, `a%2fb`,
  `a%252F b`, mixed), and as escaped by repr()/JSON;
- whatever has the shape of a secret, known or not: URL userinfo (`rtsp://user:pass@host` ->
  `rtsp://***@host`), `key=value` pairs whose key names a secret (`?pwd=`, `&token=`,
  `password = "..."`, `user-pw=`, `X-Amz-Signature=`, also percent-encoded `%3Ftoken%3D...`),
  `"password": "..."` pairs, and `Authorization: Basic|Bearer ...` headers.

Secrets shorter than MIN_SECRET_LENGTH are redacted only where they have such a shape (a 1-3
character password would otherwise turn every log line into asterisks).

`install()` (called by the CLI right after logging.basicConfig) puts the filter on every handler
of the root logger, so every logger and call site is covered, and routes what would otherwise
bypass logging (uncaught exceptions in the main thread and in threads, unraisable exceptions,
warnings) through logging. GStreamer's own debug output (GST_DEBUG) is forwarded to the
`gstreamer` logger by daemon.streams.gst once the filter is installed.
"""

from __future__ import annotations

import base64
import logging
import re
import sys
import threading
from types import TracebackType
from typing import Any

MASK = "***"
MIN_SECRET_LENGTH = 4

# Query-string / property / header keys whose value is a secret: the name itself, or with a
# prefix ending in '_', '-' or '.' (access_token, api-key, X-Amz-Signature, user-pw).
SECRET_KEYS = (
    "password", "passwd", "passphrase", "pass", "pwd", "pw", "secret", "token", "key", "apikey",
    "auth", "authorization", "signature", "sig", "credential", "credentials", "session",
    "sessionid", "sid", "user-id",
)
_KEY = (r"(?:[a-z0-9]+[_.\-])*(?:"
        + "|".join(re.escape(k) for k in sorted(SECRET_KEYS, key=len, reverse=True)) + ")")
_KEY_NAME = re.compile(_KEY, re.IGNORECASE)
# key=value (also key%3Dvalue, key\=value as GstStructure strings escape it): the value runs
# to '&' ('%26'), ';', ',', a space, a quote or '<>' (backslash-escaped, they belong to it)
_KEY_VALUE = re.compile(
    r"(?:(?<=%3F)|(?<=%26)|(?<![\w.\-]))(" + _KEY + r")(\s*(?:\\?=|%3D)\s*)"
    r"(\"[^\"]*\"|'[^']*'|(?:\\.|(?!%26)[^\s&;,\"'<>\\])+)",
    re.IGNORECASE,
)
# 'password': 'x' / "token": "x" (repr of a dict, JSON)
_KEY_QUOTED = re.compile(r"([\"'])(" + _KEY + r")\1(\s*:\s*)([\"'])(?:\\.|(?!\4).)*\4",
                         re.IGNORECASE)
_AUTH_HEADER = re.compile(r"\b((?:proxy-)?authorization\s*:\s*(?:basic|bearer|token)\s+)"
                          r"[A-Za-z0-9+/=._~\-]+", re.IGNORECASE)
# scheme://userinfo@ : up to the LAST '@' of the token, so a raw '@' in a password is covered
_USERINFO = re.compile(r"(?<![a-z0-9+.\-])([a-z][a-z0-9+.\-]*://)[^\s\"'<>]*@", re.IGNORECASE)


def is_secret_key(name: str) -> bool:
    """Whether a query-string key (already percent-decoded) names a secret: token, pwd, ..."""
    return _KEY_NAME.fullmatch(name) is not None


def _hex(byte: int) -> str:
    return "".join(f"[{d}{d.lower()}]" if d.isalpha() else d for d in f"{byte:02X}")


def _char_pattern(char: str) -> str:
    """A regex for one character of a secret: itself, percent-encoded (either case, also
    double-encoded: %252F), '+' for a space; any but a letter or digit also backslash-escaped
    (repr, JSON, and GstStructure strings in GStreamer's debug output: `a\\?b\\#c`)."""
    if char.isascii() and char.isalnum():
        return f"(?:{char}|{_percent(char, '%')}|{_percent(char, '%25')})"
    options = [r"\\?" + re.escape(char), _percent(char, r"\\?%"), _percent(char, r"\\?%25")]
    if char == " ":
        options.append(r"\+")
    return "(?:" + "|".join(options) + ")"


def _percent(char: str, prefix: str) -> str:
    return "".join(prefix + _hex(b) for b in char.encode("utf-8"))


def _secret_pattern(secret: str) -> str:
    return "".join(_char_pattern(c) for c in secret)


def _redact_shapes(text: str) -> str:
    text = _USERINFO.sub(r"\1" + MASK + "@", text)
    text = _AUTH_HEADER.sub(r"\1" + MASK, text)
    text = _KEY_QUOTED.sub(r"\1\2\1\3\4" + MASK + r"\4", text)
    return _KEY_VALUE.sub(r"\1\2" + MASK, text)


class SecretRegistry:
    """The secrets known so far (only ever grows) and the redaction they imply."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, *values: str | None) -> None:
        """Make `values` known (None, empty and too short ones are skipped)."""
        new = {v for v in values if v and len(v) >= MIN_SECRET_LENGTH}
        with self._lock:
            new -= self._secrets
            if not new:
                return
            self._secrets |= new
            ordered = sorted(self._secrets, key=len, reverse=True)  # longest first
            self._pattern = re.compile("|".join(_secret_pattern(s) for s in ordered))

    def __len__(self) -> int:
        return len(self._secrets)

    def redact(self, text: str) -> str:
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(MASK, text)
        return _redact_shapes(text)


SECRETS = SecretRegistry()
"""The daemon's secrets: filled when the config and the password files are read."""


def add_secrets(*values: str | None) -> None:
    SECRETS.add(*values)


def add_login(username: str | None, password: str | None) -> None:
    """A camera login: the password, and `user:password` in base64 (an RTSP Basic header)."""
    if password:
        SECRETS.add(password,
                    base64.b64encode(f"{username or ''}:{password}".encode()).decode("ascii"))


def redact(text: str) -> str:
    """`text` without any known secret nor anything shaped like one."""
    return SECRETS.redact(text)


_TRACEBACKS = logging.Formatter()


class RedactingFilter(logging.Filter):
    """Rewrites each record in place: message (args merged in), traceback and stack redacted."""

    def __init__(self, registry: SecretRegistry | None = None) -> None:
        super().__init__("")
        self.registry = registry if registry is not None else SECRETS

    def filter(self, record: logging.LogRecord) -> bool:
        redact = self.registry.redact
        try:
            message = record.getMessage()
        except Exception:  # bad %-args: logging's error report would print them raw
            message = f"{record.msg} (unformattable log arguments: {record.args!r})"
        record.msg = redact(message)
        record.args = ()
        if record.exc_info:
            record.exc_text = redact(_TRACEBACKS.formatException(record.exc_info))
            record.exc_info = None  # no formatter can render the raw one again
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


FILTER = RedactingFilter()
_hooks_lock = threading.Lock()
_installed = False
_log = logging.getLogger("daemon")


def installed() -> bool:
    """Whether install() ran: GStreamer's debug output is routed to logging only then."""
    return _installed


def install(logger: logging.Logger | None = None, *, hooks: bool = True) -> None:
    """Put FILTER on every handler of `logger` (default: the root logger), once each; with
    `hooks`, also send uncaught exceptions (main thread and threads), unraisable exceptions
    and warnings through logging, which would otherwise print them to stderr unfiltered."""
    global _installed
    target = logger if logger is not None else logging.getLogger()
    for handler in target.handlers:
        if FILTER not in handler.filters:
            handler.addFilter(FILTER)
    if not hooks:
        return
    with _hooks_lock:
        if not _installed:
            sys.excepthook = _uncaught
            threading.excepthook = _uncaught_in_thread
            sys.unraisablehook = _unraisable
            logging.captureWarnings(True)
            _installed = True


def _uncaught(kind: type[BaseException], exc: BaseException,
              tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    _log.critical("uncaught exception", exc_info=(kind, exc, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    _log.error("uncaught exception in thread %s", name,
               exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def _unraisable(unraisable: Any) -> None:
    exc = unraisable.exc_value
    info = (type(exc), exc, unraisable.exc_traceback) if exc is not None else None
    _log.error("%s: %r", unraisable.err_msg or "exception ignored", unraisable.object,
               exc_info=info)
