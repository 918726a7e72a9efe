"""Training data: the compact copy of shared/data/seg, sampling, augmentation, partial labels.

The person set labels only people and the plate set only plates (shared/data/README.md), so
every pixel carries the set of classes it may be, not one class: on person images a background
pixel may be background or an unlabelled plate, on plate images background or an unlabelled
person. The loss (`partial_label_loss`) maximises the probability of that set.

`python -m training.data [--src ../shared/data/seg] [--dst training/cache/seg513]` builds the
compact copy (longer side <= 513 px, JPEG q75 + PNG masks, under 64 MiB) that travels to a GPU.
"""

from __future__ import annotations

import argparse
import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

log = logging.getLogger(__name__)

CLASSES = ("background", "person", "license_plate")
IGNORE = 255
# background on a plate image where the reference model sees a person: "background or person"
MAYBE_PERSON = 254
# background on a person image where the reference model sees a vehicle: "background or plate"
MAYBE_PLATE = 253
INPUT_SIZE = 513  # the daemon stretches every frame to 513 x 513 (the manifest's input)
# torchvision's ImageNet normalisation (the backbone's), RGB order
MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "data" / "seg"
DEFAULT_CACHE = REPO / "training" / "cache" / "seg513"
SETS = ("person", "plate")
# the one class each set labels; its other foreground class may hide in its background
LABELLED = {"person": 1, "plate": 2}


@dataclass(frozen=True)
class Sample:
    """One image/mask pair; `kind` is the set ('person' or 'plate'), `source` its origin."""

    image: Path
    mask: Path
    kind: str
    source: str


def read_split(root: Path, split: str, sources: set[str] | None = None) -> list[Sample]:
    """The fixed `split` ('train'/'val') pairs of both sets under `root` (original or cache)."""
    samples: list[Sample] = []
    for kind in SETS:
        with (root / kind / "index.csv").open(newline="") as stream:
            for row in csv.DictReader(stream):
                if row["split"] != split:
                    continue
                if sources is not None and row["source"] not in sources:
                    continue
                samples.append(Sample(root / kind / row["image"], root / kind / row["mask"],
                                      kind, row["source"]))
    if not samples:
        raise FileNotFoundError(f"no {split} pairs under {root} (expected person/ and plate/)")
    return samples


def load_pair(sample: Sample) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """BGR image and its mask (0/1/2/255), same size; ValueError names a bad file."""
    image = cv2.imread(str(sample.image), cv2.IMREAD_COLOR)
    mask = cv2.imread(str(sample.mask), cv2.IMREAD_UNCHANGED)
    if image is None or mask is None:
        raise ValueError(f"cannot read {sample.image} or {sample.mask}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"{sample.mask}: mask {mask.shape} vs image {image.shape[:2]}")
    return image, mask


def build_cache(src: Path, dst: Path, longest: int = INPUT_SIZE, quality: int = 75) -> int:
    """Copy both sets with the longer side <= `longest` px (INTER_AREA / nearest); bytes written."""
    total = 0
    for kind in SETS:
        with (src / kind / "index.csv").open(newline="") as stream:
            rows = list(csv.DictReader(stream))
        out = dst / kind
        for row in rows:
            image, mask = load_pair(Sample(src / kind / row["image"], src / kind / row["mask"],
                                           kind, row["source"]))
            height, width = mask.shape
            scale = min(1.0, longest / max(height, width))
            if scale < 1.0:
                size = (max(1, round(width * scale)), max(1, round(height * scale)))
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
                mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
            for rel, data in ((row["image"], image), (row["mask"], mask)):
                path = out / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                params = ([cv2.IMWRITE_JPEG_QUALITY, quality] if rel.endswith(".jpg")
                          else [cv2.IMWRITE_PNG_COMPRESSION, 9])
                if not cv2.imwrite(str(path), data, params):
                    raise OSError(f"cannot write {path}")
                total += path.stat().st_size
        fields = list(rows[0])
        with (out / "index.csv").open("w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    return total


@dataclass(frozen=True)
class AugmentConfig:
    """DeepLabv3+ augmentation: random scale, flip, crop (crop `size` x `size`)."""

    size: int = 320
    scale: tuple[float, float] = (0.5, 2.0)
    # CamVid's pedestrians are tiny: never shrink them below the scale the daemon feeds
    small_object_scale: tuple[float, float] = (1.0, 2.0)
    small_object_sources: tuple[str, ...] = ("camvid",)
    # share of crops centred on a random labelled foreground pixel (plates are ~1 % of a frame)
    foreground_crop: float = 0.5


def to_input_view(image: NDArray[np.uint8], mask: NDArray[np.uint8]
                  ) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """Stretch to 513 x 513 as the daemon does (bilinear; nearest for the mask)."""
    size = (INPUT_SIZE, INPUT_SIZE)
    return (cv2.resize(image, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST))


def augment(image: NDArray[np.uint8], mask: NDArray[np.uint8], source: str,
            config: AugmentConfig, rng: np.random.Generator
            ) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """Daemon view (513 x 513), random scale, flip, crop padded with mean / ignore."""
    image, mask = to_input_view(image, mask)
    low, high = (config.small_object_scale if source in config.small_object_sources
                 else config.scale)
    scale = float(rng.uniform(low, high))
    side = max(8, round(INPUT_SIZE * scale))
    image = cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(mask, (side, side), interpolation=cv2.INTER_NEAREST)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    crop = config.size
    pad = max(0, crop - side)
    if pad:
        fill = tuple(reversed(MEAN_RGB))
        image = cv2.copyMakeBorder(np.ascontiguousarray(image), 0, pad, 0, pad,
                                   cv2.BORDER_CONSTANT, value=fill)
        mask = cv2.copyMakeBorder(np.ascontiguousarray(mask), 0, pad, 0, pad,
                                  cv2.BORDER_CONSTANT, value=IGNORE)
    height, width = mask.shape
    y = int(rng.integers(0, height - crop + 1))
    x = int(rng.integers(0, width - crop + 1))
    if rng.random() < config.foreground_crop:
        ys, xs = np.nonzero((mask == 1) | (mask == 2))
        if len(ys):
            pick = int(rng.integers(len(ys)))
            y = int(np.clip(ys[pick] - rng.integers(crop // 8, crop - crop // 8), 0, height - crop))
            x = int(np.clip(xs[pick] - rng.integers(crop // 8, crop - crop // 8), 0, width - crop))
    return (np.ascontiguousarray(image[y : y + crop, x : x + crop]),
            np.ascontiguousarray(mask[y : y + crop, x : x + crop]))


def to_tensor(image: NDArray[np.uint8]) -> torch.Tensor:
    """H x W x 3 BGR uint8 -> 3 x H x W float, RGB, ImageNet-normalised (the manifest's)."""
    rgb = image[:, :, ::-1].astype(np.float32)
    rgb = (rgb - np.asarray(MEAN_RGB, np.float32)) / np.asarray(STD_RGB, np.float32)
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def allowed_classes(mask: torch.Tensor, kinds: list[str]) -> torch.Tensor:
    """B x 3 x H x W bool: the classes each pixel may be, given its set's partial labels.

    Labelled class -> only it; background on a person image -> background, or background or
    plate where the reference model sees a vehicle (MAYBE_PLATE: CamVid's cars carry
    unlabelled plates; left free everywhere, "plate" became a free answer for any person-image
    background and the model over-masked small content); background on a plate image ->
    background, or background or person where the reference model sees a person (MAYBE_PERSON;
    left free, "person" became the model's answer for any plate-image background). Both hints
    come from `teacher_hints`. Ignore (255) -> no class (pixel not scored).
    """
    allowed = torch.zeros((mask.shape[0], len(CLASSES), *mask.shape[1:]), dtype=torch.bool)
    for b, kind in enumerate(kinds):
        m = mask[b]
        for class_id in (1, 2):
            allowed[b, class_id] = m == class_id
        allowed[b, 0] = (m == 0) | (m == MAYBE_PERSON) | (m == MAYBE_PLATE)
        if LABELLED[kind] == 1:
            allowed[b, 2] |= m == MAYBE_PLATE
        else:
            allowed[b, 1] |= m == MAYBE_PERSON
    return allowed


def hint_path(sample: Sample) -> Path:
    """Where the teacher's hint of an image lives (next to its mask)."""
    return Path(str(sample.mask).replace("/masks/", "/hints/", 1))


# the reference's VOC classes that carry licence plates: bicycle, bus, car, motorbike, train
VEHICLES = ("bicycle", "bus", "car", "motorbike", "train")
# per set: the VOC classes its hint marks (where the other, unlabelled class may hide)
HINT_CLASSES = {"plate": ("person",), "person": VEHICLES}
# per set: the mask value a hinted background pixel gets
HINT_VALUE = {"plate": MAYBE_PERSON, "person": MAYBE_PLATE}


def teacher_hints(root: Path, reference: Path, dilate: int = 15) -> int:
    """For every image under `root`: PNG of where the reference VOC model sees the other class.

    Plate images: a person; person images: a vehicle (where a plate may be). Dilated by
    `dilate` px (a hint only frees pixels, so erring large is the safe side). Returns how many
    images have a non-empty hint.
    """
    from daemon.analysis.manifest import load_manifest
    from daemon.analysis.onnx_backend import OnnxAnalyzer

    manifest = load_manifest(reference.with_suffix(".manifest.yaml"))
    analyzer = OnnxAnalyzer(reference, manifest)
    ids = {kind: [manifest.classes[name] for name in names] for kind, names in HINT_CLASSES.items()}
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (dilate, dilate))
    count = 0
    for split in ("train", "val"):
        for sample in read_split(root, split):
            image, _ = load_pair(sample)
            seen = np.isin(analyzer.labels(image), ids[sample.kind]).astype(np.uint8)
            hint = cv2.dilate(seen, kernel)
            path = hint_path(sample)
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), hint * 255, [cv2.IMWRITE_PNG_COMPRESSION, 9])
            count += int(hint.any())
    return count


def small_object_weight(masks: torch.Tensor, class_id: int, area: int, max_weight: float
                        ) -> torch.Tensor:
    """B x H x W float: sqrt(area / blob area) clipped to [1, max_weight] on `class_id` pixels.

    A pixel of an 8-connected blob of `class_id` smaller than `area` weighs more, so a distant
    pedestrian of 300 px counts in the loss closer to a near one of 30,000 px than the pixel
    mean lets it (a missed small person costs little IoU but is a privacy miss); everything
    else weighs 1.
    """
    weights = np.ones(masks.shape, np.float32)
    for b, mask in enumerate(masks.numpy()):
        count, blobs, stats, _ = cv2.connectedComponentsWithStats(
            (mask == class_id).astype(np.uint8), connectivity=8)
        if count < 2:
            continue
        per_blob = np.clip(np.sqrt(area / np.maximum(stats[:, cv2.CC_STAT_AREA], 1)), 1.0,
                           max_weight).astype(np.float32)
        per_blob[0] = 1.0  # label 0: not the class
        weights[b] = per_blob[blobs]
    return torch.from_numpy(weights)


def partial_label_loss(logits: torch.Tensor, allowed: torch.Tensor,
                       class_weight: torch.Tensor | None = None,
                       pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean over scored pixels of -log P(pixel's class in its allowed set).

    logits: B x C x h x w (any resolution; upsampled bilinearly to the mask's size).
    class_weight: optional C weights; a pixel weighs as its labelled (single allowed) class,
    background-or-other pixels as background.
    pixel_weight: optional B x H x W factors on top (e.g. `small_object_weight`).
    """
    if logits.shape[2:] != allowed.shape[2:]:
        logits = F.interpolate(logits, size=allowed.shape[2:], mode="bilinear",
                               align_corners=False)
    log_p = torch.log_softmax(logits.float(), dim=1)
    masked = log_p.masked_fill(~allowed, float("-inf"))
    valid = allowed.any(dim=1)
    nll = -torch.logsumexp(masked, dim=1)
    nll = torch.where(valid, nll, torch.zeros_like(nll))
    if class_weight is None:
        weight = valid.float()
    else:
        single = allowed.sum(dim=1) == 1
        label = allowed.float().argmax(dim=1)
        weight = torch.where(single, class_weight[label], class_weight[0]) * valid.float()
    if pixel_weight is not None:
        weight = weight * pixel_weight.to(weight.device)
    return (nll * weight).sum() / weight.sum().clamp_min(1.0)


class SegDataset(torch.utils.data.Dataset):
    """Augmented training crops: (3 x S x S float, S x S uint8 mask, set kind, source)."""

    def __init__(self, samples: list[Sample], config: AugmentConfig, seed: int = 0) -> None:
        self.samples = samples
        self.config = config
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, str]:
        sample = self.samples[index]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        image, mask = load_pair(sample)
        hint = hint_path(sample)
        seen = cv2.imread(str(hint), cv2.IMREAD_UNCHANGED) if hint.is_file() else None
        if seen is None:
            raise FileNotFoundError(f"{hint} missing: run python -m training.data --hints")
        mask = mask.copy()
        mask[(mask == 0) & (seen > 0)] = HINT_VALUE[sample.kind]
        image, mask = augment(image, mask, sample.source, self.config, rng)
        return to_tensor(image), torch.from_numpy(mask), sample.kind, sample.source


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC)
    parser.add_argument("--dst", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--longest", type=int, default=INPUT_SIZE)
    parser.add_argument("--quality", type=int, default=75, help="JPEG quality")
    parser.add_argument("--hints", action="store_true",
                        help="only (re)build the teacher's hints (people on plate images, "
                        "vehicles on person images)")
    parser.add_argument("--reference", type=Path,
                        default=REPO / "daemon" / "engines" / "deeplabv3_mnv2_voc_257.onnx")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.hints:
        total = build_cache(args.src, args.dst, args.longest, args.quality)
        log.info("compact copy in %s: %.1f MiB", args.dst, total / 2**20)
    count = teacher_hints(args.dst, args.reference)
    log.info("teacher hints written; %d images show the other set's class", count)


if __name__ == "__main__":
    main()
