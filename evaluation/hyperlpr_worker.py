"""HyperLPR worker: runs INSIDE evaluation/.venv-hyperlpr (hyperlpr2 2.0.0, OpenCV < 5).

Started by evaluation.attackers.HyperLprReader as a long-lived subprocess. Protocol, one JSON
object per line, UTF-8:

  stdin:  {"path": "/abs/image.png"}
  stdout: {"detections": [{"box": [x1, y1, x2, y2], "score": 0.93, "text": "皖A12345"}, ...]}
      or  {"error": "..."}  (the request failed; the worker keeps running)

The first line the worker writes is {"ready": true, "opencv": "<version>"} once the models are
loaded. Images are read with cv2.imread, i.e. BGR, which is what HyperLPR expects. Text is
HyperLPR's raw string (the caller normalises it). Nothing from the privacy-gateway repository is
imported here.
"""

import contextlib
import json
import sys


def main() -> int:
    out = sys.stdout
    # HyperLPR or OpenCV could print; keep stdout for the protocol only
    sys.stdout = sys.stderr
    import cv2
    import hyperlpr2  # loads the models bundled in the wheel

    out.write(json.dumps({"ready": True, "opencv": cv2.__version__}) + "\n")
    out.flush()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            request = json.loads(line)
            image = cv2.imread(request["path"], cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"cannot read image {request['path']!r}")
            try:
                results = hyperlpr2.HyperLPR_plate_recognition(image)
            except (TypeError, ZeroDivisionError):
                # hyperlpr2 2.0.0 bugs: detect_ssd returns None when the SSD gives no row at
                # all, and decode_ctc divides by len("") when the recogniser reads nothing.
                # Both mean "no plate read".
                results = []
            detections = [
                {
                    "box": [int(v) for v in box],
                    "score": float(confidence),
                    "text": str(text),
                }
                for text, confidence, box in results or []
            ]
            reply = {"detections": detections}
        except Exception as exc:  # report and keep serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply, ensure_ascii=False) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
