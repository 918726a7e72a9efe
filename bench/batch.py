"""`anonymizer batch` with 1 and 2 workers against `anonymizer file`, on the same set of real
clips and stills, in one run on this machine; then the scaling expected on N machines,
reasoned from the measured per-worker rate and overheads (cluster start, model loads,
segmenting, scheduling, joining). Writes bench/results/batch_cpu.md.

The set: the first frames of two real clips re-encoded with a keyframe every second (as a
camera archive is) and two stills; the default config (multi-scale analysis on).
Usage: .venv/bin/python bench/batch.py [--repeats 1] [--frames 84] [--config PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CLIPS = ("kinetics_style_armwrestling_340x256.mp4", "street_pedestrians_cars_640x360.mp4")
STILLS = ("messi5.jpg", "aiguys_car.jpg")
RESULTS = REPO / "bench" / "results" / "batch_cpu.md"


def make_set(folder: Path, frames: int) -> Path:
    inputs = folder / "set"
    inputs.mkdir()
    for name in CLIPS:
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i",
                        str(DATA / "clips" / name), "-frames:v", str(frames), "-an",
                        "-c:v", "libx264", "-crf", "16", "-preset", "fast", "-g", "30",
                        "-keyint_min", "30", "-sc_threshold", "0", str(inputs / name)],
                       check=True, timeout=300)
    for name in STILLS:
        shutil.copy(DATA / "stills" / name, inputs / name)
    return inputs


def run(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    return elapsed, done.stdout


def file_run(inputs: Path, out: Path, config: list[str]) -> dict[str, float]:
    paths = sorted(str(p) for p in inputs.iterdir())
    wall, stdout = run([sys.executable, "-m", "daemon", "file", *paths, "-o", str(out),
                        "--no-progress", *config])
    match = re.search(r"^total: .* (\d+) frames, .* ([\d.]+) s, ([\d.]+) fps$", stdout, re.M)
    if match is None:
        sys.exit(f"no total line in: {stdout}")
    frames, seconds = int(match[1]), float(match[2])
    return {"frames": frames, "wall": wall, "processing": seconds}


def batch_run(inputs: Path, out: Path, workers: int, config: list[str]) -> dict[str, Any]:
    wall, _ = run([sys.executable, "-m", "daemon", "batch", str(inputs), "-o", str(out),
                   "--workers", str(workers), "--segment-seconds", "1", "--no-progress",
                   *config])
    lines = (out / "manifest.jsonl").read_text().splitlines()
    summary: dict[str, Any] = json.loads(lines[-1])
    units = [json.loads(line) for line in lines if '"type": "unit"' in line]
    summary["wall"] = wall
    summary["units"] = len(units)
    return summary


def scan_cost(inputs: Path, folder: Path) -> float:
    """Seconds per frame to hash and segment the set (what each planning task does), timed
    here in-process: the Ray task's own start-up is a fixed cost, not a per-frame one."""
    sys.path.insert(0, str(REPO))
    from daemon.batch.units import plan_input

    start = time.perf_counter()
    frames = 0
    for path in sorted(inputs.iterdir()):
        plan = plan_input(path, folder / path.name, folder, 1.0)
        frames += sum(u.frames for u in plan.units) or 1
    return (time.perf_counter() - start) / frames


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--frames", type=int, default=84, help="frames per clip")
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args()
    config = ["-c", str(args.config)] if args.config else []
    load_before = os.getloadavg()
    files: list[dict[str, float]] = []
    batches: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        inputs = make_set(folder, args.frames)
        plan_per_frame = scan_cost(inputs, folder / "scan")
        for repeat in range(args.repeats):  # interleaved: drifting load hits all alike
            files.append(file_run(inputs, folder / f"file{repeat}", config))
            for workers in (1, 2):
                batches[workers].append(
                    batch_run(inputs, folder / f"batch{workers}-{repeat}", workers, config))
    load_after = os.getloadavg()
    frames = int(files[0]["frames"])
    file_wall = median([r["wall"] for r in files])
    file_fps = median([r["frames"] / r["processing"] for r in files])
    rows = [("anonymizer file", file_wall, frames / file_wall, file_fps, "-", "-", "-", "-")]
    per_worker: dict[int, float] = {}
    for workers, results in batches.items():
        wall = median([r["wall"] for r in results])
        fps = median([r["frames_per_second"] for r in results])
        per_worker[workers] = median([r["frames_run"] / r["unit_seconds_sum"]
                                      for r in results])
        rows.append((
            f"batch --workers {workers}", wall, frames / wall, fps,
            f"{median([r['cluster_seconds'] for r in results]):.1f}",
            f"{median([r['workers_start_seconds'] for r in results]):.1f}",
            f"{median([r['plan_seconds'] for r in results]):.2f}",
            f"{median([r['join_seconds'] for r in results]):.3f}",
        ))
    two = batches[2]
    efficiency = median([r["unit_seconds_sum"] / (2 * r["units_phase_seconds"]) for r in two])
    join_per_frame = median([r["join_seconds"] / r["frames_run"] for r in two])
    fixed = median([r["cluster_seconds"] + r["workers_start_seconds"] + r["plan_seconds"]
                    for r in two])
    r2 = per_worker[2]
    shapes = {"1 worker x 2 CPUs": per_worker[1], "2 workers x 1 CPU": 2 * r2}
    best = max(shapes, key=lambda name: shapes[name])
    machine_rate = shapes[best]
    lines = [
        "# `anonymizer batch` on Ray vs `anonymizer file` (CPU)",
        "",
        f"`bench/batch.py --repeats {args.repeats} --frames {args.frames}`"
        f"{' --config ' + str(args.config) if args.config else ''}: "
        f"{', '.join(CLIPS)} (first {args.frames} frames each, re-encoded with a keyframe "
        f"every 30 frames) and {', '.join(STILLS)}: {frames} frames; "
        f"{'that config' if args.config else 'the default config (multi-scale analysis on)'}; "
        f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after (the machine is shared: expect noise). "
        f"Medians of {args.repeats}.",
        "",
        "| command | wall s | frames/s (wall) | frames/s (steady) | Ray start s | "
        "model loads s | segmenting s | joining s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, wall, fps_wall, fps, ray_s, load_s, plan_s, join_s in rows:
        lines.append(f"| {name} | {wall:.1f} | {fps_wall:.2f} | {fps:.2f} | {ray_s} | "
                     f"{load_s} | {plan_s} | {join_s} |")
    lines += [
        "",
        "frames/s (steady): `file`: its own total line (frames over processing time, model "
        "loaded); `batch`: the manifest summary's `frames_per_second` (frames over the units "
        "phase, workers loaded). Wall includes Python start, Ray start, model loads.",
        "",
        "## Scaling to N machines",
        "",
        f"Measured with 2 workers on this 2-CPU machine: per-worker rate r = {r2:.2f} "
        f"frames/s (frames over the worker's own unit time; with 1 worker of 2 CPUs "
        f"{per_worker[1]:.2f}), scheduling efficiency "
        f"e = {efficiency:.2f} (worker busy time over 2 x units phase: dispatch and the idle "
        f"tail of a {frames}-frame set; on an archive of hours the tail is a vanishing "
        f"share), fixed start {fixed:.1f} s (Ray start, model loads and the planning "
        f"tasks' start, paid once, in parallel on every node), segmenting "
        f"{plan_per_frame * 1000:.3f} ms/frame (hash + demux, timed in-process; Ray tasks "
        f"next to the data), joining {join_per_frame * 1000:.3f} ms/frame (remux on the "
        f"driver: serial). The better shape per 2-CPU machine here: {best}, "
        f"{machine_rate:.2f} frames/s per machine.",
        "",
        "Model: T(N) = fixed + F x segmenting / N + F / (N R e') + F x joining, R the "
        "per-machine rate of the better shape, e' = 0.95 for a long archive (per-unit "
        "dispatch is milliseconds against units of a minute of video). The serial join "
        f"caps one driver at {1 / max(join_per_frame, 1e-9):,.0f} frames/s, far above any N "
        "in the table; segmenting is spread over the nodes.",
        "",
        f"| machines (2 CPUs each) | expected frames/s ({best}) | 1,000 h at 25 fps |",
        "|---|---|---|",
    ]
    archive = 1000 * 3600 * 25
    for machines in (1, 2, 4, 8, 16, 64):
        seconds = (fixed + archive * plan_per_frame / machines
                   + archive / (machines * machine_rate * 0.95) + archive * join_per_frame)
        lines.append(f"| {machines} | {archive / seconds:.1f} | {seconds / 86400:.1f} days |")
    if best.startswith("1 worker"):
        lines += [
            "",
            "Here one worker with both CPUs beat two workers with one each. Likely cause "
            "(not isolated): each worker's x264 encoder and decoder start their own threads, "
            "so two workers oversubscribe 2 cores, and the shared machine's other load hits "
            "two busy workers harder. On CPU machines give a worker all of a machine's cores "
            "(`--cpus-per-worker $(nproc)`); the default (one worker per 4 CPUs, all of them "
            "on a smaller machine) is this shape.",
        ]
    lines += [
        "",
        "A GPU worker (`--gpus-per-worker 1`, TensorRT) replaces r with the GPU's rate; the "
        "decode/encode of a worker's segment then runs on its CPUs, so give each GPU worker "
        "several (`--cpus-per-worker`). Inputs and the output folder must be on storage "
        "every node mounts at the same path; its bandwidth, not the scheduler, is the next "
        "limit (each frame is read once and written once).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
