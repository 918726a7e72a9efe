"""The fast CPU path against the oracle: within 1 grey level, bit-identical outside objects."""

import cv2
import numpy as np
import pytest

from daemon.anonymizer.fast import FLAT_ERROR_BUDGET, blur_objects_fast, uniform_error_bound
from daemon.anonymizer.objects import BlurParams, find_objects, gaussian_weights
from daemon.anonymizer.oracle import blur_objects_oracle


def random_scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Blobs, rings, specks and border-touching shapes of two classes."""
    labels = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(0, 7)):
        cls = int(rng.integers(1, 3))
        cx, cy = int(rng.integers(-5, w + 5)), int(rng.integers(-5, h + 5))
        ax, ay = int(rng.integers(1, w // 2)), int(rng.integers(1, h // 2))
        cv2.ellipse(labels, (cx, cy), (ax, ay), float(rng.integers(0, 180)), 0, 360, cls, -1)
        if rng.random() < 0.3:  # punch a hole: rings and C shapes make mirror taps matter
            cv2.ellipse(labels, (cx, cy), (ax // 2, ay // 2), 0, 0, 360, 0, -1)
    specks = rng.random((h, w)) < 0.01
    labels[specks] = rng.integers(1, 3, int(specks.sum()))
    return labels


CASES = [
    # (seed, kernel_fraction, sigma_factor, dilation)
    *[(seed, 0.25, 10.0, 0) for seed in range(12)],
    *[(seed, 0.5, 10.0, 2) for seed in range(12, 18)],
    *[(seed, 1.0, 10.0, 1) for seed in range(18, 22)],
]


@pytest.mark.parametrize(("seed", "fraction", "sigma_factor", "dilation"), CASES)
def test_fast_path_matches_oracle(seed, fraction, sigma_factor, dilation):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(20, 90)), int(rng.integers(20, 120))
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    labels = random_scene(rng, h, w)
    params = BlurParams(kernel_fraction=fraction, sigma_factor=sigma_factor, mask_dilation=dilation)
    objects = find_objects(labels, (1, 2), params)
    expected = blur_objects_oracle(frame, objects)
    got = blur_objects_fast(frame, objects)
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 1
    outside = objects.owner < 0
    np.testing.assert_array_equal(got[outside], frame[outside])


@pytest.mark.parametrize("seed", range(4))
def test_exact_path_is_bit_identical_when_weights_are_not_flat(seed):
    rng = np.random.default_rng(100 + seed)
    frame = rng.integers(0, 256, (60, 70, 3), dtype=np.uint8)
    labels = random_scene(rng, 60, 70)
    objects = find_objects(labels, (1, 2), BlurParams(kernel_fraction=0.5, sigma_factor=0.3))
    assert any(
        uniform_error_bound(gaussian_weights(o.kernel, o.sigma)) >= FLAT_ERROR_BUDGET
        for o in objects.objects
        if o.kernel > 3
    )
    np.testing.assert_array_equal(
        blur_objects_fast(frame, objects), blur_objects_oracle(frame, objects)
    )


def test_default_gaussian_is_flat_enough_for_every_kernel():
    # The running-sum path is legitimate for the paper's sigma = 10 K at every allowed K: the
    # uniform weights are off by less than the +-1 grey-level budget over both passes.
    bounds = [uniform_error_bound(gaussian_weights(k, 10.0 * k)) for k in range(3, 1024, 2)]
    assert max(bounds) < FLAT_ERROR_BUDGET
    assert max(bounds) > 0  # the bound is real, not zero by construction


def test_large_object_against_oracle():
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    labels = np.zeros((120, 160), np.uint8)
    cv2.ellipse(labels, (80, 60), (75, 55), 0, 0, 360, 1, -1)
    cv2.circle(labels, (80, 60), 10, 0, -1)
    objects = find_objects(labels, (1,), BlurParams(kernel_fraction=0.5))
    assert objects.objects[0].kernel > 60
    diff = np.abs(
        blur_objects_fast(frame, objects).astype(int)
        - blur_objects_oracle(frame, objects).astype(int)
    )
    assert diff.max() <= 1


def test_golden_vectors_within_one_grey_level(golden_cases):
    for case in golden_cases:
        objects = find_objects(case.labels, case.classes, case.params)
        got = blur_objects_fast(case.frame, objects)
        diff = np.abs(got.astype(int) - case.expected.astype(int))
        assert diff.max() <= 1, case.name


@pytest.mark.parametrize("spacing", [3, 5, 12])
def test_comb_of_many_runs_per_line(spacing):
    # One object (teeth joined by a bar) with many runs of itself in each row's window: exercises
    # both the run-pairing path (few runs in reach) and the tap walk (many runs in reach).
    rng = np.random.default_rng(spacing)
    frame = rng.integers(0, 256, (70, 150, 3), dtype=np.uint8)
    labels = np.zeros((70, 150), np.uint8)
    labels[5:8, 5:145] = 1
    labels[5:65, 5:145:spacing] = 1
    objects = find_objects(labels, (1,), BlurParams(kernel_fraction=0.5))
    assert len(objects.objects) == 1 and objects.objects[0].kernel > 40
    got = blur_objects_fast(frame, objects)
    expected = blur_objects_oracle(frame, objects)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    np.testing.assert_array_equal(got[labels == 0], frame[labels == 0])
