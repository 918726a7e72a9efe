"""The built wheel is a working product: models, manifests, card and sample clip inside, the file
command runs from the installed package in any directory, and needs no PyGObject."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [
    "daemon/engines/deeplabv3plus_mnv2_person_plate_513.onnx",
    "daemon/engines/deeplabv3plus_mnv2_person_plate_513.manifest.yaml",
    "daemon/engines/deeplabv3plus_mnv2_person_plate_513.md",
    "daemon/engines/deeplabv3plus_mnv2_person_plate_513_int8.onnx",
    "daemon/engines/deeplabv3plus_mnv2_person_plate_513_int8.manifest.yaml",
    "daemon/samples/pedestrians_768x576.mp4",
    "daemon/samples/README.md",
    "daemon/gpu/kernels.cu",
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # from a copy: setuptools writes build/ next to the sources (and reuses what is there)
    source = out / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "out", "*.egg-info", "__pycache__", ".*_cache"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--wheel-dir", str(out), str(source)], check=True, timeout=300)
    (found,) = out.glob("privacy_gateway-*.whl")
    return found


def test_the_wheel_holds_the_models_and_the_sample_and_pygobject_is_optional(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [line for line in archive.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist: pygobject")]
    missing = [name for name in SHIPPED if name not in names]
    assert not missing, f"not in the wheel: {missing}"
    assert requires and all('extra == "daemon"' in line for line in requires), requires


def test_the_installed_file_command_works_from_another_directory(wheel: Path,
                                                                 tmp_path: Path) -> None:
    """The wheel unpacked on its own (this venv's dependencies, not the checkout's package):
    the default model resolves inside the installed package."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(site), str(wheel)], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    capture = cv2.VideoCapture(str(site / "daemon" / "samples" / "pedestrians_768x576.mp4"))
    ok, frame = capture.read()
    assert ok
    cv2.imwrite(str(elsewhere / "frame.png"), frame)
    script = ("import sys, daemon; print(daemon.__file__); from daemon.cli import main;"
              " sys.exit(main(['file', 'frame.png', '-o', 'anonymized.png']))")
    # PYTHONPATH first: the unpacked wheel shadows the checkout's editable install
    result = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0].startswith(str(site)), result.stdout
    assert str(site / "daemon" / "engines") in result.stderr  # the start-up log names the model
    anonymized = cv2.imread(str(elsewhere / "anonymized.png"))
    assert anonymized is not None and anonymized.shape == frame.shape
    assert (anonymized != frame).any(), "the walkers were not blurred"
