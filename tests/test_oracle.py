"""The numpy oracle against hand-computed cases and the independently computed golden vectors."""

import math

import numpy as np
import pytest

from daemon.anonymizer.objects import BlurParams, find_objects, gaussian_weights, kernel_size
from daemon.anonymizer.oracle import blur_objects_oracle

PERSON, PLATE = 1, 2


def anonymize(frame, labels, classes=(PERSON, PLATE), **params):
    objects = find_objects(labels, classes, BlurParams(**params))
    return blur_objects_oracle(frame, objects), objects


@pytest.mark.parametrize(
    ("w", "h", "fraction", "expected"),
    [
        (16, 16, 0.25, 5),  # s = 4.0: a tie between 3 and 5 goes up
        (15, 16, 0.25, 3),  # s = 3.875: nearest odd is 3
        (20, 20, 0.25, 5),  # s = 5.0
        (23, 25, 0.25, 7),  # s = 6.0: a tie between 5 and 7 goes up
        (40, 40, 0.5, 21),  # s = 20.0: tie, up
        (1, 1, 0.25, 3),  # clamped up to min_kernel
        (4000, 4000, 0.25, 255),  # clamped down to max_kernel
    ],
)
def test_kernel_rule(w, h, fraction, expected):
    assert kernel_size(w, h, BlurParams(kernel_fraction=fraction)) == expected


def test_one_pixel_object_is_unchanged():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
    labels = np.zeros((9, 9), np.uint8)
    labels[4, 4] = PERSON
    out, objects = anonymize(frame, labels)
    assert [o.kernel for o in objects.objects] == [3]
    # Every tap of a lone pixel falls back to the pixel itself, and the weights sum to 1.
    np.testing.assert_array_equal(out, frame)


def test_strip_touching_the_left_border_by_hand():
    frame = np.zeros((3, 6, 3), np.uint8)
    frame[1, 0:3] = [[10, 10, 10], [20, 20, 20], [30, 30, 30]]
    frame[0] = 200
    frame[2] = 99
    labels = np.zeros((3, 6), np.uint8)
    labels[1, 0:3] = PERSON
    out, objects = anonymize(frame, labels)
    assert [o.kernel for o in objects.objects] == [3]  # s = 0.25 * 2 = 0.5 -> 1 -> min 3
    # K = 3, sigma = 30: g0 = 1 / (1 + 2e), g1 = e / (1 + 2e), e = exp(-1 / 1800).
    # x = 0: tap x-1 is outside the image, so it mirrors to x+1 (20): (10 + 2*20 e) / (1 + 2e).
    # x = 2: tap x+1 is background, so it mirrors to x-1 (20).
    # The vertical pass sees a 1-pixel-tall object: every tap falls back to the pixel.
    e = math.exp(-1 / 1800)
    assert round((10 + 40 * e) / (1 + 2 * e)) == 17
    assert out[1, 0:3, 0].tolist() == [17, 20, 23]
    # Background rows, including the pixels above and below the strip, are bit-identical.
    np.testing.assert_array_equal(out[[0, 2]], frame[[0, 2]])
    np.testing.assert_array_equal(out[1, 3:], frame[1, 3:])


def test_touching_objects_of_two_classes_do_not_mix():
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    labels = np.zeros((40, 40), np.uint8)
    labels[5:35, 5:25] = PERSON  # large: K = nearest odd to 0.25 * 25 = 6.25 -> 7
    labels[15:20, 25:30] = PLATE  # small, touching the person's right side: K = 3
    out, objects = anonymize(frame, labels)
    assert [(o.class_id, o.kernel) for o in objects.objects] == [(PERSON, 7), (PLATE, 3)]
    # Changing the plate's pixels must not change a single person pixel, and vice versa.
    other = frame.copy()
    other[labels == PLATE] = 255 - other[labels == PLATE]
    out_other, _ = anonymize(other, labels)
    person = labels == PERSON
    np.testing.assert_array_equal(out_other[person], out[person])
    other = frame.copy()
    other[person] = 0
    out_other, _ = anonymize(other, labels)
    np.testing.assert_array_equal(out_other[labels == PLATE], out[labels == PLATE])
    np.testing.assert_array_equal(out[labels == 0], frame[labels == 0])


def test_ring_never_takes_values_from_its_hole():
    frame = np.full((41, 41, 3), 255, np.uint8)  # white hole and background
    yy, xx = np.mgrid[:41, :41]
    radius = np.hypot(yy - 20, xx - 20)
    ring = (radius >= 8) & (radius <= 14)
    rng = np.random.default_rng(3)
    frame[ring] = rng.integers(0, 100, (int(ring.sum()), 3), dtype=np.uint8)
    labels = ring.astype(np.uint8) * PERSON
    out, objects = anonymize(frame, labels)
    assert len(objects.objects) == 1 and objects.objects[0].kernel == 7
    # Mirror taps keep every ring pixel a mix of ring pixels only: never near the white hole.
    assert out[ring].max() < 100
    np.testing.assert_array_equal(out[~ring], frame[~ring])
    assert (out[ring] != frame[ring]).any()


def test_empty_mask_is_a_no_op():
    frame = np.random.default_rng(4).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out, objects = anonymize(frame, np.zeros((16, 16), np.uint8))
    assert objects.objects == ()
    np.testing.assert_array_equal(out, frame)


def test_dilated_overlap_goes_to_the_larger_kernel():
    labels = np.zeros((60, 60), np.uint8)
    labels[10:50, 10:30] = PERSON  # K = 0.25 * 30 -> 7
    labels[25:28, 31:36] = PLATE  # 1-pixel gap to the person; K = 3 before dilation
    objects = find_objects(labels, (PERSON, PLATE), BlurParams(mask_dilation=2))
    person, plate = objects.objects
    assert person.kernel > plate.kernel
    # The dilated masks overlap in the gap; the person (larger kernel) owns it.
    assert objects.owner[26, 30] == 0
    assert objects.owner[26, 34] == 1
    # Dilation grows the masks: pixels 2 away from the person are owned, 3 away are not.
    assert objects.owner[30, 8] == 0 and objects.owner[30, 7] == -1


def test_weights_are_normalised_gaussian():
    g = gaussian_weights(7, 70.0)
    assert g.dtype == np.float32 and len(g) == 7
    assert abs(float(g.sum()) - 1) < 1e-6
    assert g[3] == g.max() and g[0] == g[6]


def test_golden_vectors(golden_cases):
    for case in golden_cases:
        objects = find_objects(case.labels, case.classes, case.params)
        assert [o.kernel for o in objects.objects] == case.kernels, case.name
        out = blur_objects_oracle(case.frame, objects)
        np.testing.assert_array_equal(out, case.expected, err_msg=case.name)
        assert int((out != case.frame).any(axis=2).sum()) == case.changed_pixels, case.name
