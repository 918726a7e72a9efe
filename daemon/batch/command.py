"""`anonymizer batch INPUT_DIR_OR_LIST -o OUTPUT_DIR`: the file pipeline over a Ray cluster,
resumable, with a manifest."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from daemon.batch.manifest import (
    MANIFEST_NAME,
    Fingerprint,
    Manifest,
    completed,
    matches,
    read_records,
)
from daemon.batch.units import WORK_DIR, InputPlan, Unit, discover, file_sha256
from daemon.errors import MediaError
from daemon.filejob import EXIT_FAILED, EXIT_OK, FileOptions, _crf
from daemon.media.atomic import remove_path
from daemon.media.video_writer import DEFAULT_CRF, DEFAULT_PRESET, X264_PRESETS

if TYPE_CHECKING:
    from daemon.batch.worker import UnitResult

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_SECONDS = 60.0


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `anonymizer batch`."""
    parser.add_argument("input", type=Path, metavar="INPUT_DIR_OR_LIST",
                        help="a folder (searched recursively for images and videos) or a "
                             "text file listing one input per line")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output folder: outputs mirror the input paths; manifest.jsonl")
    parser.add_argument("-c", "--config", type=Path, default=None,
                        help="config file (default: built-in defaults)")
    parser.add_argument("--address", default=None,
                        help="an existing Ray cluster: auto, HOST:PORT or ray://HOST:PORT "
                             "(default: a local cluster sized to this machine)")
    parser.add_argument("--workers", type=_positive_int, default=None,
                        help="worker actors, one model each (default: one per 4 CPUs, all of"
                             " them on a smaller machine, or one per GPU share with"
                             " --gpus-per-worker)")
    parser.add_argument("--cpus-per-worker", type=_positive_float, default=None,
                        help="CPUs reserved per worker, also its inference threads "
                             "(default: the cluster's CPUs shared out)")
    parser.add_argument("--gpus-per-worker", type=_non_negative_float, default=0.0,
                        help="GPUs per worker (e.g. 1, or 0.5 for two per GPU; default 0)")
    parser.add_argument("--segment-seconds", type=_positive_float,
                        default=DEFAULT_SEGMENT_SECONDS,
                        help="cut videos at the first keyframe after this many seconds, so "
                             "one video spreads over workers "
                             f"(default {DEFAULT_SEGMENT_SECONDS:g})")
    parser.add_argument("--crf", type=_crf, default=DEFAULT_CRF,
                        help=f"H.264 quality, 0 (lossless) to 51 (default {DEFAULT_CRF})")
    parser.add_argument("--preset", choices=X264_PRESETS, default=DEFAULT_PRESET,
                        help=f"x264 speed preset (default {DEFAULT_PRESET})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(value)


def _positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return float(value)


def _non_negative_float(text: str) -> float:
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return float(value)


def _number(text: str, kind: type[int] | type[float]) -> float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


@dataclass
class InputTally:
    """One input's units as they complete (this run's and those a previous run did)."""

    plan: InputPlan
    fingerprint: Fingerprint
    results: dict[int, dict[str, Any]] = field(default_factory=dict)  # unit index -> record

    @property
    def finished(self) -> bool:
        return len(self.results) == len(self.plan.units)

    def totals(self) -> dict[str, Any]:
        objects: Counter[str] = Counter()
        for record in self.results.values():
            objects.update(record.get("objects", {}))
        errors = [r["error"] for r in self.results.values() if r.get("error")]
        return {
            "frames": sum(r.get("frames", 0) for r in self.results.values()),
            "objects": dict(sorted(objects.items())),
            "failed_closed": sum(r.get("failed_closed", 0) for r in self.results.values()),
            "workers": sorted({r["worker"] for r in self.results.values() if r.get("worker")}),
            "seconds": round(sum(r.get("seconds", 0.0) for r in self.results.values()), 3),
            "error": "; ".join(errors) if errors else None,
        }


def batch_command(args: argparse.Namespace) -> int:
    """Run `anonymizer batch`; 0: every input complete with no fail-closed frame, else 1.

    Config, usage and model errors raise (exit 2) before any worker starts.
    """
    from daemon.analysis.manifest import load_manifest
    from daemon.batch.driver import Cluster, ClusterOptions, WorkerPool, run_units
    from daemon.configfile import load_config

    config = load_config(args.config)
    names = {cid: name for name, cid in load_manifest(config.model.manifest_path).classes.items()}
    output_dir = Path(args.output).resolve()  # the manifest's paths: the same from any cwd
    pairs = discover(Path(args.input).resolve(), output_dir)
    options = FileOptions(fail_closed=config.blur.fail_closed, crf=args.crf, preset=args.preset)
    settings = {"config": config.model_dump(mode="json"), "crf": args.crf,
                "preset": args.preset}
    config_sha = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    model_sha = file_sha256(config.model.path)
    manifest_path = output_dir / MANIFEST_NAME
    previous = read_records(manifest_path)
    done_inputs, done_units = completed(previous, "input"), completed(previous, "unit")
    cluster_options = ClusterOptions(address=args.address, workers=args.workers,
                                     cpus_per_worker=args.cpus_per_worker,
                                     gpus_per_worker=args.gpus_per_worker)
    started = time.perf_counter()
    run_id = time.strftime("%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6]
    timings: dict[str, float] = {}
    with Cluster(cluster_options) as cluster, Manifest(manifest_path, run_id) as manifest:
        timings["cluster_seconds"] = time.perf_counter() - started
        workers, cpus, gpus = cluster.worker_shape()
        manifest.write("run", input=str(args.input), output=str(output_dir),
                       address=args.address or "local", cluster=cluster.address,
                       workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus,
                       segment_seconds=args.segment_seconds, inputs=len(pairs),
                       model=str(config.model.path), model_sha256=model_sha,
                       config_sha256=config_sha, settings=settings)
        plan_started = time.perf_counter()
        plans = cluster.plan(pairs, output_dir, args.segment_seconds)
        timings["plan_seconds"] = time.perf_counter() - plan_started
        tallies: dict[Path, InputTally] = {}
        todo: list[Unit] = []
        skipped_inputs: list[dict[str, Any]] = []
        failed_plans = 0
        for plan in plans:
            fingerprint = Fingerprint(plan.sha256, model_sha, config_sha)
            if plan.error is not None:
                failed_plans += 1
                manifest.write("input", source=str(plan.source), output=str(plan.output),
                               status="failed", error=plan.error, frames=0, objects={},
                               failed_closed=0)
                continue
            record = done_inputs.get(str(plan.source))
            if record is not None and matches(record, fingerprint) and plan.output.exists():
                skipped_inputs.append(record)
                continue
            tally = tallies[plan.source] = InputTally(plan, fingerprint)
            for unit in plan.units:
                previous_unit = done_units.get(unit.key)
                if (unit.kind == "segment" and previous_unit is not None
                        and matches(previous_unit, fingerprint) and unit.output.exists()):
                    tally.results[unit.index] = previous_unit
                else:
                    todo.append(unit)
        bar = tqdm(total=len(todo), unit="unit", desc="batch", file=sys.stderr,
                   disable=args.no_progress or not sys.stderr.isatty(), dynamic_ncols=True)
        counts = {"frames": 0, "units_failed": 0}
        timings["join_seconds"] = timings["unit_seconds_sum"] = 0.0
        run_started = [time.perf_counter()]

        def finish_input(tally: InputTally) -> None:
            plan = tally.plan
            totals = tally.totals()
            if totals["error"] is None and plan.segmented:
                join_started = time.perf_counter()
                try:
                    _join(plan, output_dir)
                except (MediaError, OSError) as exc:
                    totals["error"] = f"join: {exc}"
                timings["join_seconds"] += time.perf_counter() - join_started
            manifest.write("input", source=str(plan.source), output=str(plan.output),
                           status="failed" if totals["error"] else "done", size=plan.size,
                           segments=len(plan.units), **tally.fingerprint.fields(), **totals)

        def on_result(unit: Unit, result: UnitResult) -> None:
            tally = tallies[unit.source]
            record = {
                "key": unit.key, "source": str(unit.source), "kind": unit.kind,
                "index": unit.index, "count": unit.count, "output": str(unit.output),
                "status": "failed" if result.error else "done", "frames": result.frames,
                "objects": {names.get(c, f"class {c}"): n
                            for c, n in sorted(result.objects.items())},
                "failed_closed": result.failed_closed, "worker": result.worker,
                "seconds": round(result.seconds, 3), "error": result.error,
                **tally.fingerprint.fields(),
            }
            manifest.write("unit", **record)
            tally.results[unit.index] = record
            counts["frames"] += result.frames
            counts["units_failed"] += result.error is not None
            timings["unit_seconds_sum"] += result.seconds
            elapsed = time.perf_counter() - run_started[0]
            bar.set_postfix_str(f"{counts['frames'] / elapsed:.1f} frames/s", refresh=False)
            bar.update()
            if tally.finished:
                finish_input(tally)

        for tally in tallies.values():
            if tally.finished:  # every segment done earlier: only the join is missing
                finish_input(tally)
        if todo:
            pool_started = time.perf_counter()
            pool = WorkerPool(cluster, config, options,
                              lambda w: manifest.write("worker", **w.info))
            run_started[0] = time.perf_counter()
            timings["workers_start_seconds"] = run_started[0] - pool_started
            run_units(pool, cluster.ray, todo, on_result)
        bar.close()
        wall = time.perf_counter() - started
        records = read_records(manifest_path)
        this_run = [r for r in records if r.get("run") == run_id and r.get("type") == "input"]
        timings["units_phase_seconds"] = time.perf_counter() - run_started[0]
        summary = _summary(this_run, skipped_inputs, wall, counts["frames"], timings,
                           len(todo), counts["units_failed"])
        manifest.write("summary", **summary)
    print(_summary_text(this_run, summary), flush=True)
    failed = summary["inputs_failed"] or summary["failed_closed"]
    return EXIT_FAILED if failed else EXIT_OK


def _join(plan: InputPlan, output_dir: Path) -> None:
    from daemon.batch.segments import Segment, join, scan

    packets = scan(plan.source)
    if packets is None:
        raise MediaError(f"{plan.source}: changed since it was planned")
    parts = [u.output for u in plan.units]
    segments = [Segment(u.start, u.end, u.first_frame, u.frames) for u in plan.units]
    plan.output.parent.mkdir(parents=True, exist_ok=True)
    join(parts, segments, packets.time_base, plan.output)
    remove_path(parts[0].parent)  # this video's segment folder
    _remove_empty_parents(parts[0].parent, output_dir / WORK_DIR)


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    """Remove the folders above `folder` that are now empty, up to `stop` (the work folder)."""
    for parent in folder.parents:
        try:
            parent.rmdir()
        except OSError:
            return
        if parent == stop:
            return


def _summary(this_run: list[dict[str, Any]], skipped: list[dict[str, Any]], wall: float,
             frames: int, timings: Mapping[str, float], units: int,
             units_failed: int) -> dict[str, Any]:
    """The run's totals; `frames_per_second` is over the units phase (workers loaded), the
    other phases are in `timings` (seconds)."""
    run_seconds = timings["units_phase_seconds"]
    final = this_run + skipped
    objects: Counter[str] = Counter()
    for record in final:
        objects.update(record.get("objects", {}))
    return {
        "inputs": len(final),
        "inputs_done": sum(r.get("status") == "done" for r in this_run),
        "inputs_skipped": len(skipped),
        "inputs_failed": sum(r.get("status") != "done" for r in this_run),
        "units_run": units,
        "units_failed": units_failed,
        "frames_run": frames,
        "frames_total": sum(r.get("frames", 0) for r in final),
        "objects": dict(sorted(objects.items())),
        "failed_closed": sum(r.get("failed_closed", 0) for r in final),
        "wall_seconds": round(wall, 3),
        "frames_per_second": round(frames / run_seconds, 3) if run_seconds > 0 else None,
        **{name: round(value, 3) for name, value in timings.items()},
    }


def _summary_text(this_run: list[dict[str, Any]], summary: Mapping[str, Any]) -> str:
    lines = [f"{r['source']}: FAILED: {r.get('error')}" for r in this_run
             if r.get("status") != "done"]
    lines += [f"{r['source']}: {r['failed_closed']} fail-closed frames" for r in this_run
              if r.get("status") == "done" and r.get("failed_closed")]
    objects = ", ".join(f"{k} {v}" for k, v in summary["objects"].items()) or "none"
    fps = summary["frames_per_second"]
    lines.append(
        f"total: {summary['inputs']} inputs ({summary['inputs_done']} done, "
        f"{summary['inputs_skipped']} already complete, {summary['inputs_failed']} failed), "
        f"{summary['frames_total']} frames, objects blurred: {objects}, fail-closed frames: "
        f"{summary['failed_closed']}; this run: {summary['units_run']} units "
        f"({summary['units_failed']} failed), {summary['frames_run']} frames, "
        f"{summary['wall_seconds']:.1f} s, {fps if fps is not None else '-'} frames/s"
    )
    return "\n".join(lines)
