"""GPU timings: the device anonymizer at 1080p, frame transfers, and a TensorRT upper-bound proxy.

Run by bench/gpu_check.sh on a lent GPU machine (see daemon/engines/README.md); writes
bench/results/gpu-<UTC time>.json and .md. Cases (as bench/blur.py): the pedestrian clip frame
with the reference model's person labels, scaled to 1920x1080, and one huge object (K = 255).
Timed, medians of --repeats (200) runs on one CUDA stream:

- labels -> blurred frame: host arrays in and out (upload frame + labels, objects, blur,
  download), device-resident inputs (only the download), and the kernels alone (CUDA events;
  this includes the one host round-trip per class that sizes the object table);
- upload and download of one 1080p frame, pageable and pinned host memory;
- the analyzer's device steps around TensorRT: preprocessing 1080p -> 257 x 257 and the exact
  bilinear-logits argmax of 21 classes back to 1080p;
- the model's inference as an upper-bound proxy for TensorRT (not installed there): the project's
  DeepLabv3+ (training/model.py; else an equivalent defined here) in PyTorch FP16 with a CUDA
  graph, at the input sizes listed.

    python bench/gpu_bench.py [--repeats 200] [--data DIR] [--results bench/results]
    python bench/gpu_bench.py --prepare DIR   # here, not there: the data the GPU machine needs

Exit status 3 with "no GPU: <reason>" where no CUDA device is usable.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZE = (1920, 1080)
PEDESTRIANS = "pedestrians_1080p.npz"
EXIT_NO_GPU = 3
PROXY_SIZES = ((257, 257), (513, 513), (1088, 1920))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def timed(fn: Callable[[], object], repeats: int, sync: Callable[[], object]) -> list[float]:
    """Wall times in ms of `fn` followed by `sync`, after two warm-up calls."""
    for _ in range(2):
        fn()
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return times


def summary(times: list[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(times),
        "p90_ms": percentile(times, 90),
        "min_ms": min(times),
    }


def prepare(folder: Path) -> None:
    """Copy what the GPU machine needs and cannot reach into `folder` (run where PyPI works)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from blur import pedestrian_frame  # the same frame as the CPU benchmark

    shared = ROOT.parent / "shared" / "data"
    data = folder / "data"
    (data / "stills").mkdir(parents=True, exist_ok=True)
    shutil.copytree(shared / "golden", data / "golden", dirs_exist_ok=True)
    shutil.copy2(shared / "stills" / "deface_city.jpg", data / "stills")
    image, labels, person = pedestrian_frame()
    np.savez_compressed(folder / PEDESTRIANS, frame=image, labels=labels, person=person)
    print(f"prepared {folder} ({sum(p.stat().st_size for p in folder.rglob('*') if p.is_file())}"
          " bytes)")


def huge_object_frame(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    image = rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    labels = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    cv2.ellipse(labels, (960, 540), (800, 450), 0, 0, 360, 1, -1)
    return image, labels


def anonymizer_case(name, image, labels, class_id, device, repeats) -> dict[str, Any]:
    from daemon.anonymizer.cpu import CpuAnonymizer
    from daemon.config import BlurConfig
    from daemon.gpu import anonymizer as dev

    cp, stream = device.cupy, device.stream
    blur = BlurConfig(mask_dilation=3)
    anonymizer = dev.DeviceAnonymizer((class_id,), blur, device.kernels)
    sync = stream.synchronize
    host = timed(lambda: anonymizer.anonymize(image, labels), repeats, sync)
    with stream:
        frame_d, labels_d = cp.asarray(image), cp.asarray(labels)
    resident = timed(lambda: anonymizer.anonymize(frame_d, labels_d), repeats, sync)

    def kernels_only():
        found = dev.find_objects(labels_d, (class_id,), anonymizer.params, device.kernels)
        dev.blur_objects(frame_d, found, anonymizer.weights, device.kernels)

    kernel_ms = event_times(device, kernels_only, repeats)
    with stream:
        owned = float((dev.find_objects(
            labels_d, (class_id,), anonymizer.params, device.kernels).owner >= 0).mean())

    result = anonymizer.anonymize(image, labels)
    cpu = CpuAnonymizer((class_id,), blur)
    cpu.anonymize(image, labels)  # numba compile
    cpu_times = timed(lambda: cpu.anonymize(image, labels), 5, lambda: None)
    expected = cpu.anonymize(image, labels)
    diff = np.abs(result.frame.astype(np.int16) - expected.frame.astype(np.int16))
    return {
        "case": name,
        "objects": len(result.objects),
        "max_kernel": max((o.kernel for o in result.objects), default=0),
        "owned_percent": round(owned * 100, 1),
        "host_in_host_out": summary(host),
        "device_inputs_host_out": summary(resident),
        "kernels_only_events": summary(kernel_ms),
        "cpu_fast_path_median_ms": statistics.median(cpu_times),
        "objects_equal_cpu": result.objects == expected.objects,
        "max_abs_diff_vs_cpu_fast_path": int(diff.max()),
        "pixels_differing_vs_cpu_fast_path": int((diff > 0).any(axis=2).sum()),
    }


def event_times(device, fn: Callable[[], object], repeats: int) -> list[float]:
    """Device times in ms of `fn` on the stream (CUDA events), after two warm-up runs."""
    cp, stream = device.cupy, device.stream
    times = []
    for i in range(repeats + 2):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        with stream:
            start.record(stream)
            fn()
            end.record(stream)
        end.synchronize()
        if i >= 2:
            times.append(cp.cuda.get_elapsed_time(start, end))
    return times


def analysis_steps(device, image, repeats) -> dict[str, Any]:
    """The analyzer's device work around TensorRT at 1080p for the reference model (257 x 257
    input, 21 classes): preprocessing and the exact bilinear-logits argmax to frame size."""
    from daemon.gpu.analysis import preprocess_on, upsampled_argmax_on

    cp, kernels = device.cupy, device.kernels
    with device.stream:
        frame = cp.asarray(image)
        tensor = cp.empty((1, 3, 257, 257), dtype=cp.float32)
        logits = cp.asarray(np.random.default_rng(0).normal(size=(21, 257, 257)), cp.float32)

    def pre():
        preprocess_on(frame, 257, 257, "RGB", (127.5,) * 3, (127.5,) * 3, kernels, out=tensor)

    def argmax():
        upsampled_argmax_on(logits, SIZE[1], SIZE[0], kernels)

    return {
        "preprocess_1080p_to_257": summary(event_times(device, pre, repeats)),
        "upsampled_argmax_21x257_to_1080p": summary(event_times(device, argmax, repeats)),
    }


def transfers(device, image, repeats) -> dict[str, Any]:
    cp, stream = device.cupy, device.stream
    sync = stream.synchronize
    target = cp.empty(image.shape, dtype=cp.uint8)
    pinned_memory = cp.cuda.alloc_pinned_memory(image.nbytes)
    pinned = np.frombuffer(pinned_memory, np.uint8, image.size).reshape(image.shape)
    pinned[...] = image

    def upload(source):
        with stream:
            target.set(source, stream=stream)

    def download(out):
        with stream:
            target.get(stream=stream, out=out)

    pageable_out = np.empty_like(image)
    return {
        "frame_bytes": int(image.nbytes),
        "upload_pageable": summary(timed(lambda: upload(image), repeats, sync)),
        "upload_pinned": summary(timed(lambda: upload(pinned), repeats, sync)),
        "download_pageable": summary(timed(lambda: download(pageable_out), repeats, sync)),
        "download_pinned": summary(timed(lambda: download(pinned), repeats, sync)),
    }


def proxy_model(num_classes: int = 3) -> tuple[Any, str]:
    """The project's DeepLabv3+ (training/model.py) or, where it is missing, an equivalent."""
    try:
        sys.path.insert(0, str(ROOT))
        from training.model import DeepLabV3Plus

        return DeepLabV3Plus(num_classes=num_classes), "training.model.DeepLabV3Plus"
    except ImportError:
        return _fallback_deeplab(num_classes), "bench fallback DeepLabv3+ (MobileNetV2, OS16)"


def _fallback_deeplab(num_classes: int) -> Any:
    """DeepLabv3+ MobileNetV2 (OS16, ASPP 6/12/18, stride-4 decoder): same layers and sizes."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def cbr(cin, cout, k=3, s=1, g=1, d=1):
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, s, (k - 1) // 2 * d, dilation=d, groups=g, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))

    class Block(nn.Module):
        def __init__(self, cin, cout, s, t, d=1):
            super().__init__()
            hidden = cin * t
            layers = [cbr(cin, hidden, 1)] if t != 1 else []
            layers += [cbr(hidden, hidden, 3, s, hidden, d),
                       nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.body = nn.Sequential(*layers)
            self.skip = s == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.skip else self.body(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            layers, cin = [cbr(3, 32, 3, 2)], 32
            settings = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
            for t, c, n, s in settings:
                for i in range(n):
                    index = len(layers)
                    dilated = index >= 14
                    stride = 1 if dilated else (s if i == 0 else 1)
                    layers.append(Block(cin, c, stride, t, 2 if dilated and index > 14 else 1))
                    cin = c
            self.features = nn.Sequential(*layers)
            self.aspp = nn.ModuleList([cbr(320, 256, 1)] + [
                cbr(320, 256, 3, d=r) for r in (6, 12, 18)])
            self.pool = cbr(320, 256, 1)
            self.project = cbr(256 * 5, 256, 1)
            self.reduce = cbr(24, 48, 1)
            self.decoder = nn.Sequential(cbr(304, 304, 3, g=304), cbr(304, 256, 1),
                                         cbr(256, 256, 3, g=256), cbr(256, 256, 1))
            self.classifier = nn.Conv2d(256, num_classes, 1)

        def forward(self, x):
            low = self.features[:4](x)
            high = self.features[4:](low)
            pooled = self.pool(F.adaptive_avg_pool2d(high, 1)).expand(-1, -1, *high.shape[2:])
            high = self.project(torch.cat([b(high) for b in self.aspp] + [pooled], 1))
            high = F.interpolate(high, size=low.shape[2:], mode="bilinear", align_corners=False)
            return self.classifier(self.decoder(torch.cat([high, self.reduce(low)], 1)))

    return Net()


def inference_proxy(repeats: int) -> dict[str, Any]:
    import torch

    model, source = proxy_model()
    model = model.eval().half().cuda()
    rows = []
    for height, width in PROXY_SIZES:
        static = torch.zeros((1, 3, height, width), dtype=torch.half, device="cuda")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(3):
                model(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            output = model(static)
        times = []
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        rows.append({"input": f"{height}x{width}", "output": list(output.shape),
                     **summary(times)})
    return {"model": source, "torch": torch.__version__, "dtype": "float16",
            "cuda_graph": True, "sizes": rows}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU check {report['time']}", "", f"Device: {report['device']}", ""]
    lines += ["| case | objects | max K | host in/out ms | device in, host out ms |"
              " kernels ms | CPU fast path ms | max diff vs CPU |", "|---" * 8 + "|"]
    for row in report["anonymizer"]:
        lines.append(
            f"| {row['case']} | {row['objects']} | {row['max_kernel']} "
            f"| {row['host_in_host_out']['median_ms']:.2f} "
            f"| {row['device_inputs_host_out']['median_ms']:.2f} "
            f"| {row['kernels_only_events']['median_ms']:.2f} "
            f"| {row['cpu_fast_path_median_ms']:.1f} | {row['max_abs_diff_vs_cpu_fast_path']} |"
        )
    t = report["transfers"]
    lines += ["", "| transfer (1080p BGR frame) | median ms |", "|---|---|"]
    for key in ("upload_pageable", "upload_pinned", "download_pageable", "download_pinned"):
        lines.append(f"| {key} | {t[key]['median_ms']:.3f} |")
    steps = report.get("analysis_steps", {})
    if steps:
        lines += ["", "| analyzer step on the device | median ms |", "|---|---|"]
        lines += [f"| {key} | {value['median_ms']:.3f} |" for key, value in steps.items()]
    proxy = report.get("inference_proxy")
    if isinstance(proxy, dict) and "sizes" in proxy:
        title = f"Inference proxy: {proxy['model']}, torch {proxy['torch']}, FP16, CUDA graph"
        lines += ["", title, "", "| input | median ms | p90 ms |", "|---|---|---|"]
        for row in proxy["sizes"]:
            lines.append(f"| {row['input']} | {row['median_ms']:.3f} | {row['p90_ms']:.3f} |")
    elif proxy is not None:
        lines += ["", f"Inference proxy: {proxy}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--data", type=Path, default=ROOT / ".gpu_data",
                        help="folder made by --prepare (default: .gpu_data)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--prepare", type=Path, default=None, metavar="DIR")
    parser.add_argument("--no-proxy", action="store_true", help="skip the PyTorch proxy")
    args = parser.parse_args(argv)
    if args.prepare is not None:
        prepare(args.prepare)
        return 0

    from daemon.errors import BackendUnavailable
    from daemon.gpu.backend import open_device

    try:
        device = open_device()
    except BackendUnavailable as exc:
        print(f"no GPU: {exc}", file=sys.stderr)
        return EXIT_NO_GPU
    report: dict[str, Any] = {
        "time": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": f"{device.identity.name} (sm {device.identity.compute_capability})",
        "python": platform.python_version(),
        "cupy": device.cupy.__version__,
        "repeats": args.repeats,
        "anonymizer": [],
    }
    pedestrians = args.data / PEDESTRIANS
    if pedestrians.is_file():
        data = np.load(pedestrians)
        report["anonymizer"].append(anonymizer_case(
            "pedestrians (street clip, 1080p)", data["frame"], data["labels"],
            int(data["person"]), device, args.repeats))
    else:
        print(f"warning: {pedestrians} missing (bench/gpu_bench.py --prepare): "
              "no pedestrian case", file=sys.stderr)
    image, labels = huge_object_frame(np.random.default_rng(0))
    report["anonymizer"].append(
        anonymizer_case("one huge object (1080p)", image, labels, 1, device, args.repeats))
    report["transfers"] = transfers(device, image, args.repeats)
    report["analysis_steps"] = analysis_steps(device, image, args.repeats)
    if not args.no_proxy:
        try:
            report["inference_proxy"] = inference_proxy(args.repeats)
        except Exception as exc:  # the proxy is optional: say why it is missing, keep the rest
            report["inference_proxy"] = f"failed: {type(exc).__name__}: {exc}"
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"gpu-{report['time'].replace(':', '')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    stem.with_suffix(".md").write_text(text)
    print(text)
    print(f"written: {stem}.json, {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
