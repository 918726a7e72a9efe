"""The CPU anonymizer seam: adaptive and global modes, fail-closed frames, boundary checks."""

import cv2
import numpy as np
import pytest

from daemon.anonymizer.cpu import CpuAnonymizer, global_blur
from daemon.config import BlurConfig
from daemon.safe import fail_closed_frame


@pytest.fixture
def scene():
    rng = np.random.default_rng(5)
    frame = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    labels = np.zeros((90, 120), np.uint8)
    labels[20:70, 30:60] = 15
    labels[75:80, 90:110] = 7  # a class that is not anonymized
    return frame, labels


def test_adaptive_blurs_only_the_configured_class(scene):
    frame, labels = scene
    blur = BlurConfig(mask_dilation=0)
    fast = CpuAnonymizer((15,), blur).anonymize(frame, labels)
    oracle = CpuAnonymizer((15,), blur, oracle=True).anonymize(frame, labels)
    assert [o.class_id for o in fast.objects] == [15]
    person = labels == 15
    assert np.abs(fast.frame.astype(int) - oracle.frame.astype(int)).max() <= 1
    np.testing.assert_array_equal(fast.frame[~person], frame[~person])
    # A blurred random texture loses most of its variance.
    assert fast.frame[person].std() < 0.3 * frame[person].std()


def test_dilation_grows_what_is_blurred(scene):
    frame, labels = scene
    out = CpuAnonymizer((15,), BlurConfig(mask_dilation=3)).anonymize(frame, labels).frame
    changed = (out != frame).any(axis=2)
    assert changed[20:70, 27:30].any()  # within the 3-pixel margin left of the person
    assert not changed[:, :26].any()


def test_global_mode_blurs_the_whole_frame(scene):
    frame, labels = scene
    blur = BlurConfig(mode="global", global_kernel=63)
    result = CpuAnonymizer((15,), blur).anonymize(frame, labels)
    assert result.objects == ()
    np.testing.assert_array_equal(result.frame, global_blur(frame, 63, 630.0))
    assert result.frame.std() < 0.2 * frame.std()


def test_nothing_to_blur_returns_an_identical_copy(scene):
    frame, _ = scene
    result = CpuAnonymizer((15,), BlurConfig()).anonymize(frame, np.zeros((90, 120), np.uint8))
    np.testing.assert_array_equal(result.frame, frame)
    assert result.frame is not frame


def test_label_map_of_the_wrong_shape_is_refused(scene):
    frame, _ = scene
    with pytest.raises(ValueError, match="expected an H x W uint8 label map"):
        CpuAnonymizer((15,), BlurConfig()).anonymize(frame, np.zeros((90, 121), np.uint8))


def test_fail_closed_frames_reveal_nothing(shared_data):
    still = cv2.imread(str(shared_data / "stills" / "messi5.jpg"))
    assert still is not None
    assert not fail_closed_frame(still, "black").any()
    blurred = fail_closed_frame(still, "blur")
    assert blurred.shape == still.shape

    # No edges survive: the Laplacian energy of a fail-closed frame is a tiny fraction.
    def edges(img):
        return cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()

    assert edges(blurred) < 0.01 * edges(still)
