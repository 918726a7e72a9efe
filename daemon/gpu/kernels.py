"""The CUDA source of the GPU backend and two ways to run it: CuPy on a device, g++ on the CPU."""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from daemon.errors import BackendUnavailable

SOURCE = Path(__file__).with_name("kernels.cu")
CPU_SHIM = Path(__file__).with_name("cpu_shim.h")

KERNEL_NAMES = (
    "class_mask",
    "dilate_rows",
    "dilate_cols",
    "components_init",
    "components_merge",
    "components_compress",
    "component_roots",
    "component_boxes",
    "collect_objects",
    "paint_owner",
    "blur_rows",
    "blur_cols",
    "preprocess",
    "upsampled_argmax",
    "upsampled_nearest",
)

# No fused multiply-add anywhere: the kernels already use __fmul_rn/__fadd_rn, and --fmad=false
# covers any plain expression, so the device rounds like the numpy oracle and the g++ build.
NVRTC_OPTIONS = ("--std=c++14", "--fmad=false")
GXX_OPTIONS = ("-O2", "-std=c++17", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC")

_BLOCK = 256
_MAX_GRID = 65535 * 16  # grid-stride loops cover any size; this bounds the launch


def source_text() -> str:
    return SOURCE.read_text(encoding="utf-8")


def compile_ptx(architecture: str = "compute_90") -> str:
    """PTX of kernels.cu from NVRTC (no device needed); BackendUnavailable if NVRTC is missing,
    RuntimeError with NVRTC's log if the source does not compile."""
    try:
        from cupy.cuda import nvrtc
    except ImportError as exc:
        raise BackendUnavailable(f"CuPy is not installed: {exc}") from exc
    try:
        program = nvrtc.createProgram(source_text(), SOURCE.name, [], [])
    except Exception as exc:  # CuPy raises plain RuntimeError/OSError when libnvrtc is absent
        raise BackendUnavailable(f"NVRTC is not usable: {exc}") from exc
    try:
        nvrtc.compileProgram(program, [f"--gpu-architecture={architecture}", *NVRTC_OPTIONS])
        ptx = nvrtc.getPTX(program)
    except nvrtc.NVRTCError as exc:
        log = nvrtc.getProgramLog(program)
        raise RuntimeError(f"NVRTC could not compile {SOURCE.name}:\n{log}") from exc
    finally:
        nvrtc.destroyProgram(program)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


class Kernels(Protocol):
    """The kernels of kernels.cu on some executor, with the array module that feeds them."""

    xp: ModuleType  # numpy or cupy: arrays passed to `launch` come from it

    def launch(self, name: str, items: int, *args: Any) -> None:
        """Run kernel `name` over `items` work items; scalars must be numpy scalars (typed)."""
        ...


class CupyKernels:
    """kernels.cu compiled by CuPy (NVRTC) for the current device, launched on `stream`."""

    def __init__(self, cupy: ModuleType, stream: Any) -> None:
        self.xp = cupy
        self.stream = stream
        module = cupy.RawModule(code=source_text(), options=NVRTC_OPTIONS)
        self._functions = {name: module.get_function(name) for name in KERNEL_NAMES}

    def launch(self, name: str, items: int, *args: Any) -> None:
        grid = min(max(1, (items + _BLOCK - 1) // _BLOCK), _MAX_GRID)
        with self.stream:  # RawKernel launches on the current stream
            self._functions[name]((grid,), (_BLOCK,), args)


_CTYPES = {
    np.dtype(np.int32): ctypes.c_int,
    np.dtype(np.int64): ctypes.c_longlong,
    np.dtype(np.float32): ctypes.c_float,
    np.dtype(np.float64): ctypes.c_double,
}


class CpuKernels:
    """kernels.cu compiled by g++ through cpu_shim.h and called with ctypes on numpy arrays.

    The same source and the same launches as on the device: how CI checks the kernels against
    the numpy oracle without a GPU. `threads` > 1 runs each launch as that many concurrent OS
    threads sharing the items (ctypes releases the GIL), so the atomics and the races of the
    union-find labelling are exercised too.
    """

    xp = np

    def __init__(
        self, build_dir: Path | None = None, compiler: str = "g++", threads: int = 1
    ) -> None:
        if shutil.which(compiler) is None:
            raise BackendUnavailable(f"{compiler} not found: cannot build the CPU shim")
        digest = hashlib.sha256(source_text().encode() + CPU_SHIM.read_bytes()).hexdigest()[:16]
        folder = build_dir or Path(tempfile.gettempdir()) / "privacy-gateway-kernels"
        folder.mkdir(parents=True, exist_ok=True)
        library = folder / f"kernels-{digest}.so"
        if not library.is_file():
            partial = folder / f"kernels-{digest}.partial.so"
            command = [
                compiler,
                *GXX_OPTIONS,
                "-include",
                str(CPU_SHIM),
                "-x",
                "c++",
                str(SOURCE),
                "-o",
                str(partial),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"g++ could not compile {SOURCE.name}:\n{done.stderr}")
            partial.replace(library)
        self.library = library
        self._dll = ctypes.CDLL(str(library))
        self._functions = {name: getattr(self._dll, name) for name in KERNEL_NAMES}
        for function in self._functions.values():
            function.restype = None
        self._set_thread = self._dll.shim_set_thread
        self._set_thread.argtypes = (ctypes.c_uint, ctypes.c_uint)
        self.threads = threads

    def launch(self, name: str, items: int, *args: Any) -> None:
        function = self._functions[name]
        c_args = [_c_argument(a) for a in args]
        if self.threads == 1:
            function(*c_args)
            return

        def worker(index: int) -> None:
            self._set_thread(index, self.threads)
            function(*c_args)

        workers = [threading.Thread(target=worker, args=(i,)) for i in range(self.threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()


def _c_argument(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if not value.flags.c_contiguous:
            raise ValueError("kernel arguments must be C-contiguous arrays")
        return ctypes.c_void_p(value.ctypes.data)
    if isinstance(value, np.generic) and value.dtype in _CTYPES:
        return _CTYPES[value.dtype](value.item())
    raise TypeError(f"kernel scalar arguments must be typed numpy scalars, got {type(value)}")
