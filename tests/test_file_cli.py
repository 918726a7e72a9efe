"""`anonymizer file` end to end: a subprocess, the real reference model, real clips and stills."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from media_helpers import psnr

from daemon.analysis.manifest import load_manifest
from daemon.configfile import load_config

MANIFEST = load_config(None).model.manifest_path  # the default model's: the CLI runs it
PERSON = load_manifest(MANIFEST).classes["person"]
# every class the default config blurs (person, license_plate): what may change in a frame
BLURRED = [load_manifest(MANIFEST).classes[name] for name in load_config(None).anonymize]
STREET = "street_pedestrians_cars_640x360.mp4"
KINETICS = "kinetics_style_armwrestling_340x256.mp4"


def run_cli(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "file", *map(str, args), "--no-progress"],
        cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("anonymizer: error:")]


def decode(path: Path) -> tuple[list[np.ndarray], list[Fraction], Fraction]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = list(c.decode(stream))
        return ([f.to_ndarray(format="bgr24") for f in frames],
                [f.pts * f.time_base for f in frames], stream.average_rate)


def laplacian_energy(image: np.ndarray, where: np.ndarray) -> float:
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return float((cv2.Laplacian(grey, cv2.CV_64F)[where] ** 2).sum())


def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    size = 2 * pixels + 1
    return cv2.dilate(mask.astype(np.uint8), np.ones((size, size), np.uint8)) > 0


def shrink(mask: np.ndarray, pixels: int) -> np.ndarray:
    size = 2 * pixels + 1
    return cv2.erode(mask.astype(np.uint8), np.ones((size, size), np.uint8)) > 0


def no_output_left(folder: Path, name: str) -> None:
    left = sorted(p.name for p in folder.iterdir() if Path(name).stem in p.name)
    assert left == [], f"left behind: {left}"


# --- the good path ---------------------------------------------------------------------------


def test_video_people_blurred_background_kept_timing_preserved(clip_segment, tmp_path):
    src = clip_segment(STREET, 30)
    out = tmp_path / "out.mp4"
    result = run_cli(src, "-o", out, "--save-masks", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert error_lines(result) == []
    inputs, in_times, in_rate = decode(src)
    outputs, out_times, out_rate = decode(out)
    assert len(outputs) == len(inputs) == 30
    assert out_times == in_times and out_rate == in_rate == 30
    masks = [cv2.imread(str(tmp_path / "out.labels" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
             for i in range(30)]
    assert sorted(p.name for p in (tmp_path / "out.labels").iterdir())[-1] == "000029.png"
    people = [m == PERSON for m in masks]
    assert sum(p.sum() for p in people) > 10_000, "the model should find the pedestrians"

    # inside the people: high-frequency energy collapses (measured: 2.6 % of the input's)
    inner = [shrink(p, 2) for p in people]
    before = sum(laplacian_energy(a, m) for a, m in zip(inputs, inner, strict=True))
    after = sum(laplacian_energy(b, m) for b, m in zip(outputs, inner, strict=True))
    assert after < 0.15 * before, after / before

    # outside the (dilated) blurred objects: only H.264 loss (measured: 36.2 dB worst frame,
    # 37.3 mean; a plain re-encode at the default crf 18 gives the same)
    for a, b, m in zip(inputs, outputs, masks, strict=True):
        background = ~grow(np.isin(m, BLURRED), 8)
        assert psnr(a[background], b[background]) > 34

    summary = result.stdout.splitlines()
    assert len(summary) == 2
    assert "30 frames" in summary[0] and "objects blurred: person " in summary[0]
    assert "fail-closed frames: 0" in summary[-1]


def test_image_outside_the_masks_is_bit_identical(shared_data, tmp_path):
    src = shared_data / "stills" / "messi5.jpg"
    out = tmp_path / "messi.png"
    result = run_cli(src, "-o", out, "--save-masks", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    original = cv2.imread(str(src))
    anonymized = cv2.imread(str(out))
    labels = cv2.imread(str(tmp_path / "messi.labels.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == original.shape[:2]
    person = labels == PERSON
    assert person.sum() > 5_000
    # mask_dilation is 8 by default: beyond 9 pixels of the masks nothing may change
    outside = ~grow(np.isin(labels, BLURRED), 9)
    np.testing.assert_array_equal(anonymized[outside], original[outside])
    inner = shrink(person, 2)
    assert laplacian_energy(anonymized, inner) < 0.15 * laplacian_energy(original, inner)
    assert "objects blurred: person" in result.stdout


# --- bad inputs, bad configs ---------------------------------------------------------------


def faststart_half(src: Path, dst: Path) -> Path:
    """The first half of an mp4 whose index comes first: it decodes, then the data stops."""
    whole = dst.with_name("whole.mp4")
    with av.open(str(src)) as i, av.open(str(whole), "w", options={"movflags": "faststart"}) as o:
        stream = o.add_stream_from_template(i.streams.video[0])
        for packet in i.demux(video=0):
            if packet.size:
                packet.stream = stream
                o.mux(packet)
    data = whole.read_bytes()
    whole.unlink()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def text_file(path: Path) -> Path:
    path.write_text("this is not a video\n")
    return path


def half_of(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


BAD_INPUTS = {
    "missing": (lambda d, seg, tmp: tmp / "missing.mp4", "no such file"),
    "text named .mp4": (lambda d, seg, tmp: text_file(tmp / "notes.mp4"), "not a readable video"),
    "truncated, index at the end": (
        lambda d, seg, tmp: half_of(d / "clips" / "car_plate_approach_1280x720.mp4",
                                    tmp / "half.mp4"),
        "not a readable video",
    ),
    "truncated, index first": (
        lambda d, seg, tmp: faststart_half(seg(KINETICS, 20), tmp / "half.mp4"), "truncated"
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_error_line_and_no_output(shared_data, clip_segment, tmp_path, case):
    make, reason = BAD_INPUTS[case]
    src = make(shared_data, clip_segment, tmp_path)
    out_dir = tmp_path / "out"
    result = run_cli(src, "-o", out_dir / "result.mp4", "--save-masks", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    (line,) = error_lines(result)
    assert line.startswith(f"anonymizer: error: {src}: ") and reason in line, line
    assert "FAILED" in result.stdout
    no_output_left(out_dir, "result.mp4")


def config_file(tmp_path: Path, case: str) -> Path:
    if case == "model is not ONNX":
        (tmp_path / "model.onnx").write_text("not an ONNX model\n")
        manifest = MANIFEST.read_text().splitlines()  # without its sha256, the ONNX load is tried
        (tmp_path / "model.manifest.yaml").write_text(
            "\n".join(line for line in manifest if not line.startswith("sha256:")) + "\n"
        )
        text = "model:\n  path: model.onnx\n"
    elif case == "unknown key":
        text = "blur:\n  kernel_fractoin: 0.3\n"
    else:
        text = "blur:\n  kernel_fraction: -0.25\n"
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("model is not ONNX", "not a loadable ONNX model"),
        ("unknown key", "config.yaml:2:3: blur.kernel_fractoin: unknown key"),
        ("negative kernel fraction", "config.yaml:2:3: blur.kernel_fraction:"),
    ],
)
def test_config_and_model_errors_exit_2_before_any_output(shared_data, tmp_path, case, reason):
    config = config_file(tmp_path, case)
    out_dir = tmp_path / "out"
    result = run_cli(shared_data / "stills" / "messi5.jpg", "-o", out_dir / "messi.png",
                     "-c", config, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = error_lines(result)
    assert reason in line, line
    assert result.stdout == ""
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_existing_output_and_input_are_not_overwritten(shared_data, tmp_path):
    src = tmp_path / "in.jpg"
    src.write_bytes((shared_data / "stills" / "messi5.jpg").read_bytes())
    existing = tmp_path / "out.jpg"
    existing.write_bytes(b"keep me")
    result = run_cli(src, "-o", existing, cwd=tmp_path)
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert line == f"anonymizer: error: {existing}: exists (use --overwrite to replace it)"
    assert existing.read_bytes() == b"keep me"
    result = run_cli(src, "-o", src, "--overwrite", cwd=tmp_path)
    assert result.returncode == 2
    assert error_lines(result) == [f"anonymizer: error: {src}: is an input; refusing to "
                                   "overwrite it"]
    assert src.read_bytes() == (shared_data / "stills" / "messi5.jpg").read_bytes()
