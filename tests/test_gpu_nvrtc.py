"""kernels.cu compiles with NVRTC (the nvidia-cuda-nvrtc wheel through cupy.cuda.nvrtc): no GPU
needed, so CI catches a kernel that only g++ accepts."""

import re

import pytest

from daemon.gpu.kernels import KERNEL_NAMES, compile_ptx


@pytest.fixture(scope="module", params=["compute_75", "compute_90"])
def ptx(request):
    return compile_ptx(request.param)


def test_every_kernel_is_an_entry(ptx):
    entries = set(re.findall(r"\.entry\s+(\w+)\s*\(", ptx))
    assert entries == set(KERNEL_NAMES)


def test_no_fused_multiply_add_in_float_arithmetic(ptx):
    # The oracle rounds after every float32 multiply and add; a fused one would not.
    assert re.search(r"\bfma\.\w+\.f32\b", ptx) is None
    assert "mul.rn.f32" in ptx and "add.rn.f32" in ptx


def test_a_broken_kernel_does_not_compile(tmp_path, monkeypatch):
    import daemon.gpu.kernels as kernels

    broken = tmp_path / "kernels.cu"
    broken.write_text(kernels.SOURCE.read_text() + "\nKERNEL void broken() { undefined(); }\n")
    monkeypatch.setattr(kernels, "SOURCE", broken)
    with pytest.raises(RuntimeError, match=r"(?s)NVRTC could not compile.*undefined"):
        kernels.compile_ptx("compute_90")
