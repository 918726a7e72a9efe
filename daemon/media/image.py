"""Image files (jpg/jpeg, png, bmp) in and out with OpenCV; the format follows the extension."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from daemon.errors import MediaError
from daemon.media.atomic import atomic_output
from daemon.media.formats import IMAGE_EXTENSIONS
from daemon.safe import SafeFrame, pixels
from daemon.types import Image

JPEG_QUALITY = 95

_JPEG_SOI = b"\xff\xd8"
_JPEG_SOS = b"\xff\xda"
_JPEG_EOI = b"\xff\xd9"


def read_bytes(path: Path) -> bytes:
    """The file's bytes, or MediaError with one line naming it."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise MediaError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise MediaError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise MediaError(f"{path}: cannot read: {exc.strerror}") from None


def read_image(path: Path) -> Image:
    """Decode an image file to H x W x 3 BGR uint8 (alpha dropped, EXIF orientation applied)."""
    data = read_bytes(path)
    if data.startswith(_JPEG_SOI) and data.rfind(_JPEG_EOI) < data.rfind(_JPEG_SOS):
        # libjpeg "decodes" a truncated file into a grey-bottomed image and only warns
        raise MediaError(f"{path}: truncated JPEG (no end-of-image marker after the last scan)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise MediaError(f"{path}: not a readable image (or corrupt)")
    return image.astype(np.uint8, copy=False)  # cv2's stubs lose the dtype: IMREAD_COLOR is uint8


def encode_image(path: Path, image: np.ndarray) -> bytes:
    """Encode `image` (H x W x 3 BGR or H x W grey, uint8) in the format of `path`'s extension."""
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        known = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise MediaError(f"{path}: not an image extension (known: {known})")
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected an H x W (x 3) uint8 image, got {image.shape} {image.dtype}")
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if suffix in (".jpg", ".jpeg") else []
    ok, buffer = cv2.imencode(suffix, image, params)
    if not ok:
        raise MediaError(f"{path}: OpenCV could not encode the image")
    return buffer.tobytes()


def write_image(path: Path, frame: SafeFrame) -> None:
    """Write `frame` atomically; the format follows the extension (JPEG quality 95).

    Only a SafeFrame (daemon.safe): a plain array, which may be a raw frame, is a TypeError.
    """
    write_encoded(path, encode_image(path, pixels(frame, "write_image()")))


def write_encoded(path: Path, data: bytes) -> None:
    """Write already encoded file bytes atomically (MediaError with one line on failure)."""
    try:
        with atomic_output(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise MediaError(f"{path}: cannot write: {exc.strerror or exc}") from None
