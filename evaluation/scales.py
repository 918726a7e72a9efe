"""Privacy and utility at every scale (the paper's section 4.2.1 protocol).

Each image is downscaled to 1, 1/2, 1/4 and 1/8 and centred on a black canvas of its original
size, then anonymized by our adaptive blur and by the global Gaussian of equal privacy (the
largest K, and its sigma, our blur used on the full-scale set). The attackers run on the
original canvas and on every anonymized version; utility is measured where nothing is sensitive.
At scale 1 this is also the privacy table of the stills, plate val images and clip frames, with
deface (the peer) as one more version. "ours" is the default config (multi-scale analysis, zoom
auto); "ours, single pass" the same with tiling off.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
from tqdm import tqdm

from daemon.anonymizer.objects import dilate
from evaluation.data import Plate, Sample
from evaluation.privacy import FaceScore, Findings, PlateScore
from evaluation.systems import DEFAULT, SINGLE_PASS, Anonymized, GlobalBlur, Ours
from evaluation.utility import Agreement, TaskModel, psnr, ssim

log = logging.getLogger(__name__)

SCALES = (1.0, 0.5, 0.25, 0.125)
UTILITY_MARGIN = 8  # pixels the sensitive masks are grown by before measuring fidelity
VERSIONS = ("original", DEFAULT, SINGLE_PASS, "global", "deface")
MULTI = "multi-scale set"  # the group every scale of the multi-scale protocol is scored in

Attack = Callable[[np.ndarray], Findings]


def on_canvas(image: np.ndarray, scale: float) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The image at `scale`, centred on a black canvas of its own size; and where it lies."""
    h, w = image.shape[:2]
    if scale == 1.0:
        return image.copy(), (0, 0, w, h)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = np.zeros_like(image)
    x, y = (w - sw) // 2, (h - sh) // 2
    canvas[y:y + sh, x:x + sw] = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
    return canvas, (x, y, sw, sh)


@dataclass
class Case:
    sample: Sample
    scale: float
    canvas: np.ndarray
    region: tuple[int, int, int, int]
    ours: Anonymized  # the default config (multi-scale)
    single: Anonymized | None = None  # ours with tiling off (one full-frame pass)
    multiscale: bool = False  # in the multi-scale set


@dataclass
class ScaleResults:
    global_blur: GlobalBlur
    kernels: list[int]
    multiscale_images: int
    # (group, scale, system, face detector label) -> that detector against that system's masks
    faces: dict[tuple[str, float, str, str], FaceScore] = field(default_factory=dict)
    # (group, scale, version, face detector label) -> faces it found on that version
    face_counts: dict[tuple[str, float, str, str], int] = field(
        default_factory=lambda: defaultdict(int))
    detectors: list[str] = field(default_factory=list)  # face detector labels, the primary first
    plates: dict[tuple[str, float, str, str], PlateScore] = field(default_factory=dict)
    fidelity: dict[tuple[float, str], list[tuple[float, float]]] = field(
        default_factory=lambda: defaultdict(list))
    task: dict[tuple[float, str], Agreement] = field(default_factory=lambda: defaultdict(Agreement))
    groups: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    gallery: list[tuple[str, dict[str, np.ndarray]]] = field(default_factory=list)
    # faces the primary detector found on originals that our masks miss: (sample, crop)
    miss_crops: list[tuple[str, np.ndarray]] = field(default_factory=list)
    # faces any detector found on our output inside our masks: (sample, detector, score, crop)
    masked_crops: list[tuple[str, str, float, np.ndarray]] = field(default_factory=list)

    def face_count(self, group: str, scale: float, version: str, detector: str | None = None
                   ) -> int:
        """Faces `detector` (default: the primary) found on `version`."""
        label = detector if detector is not None else self.detectors[0]
        return self.face_counts.get((group, scale, version, label), 0)

    def has_version(self, group: str, scale: float, version: str) -> bool:
        return any(k[:3] == (group, scale, version) for k in self.face_counts)


def run(samples: list[Sample], multiscale: list[Sample], ours: Ours, attack: Attack,
        task: TaskModel, *, deface: Callable[[np.ndarray], np.ndarray] | None,
        memo: dict, gallery: set[str], single: Ours | None = None) -> ScaleResults:
    """Every sample at scale 1, the `multiscale` ones at every scale. `memo` keeps what does not
    depend on the model (the attackers on the originals, deface and its findings) between
    models. `ours`: the default config; `single`: the same model and backend with tiling off,
    as one more version."""
    cases = []
    plan = [(s, 1.0) for s in samples] + [(s, k) for s in multiscale for k in SCALES[1:]]
    for sample, scale in tqdm(plan, desc="anonymize", unit="image"):
        canvas, region = on_canvas(sample.load(), scale)
        cases.append(Case(sample, scale, canvas, region, ours.anonymize(canvas),
                          single.anonymize(canvas) if single else None,
                          sample in multiscale))
    kernels = [k for c in cases if c.scale == 1.0 for k in c.ours.kernels]
    baseline = GlobalBlur.equal_privacy(kernels, ours.blur.sigma_factor)
    log.info("global blur of equal privacy: K=%d sigma=%.0f (largest of %d objects)",
             baseline.kernel, baseline.sigma, len(kernels))
    results = ScaleResults(baseline, kernels, len(multiscale))
    for case in tqdm(cases, desc="attack", unit="image"):
        _score(case, attack, task, baseline, deface, memo, gallery, results)
    return results


def remember(memo: dict, key: tuple, make: Callable[[], object]) -> object:
    if key not in memo:
        memo[key] = make()
    return memo[key]


def _score(case: Case, attack: Attack, task: TaskModel, baseline: GlobalBlur,
           deface: Callable[[np.ndarray], np.ndarray] | None, memo: dict, gallery: set[str],
           results: ScaleResults) -> None:
    sample, scale = case.sample, case.scale
    groups = ([sample.group] if scale == 1.0 else []) + ([MULTI] if case.multiscale else [])
    key = (sample.name, scale)
    versions = {DEFAULT: case.ours.image, "global": baseline.anonymize(case.canvas)}
    found = {"original": remember(memo, ("original", *key), lambda: attack(case.canvas))}
    found |= {v: attack(image) for v, image in versions.items()}
    if deface is not None and scale == 1.0:
        def peer() -> tuple[np.ndarray, Findings]:
            image = deface(case.canvas)
            return image, attack(image)

        versions["deface"], found["deface"] = remember(memo, ("deface", *key), peer)
    results.groups[sample.group] += scale == 1.0
    if case.single is not None:
        versions[SINGLE_PASS] = case.single.image
        found[SINGLE_PASS] = attack(case.single.image)
    original = found["original"].face_sets()
    if not results.detectors:
        results.detectors = list(original)
    for system, anonymized in ((DEFAULT, case.ours), (SINGLE_PASS, case.single)):
        if anonymized is None or scale != 1.0:
            continue
        output = found[system].face_sets()
        for detector, faces_before in original.items():
            faces = results.faces.setdefault((sample.group, scale, system, detector), FaceScore())
            known, masked = len(faces.misses), len(faces.found_masked)
            faces.add(sample.name, faces_before, output[detector], anonymized.mask)
            if system != DEFAULT:
                continue
            if detector == results.detectors[0]:
                for name, box in faces.misses[known:]:
                    results.miss_crops.append((name, _crop(case.canvas, box)))
            for name, face in faces.found_masked[masked:]:
                results.masked_crops.append((name, detector, face.score,
                                             _crop(anonymized.image, face.box)))
    for group in groups:
        for version, findings in found.items():
            for detector, faces_found in findings.face_sets().items():
                results.face_counts[(group, scale, version, detector)] += len(faces_found)
            for reader, detections in findings.plates.items():
                score = results.plates.setdefault((group, scale, reader, version), PlateScore())
                score.add(_scaled_plates(sample, scale, case.region), detections,
                          found["original"].plates[reader])
    if case.multiscale:
        _utility(case, versions, task, results)
    if scale == 1.0 and sample.name in gallery:
        results.gallery.append((sample.name, {"original": case.canvas} | versions))


def _crop(image: np.ndarray, box: tuple[int, int, int, int], size: int = 96) -> np.ndarray:
    x1, y1, x2, y2 = (int(v) for v in box)
    pad = max(8, (x2 - x1) // 2)
    crop = image[max(0, y1 - pad):max(0, y2 + pad), max(0, x1 - pad):max(0, x2 + pad)]
    if crop.size == 0:
        return np.zeros((size, size, 3), np.uint8)
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def _scaled_plates(sample: Sample, scale: float, region: tuple[int, int, int, int]
                   ) -> tuple[Plate, ...]:
    x, y = region[0], region[1]
    return tuple(Plate((p.box[0] * scale + x, p.box[1] * scale + y, p.box[2] * scale + x,
                        p.box[3] * scale + y), p.text) for p in sample.plates)


def _utility(case: Case, versions: dict[str, np.ndarray], task: TaskModel,
             results: ScaleResults) -> None:
    """Fidelity outside the sensitive mask (each of our systems' own; ours for the global
    blur), grown by UTILITY_MARGIN, and the task's agreement on the image region."""
    x, y, w, h = case.region
    inside = np.zeros(case.ours.mask.shape, bool)
    inside[y:y + h, x:x + w] = True
    crop = (slice(y, y + h), slice(x, x + w))
    truth = task.labels(np.ascontiguousarray(case.canvas[crop]))
    masks = {DEFAULT: case.ours.mask, "global": case.ours.mask}
    if case.single is not None:
        masks[SINGLE_PASS] = case.single.mask
    for version, mask in masks.items():
        image = versions[version]
        keep = inside & ~dilate(mask, UTILITY_MARGIN)
        results.fidelity[(case.scale, version)].append(
            (psnr(case.canvas, image, keep), ssim(case.canvas, image, keep)))
        labels = task.labels(np.ascontiguousarray(image[crop]))
        results.task[(case.scale, version)].add(truth, labels, task.ids)


def timed(function: Callable[[np.ndarray], object], images: list[np.ndarray]) -> float:
    """Frames per second of `function` over `images` (one warm-up call first)."""
    function(images[0])
    start = time.perf_counter()
    for image in images:
        function(image)
    return len(images) / (time.perf_counter() - start)
