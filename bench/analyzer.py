"""Analyzer cost per frame: full-frame pass vs tiling, exact refinement vs brute-force upsampling.

All numbers come from one run on one machine (medians of --repeats runs), so the ratios hold.
Usage: .venv/bin/python bench/analyzer.py [--repeats 5] [--threads 0] [--image PATH]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from daemon.analysis.onnx_backend import OnnxAnalyzer
from daemon.analysis.tiling import frame_tiles
from daemon.analysis.upsample import (
    upsampled_argmax,
    upsampled_argmax_opencv,
    upsampled_nearest,
)
from daemon.backends import open_backend
from daemon.config import AnalysisConfig, Config, ModelConfig, TilingConfig

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "engines" / "deeplabv3_mnv2_voc_257.onnx"
IMAGE = REPO.parent / "shared" / "data" / "stills" / "deface_city.jpg"
SIZES = ((720, 1280), (1080, 1920))

log = logging.getLogger("bench.analyzer")


def _median_ms(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _analyzer(threads: int, tiling: bool) -> OnnxAnalyzer:
    config = Config(
        model=ModelConfig(path=MODEL, device="cpu", threads=threads),
        analysis=AnalysisConfig(tiling=TilingConfig(enabled=tiling)),
    )
    analyzer = open_backend(config).analyzer
    if not isinstance(analyzer, OnnxAnalyzer):
        raise TypeError(f"expected the ONNX Runtime analyzer, got {type(analyzer).__name__}")
    return analyzer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all)")
    parser.add_argument("--image", type=Path, default=IMAGE, help="a real still, resized per size")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("daemon").setLevel(logging.WARNING)

    still = cv2.imread(str(args.image))
    if still is None:
        parser.error(f"cannot read {args.image}")
    full, tiled = _analyzer(args.threads, False), _analyzer(args.threads, True)
    overlap = TilingConfig().overlap
    log.info("image %s, %d repeats, threads %d", args.image.name, args.repeats, args.threads)

    for height, width in SIZES:
        frame = cv2.resize(still, (width, height), interpolation=cv2.INTER_LINEAR)
        tiles = len(frame_tiles(height, width, 257, 257, overlap))
        infer_ms = _median_ms(partial(full.infer, frame), args.repeats)
        full_ms = _median_ms(partial(full.labels, frame), args.repeats)
        tiled_ms = _median_ms(partial(tiled.labels, frame), args.repeats)
        log.info(
            "%dx%d full-frame pass: %.1f ms/frame (inference incl. resize %.1f ms); with tiling "
            "(%d tiles + full, overlap %.2f): %.1f ms/frame (%.1fx)",
            width,
            height,
            full_ms,
            infer_ms,
            tiles,
            overlap,
            tiled_ms,
            tiled_ms / full_ms,
        )
        logits = full.infer(frame)[0]
        low = logits.argmax(axis=0)
        exact = upsampled_argmax(logits, height, width)
        brute = upsampled_argmax_opencv(logits, height, width)
        refine_ms = _median_ms(partial(upsampled_argmax, logits, height, width), args.repeats)
        brute_ms = _median_ms(partial(upsampled_argmax_opencv, logits, height, width), args.repeats)
        nearest_ms = _median_ms(partial(upsampled_nearest, low, height, width), args.repeats)
        log.info(
            "%dx%d upsampling: exact refinement %.1f ms vs brute force (cv2.resize 21 classes "
            "+ argmax) %.1f ms (%.1fx faster; agreement %.5f); nearest (blocky) %.1f ms",
            width,
            height,
            refine_ms,
            brute_ms,
            brute_ms / refine_ms,
            float(np.mean(exact == brute)),
            nearest_ms,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
