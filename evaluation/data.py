"""The evaluation's inputs, read from shared/data: plate val images with their plates, stills,
frames sampled from the clips, and the segmentation val pairs (see shared/data/README.md)."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from evaluation.attackers import normalise_plate

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
# the clips whose plate text is known (shared/data/README.md): a read of it is a leak
CLIP_PLATES = {"car_plate_approach_1280x720.mp4": "LS15EBC"}


@dataclass(frozen=True)
class Plate:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    text: str  # normalised; "" when unknown


@dataclass(frozen=True)
class Sample:
    """One still image of the privacy and multi-scale sets."""

    name: str
    path: Path
    group: str  # "plate val", "stills" or "clip frames"
    plates: tuple[Plate, ...] = ()
    frame: int | None = None  # clip frames: the index in `path`

    def load(self) -> np.ndarray:
        if self.frame is not None:
            return _CLIP_FRAMES[(self.path, self.frame)]
        image = cv2.imread(str(self.path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{self.path}: not an image")
        return image


@dataclass(frozen=True)
class SegPair:
    source: str  # the data source (camvid, pennfudan, openalprus, ...)
    kind: str  # "person" or "plate"
    image: Path
    mask: Path


def plate_val(data: Path) -> list[Sample]:
    """Every plate val image with its plates (text normalised, "" where unknown)."""
    plates: dict[str, list[Plate]] = defaultdict(list)
    with (data / "seg" / "plate" / "plates.csv").open(encoding="utf-8") as rows:
        for row in csv.DictReader(rows):
            if row["split"] != "val":
                continue
            box = (float(row["x1"]), float(row["y1"]), float(row["x2"]), float(row["y2"]))
            plates[row["file"]].append(Plate(box, normalise_plate(row["plate_text"])))
    return [Sample(Path(name).stem, data / "seg" / "plate" / name, "plate val", tuple(found))
            for name, found in sorted(plates.items())]


def stills(data: Path) -> list[Sample]:
    return [Sample(p.stem, p, "stills") for p in sorted((data / "stills").iterdir())
            if p.suffix.lower() in (".jpg", ".png")]


def clips(data: Path) -> list[Path]:
    return sorted(p for p in (data / "clips").iterdir() if p.suffix in (".mp4", ".avi"))


_CLIP_FRAMES: dict[tuple[Path, int], np.ndarray] = {}  # the sampled frames, decoded once


def clip_samples(data: Path, per_clip: int) -> list[Sample]:
    """`per_clip` frames spread evenly over each clip (kept in memory)."""
    samples = []
    for path in clips(data):
        frames = [image for _, image in clip_frames(path)]
        step = max(1, len(frames) // per_clip)
        for index in range(0, len(frames), step)[:per_clip]:
            _CLIP_FRAMES[(path, index)] = frames[index]
            samples.append(Sample(f"{path.stem}@{index}", path, "clip frames", frame=index))
    return samples


def clip_frames(path: Path, limit: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(index, BGR frame) in decode order, at most `limit` of them."""
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if limit is not None and index >= limit:
                return
            yield index, frame.to_ndarray(format="bgr24")


def seg_val(data: Path, kind: str) -> list[SegPair]:
    """The fixed val split of seg/person or seg/plate."""
    root = data / "seg" / kind
    pairs = []
    for line in (root / "split_val.txt").read_text().splitlines():
        if not line.strip():
            continue
        image, mask = line.split()
        source = Path(image).stem.split("_", 1)[0]
        pairs.append(SegPair(source, kind, root / image, root / mask))
    return pairs


def load_seg(pair: SegPair) -> tuple[np.ndarray, np.ndarray]:
    image = cv2.imread(str(pair.image), cv2.IMREAD_COLOR)
    mask = cv2.imread(str(pair.mask), cv2.IMREAD_UNCHANGED)
    if image is None or mask is None:
        raise ValueError(f"{pair.image}: unreadable image or mask")
    return image, mask
