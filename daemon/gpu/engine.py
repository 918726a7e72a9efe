"""TensorRT plans built from the ONNX model and cached by (ONNX sha256, GPU, TensorRT version).

The TensorRT module is an argument everywhere: `tensorrt_module()` is the one place that imports
it, and tests pass the `tensorrt_rtx` pip package, which parses and builds ONNX on a CPU-only
machine. TensorRT 10 and 11 and TensorRT-RTX share the calls used here. Networks are created
strongly typed (TensorRT 11 accepts nothing else): FP16 comes from an FP16 ONNX variant
(`fp16_variant`), never from a builder flag.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from daemon.analysis.manifest import sha256_file
from daemon.errors import BackendUnavailable, EngineError, ModelError

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16"]
PLAN_SUFFIX = ".plan"
# systemd: while a build runs, ask for this much more start-up time every time progress is made.
EXTEND_TIMEOUT_US = 120_000_000
_NOTIFY_INTERVAL_S = 10.0


def tensorrt_module() -> ModuleType:
    """The installed TensorRT Python module; BackendUnavailable (with the reason) if none."""
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailable(
            f"TensorRT is not installed (pip install tensorrt; {exc})"
        ) from exc
    module: ModuleType = tensorrt  # TensorRT has no type information: Any to mypy
    return module


@dataclass(frozen=True)
class GpuIdentity:
    """What a plan is specific to on the device side."""

    name: str
    compute_capability: tuple[int, int]


@dataclass(frozen=True)
class EngineKey:
    """Everything a cached plan depends on; any change means a rebuild."""

    onnx_sha256: str
    gpu: str
    compute_capability: str
    tensorrt: str
    precision: Precision

    def file_name(self, model_stem: str) -> str:
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu).strip("-").lower() or "gpu"
        sm = self.compute_capability.replace(".", "")
        return (
            f"{model_stem}-{self.onnx_sha256[:16]}-{gpu}-sm{sm}"
            f"-trt{self.tensorrt}-{self.precision}{PLAN_SUFFIX}"
        )



def engine_key(onnx: Path, gpu: GpuIdentity, trt: ModuleType, precision: Precision) -> EngineKey:
    major, minor = gpu.compute_capability
    return EngineKey(sha256_file(onnx), gpu.name, f"{major}.{minor}", trt.__version__, precision)


def default_cache_dir() -> Path:
    """$CACHE_DIRECTORY/engines under systemd (CacheDirectory=), else ~/.cache/privacy-gateway."""
    systemd = os.environ.get("CACHE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0]) / "engines"
    return Path.home() / ".cache" / "privacy-gateway" / "engines"


def sd_notify(message: str) -> bool:
    """Send one sd_notify datagram if NOTIFY_SOCKET is set (the daemon's own client)."""
    from daemon.service.sdnotify import Notifier

    notifier = Notifier()
    try:
        return notifier.notify(message)
    finally:
        notifier.close()


class BuildProgress:
    """Logs build phases and keeps systemd from timing out the start while a plan builds."""

    def __init__(self, notify: Callable[[str], bool] = sd_notify) -> None:
        self._notify = notify
        self._last = 0.0
        self.phases: list[str] = []

    def extend(self, status: str) -> None:
        now = time.monotonic()
        if now - self._last >= _NOTIFY_INTERVAL_S:
            self._last = now
            self._notify(f"EXTEND_TIMEOUT_USEC={EXTEND_TIMEOUT_US}\nSTATUS={status}")

    def phase(self, name: str) -> None:
        self.phases.append(name)
        log.info("TensorRT build: %s", name)
        self.extend(f"building TensorRT engine: {name}")

    @contextlib.contextmanager
    def heartbeat(self, status: str) -> Iterator[None]:
        """Keep extending the start timeout while a long call without callbacks runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(_NOTIFY_INTERVAL_S / 2):
                self.extend(status)

        thread = threading.Thread(target=beat, name="trt-build-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)


def _progress_monitor(trt: ModuleType, progress: BuildProgress) -> Any:
    """A trt.IProgressMonitor forwarding to `progress` (TensorRT >= 10), or None."""
    base: Any = getattr(trt, "IProgressMonitor", None)  # a pybind11 class (TensorRT is untyped)
    if base is None:
        return None

    class Monitor(base):  # type: ignore[misc]  # subclassing Any: TensorRT is untyped
        def __init__(self) -> None:
            base.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                progress.phase(phase_name)

        def step_complete(self, phase_name: str, step: int) -> bool:
            progress.extend(f"building TensorRT engine: {phase_name} step {step}")
            return True

        def phase_finish(self, phase_name: str) -> None:
            pass

    return Monitor()


def fp16_variant(onnx: Path, target: Path) -> Path:
    """An FP16 copy of an FP32 ONNX model (weights and activations, I/O included), written to
    `target`. TensorRT 11 is strongly typed: this is where FP16 comes from."""
    try:
        import onnx as onnx_lib
        from onnxconverter_common import float16
    except ImportError as exc:
        raise BackendUnavailable(
            f"FP16 conversion needs onnx and onnxconverter-common: {exc}"
        ) from exc
    model = onnx_lib.load(str(onnx))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns for every weight it clips to the FP16 range
        # keep_io_types=True fails on models whose output follows a Resize (as the reference's).
        converted = float16.convert_float_to_float16(model, keep_io_types=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    onnx_lib.save(converted, str(partial))
    partial.replace(target)
    return target


def build_plan(
    trt: ModuleType, onnx: Path, progress: BuildProgress, workspace_bytes: int = 1 << 30
) -> bytes:
    """Parse `onnx` into a strongly typed network and build a serialized plan."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    progress.phase(f"parsing {onnx.name}")
    if not parser.parse_from_file(str(onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT cannot parse {onnx}: {errors or 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    monitor = _progress_monitor(trt, progress)
    if monitor is not None:
        config.progress_monitor = monitor
    started = time.monotonic()
    progress.phase("building the engine")
    with progress.heartbeat("building TensorRT engine"):
        plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT could not build an engine from {onnx} (see its log above)")
    log.info("TensorRT engine built in %.1f s (%d bytes)", time.monotonic() - started, plan.nbytes)
    return bytes(plan)


def ensure_engine(
    trt: ModuleType,
    onnx: Path,
    gpu: GpuIdentity,
    cache_dir: Path,
    precision: Precision = "fp16",
    *,
    force: bool = False,
    progress: BuildProgress | None = None,
) -> Path:
    """The cached plan for (onnx, gpu, TensorRT, precision), built first if missing or `force`.

    Plans of the same model with another key (new ONNX, other GPU, TensorRT upgrade) are
    removed once the new one is in place. A sidecar `.json` records the key.
    """
    if not onnx.is_file():
        raise ModelError(f"model file {onnx} not found")
    key = engine_key(onnx, gpu, trt, precision)
    plan_path = cache_dir / key.file_name(onnx.stem)
    if plan_path.is_file() and not force:
        log.info("TensorRT engine: cached %s", plan_path)
        return plan_path
    progress = progress or BuildProgress()
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("TensorRT engine: building %s (%s)", plan_path.name, precision)
    source = onnx
    if precision == "fp16":
        progress.phase("converting the ONNX to FP16")
        source = fp16_variant(onnx, cache_dir / f"{plan_path.stem}.fp16.onnx")
    plan = build_plan(trt, source, progress)
    partial = plan_path.with_name(plan_path.name + ".partial")
    partial.write_bytes(plan)
    partial.replace(plan_path)
    plan_path.with_suffix(".json").write_text(json.dumps(asdict(key), indent=1) + "\n")
    if source != onnx:
        source.unlink(missing_ok=True)
    for stale in cache_dir.glob(f"{onnx.stem}-*{PLAN_SUFFIX}"):
        if stale != plan_path:
            log.info("TensorRT engine: removing stale %s", stale.name)
            stale.unlink(missing_ok=True)
            stale.with_suffix(".json").unlink(missing_ok=True)
    return plan_path
