"""The TensorRT engine builder and cache, run with the real `tensorrt-rtx` pip package, which
parses and builds ONNX on a CPU-only machine (TensorRT itself needs a GPU to build)."""

import json
import socket
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from daemon.analysis.manifest import load_manifest
from daemon.errors import ModelError
from daemon.gpu.engine import BuildProgress, GpuIdentity, ensure_engine, fp16_variant

trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx not installed (pip install it)")

ENGINES = Path(__file__).resolve().parents[1] / "daemon" / "engines"
MODEL = ENGINES / "deeplabv3_mnv2_voc_257.onnx"
CPU_BUILD = GpuIdentity("none (CPU-only build)", (0, 0))


def quiet() -> BuildProgress:
    return BuildProgress(notify=lambda message: True)


def test_builds_once_then_uses_the_cache(tmp_path):
    progress = quiet()
    plan = ensure_engine(trt, MODEL, CPU_BUILD, tmp_path, "fp32", progress=progress)
    assert plan.is_file() and plan.stat().st_size > 1_000_000  # the weights alone are 2.8 MB
    assert progress.phases[0] == f"parsing {MODEL.name}"
    key = json.loads(plan.with_suffix(".json").read_text())
    manifest = load_manifest(MODEL.with_suffix(".manifest.yaml"))
    assert key == {
        "onnx_sha256": manifest.sha256,
        "gpu": CPU_BUILD.name,
        "compute_capability": "0.0",
        "tensorrt": trt.__version__,
        "precision": "fp32",
    }
    built = plan.stat().st_mtime_ns
    again = quiet()
    assert ensure_engine(trt, MODEL, CPU_BUILD, tmp_path, "fp32", progress=again) == plan
    assert again.phases == [] and plan.stat().st_mtime_ns == built
    forced = quiet()
    ensure_engine(trt, MODEL, CPU_BUILD, tmp_path, "fp32", force=True, progress=forced)
    assert forced.phases


def test_rebuilds_when_the_key_changes(tmp_path):
    first = ensure_engine(trt, MODEL, CPU_BUILD, tmp_path, "fp32", progress=quiet())
    other_gpu = GpuIdentity("NVIDIA H100 80GB HBM3", (9, 0))
    second = ensure_engine(trt, MODEL, other_gpu, tmp_path, "fp32", progress=quiet())
    assert second != first and "nvidia-h100-80gb-hbm3-sm90" in second.name
    assert not first.exists()  # the stale plan of the same model goes
    model = tmp_path / "models" / MODEL.name
    model.parent.mkdir()
    proto = onnx.load(str(MODEL))
    proto.doc_string = "retrained"  # a new ONNX file: new hash
    onnx.save(proto, str(model))
    old_hash = json.loads(second.with_suffix(".json").read_text())["onnx_sha256"]
    third = ensure_engine(trt, model, other_gpu, tmp_path, "fp32", progress=quiet())
    assert third != second and not second.exists()
    assert json.loads(third.with_suffix(".json").read_text())["onnx_sha256"] != old_hash


def test_fp16_comes_from_the_onnx(tmp_path, shared_data):
    plan = ensure_engine(trt, MODEL, CPU_BUILD, tmp_path, "fp16", progress=quiet())
    assert plan.name.endswith("-fp16.plan")
    assert not list(tmp_path.glob("*.onnx"))  # the FP16 copy is only a build input
    half = fp16_variant(MODEL, tmp_path / "half.onnx")
    proto = onnx.load(str(half))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert {i.data_type for i in proto.graph.initializer if np.prod(i.dims) > 0} <= {
        onnx.TensorProto.FLOAT16, onnx.TensorProto.INT64
    }
    # The FP16 model labels a real frame like the FP32 one (ONNX Runtime on the CPU).
    import onnxruntime as ort

    image = cv2.imread(str(shared_data / "stills" / "deface_city.jpg"))
    rgb = cv2.resize(image, (257, 257), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
    x = ((rgb.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
    full = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    lite = ort.InferenceSession(str(half), providers=["CPUExecutionProvider"])
    a = full.run(None, {"sub_7": x})[0].argmax(1)
    b = lite.run(None, {"sub_7": x.astype(np.float16)})[0].argmax(1)
    assert (a == b).mean() > 0.995
    assert (a == 15).any()  # the still has people in it


def test_unparsable_model_is_a_model_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(ModelError, match="TensorRT cannot parse"):
        ensure_engine(trt, bad, CPU_BUILD, tmp_path / "cache", "fp32", progress=quiet())
    with pytest.raises(ModelError, match="not found"):
        ensure_engine(trt, tmp_path / "missing.onnx", CPU_BUILD, tmp_path, "fp32")


def test_a_build_extends_the_systemd_start_timeout(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        ensure_engine(trt, MODEL, CPU_BUILD, tmp_path / "cache", "fp32")
        message = server.recv(4096).decode()
    assert message.startswith("EXTEND_TIMEOUT_USEC=")
    assert "STATUS=building TensorRT engine" in message


def test_the_heartbeat_extends_during_a_silent_call(monkeypatch):
    import time

    import daemon.gpu.engine as engine

    monkeypatch.setattr(engine, "_NOTIFY_INTERVAL_S", 0.1)
    sent = []
    progress = BuildProgress(notify=lambda message: sent.append(message) or True)
    with progress.heartbeat("building TensorRT engine"):
        time.sleep(0.45)  # a builder call that reports nothing
    count = len(sent)
    assert count >= 3 and all(m.startswith("EXTEND_TIMEOUT_USEC=") for m in sent)
    time.sleep(0.2)
    assert len(sent) == count  # stopped with the call
