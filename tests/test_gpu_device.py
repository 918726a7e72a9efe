"""The device backend on a real GPU: kernels.cu through CuPy against the CPU oracle and the CPU
analyzer steps. Marked gpu: skipped with the reason without one, failed under `pytest --gpu`."""


import cv2
import numpy as np
import pytest

from daemon.analysis.upsample import upsampled_argmax_reference, upsampled_nearest
from daemon.anonymizer.cpu import CpuAnonymizer
from daemon.anonymizer.objects import BlurParams, find_objects
from daemon.anonymizer.oracle import blur_objects_oracle
from daemon.config import BlurConfig
from daemon.gpu import anonymizer as device_anonymizer
from daemon.gpu.analysis import preprocess_on, upsampled_argmax_on, upsampled_nearest_on

pytestmark = pytest.mark.gpu
PERSON = 15


@pytest.fixture(scope="module")
def device():
    from daemon.gpu.backend import open_device

    return open_device()


def on_device(frame, labels, classes, params, device):
    cp, kernels = device.cupy, device.kernels
    with device.stream:
        found = device_anonymizer.find_objects(cp.asarray(labels), classes, params, kernels)
        out = device_anonymizer.blur_objects(
            cp.asarray(frame), found, device_anonymizer.weight_table(params, kernels), kernels
        )
        return out.get(), found.objects(params), found.owner.get()


def assert_close(out, expected, what):
    diff = np.abs(out.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 1, f"{what}: {int((diff > 1).sum())} values more than 1 grey level off"


def random_scene(rng, height, width, blobs, specks):
    labels = np.zeros((height, width), np.uint8)
    yy, xx = np.ogrid[:height, :width]
    for _ in range(blobs):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry, rx = rng.integers(1, height // 3), rng.integers(1, width // 3)
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        labels[blob & (rng.random((height, width)) > 0.1)] = rng.choice([1, 2])
    labels[rng.integers(0, height, specks), rng.integers(0, width, specks)] = 1
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8), labels


@pytest.mark.parametrize("seed", range(4))
def test_random_scenes_match_the_oracle(device, seed):
    rng = np.random.default_rng(100 + seed)
    frame, labels = random_scene(rng, 90 + 17 * seed, 130, blobs=4, specks=40)
    params = BlurParams(kernel_fraction=0.5, sigma_factor=(10.0, 1.0)[seed % 2],
                        mask_dilation=seed % 3)
    out, objects, owner = on_device(frame, labels, (1, 2), params, device)
    expected = find_objects(labels, (1, 2), params)
    assert objects == expected.objects
    np.testing.assert_array_equal(owner, expected.owner)
    assert_close(out, blur_objects_oracle(frame, expected), f"seed {seed}")


def test_golden_vectors(device, golden_cases):
    for case in golden_cases:
        out, objects, _ = on_device(case.frame, case.labels, case.classes, case.params, device)
        assert [o.kernel for o in objects] == case.kernels, case.name
        assert_close(out, case.expected, case.name)


@pytest.fixture(scope="module")
def real_frame(shared_data):
    """A real street still with the reference model's person labels (ONNX Runtime, CPU)."""
    from daemon.configfile import load_config

    config = load_config(None)
    config = config.model_copy(update={"model": config.model.model_copy(update={"device": "cpu"})})
    image = cv2.imread(str(shared_data / "stills" / "deface_city.jpg"))
    frame = cv2.resize(image, (960, 540), interpolation=cv2.INTER_AREA)
    from daemon.backends import open_backend

    return frame, open_backend(config).analyzer.labels(frame)


def test_real_frame_matches_the_oracle(device, real_frame):
    frame, labels = real_frame
    assert (labels == PERSON).sum() > 1000
    blur = BlurConfig()  # the shipped defaults: dilation 3, K up to 255
    expected = CpuAnonymizer((PERSON,), blur, oracle=True).anonymize(frame, labels)
    result = device_anonymizer.DeviceAnonymizer((PERSON,), blur, device.kernels).anonymize(
        frame, labels
    )
    assert result.objects == expected.objects
    assert_close(result.frame, expected.frame, "real frame")
    assert (result.frame != frame).any()


def test_device_arrays_in_one_download_out(device, real_frame):
    frame, labels = real_frame
    cp = device.cupy
    anonymizer = device_anonymizer.DeviceAnonymizer((PERSON,), BlurConfig(), device.kernels)
    with device.stream:
        result = anonymizer.anonymize(cp.asarray(frame), cp.asarray(labels))
    expected = CpuAnonymizer((PERSON,), BlurConfig()).anonymize(frame, labels)
    assert isinstance(result.frame, np.ndarray)
    assert_close(result.frame, expected.frame, "device inputs")


def test_analysis_steps_match_the_cpu(device, real_frame):
    frame, _ = real_frame
    cp, kernels = device.cupy, device.kernels
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(21, 65, 65)).astype(np.float32)
    with device.stream:
        labels = upsampled_argmax_on(cp.asarray(logits), 540, 960, kernels).get()
        ids = rng.integers(0, 21, (65, 65)).astype(np.int32)
        nearest = upsampled_nearest_on(cp.asarray(ids), 540, 960, kernels).get()
        tensor = preprocess_on(cp.asarray(frame), 257, 257, "RGB", (127.5,) * 3, (127.5,) * 3,
                               kernels).get()
    np.testing.assert_array_equal(labels, upsampled_argmax_reference(logits, 540, 960))
    np.testing.assert_array_equal(nearest, upsampled_nearest(ids, 540, 960))
    resized = cv2.resize(frame, (257, 257), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
    expected = ((resized.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
    assert np.abs(tensor - expected).max() * 127.5 <= 1.0


def test_tile_merge_on_the_device(device):
    from daemon.analysis.tiling import Tile, merge_protected, protected_lookup
    from daemon.gpu.analysis import merge_protected_on

    rng = np.random.default_rng(8)
    labels = rng.choice(np.array([0, 3, 7, 15], np.uint8), (400, 600))
    tile_labels = rng.choice(np.array([0, 7, 9, 15], np.uint8), (257, 257))
    tile = Tile(100, 300, 257, 257)
    protected = protected_lookup((15, 7))
    cp = device.cupy
    with device.stream:
        merged = cp.asarray(labels)
        merge_protected_on(merged, tile, cp.asarray(tile_labels), cp.asarray(protected))
        merged = merged.get()
    merge_protected(labels, tile, tile_labels, protected)
    np.testing.assert_array_equal(merged, labels)


def test_tensorrt_analyzer_matches_onnx_runtime(device, real_frame, tmp_path, request):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        if request.config.getoption("--gpu"):
            pytest.fail("--gpu given but TensorRT is not installed (deselect with -k)")
        pytest.skip("TensorRT is not installed")
    from daemon.configfile import load_config

    frame, cpu_labels = real_frame
    config = load_config(None)
    model = config.model.model_copy(update={"device": "gpu", "engine_cache": tmp_path})
    from daemon.backends import open_backend

    analyzer = open_backend(config.model_copy(update={"model": model})).analyzer
    labels = analyzer.labels(frame)
    # FP16 inference and float resizing: labels may differ only along class boundaries.
    assert (labels == cpu_labels).mean() > 0.99
