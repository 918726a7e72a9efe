"""`anonymizer batch`: archives on Ray (one machine or a cluster); Ray is imported only here."""

from __future__ import annotations

from typing import Any

from daemon.errors import ConfigError


def require_ray() -> Any:  # Ray ships no types: Any at the seam
    """The `ray` module; a ConfigError naming the install step when the `batch` extra is absent."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"batch needs Ray ({exc}): install the batch extra with `./install.sh --batch` "
            "(or `pip install 'privacy-gateway[batch]'`)"
        ) from None
    return ray
