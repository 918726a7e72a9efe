"""`anonymizer run -c config.yaml`: the daemon's main loop (signals, reload, watchdog)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from daemon.config import Config
from daemon.configfile import load_config
from daemon.errors import AnonymizerError, ConfigError
from daemon.logsafety import add_secrets
from daemon.service.credentials import warn_if_exposed
from daemon.service.sdnotify import Notifier
from daemon.service.supervisor import Supervisor

log = logging.getLogger(__name__)

_TICK_S = 0.25


class SignalFlags:
    """SIGTERM/SIGINT ask to stop, SIGHUP asks to reload; handlers only set flags."""

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.stop = False
        self.reload = False
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload = True
        else:
            self.stop = True
        self.wake.set()


def run_command(config_path: str, on_ready: Callable[[], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT; 0 on a clean stop. Start-up errors raise (exit non-zero).

    `on_ready` is called once every camera's pipeline is up (after READY=1).
    """
    path = Path(config_path)
    config = _load(path)
    notifier = Notifier()
    flags = SignalFlags()
    flags.install()
    try:
        with Supervisor(config) as supervisor:
            notifier.ready(supervisor.status_line())
            log.info("ready: %s", supervisor.status_line())
            if on_ready is not None:
                on_ready()
            _main_loop(supervisor, notifier, flags, path)
            notifier.stopping()
            log.info("stopping")
    finally:
        flags.restore()
        notifier.close()
    log.info("stopped")
    return 0


def _main_loop(supervisor: Supervisor, notifier: Notifier, flags: SignalFlags,
               path: Path) -> None:
    last_ping = 0.0
    stale_logged: list[str] = []
    while not flags.stop:
        flags.wake.wait(_TICK_S)
        flags.wake.clear()
        if flags.stop:
            break
        if flags.reload:
            flags.reload = False
            _reload(supervisor, notifier, path)
        if notifier.watchdog_s is not None:
            stale = supervisor.stale_stages()
            if stale:
                if stale != stale_logged:
                    log.error("watchdog withheld: stale stages %s", ", ".join(stale))
                    stale_logged = stale
            else:
                if stale_logged:
                    log.info("watchdog resumed: every stage alive")
                    stale_logged = []
                now = time.monotonic()
                if now - last_ping >= notifier.watchdog_s / 3:
                    notifier.watchdog()
                    last_ping = now


def _load(path: Path) -> Config:
    """The config at `path`; the secrets written in it are known to the log filter before
    anything else runs, and a config file holding secrets that others may read is warned of."""
    config = load_config(path)
    secrets = config.inline_secrets
    add_secrets(*secrets)
    if secrets:
        warn_if_exposed(path, "config file (it holds passwords)")
    return config


def _reload(supervisor: Supervisor, notifier: Notifier, path: Path) -> None:
    """Apply the config file again; any failure is logged and the running config is kept
    (a reload never ends the daemon)."""
    notifier.reloading()
    log.info("reload: reading %s", path)
    try:
        config = _load(path)
        supervisor.reload(config)
    except (ConfigError, AnonymizerError) as exc:
        log.error("reload failed, keeping the running configuration:\n%s", exc)
    except Exception:
        log.exception("reload failed (unexpected error), keeping the running configuration")
    notifier.ready(supervisor.status_line())
