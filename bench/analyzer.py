"""Analyzer cost per backend: one 513 x 513 pass and one multi-scale analysis (full frame +
tiles, the default plan) of a 720p and a 1080p frame, for ONNX Runtime FP32 and OpenVINO FP32 /
BF16 at 1 and 2 threads, and each one's label agreement with ONNX Runtime FP32 on val images.

All numbers come from one run on one machine (medians of --repeats runs, interleaved), so the
ratios hold; the load average is printed before and after.
Usage: .venv/bin/python bench/analyzer.py [--repeats 10] [--images 24] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from daemon.analysis.manifest import load_manifest
from daemon.analysis.multiscale import MultiScaleAnalyzer
from daemon.analysis.onnx_backend import OnnxAnalyzer
from daemon.analysis.openvino_backend import OpenVinoAnalyzer
from daemon.config import TilingConfig

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "daemon" / "engines" / "deeplabv3plus_mnv2_person_plate_513.onnx"
SHARED = REPO.parent / "shared" / "data"
IMAGE = SHARED / "stills" / "deface_city.jpg"
SIZES = ((720, 1280), (1080, 1920))
PROTECTED = ("person", "license_plate")


@dataclass(frozen=True)
class Variant:
    name: str
    make: Callable[[int], MultiScaleAnalyzer]


def _variants(model: Path) -> list[Variant]:
    manifest = load_manifest(model.with_suffix(".manifest.yaml"))
    ids = tuple(manifest.classes[c] for c in PROTECTED)
    tiling = TilingConfig()  # the default plan: on, zoom auto

    def ort(threads: int) -> MultiScaleAnalyzer:
        return OnnxAnalyzer(model, manifest, threads=threads, tiling=tiling, protected=ids)

    def ov(precision: str) -> Callable[[int], MultiScaleAnalyzer]:
        def make(threads: int) -> MultiScaleAnalyzer:
            return OpenVinoAnalyzer(model, manifest, precision=precision,  # type: ignore[arg-type]
                                    threads=threads, tiling=tiling, protected=ids)
        return make

    return [Variant("ONNX Runtime FP32", ort), Variant("OpenVINO FP32", ov("fp32")),
            Variant("OpenVINO BF16", ov("bf16"))]


def _median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm (first call of a geometry allocates)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _val_images(count: int) -> list[np.ndarray]:
    """`count` val images spread over every source (people near and far, plates)."""
    paths = sorted((SHARED / "seg/person/images/val").glob("*.jpg"))
    paths += sorted((SHARED / "seg/plate/images/val").glob("*.jpg"))
    step = max(1, len(paths) // count)
    images = [cv2.imread(str(p)) for p in paths[::step][:count]]
    return [i for i in images if i is not None]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="runs per measurement (median)")
    parser.add_argument("--images", type=int, default=24, help="val images for the agreement")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", type=Path, default=MODEL)
    args = parser.parse_args()
    still = cv2.imread(str(IMAGE))
    if still is None:
        parser.error(f"cannot read {IMAGE}")
    print(f"model {args.model.name}, {args.repeats} repeats, load average before "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")
    frames = {size: cv2.resize(still, size[::-1], interpolation=cv2.INTER_LINEAR)
              for size in SIZES}
    square = cv2.resize(still, (513, 513), interpolation=cv2.INTER_LINEAR)
    val = _val_images(args.images)
    variants = _variants(args.model)
    rows = []
    reference_labels: list[np.ndarray] | None = None
    for threads in args.threads:
        analyzers = [(v.name, v.make(threads)) for v in variants]
        plans = {size: len(analyzers[0][1].plan(*size)) for size in SIZES}
        for name, analyzer in analyzers:
            pass_ms = _median_ms(lambda a=analyzer: a.region_labels(
                square, a.plan(513, 513)[0]), args.repeats)
            multi = {size: _median_ms(lambda a=analyzer, f=frames[size]: a.labels(f),
                                      args.repeats) for size in SIZES}
            labels = [analyzer.labels(image) for image in val]
            if reference_labels is None:  # ONNX Runtime FP32, the first variant
                reference_labels = labels
            agree = sum(int((a == b).sum()) for a, b in zip(labels, reference_labels,
                                                             strict=True))
            total = sum(a.size for a in labels)
            rows.append((name, threads, pass_ms, multi, agree / total))
            print(f"{name:18s} threads {threads}: 513 pass {pass_ms:6.1f} ms; multi-scale "
                  + "; ".join(f"{w}x{h} ({plans[(h, w)]} passes) {multi[(h, w)]:6.1f} ms"
                              for h, w in SIZES)
                  + f"; labels = ONNX Runtime FP32 on {100 * agree / total:.3f} % of pixels",
                  flush=True)
    print()
    print("| backend | threads | 513x513 pass ms | 720p multi-scale ms | 1080p multi-scale ms |"
          " agreement with ORT FP32 |")
    print("|---|---|---|---|---|---|")
    for name, threads, pass_ms, multi, agreement in rows:
        print(f"| {name} | {threads} | {pass_ms:.1f} | {multi[SIZES[0]]:.1f} | "
              f"{multi[SIZES[1]]:.1f} | {100 * agreement:.3f} % |")
    print(f"\nval images: {len(val)}; load average after "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
