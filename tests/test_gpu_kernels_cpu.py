"""kernels.cu compiled with g++ through cpu_shim.h: the device code, run on the CPU, against the
numpy oracle (bit for bit) on the golden vectors and random masks. No GPU needed."""

import shutil

import cv2
import numpy as np
import pytest

from daemon.analysis.upsample import linear_taps, upsampled_argmax_reference, upsampled_nearest
from daemon.anonymizer.objects import BlurObject, BlurParams, find_objects
from daemon.anonymizer.oracle import blur_objects_oracle
from daemon.config import BlurConfig
from daemon.gpu import anonymizer as device
from daemon.gpu.analysis import nearest_taps, preprocess_on, upsampled_argmax_on
from daemon.gpu.kernels import CpuKernels

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    return CpuKernels(tmp_path_factory.mktemp("shim"))


def both(frame, labels, classes, params, kernels):
    """(oracle frame, oracle objects, shim frame, shim objects, shim owner)."""
    expected = find_objects(labels, classes, params)
    found = device.find_objects(labels, classes, params, kernels)
    out = device.blur_objects(frame, found, device.weight_table(params, kernels), kernels)
    return blur_objects_oracle(frame, expected), expected, out, found


def check_same(frame, labels, classes, params, kernels):
    oracle, expected, out, found = both(frame, labels, classes, params, kernels)
    assert found.objects(params) == expected.objects
    np.testing.assert_array_equal(found.owner, expected.owner)
    np.testing.assert_array_equal(out, oracle)
    return out


def test_golden_vectors_bit_for_bit(golden_cases, kernels):
    for case in golden_cases:
        params = case.params
        found = device.find_objects(case.labels, case.classes, params, kernels)
        out = device.blur_objects(case.frame, found, device.weight_table(params, kernels), kernels)
        assert [o.kernel for o in found.objects(params)] == case.kernels, case.name
        np.testing.assert_array_equal(out, case.expected, err_msg=case.name)
        assert int((out != case.frame).any(axis=2).sum()) == case.changed_pixels, case.name


def random_scene(rng, height, width, blobs, specks, classes=(1, 2)):
    labels = np.zeros((height, width), np.uint8)
    for _ in range(blobs):
        cls = int(rng.choice(classes))
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry, rx = rng.integers(1, max(2, height // 3)), rng.integers(1, max(2, width // 3))
        yy, xx = np.ogrid[:height, :width]
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        blob &= rng.random((height, width)) > 0.1  # ragged edges and holes: mirror taps matter
        labels[blob] = cls
    ys, xs = rng.integers(0, height, specks), rng.integers(0, width, specks)
    labels[ys, xs] = rng.choice(classes, specks)
    frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return frame, labels


@pytest.mark.parametrize("seed", range(6))
def test_random_scenes_bit_for_bit(kernels, seed):
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(20, 90)), int(rng.integers(20, 90))
    frame, labels = random_scene(rng, height, width, blobs=int(rng.integers(1, 6)), specks=30)
    params = BlurParams(
        kernel_fraction=float(rng.choice([0.25, 0.5, 1.0])),
        sigma_factor=float(rng.choice([10.0, 0.5, 2.0])),  # flat and very peaked Gaussians
        mask_dilation=int(rng.choice([0, 1, 3])),
    )
    out = check_same(frame, labels, (1, 2), params, kernels)
    assert (out != frame).any()  # the scenes do blur something


def test_edge_cases_bit_for_bit(kernels):
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    params = BlurParams(kernel_fraction=1.0, sigma_factor=1.0, mask_dilation=2)
    empty = np.zeros((33, 47), np.uint8)
    _, _, out, found = both(frame, empty, (1, 2), params, kernels)
    assert len(found.table) == 0
    np.testing.assert_array_equal(out, frame)
    full = np.ones((33, 47), np.uint8)  # one object covering the frame, touching every border
    check_same(frame, full, (1, 2), params, kernels)
    pixels = np.zeros((33, 47), np.uint8)
    pixels[::4, ::4] = 1  # many 1-pixel objects: dilation merges some and not others
    pixels[1::6, 2::5] = 2
    check_same(frame, pixels, (1, 2), params, kernels)
    check_same(frame, pixels, (2, 1), params, kernels)  # class order decides equal-kernel ties


def test_huge_kernel_clamped(kernels):
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    labels = np.zeros((64, 80), np.uint8)
    labels[5:60, 3:77] = 1
    labels[20:30, 20:30] = 0
    params = BlurParams(kernel_fraction=4.0, max_kernel=101)
    oracle, _, out, found = both(frame, labels, (1,), params, kernels)
    assert [o.kernel for o in found.objects(params)] == [101]
    np.testing.assert_array_equal(out, oracle)


def test_a_wrong_kernel_is_caught(kernels):
    """The comparison can fail: one object's kernel changed on the shim side shows up."""
    rng = np.random.default_rng(11)
    frame, labels = random_scene(rng, 40, 40, blobs=2, specks=0)
    params = BlurParams(kernel_fraction=1.0, sigma_factor=1.0)
    found = device.find_objects(labels, (1, 2), params, kernels)
    table = found.table.copy()
    table[:, 5] = np.maximum(table[:, 5] - 2, 1)
    out = device.blur_objects(
        frame, device.DeviceObjectMap(table, found.owner), device.weight_table(params, kernels),
        kernels,
    )
    assert not np.array_equal(out, blur_objects_oracle(frame, find_objects(labels, (1, 2), params)))


def test_device_anonymizer_facade_on_the_shim(kernels):
    rng = np.random.default_rng(5)
    frame, labels = random_scene(rng, 50, 70, blobs=3, specks=10)
    blur = BlurConfig(mask_dilation=1)
    result = device.DeviceAnonymizer((1, 2), blur, kernels).anonymize(frame, labels)
    from daemon.anonymizer.cpu import CpuAnonymizer

    expected = CpuAnonymizer((1, 2), blur, oracle=True).anonymize(frame, labels)
    assert all(isinstance(o, BlurObject) for o in result.objects)
    assert result.objects == expected.objects
    np.testing.assert_array_equal(result.frame, expected.frame)
    with pytest.raises(ValueError, match="expected an H x W uint8 label map"):
        device.DeviceAnonymizer((1,), blur, kernels).anonymize(frame, labels[:-1])


def test_upsampled_argmax_equals_the_reference(kernels):
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(21, 17, 23)).astype(np.float32)
    logits[:, 5:9, 5:9] = 0.5  # exact ties between classes: first index wins on both sides
    for height, width in ((17, 23), (61, 40), (9, 100)):
        labels = upsampled_argmax_on(logits, height, width, kernels)
        np.testing.assert_array_equal(labels, upsampled_argmax_reference(logits, height, width))


def test_upsampled_nearest_equals_opencv(kernels):
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 21, (13, 29)).astype(np.int32)
    for height, width in ((13, 29), (50, 31), (7, 200)):
        ys, xs = nearest_taps(13, height), nearest_taps(29, width)
        out = np.empty((height, width), np.uint8)
        kernels.launch(
            "upsampled_nearest", height * width, ids, np.int32(29), ys, xs, out,
            np.int32(height), np.int32(width),
        )
        np.testing.assert_array_equal(out, upsampled_nearest(ids, height, width))


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_preprocess_within_one_grey_level_of_opencv(kernels, order):
    rng = np.random.default_rng(9)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8), (5, 5), 0)
    mean, std = (127.5, 100.0, 90.0), (127.5, 60.0, 50.0)
    tensor = preprocess_on(frame, 57, 41, order, mean, std, kernels)
    resized = cv2.resize(frame, (41, 57), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    if order == "RGB":
        resized = resized[:, :, ::-1]
    expected = ((resized - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)[None]
    assert tensor.shape == (1, 3, 57, 41)
    # OpenCV interpolates uint8 in fixed point, the kernel in float32: <= 1 grey level apart.
    assert np.abs((tensor - expected) * np.float32(std)[None, :, None, None]).max() <= 1.0
    assert linear_taps(120, 57).lo.max() < 120


def test_concurrent_launches_label_like_the_cpu(tmp_path_factory):
    """Each launch run by 8 racing OS threads (real atomics): the union-find labelling, boxes
    and ownership still equal objects.find_objects, and the blur the oracle. (With the shim's
    atomicMin made non-atomic, a read, a short spin and a write, the labelling went wrong in 3
    of 6 such scenes when this was written.)
    """
    racing = CpuKernels(tmp_path_factory.mktemp("racing"), threads=8)
    rng = np.random.default_rng(21)
    params = BlurParams()
    for _ in range(3):
        # Noise near the percolation threshold: thousands of long, twisting components.
        labels = (rng.random((600, 800)) < 0.45).astype(np.uint8)
        found = device.find_objects(labels, (1,), params, racing)
        expected = find_objects(labels, (1,), params)
        assert found.objects(params) == expected.objects
        np.testing.assert_array_equal(found.owner, expected.owner)
    frame, labels = random_scene(rng, 120, 160, blobs=6, specks=200)
    check_same(frame, labels, (1, 2), BlurParams(mask_dilation=1), racing)


def test_tile_merge_equals_the_cpu_merge():
    from daemon.analysis.tiling import Tile, merge_protected, protected_lookup
    from daemon.gpu.analysis import merge_protected_on

    rng = np.random.default_rng(8)
    protected = protected_lookup((15, 7))
    for _ in range(5):
        labels = rng.choice(np.array([0, 3, 7, 15], np.uint8), (40, 60))
        tile = Tile(int(rng.integers(0, 20)), int(rng.integers(0, 30)), 20, 30)
        tile_labels = rng.choice(np.array([0, 7, 9, 15], np.uint8), (20, 30))
        expected = labels.copy()
        merge_protected(expected, tile, tile_labels, protected)
        merge_protected_on(labels, tile, tile_labels, protected)
        np.testing.assert_array_equal(labels, expected)
