"""Shared pytest fixtures."""

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from daemon.anonymizer.objects import BlurParams


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`<repo>/../shared/data` (CI clones the repo next to `shared/`); missing is a failure."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.fail(f"shared data folder not found: {path} (expected next to the repository)")
    return path


@pytest.fixture(scope="session")
def clip_segment(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Path]:
    """`clip_segment(name, frames, audio=False) -> Path`: the first `frames` video packets of
    `clips/<name>` (and, with audio, the audio packets up to the same time) stream-copied with
    PyAV into a cached temporary file of the same container: a short real clip, not re-encoded.
    """
    import av

    cache: dict[tuple[str, int, bool], Path] = {}
    folder = tmp_path_factory.mktemp("clips")

    def make(name: str, frames: int, audio: bool = False) -> Path:
        key = (name, frames, audio)
        if key in cache:
            return cache[key]
        source = shared_data / "clips" / name
        target = folder / f"{Path(name).stem}.{frames}{'a' if audio else ''}{Path(name).suffix}"
        with av.open(str(source)) as src, av.open(str(target), "w") as dst:
            video = src.streams.video[0]
            streams = [video, *src.streams.audio[:1]] if audio else [video]
            out = {s.index: dst.add_stream_from_template(s) for s in streams}
            end = frames / video.average_rate  # seconds of audio to keep
            count = 0
            for packet in src.demux(*streams):
                if packet.dts is None or not packet.size:
                    continue
                if packet.stream is video:
                    if count == frames:
                        if not audio:
                            break
                        continue
                    count += 1
                elif packet.pts * packet.time_base >= end:
                    if count == frames:
                        break
                    continue
                packet.stream = out[packet.stream.index]
                dst.mux(packet)
        cache[key] = target
        return target

    return make


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--gpu",
        action="store_true",
        help="GPU run: tests marked gpu fail (instead of skipping) where no usable GPU is found",
    )


@functools.cache
def _gpu_unavailable() -> str | None:
    """Why GPU tests cannot run here (None: a CUDA device answered an allocation)."""
    from daemon.errors import BackendUnavailable
    from daemon.gpu.backend import cupy_module

    try:
        cupy = cupy_module()
        cupy.zeros(1).get()
    except BackendUnavailable as exc:
        return str(exc)
    except Exception as exc:  # a device that exists but cannot allocate is as good as none
        return f"CUDA allocation failed: {exc}"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked gpu skip with the reason where there is no GPU, and fail under --gpu."""
    if item.get_closest_marker("gpu") is None:
        return
    reason = _gpu_unavailable()
    if reason is None:
        return
    if item.config.getoption("--gpu"):
        pytest.fail(f"--gpu given but no usable GPU: {reason}", pytrace=False)
    pytest.skip(f"needs an NVIDIA GPU (run with --gpu on one): {reason}")


@dataclass(frozen=True)
class GoldenCase:
    """One vector of `shared/data/golden` (see its README): inputs, parameters, expectations."""

    name: str
    frame: np.ndarray
    labels: np.ndarray
    expected: np.ndarray
    classes: tuple[int, ...]
    params: BlurParams
    kernels: list[int]
    changed_pixels: int


@pytest.fixture(scope="session")
def golden_cases(shared_data: Path) -> list[GoldenCase]:
    """Every golden vector with its BlurParams (a case may override kernel_fraction)."""
    folder = shared_data / "golden"
    index = json.loads((folder / "index.json").read_text())
    base = index["params"]
    cases = []
    for name, case in index["cases"].items():
        data = np.load(folder / f"{name}.npz")
        params = BlurParams(
            kernel_fraction=case.get("kernel_fraction", base["kernel_fraction"]),
            sigma_factor=base["sigma_factor"],
            min_kernel=base["min_kernel"],
            max_kernel=base["max_kernel"],
        )
        cases.append(GoldenCase(name, data["frame"], data["labels"], data["expected"],
                                tuple(base["classes"]), params, case["kernels"],
                                case["changed_pixels"]))
    if len(cases) < 10:
        pytest.fail(f"expected at least 10 golden vectors in {folder}, found {len(cases)}")
    return cases
