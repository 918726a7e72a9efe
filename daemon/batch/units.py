"""What a batch run does: the inputs found, where their outputs go, and the units of work."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon.errors import AnonymizerError, ConfigError
from daemon.media.formats import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, media_kind

WORK_DIR = ".batch"  # in the output folder: segment files until their video is joined
UnitKind = Literal["image", "video", "segment"]


@dataclass(frozen=True)
class Unit:
    """One piece of work for one worker: an image, a whole video, or one segment of a video.

    A segment holds the frames shown at `start` <= pts < `end` (stream time base; `end` None:
    to the end), `start` being a keyframe's pts; `frames` is how many the input holds there.
    """

    source: Path
    output: Path  # the final output (image, video) or the segment file
    kind: UnitKind
    index: int = 0
    count: int = 1  # segments of this input
    start: int = 0
    end: int | None = None
    first_frame: int = 0
    frames: int = 0  # 0: unknown (images, whole videos)

    @property
    def key(self) -> str:
        """Stable across runs: what the manifest records a unit under."""
        return f"{self.source}#{self.index}/{self.count}@{self.start}"


@dataclass(frozen=True)
class InputPlan:
    """One input: its content hash, its final output and the units that make it."""

    source: Path
    output: Path
    sha256: str
    size: int
    units: tuple[Unit, ...]
    error: str | None = None  # unreadable: recorded as failed, nothing to run

    @property
    def segmented(self) -> bool:
        return bool(self.units) and self.units[0].kind == "segment"


def discover(source: Path, output_dir: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs: every image and video under a folder (recursively, hidden
    entries and `output_dir` skipped), or every path listed in a list file (one per line,
    relative to the list file's folder; blank lines and `#` comments skipped). Outputs mirror
    the inputs' paths relative to the folder (a list: to its entries' common folder).
    ConfigError when nothing is found or two inputs would write one output."""
    if source.is_dir():
        base = source
        inputs = sorted(p for p in source.rglob("*") if _wanted(p, source, output_dir))
    elif source.is_file():
        inputs = _listed(source)
        base = _common_folder(inputs)
    else:
        raise ConfigError(f"{source}: no such folder or list file")
    if not inputs:
        raise ConfigError(f"{source}: no images or videos found")
    pairs = [(path, output_dir / path.relative_to(base)) for path in inputs]
    seen: dict[Path, Path] = {}
    for path, out in pairs:
        if out in seen:
            raise ConfigError(f"{seen[out]} and {path} would both write {out}")
        seen[out] = path
    return pairs


def _wanted(path: Path, root: Path, output_dir: Path) -> bool:
    relative = path.relative_to(root)
    if any(part.startswith(".") for part in relative.parts):
        return False
    resolved = path.resolve()
    if resolved == output_dir.resolve() or output_dir.resolve() in resolved.parents:
        return False
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS


def _listed(list_file: Path) -> list[Path]:
    paths = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        path = Path(text)
        path = path if path.is_absolute() else list_file.parent / path
        try:
            media_kind(path)
        except AnonymizerError as exc:
            raise ConfigError(f"{list_file}:{number}: {exc}") from None
        paths.append(path.resolve())
    return sorted(set(paths))


def _common_folder(paths: list[Path]) -> Path:
    if not paths:
        return Path("/")
    common = paths[0].parent
    while not all(common in p.parents for p in paths):
        common = common.parent
    return common


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def segment_path(output: Path, output_dir: Path, index: int) -> Path:
    """Where segment `index` of the video written to `output` waits for its join."""
    relative = output.relative_to(output_dir)
    return output_dir / WORK_DIR / relative.parent / relative.name / f"{index:05d}{output.suffix}"


def plan_input(source: Path, output: Path, output_dir: Path, segment_seconds: float) -> InputPlan:
    """Hash the input and cut it into units: an image, a video too short (or unsafe) to split,
    or keyframe-aligned segments of about `segment_seconds` each (a Ray task: runs anywhere)."""
    from daemon.batch.segments import scan, split

    try:
        digest = file_sha256(source)
        size = source.stat().st_size
        kind = media_kind(source)
    except (OSError, AnonymizerError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return InputPlan(source, output, "", 0, (), error=f"{source}: {reason}")
    if kind == "image":
        return InputPlan(source, output, digest, size, (Unit(source, output, "image"),))
    packets = scan(source)
    segments = split(packets, segment_seconds) if packets is not None else []
    if len(segments) < 2:
        return InputPlan(source, output, digest, size, (Unit(source, output, "video"),))
    units = tuple(
        Unit(source, segment_path(output, output_dir, number), "segment", number, len(segments),
             s.start, s.end, s.first_frame, s.frames)
        for number, s in enumerate(segments)
    )
    return InputPlan(source, output, digest, size, units)
