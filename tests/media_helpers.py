"""Helpers shared by the media and file tests: decode a whole video, PSNR of two images, and
a picture as the SafeFrame the writers take."""

from pathlib import Path

import av
import numpy as np

from daemon import safe
from daemon.anonymizer.cpu import AnonymizedFrame
from daemon.safe import SafeFrame


class Unchanged:
    """An anonymizer with nothing to blur: hands the frame back as it is."""

    def anonymize(self, frame: np.ndarray, labels: np.ndarray) -> AnonymizedFrame:
        return AnonymizedFrame(frame, ())


def safe_frame(image: np.ndarray) -> SafeFrame:
    """`image` (pixels unchanged, copied) through the anonymizer's gate: what writers take."""
    return safe.anonymized(Unchanged(), image, np.zeros(image.shape[:2], np.uint8))


def decode_all(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
