"""The one backend seam: which backend each `model.device` gets (forced, auto, every missing
piece a one-line reason), OpenVINO's labels against ONNX Runtime's on real images, and one
analyzer shared by two cameras' threads."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from daemon.analysis import load_manifest
from daemon.analysis.onnx_backend import OnnxAnalyzer
from daemon.analysis.openvino_backend import OpenVinoAnalyzer, resolve_precision
from daemon.backends import open_backend
from daemon.config import AnalysisConfig, Config, ModelConfig, TilingConfig
from daemon.errors import BackendUnavailable

ENGINES = Path(__file__).resolve().parents[1] / "daemon" / "engines"
MODEL = ENGINES / "deeplabv3plus_mnv2_person_plate_513.onnx"
MANIFEST = MODEL.with_suffix(".manifest.yaml")
PROTECTED = (1, 2)  # person, license_plate in the default model's manifest
# val images of every source (people near and far, plates), for the agreement check
VAL_IMAGES = (
    "person/images/val/pennfudan_PennPed00084.jpg",
    "person/images/val/camvid_0006R0_f02100.jpg",
)


def _config(device: str, **analysis: object) -> Config:
    return Config(model=ModelConfig(path=MODEL, device=device, threads=2),  # type: ignore[arg-type]
                  analysis=AnalysisConfig(**analysis))  # type: ignore[arg-type]


def _cpu_has_bf16() -> bool:
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _agreement(analyzer, reference, images: list[np.ndarray]) -> float:
    """Share of pixels where both analyzers give the same label."""
    agree = total = 0
    for image in images:
        expected, got = reference.labels(image), analyzer.labels(image)
        agree += int((expected == got).sum())
        total += expected.size
    return agree / total


def _val_images(shared_data: Path) -> list[np.ndarray]:
    images = [cv2.imread(str(shared_data / "seg" / name)) for name in VAL_IMAGES]
    plates = sorted((shared_data / "seg/plate/images/val").glob("*.jpg"))[:4]
    images += [cv2.imread(str(p)) for p in plates]
    assert all(i is not None for i in images) and len(images) == 6
    return images


# --- selection ------------------------------------------------------------------------------


def test_each_backend_can_be_forced() -> None:
    ort = open_backend(_config("onnxruntime"))
    assert ort.name == "onnxruntime" and isinstance(ort.analyzer, OnnxAnalyzer)
    ov = open_backend(_config("openvino"))
    assert ov.name == "openvino" and isinstance(ov.analyzer, OpenVinoAnalyzer)


def test_auto_picks_openvino_on_a_cpu_machine_and_logs_why_not_tensorrt(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="daemon.backends"):
        backend = open_backend(_config("auto"))
    if backend.name == "tensorrt":
        pytest.skip("this machine has a GPU and TensorRT: auto chose it")
    assert backend.name == "openvino"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "daemon.backends"]
    assert line.startswith("device auto: using openvino (tensorrt: "), line
    assert "\n" not in line


def test_forced_tensorrt_and_intel_gpu_fail_with_the_reason() -> None:
    with pytest.raises(BackendUnavailable, match=r"^model\.device is tensorrt: "):
        open_backend(_config("tensorrt"))
    import openvino

    if "GPU" in openvino.Core().available_devices:
        pytest.skip("this machine has an Intel GPU")
    with pytest.raises(BackendUnavailable,
                       match=r"^model\.device is openvino-gpu: OpenVINO has no GPU device here"):
        open_backend(_config("openvino-gpu"))


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=180, check=False)


def test_without_openvino_auto_falls_back_to_onnx_runtime_and_forced_openvino_says_why() -> None:
    done = _python(
        "import logging, sys; sys.modules['openvino'] = None\n"  # as if it were not installed
        "logging.basicConfig(level=logging.INFO, format='%(name)s %(message)s')\n"
        "from daemon.backends import open_backend\n"
        "from daemon.configfile import load_config\n"
        "from daemon.errors import BackendUnavailable\n"
        "c = load_config(None)\n"
        "def with_device(d):\n"
        "    return c.model_copy(update={'model': c.model.model_copy(update={'device': d})})\n"
        "print('chose', open_backend(with_device('cpu')).name)\n"
        "try:\n    open_backend(with_device('openvino'))\n"
        "except BackendUnavailable as e:\n    print('refused', e)\n"
    )
    assert done.returncode == 0, done.stderr
    assert "chose onnxruntime" in done.stdout, done.stdout
    assert "refused model.device is openvino: OpenVINO is not installed" in done.stdout
    assert "daemon.backends device cpu: using onnxruntime (openvino: OpenVINO is not" \
        in done.stderr, done.stderr


def test_precision_auto_is_bf16_only_where_the_cpu_has_it() -> None:
    with_bf16, without = ["FP32", "BF16", "INT8"], ["FP32", "INT8"]
    assert resolve_precision(with_bf16, "auto") == "bf16"
    assert resolve_precision(without, "auto") == "f32"
    assert resolve_precision(with_bf16, "fp32") == "f32"
    with pytest.raises(BackendUnavailable, match="no native BF16"):
        resolve_precision(without, "bf16")


# --- OpenVINO against ONNX Runtime on real images --------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_labels_agree_with_onnx_runtime(shared_data: Path, precision: str) -> None:
    if precision == "bf16" and not _cpu_has_bf16():
        pytest.skip("this CPU has no native BF16")
    manifest = load_manifest(MANIFEST)
    reference = OnnxAnalyzer(MODEL, manifest, threads=2)
    ov = OpenVinoAnalyzer(MODEL, manifest, precision=precision, threads=2)  # type: ignore[arg-type]
    assert ov.precision == ("bf16" if precision == "bf16" else "f32")
    agreement = _agreement(ov, reference, _val_images(shared_data))
    # the target is 99.5 %; measured 100 % (fp32) and 99.9 % (bf16) on val images
    assert agreement >= 0.995, agreement


# --- one analyzer, two cameras ----------------------------------------------------------------


def test_two_cameras_on_one_shared_analyzer_get_their_own_masks(shared_data: Path) -> None:
    """Two threads (two cameras' analysis loops) call one analyzer with different frames at the
    same time; each gets exactly the labels it gets alone."""
    backend = open_backend(_config("auto", tiling=TilingConfig()))
    analyzer = backend.analyzer
    frames = _val_images(shared_data)[:2]
    frames = [cv2.resize(f, (768, 432)) for f in frames]  # a multi-region plan each
    plan = analyzer.plan(432, 768)
    assert len(plan) > 1
    alone = [[analyzer.region_labels(f, r) for r in plan] for f in frames]
    assert not all(np.array_equal(a, b) for a, b in zip(*alone, strict=True))
    wrong: list[str] = []
    barrier = threading.Barrier(2)

    def camera(index: int) -> None:
        barrier.wait()
        for _ in range(3):
            for region, expected in zip(plan, alone[index], strict=True):
                try:
                    got = analyzer.region_labels(frames[index], region)
                except Exception as exc:  # e.g. a busy inference request
                    wrong.append(f"camera {index} region {region}: {exc}")
                    continue
                if not np.array_equal(got, expected):
                    wrong.append(f"camera {index} region {region}: other labels")

    threads = [threading.Thread(target=camera, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not wrong, wrong


# --- precision ------------------------------------------------------------------------------


def test_auto_precision_follows_the_measured_rule() -> None:
    from daemon.analysis.precision import pick_precision

    zen4 = frozenset({"avx512f", "avx512_vnni", "avx512_bf16"})
    sapphire_rapids = zen4 | {"amx_bf16", "amx_int8", "amx_tile"}
    old = frozenset({"avx2"})
    assert pick_precision("auto", has_int8=True, native_bf16=True, flags=zen4) == "int8"
    assert pick_precision("auto", has_int8=True, native_bf16=True, flags=sapphire_rapids) == "bf16"
    assert pick_precision("auto", has_int8=False, native_bf16=True, flags=zen4) == "bf16"
    assert pick_precision("auto", has_int8=True, native_bf16=False, flags=old) == "fp32"
    assert pick_precision("fp32", has_int8=True, native_bf16=True, flags=zen4) == "fp32"
    with pytest.raises(BackendUnavailable, match="no INT8 copy"):
        pick_precision("int8", has_int8=False, native_bf16=True, flags=zen4)


def test_int8_without_a_quantized_copy_is_refused_with_the_reason() -> None:
    reference = ENGINES / "deeplabv3_mnv2_voc_257.onnx"  # ships no _int8 copy
    config = Config(model=ModelConfig(path=reference, device="openvino", precision="int8"),
                    anonymize=("person",))
    with pytest.raises(BackendUnavailable, match=r"^model\.device is openvino: .*no INT8 copy"):
        open_backend(config)


@pytest.mark.parametrize("device", ["openvino", "onnxruntime"])
def test_the_int8_copy_labels_agree_with_fp32(shared_data: Path, device: str) -> None:
    config = Config(model=ModelConfig(path=MODEL, device=device, precision="int8", threads=2),
                    analysis=AnalysisConfig(tiling=TilingConfig(enabled=False)))
    int8 = open_backend(config).analyzer
    assert int8.manifest.name.endswith("_int8")
    reference = OnnxAnalyzer(MODEL, load_manifest(MANIFEST), threads=2)
    agreement = _agreement(int8, reference, _val_images(shared_data))
    # measured 99.57 % on all 312 val images (IoU within 0.003 of FP32: bench/int8.py)
    assert agreement >= 0.99, agreement


def test_a_class_only_one_camera_blurs_keeps_its_tile_detections(shared_data: Path) -> None:
    # the tile merge lets only the analyzer's protected classes win over the full-frame
    # pass: a class added by one camera must be among them (Config.analyzed_classes)
    from daemon.config import CameraConfig, ViewersConfig

    image = cv2.imread(str(shared_data / "stills" / "aiguys_car.jpg"))
    plates = []
    for cameras in ((), (CameraConfig(name="gate", url="rtsp://127.0.0.1/x",
                                      anonymize=("person", "license_plate")),)):
        config = Config(model=ModelConfig(path=MODEL, device="openvino", threads=2),
                        anonymize=("person",), cameras=cameras,
                        viewers=ViewersConfig(auth=False))
        analyzer = open_backend(config).analyzer
        plate = analyzer.manifest.classes["license_plate"]
        plates.append(int((analyzer.labels(image) == plate).sum()))
    assert plates[1] > plates[0] * 1.05, plates
