"""Which numeric precision a CPU backend runs the model in (`model.precision`).

Measured (bench/analyzer.py, bench/int8.py; one 513 x 513 pass, one thread):
- Intel Xeon with AMX (the issue's machine): OpenVINO BF16 32.5 ms, INT8 35.0 ms: BF16 wins.
- AMD EPYC Zen 4 (AVX512-BF16 and VNNI, no AMX; this project's CI): OpenVINO FP32 132.5 ms,
  BF16 64.5 ms, the shipped INT8 copy 39.7 ms (ONNX Runtime: FP32 135.2, INT8 47.9).
The INT8 copy keeps every val source's person IoU and the plate IoU within 0.003 of FP32.

So `auto` is: INT8 where an INT8 copy of the model ships and the CPU has VNNI but no AMX;
else BF16 where OpenVINO computes BF16 natively; else FP32.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

from daemon.errors import BackendUnavailable

Precision = Literal["int8", "bf16", "fp32"]


def int8_copy(model: Path) -> Path | None:
    """`<model>_int8.onnx` next to the model, when it and its manifest are there."""
    copy = model.with_name(f"{model.stem}_int8.onnx")
    if copy.is_file() and copy.with_suffix(".manifest.yaml").is_file():
        return copy
    return None


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def pick_precision(
    requested: Literal["auto", "fp32", "bf16", "int8"],
    *,
    has_int8: bool,
    native_bf16: bool,
    flags: frozenset[str],
) -> Precision:
    """The precision to run; BackendUnavailable when a forced one cannot run here."""
    if requested == "int8":
        if not has_int8:
            raise BackendUnavailable(
                "model.precision is int8 but no INT8 copy of the model ships next to it"
                " (<model>_int8.onnx with its manifest)")
        return "int8"
    if requested == "bf16":
        if not native_bf16:
            raise BackendUnavailable(
                "model.precision is bf16 but this device has no native BF16; use auto or fp32")
        return "bf16"
    if requested == "fp32":
        return "fp32"
    vnni = bool(flags & {"avx512_vnni", "avx_vnni", "asimddp"})
    amx = "amx_bf16" in flags
    if has_int8 and vnni and not amx:
        return "int8"
    return "bf16" if native_bf16 else "fp32"
