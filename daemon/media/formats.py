"""Which file extensions are images and which are videos."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from daemon.errors import MediaError

MediaKind = Literal["image", "video"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".avi", ".mov"})


def media_kind(path: Path) -> MediaKind:
    """"image" or "video" from the extension; MediaError for anything else."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    known = ", ".join(sorted(IMAGE_EXTENSIONS | VIDEO_EXTENSIONS))
    found = suffix or "(no extension)"
    raise MediaError(f"{path}: unsupported file type {found!r} (known: {known})")
