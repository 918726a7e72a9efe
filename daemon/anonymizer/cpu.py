"""The CPU anonymizer: label map in, anonymized frame out (adaptive or global mode)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from daemon.anonymizer.objects import BlurObject, BlurParams, ObjectMap, find_objects
from daemon.anonymizer.oracle import blur_objects_oracle
from daemon.config import BlurConfig
from daemon.types import Image, LabelMap, check_image, check_labels


@dataclass(frozen=True)
class AnonymizedFrame:
    frame: Image
    objects: tuple[BlurObject, ...]  # what was blurred (empty in global mode)


def blur_params(blur: BlurConfig) -> BlurParams:
    return BlurParams(
        kernel_fraction=blur.kernel_fraction,
        sigma_factor=blur.sigma_factor,
        min_kernel=blur.min_kernel,
        max_kernel=blur.max_kernel,
        mask_dilation=blur.mask_dilation,
    )


def global_blur(frame: Image, kernel: int, sigma: float) -> Image:
    """The paper's baseline: one Gaussian over the whole frame (reflected border)."""
    blurred = cv2.GaussianBlur(
        frame, (kernel, kernel), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101
    )
    return blurred.astype(np.uint8, copy=False)  # cv2's stubs lose the dtype: uint8 in and out


class CpuAnonymizer:
    """`anonymize(frame, labels)` on the CPU: the fast path by default, the oracle on request."""

    def __init__(self, class_ids: Sequence[int], blur: BlurConfig, *, oracle: bool = False):
        self.class_ids = tuple(class_ids)
        self.blur = blur
        self.params = blur_params(blur)
        self._blur_objects = blur_objects_oracle if oracle else _fast_blur()

    def anonymize(self, frame: Image, labels: LabelMap) -> AnonymizedFrame:
        check_labels(labels, check_image(frame))
        if self.blur.mode == "global":
            k = self.blur.global_kernel
            return AnonymizedFrame(global_blur(frame, k, self.blur.sigma_factor * k), ())
        objects = find_objects(labels, self.class_ids, self.params)
        return AnonymizedFrame(self.blur_objects(frame, objects), objects.objects)

    def blur_objects(self, frame: Image, objects: ObjectMap) -> Image:
        """The adaptive blur of already found objects (a copy of `frame` when there are none)."""
        if not objects.objects:
            return frame.copy()
        return self._blur_objects(frame, objects)


def _fast_blur() -> Callable[[Image, ObjectMap], Image]:
    from daemon.anonymizer.fast import blur_objects_fast

    return blur_objects_fast
