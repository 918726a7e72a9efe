"""GPU backend selection: `device: gpu` fails with the reason (auto's fallback is in
test_backends), the CLI's build-engine reports it; cupy and tensorrt are imported only by the
GPU backend."""

import subprocess
import sys

import pytest

from daemon.backends import open_backend
from daemon.config import Config, ModelConfig
from daemon.configfile import load_config
from daemon.errors import BackendUnavailable

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def gpu_usable() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def config_for(device: str) -> Config:
    base = load_config(None)
    return base.model_copy(update={"model": base.model.model_copy(update={"device": device})})


@pytest.mark.skipif(gpu_usable(), reason="a GPU is present: this checks the no-GPU path")
def test_device_gpu_without_a_gpu_says_why():
    with pytest.raises(BackendUnavailable) as raised:
        open_backend(config_for("gpu"))
    message = str(raised.value)
    assert message.startswith("model.device is gpu: ")
    assert any(
        reason in message
        for reason in ("CuPy is not installed", "no usable CUDA driver", "no CUDA device")
    ), message


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_missing_cupy_is_named():
    done = run_python(
        "import sys; sys.modules['cupy'] = None\n"  # as if CuPy were not installed
        "from daemon.gpu.backend import cupy_module\n"
        "from daemon.errors import BackendUnavailable\n"
        "try:\n    cupy_module()\nexcept BackendUnavailable as e:\n    print(e)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("CuPy is not installed"), done.stdout


def test_cpu_paths_never_import_cupy_or_tensorrt():
    done = run_python(
        "import sys\n"
        "from daemon.backends import open_backend\n"
        "from daemon.configfile import load_config\n"
        "import daemon.cli, daemon.anonymizer.cpu\n"
        "c = load_config(None)\n"
        "c = c.model_copy(update={'model': c.model.model_copy(update={'device': 'cpu'})})\n"
        "open_backend(c).analyzer\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cupy', 'tensorrt',"
        " 'tensorrt_rtx', 'daemon')))\n"
    )
    assert done.returncode == 0, done.stderr
    assert "cupy" not in done.stdout and "tensorrt" not in done.stdout
    assert "daemon.gpu.backend" not in done.stdout, done.stdout


def test_build_engine_without_tensorrt_exits_2_with_the_reason(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "build-engine", "--cache", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert done.returncode == 2, done.stderr
        assert "anonymizer: error: TensorRT is not installed" in done.stderr
        assert not list(tmp_path.iterdir())
    else:
        if not gpu_usable():
            assert done.returncode == 2 and "CUDA" in done.stderr, done.stderr


def test_engine_cache_setting_is_a_path():
    assert ModelConfig().engine_cache is None
    assert str(ModelConfig(engine_cache="/var/cache/x").engine_cache) == "/var/cache/x"


def test_the_cpu_backend_pairs_the_cpu_anonymizer():
    from daemon.anonymizer.cpu import CpuAnonymizer

    backend = open_backend(config_for("cpu"))
    assert backend.name in ("openvino", "onnxruntime")
    assert isinstance(backend.anonymizer((1,), config_for("cpu").blur), CpuAnonymizer)
