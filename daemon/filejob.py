"""`anonymizer file INPUT... -o OUTPUT`: anonymize images and videos, failing closed per frame."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Never

from tqdm import tqdm

from daemon import safe
from daemon.errors import AnonymizerError, ConfigError
from daemon.interfaces import Analyzer, Anonymizer
from daemon.media.formats import media_kind
from daemon.media.image import read_image, write_image
from daemon.media.labels import LabelFolderWriter, unknown_labels, write_label_map
from daemon.media.video_reader import VideoFrame, VideoReader
from daemon.media.video_writer import DEFAULT_CRF, DEFAULT_PRESET, X264_PRESETS, VideoWriter
from daemon.safe import SafeFrame
from daemon.types import Image, LabelMap

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1


@dataclass(frozen=True)
class FileJob:
    """One input, where its anonymized copy goes, and where its label maps go (if saved)."""

    source: Path
    output: Path
    masks: Path | None = None


@dataclass(frozen=True)
class FileOptions:
    fail_closed: Literal["blur", "black"] = "blur"
    crf: int = DEFAULT_CRF
    preset: str = DEFAULT_PRESET
    keep_audio: bool = False
    progress: bool = False


@dataclass
class InputReport:
    """What happened to one input; `error` is set when no (complete) output was written."""

    job: FileJob
    frames: int = 0
    failed_closed: int = 0
    objects: Counter[int] = field(default_factory=Counter)  # class id -> objects blurred
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.failed_closed == 0


def add_file_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `anonymizer file`."""
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                        help="images (jpg, png, bmp) and videos (mp4, mkv, avi, mov)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output file (one input) or directory (several inputs; created "
                             "if missing; outputs keep the input names)")
    parser.add_argument("-c", "--config", type=Path, default=None,
                        help="config file (default: built-in defaults)")
    parser.add_argument("--keep-audio", action="store_true",
                        help="copy the audio track (dropped by default: voices are personal data)")
    parser.add_argument("--save-masks", action="store_true",
                        help="also write the label maps: <out stem>.labels.png for an image, "
                             "a folder <out stem>.labels/ of per-frame PNGs for a video")
    parser.add_argument("--crf", type=_crf, default=DEFAULT_CRF,
                        help=f"H.264 quality, 0 (lossless) to 51 (default {DEFAULT_CRF})")
    parser.add_argument("--preset", choices=X264_PRESETS, default=DEFAULT_PRESET,
                        help=f"x264 speed preset (default {DEFAULT_PRESET})")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _crf(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer 0..51, got {text!r}") from None
    if not 0 <= value <= 51:
        raise argparse.ArgumentTypeError(f"expected an integer 0..51, got {value}")
    return value


def file_command(args: argparse.Namespace) -> int:
    """Run `anonymizer file`; 0: all good, 1: an input failed or a frame failed closed.

    Config, usage and model errors raise (the CLI prints them and exits 2) before any output.
    """
    from daemon.analysis import class_ids
    from daemon.backends import open_backend
    from daemon.configfile import load_config

    config = load_config(args.config)
    jobs = plan_jobs(args.inputs, args.output, save_masks=args.save_masks,
                     overwrite=args.overwrite)
    backend = open_backend(config)  # once for every input
    analyzer = backend.analyzer
    anonymizer = backend.anonymizer(class_ids(analyzer.manifest, config.anonymize), config.blur)
    options = FileOptions(
        fail_closed=config.blur.fail_closed,
        crf=args.crf,
        preset=args.preset,
        keep_audio=args.keep_audio,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    make_output_dirs(jobs)
    reports = run_files(jobs, analyzer, anonymizer, options)
    names = {class_id: name for name, class_id in analyzer.manifest.classes.items()}
    print(format_summary(reports, names), flush=True)
    return exit_status(reports)


def exit_status(reports: Sequence[InputReport]) -> int:
    """0 when every input was written and no frame failed closed, else 1."""
    return EXIT_OK if all(report.ok for report in reports) else EXIT_FAILED


def masks_path(output: Path) -> Path | None:
    """`<stem>.labels.png` next to an image output, `<stem>.labels/` next to a video output."""
    try:
        kind = media_kind(output)
    except AnonymizerError:
        return None
    suffix = ".labels.png" if kind == "image" else ".labels"
    return output.with_name(output.stem + suffix)


def plan_jobs(
    inputs: Sequence[Path], output: Path, *, save_masks: bool = False, overwrite: bool = False
) -> list[FileJob]:
    """Map inputs to outputs; ConfigError (one line) on a name clash or an unsafe overwrite.

    One input: `output` is the file to write, unless it is an existing directory. Several
    inputs: `output` is a directory and each output keeps its input's name. Missing or
    unreadable inputs are not checked here: they fail on their own, without stopping the rest.
    """
    if not inputs:
        raise ConfigError("file: no input given")
    to_dir = len(inputs) > 1 or output.is_dir()
    if to_dir and output.exists() and not output.is_dir():
        raise ConfigError(f"-o {output}: not a directory (several inputs need an output folder)")
    jobs = []
    for source in inputs:
        out = output / source.name if to_dir else output
        jobs.append(FileJob(source, out, masks_path(out) if save_masks else None))
    problems = [problem for job in jobs for problem in _job_problems(job, inputs, overwrite)]
    claimed: dict[Path, Path] = {}
    for job in jobs:
        for path in (job.output, job.masks):
            if path is None:
                continue
            key = path.resolve()
            if key in claimed:
                problems.append(f"{claimed[key]} and {job.source} would both write {path}")
            claimed[key] = job.source
    if problems:
        raise ConfigError("; ".join(problems))
    return jobs


def _job_problems(job: FileJob, inputs: Sequence[Path], overwrite: bool) -> list[str]:
    problems = []
    try:
        source_kind = media_kind(job.source)
    except AnonymizerError:
        source_kind = None  # reported when this input runs; the others still go
    if source_kind is not None:
        try:
            output_kind = media_kind(job.output)
        except AnonymizerError as exc:
            return [str(exc)]
        if output_kind != source_kind:
            problems.append(f"{job.output}: a {source_kind} input ({job.source}) needs a "
                            f"{source_kind} output extension")
    for path in (job.output, job.masks):
        if path is None:
            continue
        if any(_same_file(path, source) for source in inputs):
            problems.append(f"{path}: is an input; refusing to overwrite it")
        elif path.exists() and not overwrite:
            problems.append(f"{path}: exists (use --overwrite to replace it)")
    return problems


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def make_output_dirs(jobs: Sequence[FileJob]) -> None:
    """Create the folders the outputs go into; ConfigError if that is impossible."""
    for folder in sorted({job.output.parent for job in jobs}):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"-o: cannot create {folder}: {exc.strerror or exc}") from None


class FrameGuard:
    """Analysis then blur for one frame; on any failure the fail-closed frame, never the raw one."""

    def __init__(
        self,
        analyzer: Analyzer,
        anonymizer: Anonymizer,
        style: Literal["blur", "black"],
        source: Path,
    ) -> None:
        self._analyzer = analyzer
        self._anonymizer = anonymizer
        self._style = style
        self._source = source
        self.frames = 0
        self.failed = 0
        self.objects: Counter[int] = Counter()

    def process(self, frame: Image, index: int) -> tuple[SafeFrame, LabelMap | None]:
        """The frame to write and its label map (None when the frame failed closed).

        Made by the same gate as the daemon's published frames (daemon.safe): the writers take
        nothing else.
        """
        self.frames += 1
        reason = "analyzer_error"
        try:
            labels = self._analyzer.labels(frame)
            reason = "anonymizer_error"
            result = safe.anonymized(self._anonymizer, frame, labels)
        except Exception as exc:  # any failure at all: fail closed, never pass the raw frame
            self.failed += 1
            if self.failed == 1:
                log.warning("%s: frame %d failed (%s: %s): writing fail-closed (%s) frames for "
                            "failed frames", self._source, index, type(exc).__name__, exc,
                            self._style)
            return safe.fail_closed(frame, self._style, reason), None
        self.objects.update(obj.class_id for obj in result.objects)
        return result, labels


def run_files(
    jobs: Sequence[FileJob],
    analyzer: Analyzer,
    anonymizer: Anonymizer,
    options: FileOptions,
) -> list[InputReport]:
    """Anonymize every job in turn; a failed input is reported and the next one still runs."""
    return [run_job(job, analyzer, anonymizer, options) for job in jobs]


def run_job(
    job: FileJob, analyzer: Analyzer, anonymizer: Anonymizer, options: FileOptions
) -> InputReport:
    """Anonymize one input (image or whole video) to `job.output`; failures are reported."""
    guard = FrameGuard(analyzer, anonymizer, options.fail_closed, job.source)

    def work() -> None:
        match media_kind(job.source):
            case "image":
                _run_image(job, guard)
            case "video":
                _run_video(job, guard, options)

    return run_guarded(job, guard, work)


def run_guarded(job: FileJob, guard: FrameGuard, work: Callable[[], None]) -> InputReport:
    """Run `work` (which writes `job.output` through `guard`) and report it: a media or OS
    error, or a bug, is the input's error (its output discarded by the writers), not a crash."""
    started = time.perf_counter()
    report = InputReport(job)
    log.info("anonymizing %s -> %s", job.source, job.output)
    try:
        work()
    except (AnonymizerError, OSError) as exc:
        report.error = str(exc)
        print(f"anonymizer: error: {exc}", file=sys.stderr, flush=True)
    except Exception as exc:  # a bug must not stop the other inputs; its output is discarded
        log.exception("unexpected failure on %s", job.source)
        report.error = f"{job.source}: unexpected {type(exc).__name__}: {exc}"
        print(f"anonymizer: error: {report.error}", file=sys.stderr, flush=True)
    report.frames = guard.frames
    report.failed_closed = guard.failed
    report.objects = guard.objects
    report.seconds = time.perf_counter() - started
    if report.error is None:
        log.info("finished %s: %d frames, %d failed closed, %.1f s",
                 job.output, report.frames, report.failed_closed, report.seconds)
    return report


def _run_image(job: FileJob, guard: FrameGuard) -> None:
    image = read_image(job.source)
    anonymized, labels = guard.process(image, 0)
    write_image(job.output, anonymized)
    if job.masks is not None:
        if labels is None:
            labels = unknown_labels(*image.shape[:2])
        write_label_map(job.masks, labels)


def _run_video(job: FileJob, guard: FrameGuard, options: FileOptions) -> None:
    with VideoReader(job.source, audio=options.keep_audio) as reader, ExitStack() as stack:
        info = reader.info
        # masks enter first so they exit last: a video that fails to finish takes them along
        masks = (stack.enter_context(LabelFolderWriter(job.masks))
                 if job.masks is not None else None)
        writer = stack.enter_context(VideoWriter(
            job.output, info, crf=options.crf, preset=options.preset, audio=reader.audio_stream
        ))
        bar = stack.enter_context(_progress(job.source.name, info.frames, options.progress))
        sink = writer.write_audio if reader.audio_stream is not None else None
        write_frames(reader.frames(sink), guard, writer, masks, bar.update)


def write_frames(
    frames: Iterable[VideoFrame],
    guard: FrameGuard,
    writer: VideoWriter,
    masks: LabelFolderWriter | None = None,
    on_frame: Callable[[], object] | None = None,
) -> None:
    """Anonymize frames through `guard` (fail-closed per frame) and encode them at their pts:
    the one frame loop of `anonymizer file` and `anonymizer batch`."""
    info = writer.info
    for frame in frames:
        anonymized, labels = guard.process(frame.image, frame.index)
        writer.write(anonymized, frame.pts)
        if masks is not None:
            masks.write(frame.index,
                        labels if labels is not None else unknown_labels(info.height,
                                                                         info.width))
        if on_frame is not None:
            on_frame()


@contextmanager
def _progress(name: str, total: int, enabled: bool) -> Iterator[tqdm[Never]]:  # counts, no items
    bar = tqdm(total=total or None, desc=name, unit="frame", disable=not enabled,
               leave=False, file=sys.stderr, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def _objects_text(objects: Mapping[int, int], names: Mapping[int, str]) -> str:
    if not objects:
        return "none"
    return ", ".join(f"{names.get(class_id, f'class {class_id}')} {count}"
                     for class_id, count in sorted(objects.items()))


def _rate(frames: int, seconds: float) -> str:
    return f"{frames / seconds:.1f} fps" if seconds > 0 else "- fps"


def format_summary(reports: Sequence[InputReport], names: Mapping[int, str]) -> str:
    """One line per input and a total line: frames, objects blurred, fail-closed, time, fps."""
    lines = []
    for r in reports:
        if r.error is not None:
            reason = r.error.removeprefix(f"{r.job.source}: ")
            lines.append(f"{r.job.source}: FAILED after {r.frames} frames: {reason}")
            continue
        lines.append(
            f"{r.job.source} -> {r.job.output}: {r.frames} frames, objects blurred: "
            f"{_objects_text(r.objects, names)}, fail-closed frames: {r.failed_closed}, "
            f"{r.seconds:.1f} s, {_rate(r.frames, r.seconds)}"
        )
    frames = sum(r.frames for r in reports)
    seconds = sum(r.seconds for r in reports)
    objects: Counter[int] = Counter()
    for r in reports:
        objects.update(r.objects)
    failed = sum(r.error is not None for r in reports)
    lines.append(
        f"total: {len(reports)} inputs ({failed} failed), {frames} frames, objects blurred: "
        f"{_objects_text(objects, names)}, fail-closed frames: "
        f"{sum(r.failed_closed for r in reports)}, {seconds:.1f} s, {_rate(frames, seconds)}"
    )
    return "\n".join(lines)
