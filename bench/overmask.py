"""Over-masking: the share of each frame the default config blurs where nothing needs it
(the empty room at the start of the indoor clip: no person, no plate) and on the evaluation's
stills, single pass vs multi-scale (the default plan), with the objects found per class.

Multi-scale must not blur more than 1.5x the single pass's share on such scenes.
Usage: .venv/bin/python bench/overmask.py [--empty-frames 50] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import av
import cv2
import numpy as np

from daemon.analysis import class_ids
from daemon.anonymizer.cpu import blur_params
from daemon.anonymizer.objects import find_objects
from daemon.backends import open_backend
from daemon.configfile import load_config
from daemon.interfaces import Analyzer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
EMPTY_CLIP = SHARED / "clips" / "indoor_people_walking_768x432.mp4"  # empty until frame ~55
STILLS = SHARED / "stills"


def _frames(count: int) -> list[np.ndarray]:
    with av.open(str(EMPTY_CLIP)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="bgr24"))
            if len(frames) == count:
                break
    return frames


def _measure(analyzer: Analyzer, images: list[np.ndarray], ids, params, names
             ) -> tuple[float, float, dict[str, float]]:
    """(median share blurred, max share, objects per image by class)."""
    shares, counts = [], {n: 0 for n in names.values()}
    for image in images:
        found = find_objects(analyzer.labels(image), ids, params)
        shares.append(float((found.owner >= 0).mean()))
        for obj in found.objects:
            counts[names[obj.class_id]] += 1
    per_image = {n: c / len(images) for n, c in counts.items()}
    return statistics.median(shares), max(shares), per_image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--empty-frames", type=int, default=50)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    base = load_config(None)
    model = base.model.model_copy(update={"device": args.device})
    multi = base.model_copy(update={"model": model})
    single = multi.model_copy(update={"analysis": multi.analysis.model_copy(update={
        "tiling": multi.analysis.tiling.model_copy(update={"enabled": False})})})
    analyzers = {"single pass": open_backend(single).analyzer,
                 "multi-scale": open_backend(multi).analyzer}
    manifest = analyzers["single pass"].manifest
    ids = class_ids(manifest, base.anonymize)
    names = {manifest.classes[n]: n for n in base.anonymize}
    params = blur_params(base.blur)
    scenes = {
        f"empty room ({EMPTY_CLIP.name}, frames 0-{args.empty_frames - 1})":
            _frames(args.empty_frames),
        f"evaluation stills ({len(list(STILLS.glob('*.*g')))} in {STILLS.name}/)":
            [cv2.imread(str(p)) for p in sorted(STILLS.glob("*.*g"))],
    }
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; blur.mask_dilation "
          f"{base.blur.mask_dilation}; share = pixels owned by a blurred object")
    print("| scene | analysis | median share blurred | max share | objects per image |"
          " multi / single (median) |")
    print("|---|---|---|---|---|---|")
    for scene, images in scenes.items():
        images = [i for i in images if i is not None]
        results = {k: _measure(a, images, ids, params, names) for k, a in analyzers.items()}
        for kind, (median, peak, per_image) in results.items():
            ratio = median / max(results["single pass"][0], 1e-9)
            objects = ", ".join(f"{n} {c:.2f}" for n, c in per_image.items())
            print(f"| {scene} | {kind} | {100 * median:.2f} % | {100 * peak:.2f} % | {objects} |"
                  f" {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
