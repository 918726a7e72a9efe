#!/usr/bin/env bash
# Create evaluation/.venv-mediapipe: a separate venv for the BlazeFace face attacker (mediapipe
# 0.10.21, Apache-2.0; the face_detection_*.tflite models are inside the wheel). mediapipe pins
# numpy < 2 and protobuf < 5 (the project's venv has numpy 2) and declares opencv-contrib-python,
# jax, jaxlib, sentencepiece and sounddevice, which its face detection does not need: it is
# installed with --no-deps next to what `import mediapipe` (its solutions package) imports:
# OpenCV (the headless build; 4.12+ needs numpy 2, hence < 4.12) and matplotlib.
# evaluation/attackers.py talks to it through evaluation/face_worker.py (a subprocess).
# Idempotent: re-running only re-checks the pins. Usage: evaluation/setup_mediapipe.sh [python3]
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${1:-python3}"
VENV=.venv-mediapipe

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    --no-warn-conflicts 'numpy>=1.22,<2' 'protobuf>=4.25.3,<5' 'absl-py' 'attrs>=19.1.0' \
    'flatbuffers>=2.0' 'opencv-python-headless>=4.8,<4.12' 'matplotlib>=3.5,<4'
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps 'mediapipe==0.10.21'
# the smoke test: the worker loads the model and answers
"$VENV/bin/python" face_worker.py --check blazeface
