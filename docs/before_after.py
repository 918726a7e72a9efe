"""Make docs/before_after.jpg: a real still, and the same still anonymized by `anonymizer file`.

    .venv/bin/python docs/before_after.py [STILL]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STILL = ROOT.parent / "shared" / "data" / "stills" / "anonymizer_coco01.jpg"


def main() -> None:
    still = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_STILL
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"anonymized{still.suffix}"
        subprocess.run(
            [sys.executable, "-m", "daemon", "file", str(still), "-o", str(out), "--no-progress"],
            check=True,
        )
        before, after = cv2.imread(str(still)), cv2.imread(str(out))
    height = 360
    scale = height / before.shape[0]
    size = (round(before.shape[1] * scale), height)
    panels = []
    for image, title in ((before, "camera"), (after, "anonymized")):
        panel = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        cv2.putText(panel, title, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 0, 0), 4)
        cv2.putText(panel, title, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2)
        panels.append(panel)
    gap = np.full((height, 8, 3), 255, np.uint8)
    cv2.imwrite(str(ROOT / "docs" / "before_after.jpg"), np.hstack([panels[0], gap, panels[1]]),
                [cv2.IMWRITE_JPEG_QUALITY, 88])


if __name__ == "__main__":
    main()
