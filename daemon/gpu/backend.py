"""Opening the GPU backend: CuPy and a CUDA device, TensorRT, the engine; every failure a reason.

`create_gpu_analyzer(config)` is what `daemon.backends` opens for `device: tensorrt` (or gpu)
(and tries first for `auto`). Any missing piece raises BackendUnavailable saying which.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from daemon.config import BlurConfig, Config
from daemon.errors import BackendUnavailable
from daemon.gpu.engine import GpuIdentity, default_cache_dir, ensure_engine, tensorrt_module

if TYPE_CHECKING:  # imported where used: CuPy and TensorRT load only when the GPU is chosen
    from daemon.gpu.anonymizer import DeviceAnonymizer
    from daemon.gpu.tensorrt_backend import TrtAnalyzer

log = logging.getLogger(__name__)


def cupy_module() -> ModuleType:
    """CuPy with a usable CUDA device; BackendUnavailable naming what is missing."""
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailable(
            f"CuPy is not installed (./install.sh --gpu, or pip install cupy-cuda13x; {exc})"
        ) from exc
    except OSError as exc:  # e.g. a read-only home for its cache: fall back, do not crash
        raise BackendUnavailable(f"CuPy cannot be imported ({exc})") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError (no driver, driver too old) or a missing libcudart
        raise BackendUnavailable(f"no usable CUDA driver: {exc}") from exc
    if count < 1:
        raise BackendUnavailable("no CUDA device found")
    module: ModuleType = cupy  # CuPy has no type information: Any to mypy
    return module


@dataclass(frozen=True)
class GpuDevice:
    """The CUDA device this process uses, its stream and the compiled kernels."""

    cupy: ModuleType
    identity: GpuIdentity
    stream: Any
    kernels: Any  # daemon.gpu.kernels.CupyKernels


def open_device(device_id: int = 0) -> GpuDevice:
    cupy = cupy_module()
    from daemon.gpu.kernels import CupyKernels

    try:
        cupy.cuda.Device(device_id).use()
        props = cupy.cuda.runtime.getDeviceProperties(device_id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        identity = GpuIdentity(name, (int(props["major"]), int(props["minor"])))
        # A blocking stream: orders after work that CuPy put on the default stream (uploads
        # made outside `with stream`), so no caller can race the kernels by forgetting it.
        stream = cupy.cuda.Stream(non_blocking=False)
        kernels = CupyKernels(cupy, stream)
    except Exception as exc:  # CUDA and NVRTC errors have no common base class in CuPy
        raise BackendUnavailable(f"CUDA device {device_id} is not usable: {exc}") from exc
    log.info("GPU: %s (compute capability %d.%d)", identity.name, *identity.compute_capability)
    return GpuDevice(cupy, identity, stream, kernels)


def create_gpu_analyzer(config: Config, device: GpuDevice | None = None) -> TrtAnalyzer:
    """A TensorRT analyzer for `config.model`, building the cached engine on first use."""
    from daemon.analysis.manifest import class_ids, load_manifest

    manifest = load_manifest(config.model.manifest_path)
    protected = class_ids(manifest, config.analyzed_classes)
    device = device or open_device()
    trt = tensorrt_module()
    from daemon.gpu.tensorrt_backend import TrtAnalyzer

    cache = config.model.engine_cache or default_cache_dir()
    plan = ensure_engine(trt, config.model.path, device.identity, cache, "fp16")
    return TrtAnalyzer(
        trt, device, plan, manifest, tiling=config.analysis.tiling, protected=protected
    )


def create_gpu_anonymizer(
    class_ids: Sequence[int], blur: BlurConfig, device: GpuDevice | None = None
) -> DeviceAnonymizer:
    """The device anonymizer (daemon.gpu.anonymizer.DeviceAnonymizer) on `device`."""
    from daemon.gpu.anonymizer import DeviceAnonymizer

    device = device or open_device()
    return DeviceAnonymizer(class_ids, blur, device.kernels)
