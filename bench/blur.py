"""Benchmark: the numpy oracle vs the fast CPU path of the anonymizer on 1920x1080 frames.

Realistic masks are label maps of the reference model on the pedestrian clip, scaled to 1080p
(nearest), on the clip's frame scaled the same way; the stress case is one object covering about
half the frame (K = 255). Oracle and fast path run in the same process on the same inputs; one
thread everywhere (OpenCV, numba), medians of repeated runs.

    .venv/bin/python bench/blur.py [--repeats 20] [--oracle-repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from daemon.anonymizer.fast import blur_objects_fast
from daemon.anonymizer.objects import BlurParams, ObjectMap, find_objects
from daemon.anonymizer.oracle import blur_objects_oracle

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "clips" / "street_pedestrians_cars_640x360.mp4"
SIZE = (1920, 1080)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def pedestrian_frame() -> tuple[np.ndarray, np.ndarray, int]:
    """The clip frame (of 8 sampled) with the most person pixels, and its labels, at 1080p."""
    from daemon.analysis import class_ids
    from daemon.configfile import load_config
    from daemon.media.video_reader import VideoReader

    config = load_config(None)
    from daemon.backends import open_backend

    analyzer = open_backend(config).analyzer
    person = class_ids(analyzer.manifest, ["person"])[0]
    best = None
    with VideoReader(CLIP) as reader:
        for i, frame in enumerate(reader.frames()):
            if i % 40:
                continue
            labels = analyzer.labels(frame.image)
            count = int((labels == person).sum())
            if best is None or count > best[0]:
                best = (count, frame.image, labels)
            if i >= 280:
                break
    _, image, labels = best
    image = cv2.resize(image, SIZE, interpolation=cv2.INTER_LINEAR)
    labels = cv2.resize(labels, SIZE, interpolation=cv2.INTER_NEAREST)
    return image, labels, person


def huge_object_frame(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    image = rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    labels = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    cv2.ellipse(labels, (960, 540), (800, 450), 0, 0, 360, 1, -1)
    return image, labels


def run_case(name: str, image, labels, class_id: int, args) -> dict:
    params = BlurParams(mask_dilation=3)
    objects: ObjectMap = find_objects(labels, (class_id,), params)
    blur_objects_fast(image, objects)  # compile / warm caches
    objects_ms = median_ms(lambda: find_objects(labels, (class_id,), params), args.repeats)
    fast_ms = median_ms(lambda: blur_objects_fast(image, objects), args.repeats)
    oracle_ms = median_ms(lambda: blur_objects_oracle(image, objects), args.oracle_repeats)
    diff = np.abs(
        blur_objects_fast(image, objects).astype(np.int16)
        - blur_objects_oracle(image, objects).astype(np.int16)
    )
    return {
        "case": name,
        "objects": len(objects.objects),
        "owned": f"{(objects.owner >= 0).mean() * 100:.1f} %",
        "max K": max((o.kernel for o in objects.objects), default=0),
        "find_objects ms": objects_ms,
        "oracle blur ms": oracle_ms,
        "fast blur ms": fast_ms,
        "ratio": oracle_ms / fast_ms,
        "fast total ms": objects_ms + fast_ms,
        "max |fast-oracle|": int(diff.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--oracle-repeats", type=int, default=3)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    rows = []
    image, labels, person = pedestrian_frame()
    rows.append(run_case("pedestrians (street clip, 1080p)", image, labels, person, args))
    image, labels = huge_object_frame(rng)
    rows.append(run_case("one huge object (1080p)", image, labels, 1, args))
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        cells = [f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
