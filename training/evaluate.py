"""Measure segmentation models the way the daemon runs them (`python -m training.evaluate`).

For every model (an ONNX file with its manifest), through the daemon's `OnnxAnalyzer` on the
val split of shared/data/seg at the images' own resolution: IoU of person and license_plate per
data source and over each set (dataset-level: intersections and unions summed over images),
person recall by object size (8-connected ground-truth blobs, COCO-style pixel-area bins), and
the median CPU latency of `labels()` on a 513 x 513 frame with one thread. One Markdown table,
the models side by side. `--tiling-zoom Z` adds each model run with the daemon's multi-scale
analysis (`analysis.tiling`, zoom Z) as a column of its own; `--sources` limits the images.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from daemon.analysis.manifest import load_manifest
from daemon.analysis.onnx_backend import OnnxAnalyzer
from daemon.config import TilingConfig
from training.data import DEFAULT_SRC, IGNORE, load_pair, read_split
from training.metrics import Tally

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "daemon" / "engines" / "deeplabv3_mnv2_voc_257.onnx"
SET_CLASS = {"person": ("person", 1), "plate": ("license_plate", 2)}


def _analyzer(model: Path, threads: int, tiling: TilingConfig | None) -> OnnxAnalyzer:
    """The daemon's CPU analyzer; with `tiling`, person and license_plate win the merge."""
    manifest = load_manifest(model.with_suffix(".manifest.yaml"))
    protected = [manifest.classes[name] for name, _ in SET_CLASS.values()
                 if name in manifest.classes]
    return OnnxAnalyzer(model, manifest, threads=threads, tiling=tiling, protected=protected)


def evaluate(model: Path, samples: list, threads: int = 0,
             tiling: TilingConfig | None = None) -> dict[str, float]:
    """Metrics of one model on `samples` through the daemon's CPU analyzer."""
    analyzer = _analyzer(model, threads, tiling)
    manifest = analyzer.manifest
    tally = Tally()
    for sample in samples:
        image, mask = load_pair(sample)
        labels = analyzer.labels(image)
        name, truth_id = SET_CLASS[sample.kind]
        valid = mask != IGNORE
        truth = mask == truth_id
        if name not in manifest.classes:
            continue
        pred = labels == manifest.classes[name]
        tally.add_iou(f"{name}/{sample.source}", pred, truth, valid)
        tally.add_iou(name, pred, truth, valid)
        if sample.kind == "person":
            tally.add_objects(pred & valid, truth)
    return tally.metrics()


def latency_ms(model: Path, runs: int = 20, size: int = 513,
               tiling: TilingConfig | None = None) -> float:
    """Median ms of `labels()` on a real still stretched to size x size, one thread."""
    analyzer = _analyzer(model, 1, tiling)
    still = REPO.parent / "shared" / "data" / "stills" / "deface_city.jpg"
    frame = cv2.imread(str(still), cv2.IMREAD_COLOR)
    if frame is None:
        frame = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    frame = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
    analyzer.labels(frame)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        analyzer.labels(frame)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def table(results: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per metric, one column per model."""
    names = list(results)
    keys: list[str] = []
    for metrics in results.values():
        keys += [k for k in metrics if k not in keys]
    order = sorted(keys, key=lambda k: (k.split("/")[0] != "iou", k.startswith("latency"), k))
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in order:
        cells = []
        for name in names:
            value = results[name].get(key, math.nan)
            if math.isnan(value):
                cells.append("n/a")
            elif key.startswith("objects/"):
                cells.append(f"{int(value)}")
            elif key.startswith("latency"):
                cells.append(f"{value:.0f}")
            else:
                cells.append(f"{value:.3f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _zoom(text: str) -> float | str:
    if text == "auto":
        return text
    value = float(text)
    if not 1.0 <= value <= 4.0:
        raise argparse.ArgumentTypeError(f"zoom must be auto or 1..4, got {text}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="*", help="ONNX files (manifest next to each)")
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help=f"add the reference model {REFERENCE.name}")
    parser.add_argument("--data", type=Path, default=DEFAULT_SRC, help="shared/data/seg")
    parser.add_argument("--split", default="val")
    parser.add_argument("--threads", type=int, default=0, help="ORT threads for the IoU pass")
    parser.add_argument("--latency-runs", type=int, default=20, help="0: skip the timing")
    parser.add_argument("--json", type=Path, help="also write the metrics here")
    parser.add_argument("--sources", nargs="+", help="only these data sources (e.g. camvid)")
    parser.add_argument("--tiling-zoom", type=_zoom, default=None,
                        help="also run each model with analysis.tiling at this zoom (>= 1, or"
                        " auto: the daemon's default plan)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    models = list(args.models) + ([REFERENCE] if args.reference else [])
    samples = read_split(args.data, args.split, set(args.sources) if args.sources else None)
    variants: list[tuple[str, TilingConfig | None]] = [("", None)]
    if args.tiling_zoom is not None:
        tiling = TilingConfig(enabled=True, zoom=args.tiling_zoom)
        zoom = args.tiling_zoom if args.tiling_zoom == "auto" else f"{args.tiling_zoom:g}"
        variants.append((f" + tiles (zoom {zoom})", tiling))
    results: dict[str, dict[str, float]] = {}
    for model in models:
        for suffix, tiling in variants:
            log.info("evaluating %s%s on %d %s images", model.name, suffix, len(samples),
                     args.split)
            metrics = evaluate(model, samples, args.threads, tiling)
            if args.latency_runs:
                metrics["latency_ms/513x513_1thread_median"] = latency_ms(
                    model, args.latency_runs, tiling=tiling)
            results[model.stem + suffix] = metrics
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
