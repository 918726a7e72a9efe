"""Passwords from files or systemd credentials ($CREDENTIALS_DIRECTORY), read at start/reload."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from daemon.config import SecretConfig
from daemon.errors import ConfigError


def read_secret(secret: SecretConfig, what: str, environ: Mapping[str, str] | None = None
                ) -> str | None:
    """The password `secret` points at (trailing newline removed), None if it names none.

    ConfigError names `what` and the file, never the password.
    """
    env = os.environ if environ is None else environ
    if secret.password is not None:
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
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read password file {path}: "
                          f"{exc.strerror or exc}") from None
    value = text.rstrip("\r\n")
    if not value:
        raise ConfigError(f"{what}: password file {path} is empty")
    return value
