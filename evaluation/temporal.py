"""Temporal leaks on the clips: frames where an attacker still finds a face or reads a plate in
our output, and the longest run of such frames. Two ways of analysing: every frame, and every
Nth frame with the frames between blurred as the daemon's `bracket` mode does (the union of the
analyses before and after, grown by `analysis.bracket_dilation`). Also the peer, deface, on the
same frames, and frames per second of both on this CPU."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from evaluation.data import CLIP_PLATES, clip_frames
from evaluation.privacy import Findings, reads, still_read
from evaluation.scales import remember, timed
from evaluation.systems import Ours

log = logging.getLogger(__name__)

# clips with cars, where the plate readers run on every frame (elsewhere they find nothing)
PLATE_CLIPS = ("car_plate_approach_1280x720.mp4", "street_pedestrians_cars_640x360.mp4")
MODES = ("every frame", "bracket")


@dataclass
class Leaks:
    """Per frame: did the attackers find something on this version?"""

    faces: list[bool] = field(default_factory=list)  # the primary face detector
    plates: list[bool] = field(default_factory=list)
    by_detector: dict[str, list[bool]] = field(default_factory=dict)  # every face detector

    def add(self, findings: Findings, original: Findings, known_plate: str) -> None:
        self.faces.append(bool(findings.faces))
        for detector, faces in findings.face_sets().items():
            self.by_detector.setdefault(detector, []).append(bool(faces))
        targets = set(reads(original)) | ({known_plate} - {""})
        self.plates.append(bool(still_read(targets, set(reads(findings)))))


def longest_run(flags: list[bool]) -> int:
    best = run = 0
    for flag in flags:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


@dataclass
class ClipResult:
    clip: str
    frames: int
    plates_attacked: bool
    versions: dict[str, Leaks]  # "original", "every frame", "bracket", "deface"
    fps: dict[str, float]  # "ours", "deface"


def run_clip(path: Path, ours: Ours, attack: Callable[..., Findings], *, limit: int,
             every: int, deface: Callable[[np.ndarray], np.ndarray] | None,
             timing_frames: int, memo: dict) -> ClipResult:
    """`memo` keeps what does not depend on the model (the attackers on the raw frames, on
    deface's output, and deface's speed) between models."""
    frames = [image for _, image in clip_frames(path, limit)]
    with_plates = path.name in PLATE_CLIPS
    known = CLIP_PLATES.get(path.name, "")
    labels = [ours.labels(f) for f in tqdm(frames, desc=f"{path.stem}: analyze", unit="frame")]
    analysed = sorted(set(range(0, len(frames), every)) | {len(frames) - 1})
    versions = {v: Leaks() for v in ("original", *MODES, *(["deface"] if deface else []))}
    for t, frame in enumerate(tqdm(frames, desc=f"{path.stem}: attack", unit="frame")):
        before = max(a for a in analysed if a <= t)
        after = min(a for a in analysed if a >= t)
        outputs = {"every frame": ours.anonymize(frame, labels[t]).image,
                   "bracket": ours.bracketed(frame, labels[before], labels[after]).image}
        original = remember(memo, ("original", path.name, t),
                            lambda f=frame: attack(f, plates=with_plates))
        versions["original"].add(original, original, known)
        for name, image in outputs.items():
            versions[name].add(attack(image, plates=with_plates), original, known)
        if deface:
            peer = remember(memo, ("deface", path.name, t),
                            lambda f=frame: attack(deface(f), plates=with_plates))
            versions["deface"].add(peer, original, known)
    sample = frames[:timing_frames]
    fps = {"ours": timed(lambda f: ours.anonymize(f), sample)}
    if deface:
        fps["deface"] = remember(memo, ("deface fps", path.name), lambda: timed(deface, sample))
    return ClipResult(path.name, len(frames), with_plates, versions, fps)
