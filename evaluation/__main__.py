"""`python -m evaluation`: regenerate evaluation/REPORT.md, its plots and gallery.

    python -m evaluation                      # the full run (see REPORT.md for its time)
    python -m evaluation --quick --out /tmp/e # a few images and frames: seconds, for CI
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

from daemon.configfile import load_config
from evaluation import data
from evaluation.attackers import Stricter, face_detectors, plate_readers
from evaluation.privacy import Findings
from evaluation.report import Report, RunInfo
from evaluation.scales import run as run_scales
from evaluation.sizes import recall_by_size
from evaluation.sweep import sweep
from evaluation.systems import Ours
from evaluation.temporal import run_clip
from evaluation.utility import VOC_MODEL, TaskModel

log = logging.getLogger("evaluation")

OWN_MODEL = data.REPO / "daemon" / "engines" / "deeplabv3plus_mnv2_person_plate_513.onnx"
GALLERY = ("deface_city", "anonymizer_coco02", "aiguys_car2", "hyperlpr_test_img",
           "street_pedestrians_cars_640x360@0", "vtest_pedestrians_768x576@0")


class Attackers:
    """Every attacker on one image: the face detectors (CenterFace at deface's 0.2 first, the
    primary; CenterFace at 0.5; RetinaFace; BlazeFace) and the plate readers."""

    def __init__(self, hyperlpr: bool, face_workers: bool = True) -> None:
        self.detectors = face_detectors(include_workers=face_workers)
        self.faces = self.detectors[0]
        self.labels = [d.label for d in self.detectors]
        self.readers = plate_readers(include_hyperlpr=hyperlpr)
        self.names = ([f"{d.label}: {d.name}" for d in self.detectors]
                      + [r.name for r in self.readers])

    def detect_faces(self, image) -> dict[str, tuple]:
        found: dict[str, tuple] = {}
        for detector in self.detectors:
            if isinstance(detector, Stricter) and detector.base.label in found:
                found[detector.label] = tuple(detector.filter(found[detector.base.label]))
            else:
                found[detector.label] = tuple(detector.detect(image))
        return found

    def __call__(self, image, plates: bool = True) -> Findings:
        faces = self.detect_faces(image)
        return Findings(faces[self.faces.label],
                        {r.name: tuple(r.detect(image)) if plates else () for r in self.readers},
                        faces)

    def close(self) -> None:
        for attacker in self.detectors + self.readers:
            getattr(attacker, "close", lambda: None)()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__)
    parser.add_argument("--data", type=Path, default=data.DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=data.REPO / "evaluation",
                        help="where REPORT.md, plots/ and gallery/ go")
    parser.add_argument("--models", type=Path, nargs="+", default=None,
                        help="ONNX models with manifests (default: the config's default model,"
                        " then the project's own person+plate model and the reference VOC"
                        " model, each once)")
    parser.add_argument("--quick", action="store_true",
                        help="a few images, frames and scales (CI smoke test)")
    parser.add_argument("--plate-images", type=int, default=0, help="plate val images (0: all)")
    parser.add_argument("--clip-samples", type=int, default=4,
                        help="frames per clip in the still sets")
    parser.add_argument("--multiscale-plates", type=int, default=24,
                        help="plate val images also run at 1/2, 1/4, 1/8")
    parser.add_argument("--clip-frames", type=int, default=90,
                        help="frames per clip for temporal leaks")
    parser.add_argument("--every", type=int, default=5,
                        help="analysis interval for the bracketed temporal mode")
    parser.add_argument("--no-hyperlpr", action="store_true", help="skip the HyperLPR reader")
    parser.add_argument("--no-deface", action="store_true", help="skip the deface peer")
    parser.add_argument("--no-face-workers", action="store_true",
                        help="skip the RetinaFace and BlazeFace detectors (their own venvs)")
    return parser.parse_args(argv)


def default_models(default: Path) -> list[Path]:
    """The config's default model first, then ours and the reference VOC model, once each."""
    wanted = dict.fromkeys([default, OWN_MODEL, VOC_MODEL])
    return [path for path in wanted if path.exists()]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse(argv)
    started = time.time()
    models = args.models or default_models(load_config(None).model.path)
    if args.quick:
        args.plate_images, args.clip_samples, args.multiscale_plates = 2, 1, 1
        args.clip_frames, args.every = 6, 3
    plates = data.plate_val(args.data)
    if args.plate_images:
        plates = plates[:args.plate_images]
    stills = data.stills(args.data)
    clips = data.clips(args.data)
    if args.quick:
        stills = [s for s in stills if s.name in ("deface_city", "aiguys_car2")]
        clips = [c for c in clips if c.name.startswith("car_plate")]
    samples = plates + stills + [s for s in data.clip_samples(args.data, args.clip_samples)
                                 if s.path in clips]
    multiscale = stills + plates[:args.multiscale_plates]
    attackers = Attackers(hyperlpr=not args.no_hyperlpr, face_workers=not args.no_face_workers)
    deface = None
    if not args.no_deface:
        from evaluation.deface_peer import DefacePeer

        deface = DefacePeer().anonymize
    task = TaskModel()
    person = data.seg_val(args.data, "person")
    plate_pairs = data.seg_val(args.data, "plate")
    if args.quick:
        person, plate_pairs = person[:2], plate_pairs[:2]
    report = Report(args.out, RunInfo.collect(
        "python -m evaluation " + shlex.join(argv if argv is not None else sys.argv[1:]),
        args, attackers.names))
    memo: dict = {}  # what does not depend on the model, kept between models
    try:
        for model in models:
            log.info("model %s", model)
            ours = Ours(model)  # the default config: multi-scale analysis, zoom auto
            single = Ours(model, tiling=False)  # the same backend, one full-frame pass
            log.info("%s: %s; %s: %s", ours.name, ours.describe, single.name, single.describe)
            scales = run_scales(samples, multiscale, ours, attackers, task, deface=deface,
                                memo=memo, gallery=set(GALLERY), single=single)
            temporal = [run_clip(c, ours, attackers, limit=args.clip_frames, every=args.every,
                                 deface=deface, timing_frames=min(30, args.clip_frames),
                                 memo=memo)
                        for c in clips]
            sizes = {system.tiling: recall_by_size(system, person + plate_pairs)
                     for system in (single, ours)}
            settings = sweep([single, ours], [s for s in samples if s.group != "plate val"],
                             attackers, memo)
            report.add_model(ours, scales, temporal, sizes, settings)
    finally:
        attackers.close()
    path = report.write(time.time() - started)
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
