#!/usr/bin/env bash
# Create evaluation/.venv-hyperlpr: a separate venv for the HyperLPR attacker (hyperlpr2 2.0.0,
# Chinese plates). It needs OpenCV < 5 (the project's own venv has OpenCV 5), so it lives apart
# and evaluation/attackers.py talks to it through evaluation/hyperlpr_worker.py (a subprocess).
# hyperlpr2 declares `opencv-python` (the GUI build, needs libGL); it is installed with --no-deps
# and the headless build of the same OpenCV instead. All weights are inside the hyperlpr2 wheel.
# Idempotent: re-running only re-checks the pins. Usage: evaluation/setup_hyperlpr.sh [python3]
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${1:-python3}"
VENV=.venv-hyperlpr

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    'opencv-python-headless>=4.11,<5' 'numpy>=1.22,<3'
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps 'hyperlpr2==2.0.0'
# the smoke test: the models load (HyperLPR loads them at import) and OpenCV is < 5
"$VENV/bin/python" -c 'import cv2, hyperlpr2; assert int(cv2.__version__.split(".")[0]) < 5, cv2.__version__; print("hyperlpr venv ready: OpenCV", cv2.__version__)'
