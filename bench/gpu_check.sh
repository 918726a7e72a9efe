#!/usr/bin/env bash
# The one command for a lent GPU machine (H100, Python 3.12, torch + cupy-cuda13x + onnx +
# onnxruntime + opencv; no TensorRT, no internet): the gpu tests (device vs CPU oracle), then
# bench/gpu_bench.py (device anonymizer at 1080p, frame transfers, PyTorch FP16 CUDA-graph proxy
# of the model's inference); logs and results land in bench/results/ (and $OUT when set).
#
# Here first (PyPI and ../shared reachable), once:   bash bench/gpu_check.sh --prepare
#   downloads the wheels the GPU image lacks (pydantic) into .whl/ and the test data into
#   .gpu_data/ (both git-ignored through .git/info/exclude; about 6 MiB together).
# There:   bash bench/gpu_check.sh        (carry .whl and .gpu_data; it takes 2-4 minutes)
#
# Exit status: 0 all passed; 1 a test or the benchmark failed; 3 no usable GPU (said why).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${GPU_CHECK_RESULTS:-bench/results}

if [ "${1:-}" = "--prepare" ]; then
    set -e
    for path in /.whl/ /.gpu_data/; do
        grep -qxF "$path" .git/info/exclude 2>/dev/null || echo "$path" >> .git/info/exclude
    done
    rm -rf .whl && mkdir -p .whl
    for wheel in pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
                 typing-inspection==0.4.5 typing-extensions==4.16.0; do
        "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$wheel"
    done
    rm -rf .gpu_data
    "$PY" bench/gpu_bench.py --prepare .gpu_data
    du -sh .whl .gpu_data
    exit 0
fi

mkdir -p "$RESULTS"
log="$RESULTS/gpu-check.log"
: > "$log"
say() { echo "gpu_check: $*" | tee -a "$log"; }

if ! "$PY" -c "import pydantic" 2>/dev/null; then
    if ls .whl/*.whl > /dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/gpu-check-site .whl/*.whl || exit 1
        export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
    else
        say "pydantic is missing and no .whl/ was carried (bash bench/gpu_check.sh --prepare)"
        exit 1
    fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

# The tests find shared data beside the repository; on the GPU machine it is the carried copy.
if [ ! -d ../shared/data ] && [ -d .gpu_data/data ]; then
    mkdir -p ../shared && ln -s "$PWD/.gpu_data/data" ../shared/data
fi

say "probing the GPU"
if ! "$PY" -c "
import sys
from daemon.errors import BackendUnavailable
from daemon.gpu.backend import open_device
try:
    d = open_device()
except BackendUnavailable as exc:
    print(f'no GPU: {exc}'); sys.exit(3)
print(f'GPU: {d.identity.name}, compute capability {d.identity.compute_capability}')
" 2>&1 | tee -a "$log"; then
    status=${PIPESTATUS[0]}
    [ "$status" -eq 3 ] && exit 3
    exit 1
fi

status=0
# Only the GPU backend's test files: the others import what the GPU image lacks (PyAV, GStreamer).
# The device tests run under --gpu (fail, not skip, without a GPU); the CPU-shim and NVRTC tests
# come along as a cross-check of the same kernels there. TensorRT is not installed there.
say "gpu tests (pytest --gpu; TensorRT test deselected: no TensorRT there)"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider --gpu -k "not tensorrt" \
    --junitxml="$RESULTS/gpu-tests.xml" -rs tests/test_gpu_device.py tests/test_gpu_nvrtc.py \
    tests/test_gpu_kernels_cpu.py 2>&1 | tee -a "$log" || status=1

say "benchmark"
timeout 180 "$PY" bench/gpu_bench.py --results "$RESULTS" 2>&1 | tee -a "$log" || status=1

if [ -n "${OUT:-}" ]; then
    cp "$log" "$RESULTS"/gpu-tests.xml "$OUT"/ 2>/dev/null
    latest=$(ls -t "$RESULTS"/gpu-*.json 2>/dev/null | head -1)
    [ -n "$latest" ] && cp "$latest" "${latest%.json}.md" "$OUT"/
fi
say "done, status $status"
exit $status
