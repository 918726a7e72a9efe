"""The supervisor: owns the analyzer, the RTSP server, metrics and one pipeline per camera;
applies a new config by restarting only the cameras it changes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import numpy as np

from daemon.analysis import class_ids
from daemon.backends import Backend, open_backend
from daemon.config import CameraConfig, Config
from daemon.errors import ConfigError, StreamError
from daemon.interfaces import Analyzer
from daemon.logsafety import add_login
from daemon.metrics import Metrics, MetricsServer
from daemon.pipeline.camera import CameraPipeline, CameraSetup
from daemon.service.credentials import read_secret
from daemon.streams.ingest import CameraSource
from daemon.streams.publish import CameraPublisher, PacingDelay
from daemon.streams.rtsp_server import RtspServer, ServerSettings

log = logging.getLogger(__name__)


def viewer_logins(config: Config) -> dict[str, str] | None:
    """The viewer accounts (user -> password), or None when the config turns authentication
    off explicitly. ConfigError if a password cannot be read."""
    viewers = config.viewers
    if not viewers.auth:
        return None
    logins: dict[str, str] = {}
    for index, user in enumerate(viewers.users):
        password = read_secret(user, f"viewers.users[{index}] ({user.username})")
        if password is None:  # the model validator requires a source; keep the type checker calm
            raise ConfigError(f"viewers.users[{index}]: no password")
        if user.username in logins:
            raise ConfigError(f"viewers.users[{index}]: user {user.username} is listed twice")
        logins[user.username] = password
    if not logins:
        log.warning("viewers.auth is on and viewers.users is empty: nobody can watch")
    return logins


def server_settings(config: Config) -> ServerSettings:
    """The RTSP server's settings, passwords resolved (ConfigError if one cannot be read)."""
    server = config.server
    return ServerSettings(
        bind=server.bind, port=server.port, users=viewer_logins(config),
        max_connections=server.max_connections,
        max_unauthenticated=server.max_unauthenticated,
        login_timeout_s=server.login_timeout_s, max_sessions=server.max_sessions,
        max_sessions_per_user=config.viewers.max_sessions_per_user,
        viewer_max_lag_s=server.viewer_max_lag_s, viewer_stall_s=server.viewer_stall_s,
    )


class _ViewerEvents:
    """The RTSP server's viewer events, counted in the daemon's metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def viewer_dropped(self, camera: str, frames: int) -> None:
        self._metrics.viewer_dropped.inc(camera, amount=frames)

    def viewer_disconnected(self, camera: str, reason: str) -> None:
        self._metrics.viewer_disconnects.inc(camera, reason)

    def auth_failed(self) -> None:
        self._metrics.auth_failures.inc()


def camera_setup(config: Config, camera: CameraConfig, analyzer: Analyzer) -> CameraSetup:
    """Resolve one camera's credentials, classes and blur (ConfigError/ModelError if unusable)."""
    password = username = None
    if camera.credentials is not None:
        username = camera.credentials.username
        password = read_secret(camera.credentials, f"camera {camera.name} credentials")
    source = CameraSource.parse(camera.url, username, password)
    add_login(source.username, source.password)  # the log filter: password, Basic header
    names = config.camera_classes(camera)
    ids = class_ids(analyzer.manifest, names)
    return CameraSetup(
        name=camera.name,
        source=source,
        protected=ids,
        class_names=dict(zip(ids, names, strict=True)),
        fail_style=config.camera_blur(camera).fail_closed,
        analysis=config.analysis,
        ingest=config.ingest,
    )


def _camera_inputs(config: Config, setup: CameraSetup, camera: CameraConfig
                   ) -> tuple[object, ...]:
    """What a running camera depends on (resolved passwords included): if any of it changes,
    the camera restarts on reload."""
    return (setup, camera, config.camera_blur(camera))


class Supervisor:
    """Context manager: `with Supervisor(config) as s:` starts everything, exit stops it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self._backend: Backend | None = None
        self._server: RtspServer | None = None
        self._metrics_server: MetricsServer | None = None
        self._cameras: dict[str, tuple[tuple[object, ...], CameraPipeline, CameraPublisher]] = {}
        self._lock = threading.Lock()

    @property
    def analyzer(self) -> Analyzer:
        if self._backend is None:
            raise RuntimeError("the supervisor is not started")
        return self._backend.analyzer

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise RuntimeError("the supervisor is not started")
        return self._backend

    # --- start / stop ---------------------------------------------------------------------

    def __enter__(self) -> Supervisor:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        config = self.config
        settings = server_settings(config)
        self._backend = open_backend(config)
        self._warm_anonymizer()
        self._server = RtspServer(settings, _ViewerEvents(self.metrics))
        self._server.start()
        if config.metrics.enabled:
            self._metrics_server = MetricsServer(
                config.metrics.bind, config.metrics.port, self.metrics, self.health,
                self._refresh_gauges)
            self._metrics_server.start()
        self._apply_cameras(config)

    def _warm_anonymizer(self) -> None:
        """Compile the blur now (numba or device kernels), not on the first camera frame."""
        ids = class_ids(self.analyzer.manifest, self.config.anonymize)
        frame = np.full((64, 64, 3), 128, np.uint8)
        labels = np.zeros((64, 64), np.uint8)
        labels[16:48, 16:48] = ids[0]
        started = time.monotonic()
        self.backend.anonymizer(ids, self.config.blur).anonymize(frame, labels)
        log.info("anonymizer warm (%.1f s)", time.monotonic() - started)

    def stop(self) -> None:
        """Stop every camera (in parallel), then the servers, within service.stop_timeout_s."""
        timeout = self.config.service.stop_timeout_s
        deadline = time.monotonic() + timeout
        with self._lock:
            names = list(self._cameras)
        self._stop_cameras(names, timeout * 0.6)
        if self._server is not None:
            self._server.stop(max(0.5, deadline - time.monotonic()))
            self._server = None
        if self._metrics_server is not None:
            self._metrics_server.stop(max(0.5, deadline - time.monotonic()))
            self._metrics_server = None

    # --- cameras --------------------------------------------------------------------------

    def _start_camera(self, config: Config, camera: CameraConfig, setup: CameraSetup) -> None:
        if self._server is None:
            raise RuntimeError("the RTSP server is not running")
        anonymizer = self.backend.anonymizer(setup.protected, config.camera_blur(camera))
        publisher = CameraPublisher(camera.name, 0.0, PacingDelay(*config.pacing_delay))
        pipeline = CameraPipeline(setup, self.analyzer, anonymizer, publisher, self.metrics)
        self._server.mount(publisher)
        pipeline.start()
        with self._lock:
            self._cameras[camera.name] = (_camera_inputs(config, setup, camera), pipeline,
                                          publisher)
        log.info("camera %s: started", camera.name)

    def _stop_cameras(self, names: Iterable[str], timeout: float) -> None:
        with self._lock:
            entries = [(n, self._cameras.pop(n)) for n in names if n in self._cameras]
        threads = []
        for name, (_, pipeline, publisher) in entries:
            thread = threading.Thread(target=pipeline.stop, args=(timeout,),
                                      name=f"stop-{name}", daemon=True)
            thread.start()
            threads.append(thread)
            if self._server is not None:
                self._server.unmount(publisher)
        deadline = time.monotonic() + timeout + 0.5
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for _, (_, _, publisher) in entries:
            publisher.close()
        for name, _ in entries:
            self.metrics.forget_camera(name)
            log.info("camera %s: stopped", name)

    def _apply_cameras(self, config: Config) -> None:
        """Start, stop and restart cameras so that the running set matches `config`."""
        wanted = {c.name: c for c in config.cameras if c.enabled}
        # resolve every camera first (passwords, classes): a bad one changes nothing
        setups = {n: camera_setup(config, c, self.analyzer) for n, c in wanted.items()}
        with self._lock:
            running = {n: inputs for n, (inputs, _, _) in self._cameras.items()}
        changed = [n for n, inputs in running.items()
                   if n not in wanted
                   or inputs != _camera_inputs(config, setups[n], wanted[n])]
        self._stop_cameras(changed, config.service.stop_timeout_s * 0.6)
        for name, camera in wanted.items():
            if name not in running or name in changed:
                self._start_camera(config, camera, setups[name])

    def reload(self, config: Config) -> None:
        """Apply `config`. The RTSP server takes its new settings (users, auth, limits, a new
        address: bound first); parts that need a restart (model, metrics) are kept as they are,
        with a warning. A camera whose setup cannot be resolved, a password that cannot be read
        or an address that cannot be bound raises before anything changes."""
        for part in ("model", "metrics"):
            if getattr(config, part) != getattr(self.config, part):
                log.warning("reload: %s settings changed; they take effect only after a restart",
                            part)
        settings = server_settings(config)
        wanted = {c.name: c for c in config.cameras if c.enabled}
        for _name, camera in wanted.items():  # resolve every camera before changing anything
            camera_setup(config, camera, self.analyzer)
        if self._server is not None:
            try:
                self._server.configure(settings)
            except StreamError as exc:
                raise ConfigError(f"server: {exc}") from None
        added = set(config.analyzed_classes) - set(self.config.analyzed_classes)
        if added:
            log.warning("reload: classes %s are new to the analyzer: until a restart they are"
                        " blurred where the full-frame pass finds them, not the tiles",
                        ", ".join(sorted(added)))
        kept = config.model_copy(update={
            "model": self.config.model, "metrics": self.config.metrics})
        self._apply_cameras(kept)
        self.config = kept
        log.info("reload: configuration applied (%d cameras running)", len(self._cameras))

    # --- health ---------------------------------------------------------------------------

    def stale_stages(self) -> list[str]:
        """Stages whose heartbeat is too old; empty while everything is alive."""
        limit = self.config.service.heartbeat_timeout_s
        stale: list[str] = []
        if self._server is not None and time.monotonic() - self._server.heartbeat > limit:
            stale.append("rtsp-server")
        with self._lock:
            pipelines = [p for _, p, _ in self._cameras.values()]
        for pipeline in pipelines:
            stale.extend(pipeline.stale_stages(limit))
        return stale

    def health(self) -> tuple[bool, list[str]]:
        window = self.config.metrics.health_window_s
        with self._lock:
            pipelines = [p for _, p, _ in self._cameras.values()]
        lines = [f"{p.name}: {'publishing' if p.publishing(window) else 'NOT publishing'}"
                 for p in pipelines]
        stale = self.stale_stages()
        lines.extend(f"stale stage: {s}" for s in stale)
        ok = all(p.publishing(window) for p in pipelines) and not stale
        return ok, lines

    def _refresh_gauges(self) -> None:
        window = self.config.metrics.health_window_s
        with self._lock:
            cameras = list(self._cameras.values())
        for _, pipeline, publisher in cameras:
            self.metrics.viewers.set(pipeline.name, value=publisher.viewers)
            self.metrics.paced_late.set(pipeline.name, value=publisher.late)
            self.metrics.up.set(pipeline.name, value=1.0 if pipeline.publishing(window) else 0.0)

    def status_line(self) -> str:
        ok, _ = self.health()
        return f"{len(self._cameras)} cameras, {'healthy' if ok else 'degraded'}"
