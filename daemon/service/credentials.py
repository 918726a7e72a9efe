"""Passwords from files or systemd credentials ($CREDENTIALS_DIRECTORY), read at start/reload.

A password file holds the password on its FIRST line (the newline ending it is not part of the
password; further lines are ignored). Every password read is handed to the log filter
(daemon.logsafety). A password file, or a config file holding secrets, that group or others
may access is warned about once per file (naming the file, never its content).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from daemon.config import SecretConfig
from daemon.errors import ConfigError
from daemon.logsafety import add_secrets

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024
_warned: set[Path] = set()
_warned_lock = threading.Lock()


def warn_if_exposed(path: Path, what: str) -> bool:
    """Log a warning (once per file) if `path` is readable or writable by group or others
    (mode & 0o077); True if it is."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    if not mode & 0o077:
        return False
    key = path.absolute()
    with _warned_lock:
        if key in _warned:
            return True
        _warned.add(key)
    log.warning("%s %s is accessible to group or others (mode %04o): chmod 600 it (or 640 with"
                " a group only the service is in)", what, path, mode & 0o7777)
    return True


def read_first_line(path: Path, what: str) -> str:
    """The first line of `path` without its line ending; ConfigError naming `what` and the
    file (never the content) if it cannot be read, is empty, or starts with an empty line."""
    try:
        with path.open("rb") as stream:
            data = stream.readline(MAX_LINE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read password file {path}: "
                          f"{exc.strerror or exc}") from None
    if len(data) > MAX_LINE_BYTES:
        raise ConfigError(f"{what}: the first line of password file {path} is longer than"
                          f" {MAX_LINE_BYTES // 1024} KiB")
    try:
        line = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: password file {path} is not UTF-8 text") from None
    value = line.removesuffix("\n").removesuffix("\r")
    if not value:
        if not data:
            raise ConfigError(f"{what}: password file {path} is empty")
        raise ConfigError(f"{what}: the first line of password file {path} is empty (the"
                          " password is the first line)")
    return value


def read_secret(secret: SecretConfig, what: str, environ: Mapping[str, str] | None = None
                ) -> str | None:
    """The password `secret` points at (a file's first line), None if it names none.

    ConfigError names `what` and the file, never the password.
    """
    env = os.environ if environ is None else environ
    if secret.password is not None:
        add_secrets(secret.password)
        return secret.password
    path: Path | None = secret.password_file
    if secret.password_credential is not None:
        folder = env.get("CREDENTIALS_DIRECTORY")
        if not folder:
            raise ConfigError(f"{what}: password_credential {secret.password_credential!r} needs"
                              " $CREDENTIALS_DIRECTORY (LoadCredential= in the systemd unit)")
        path = Path(folder) / secret.password_credential
    if path is None:
        return None
    value = read_first_line(path, what)
    add_secrets(value)
    warn_if_exposed(path, f"{what}: password file")
    return value
