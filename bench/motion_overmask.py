"""What the motion rule costs: the share of each frame blurred with the temporal masks with and
without the motion cover (`pipeline.motion`), on real clips, with the daemon's schedule
replayed offline.

The default analyzer (multi-scale plan) analyzes one region every `--every` frames, round
robin over the plan, as the daemon does on this machine (~15 region passes/s for a 30 fps
camera: every 2 frames); every frame is then decided by `temporal.decide` as the daemon does.
Per frame: share of the frame the blur owns (find_objects, mask_dilation included) with the
bracketing union alone (the rule before issue 12) and with the motion cover; and, every 8th
frame, the share of the frame's own full-plan analysis (all regions on that frame) each leaves
out (motion between analyses, judged by the same analyzer: a measure of what the cover buys
and costs, not a privacy measure: that is tests/test_rtsp_motion.py's independent truth).

Usage: .venv/bin/python bench/motion_overmask.py [--frames 240] [--every 2] [--mode bracket]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import av
import numpy as np

from daemon.analysis import class_ids
from daemon.anonymizer.cpu import blur_params
from daemon.anonymizer.objects import find_objects
from daemon.backends import open_backend
from daemon.configfile import load_config
from daemon.pipeline.motion import CELL, object_cells
from daemon.pipeline.temporal import (
    Analysis,
    Anonymize,
    decide,
    motion_cover,
    union_labels,
    with_cover,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "clips"
CLIPS = ("street_pedestrians_cars_640x360.mp4", "vtest_pedestrians_768x576.mp4",
         "car_plate_approach_1280x720.mp4")


def _frames(path: Path, count: int) -> tuple[list[np.ndarray], float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 30)
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="bgr24"))
            if len(frames) == count:
                break
    return frames, fps


def run(clip: str, frames_wanted: int, every: int, mode: str) -> dict[str, float]:
    base = load_config(None)
    config = base.model_copy(update={"analysis": base.analysis.model_copy(
        update={"temporal": mode})})
    analyzer = open_backend(config).analyzer
    ids = class_ids(analyzer.manifest, config.anonymize)
    params = blur_params(config.blur)
    frames, fps = _frames(SHARED / clip, frames_wanted)
    h, w = frames[0].shape[:2]
    plan = analyzer.plan(h, w)
    analyses = []
    for step, seq in enumerate(range(0, len(frames), every)):
        region = plan[step % len(plan)]
        (labels,) = analyzer.regions_labels(frames[seq], [region])
        analyses.append(Analysis(1, seq, labels, region=region, arrived=seq / fps,
                                 cells=object_cells(labels, region, seq, ids)))
    speed = config.analysis.max_speed * max(h, w) / fps / CELL
    plain, moving, missed, missed_cover = [], [], [], []
    for seq in range(len(plan) * every, len(frames) - len(plan) * every):
        decision = decide(1, seq, 0.0, analyses, config.analysis, plan, arrived=seq / fps)
        if not isinstance(decision, Anonymize):
            continue
        union = union_labels(decision.analyses, ids, decision.dilation, (h, w))
        covered = with_cover(union, motion_cover(decision, speed, (h, w)), ids)
        plain.append(float((find_objects(union, ids, params).owner >= 0).mean()))
        moving.append(float((find_objects(covered, ids, params).owner >= 0).mean()))
        if seq % 8 == 0:  # the frame's own full-plan analysis, for what the union misses
            own = np.isin(analyzer.labels(frames[seq]), ids)
            grown = find_objects(union, ids, params).owner >= 0
            grown_cover = find_objects(covered, ids, params).owner >= 0
            if own.any():
                missed.append(float((own & ~grown).sum() / own.sum()))
                missed_cover.append(float((own & ~grown_cover).sum() / own.sum()))
    return {
        "frames": len(plain),
        "plain": statistics.median(plain), "moving": statistics.median(moving),
        "plain_p95": float(np.percentile(plain, 95)),
        "moving_p95": float(np.percentile(moving, 95)),
        "missed": statistics.median(missed) if missed else 0.0,
        "missed_max": max(missed) if missed else 0.0,
        "missed_cover": statistics.median(missed_cover) if missed_cover else 0.0,
        "missed_cover_max": max(missed_cover) if missed_cover else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--mode", default="bracket", choices=("bracket", "hold"))
    args = parser.parse_args()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; one region pass every"
          f" {args.every} frames; temporal {args.mode}")
    print("| clip | frames | blurred, union only (median / p95) | with motion cover (median /"
          " p95) | ratio (median) | own-frame objects missed, union alone (median / max) |"
          " with motion cover (median / max) |")
    print("|---|---|---|---|---|---|---|")
    for clip in CLIPS:
        r = run(clip, args.frames, args.every, args.mode)
        ratio = r["moving"] / max(r["plain"], 1e-9)
        print(f"| {clip} | {r['frames']:.0f} | {100 * r['plain']:.1f} % / "
              f"{100 * r['plain_p95']:.1f} % | {100 * r['moving']:.1f} % / "
              f"{100 * r['moving_p95']:.1f} % | {ratio:.2f}x | {100 * r['missed']:.1f} % / "
              f"{100 * r['missed_max']:.1f} % | {100 * r['missed_cover']:.1f} % / "
              f"{100 * r['missed_cover_max']:.1f} % |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
