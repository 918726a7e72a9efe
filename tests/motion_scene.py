"""A moving person for the daemon's motion tests: a real person cut-out (PennFudan, from
shared/data/seg/person) walking at a constant speed across a real 1280x720 background (the
first frame of a real street clip), with the frame-number barcode (far above the person, so
that no mask of the person reaches it), encoded as a 30 fps H.264 camera clip; and the
measure of how much of the person a published frame leaves sharp.

Sharp share: the person's true silhouette on frame n is known; it is cut into 8x8 blocks, and
a block with texture in the camera's frame (high-pass amplitude above a floor) counts as sharp
when the published frame's high-pass signal there still has the camera's structure and
contrast: normalised correlation > 0.5 and at least a quarter of its energy (re-encoding keeps
a correlation of ~0.9 and most of the energy; the paper's blur leaves a faint, smooth residue
whose tiny high-pass can correlate by chance, hence the energy test). The share is the sharp
blocks' silhouette pixels over all textured blocks' silhouette pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rtsp_camera import paint_code

WIDTH, HEIGHT, FPS = 1280, 720, 30
PERSON_HEIGHT = 300
TOP = 400  # the person walks with its head at this row (the barcode is at rows 8..24)
BLOCK = 8
TEXTURE_FLOOR = 5.0  # mean |high-pass| over a block: below it a block shows nothing either way
SHARP_CORRELATION = 0.5
SHARP_ENERGY = 0.25  # of the camera's high-pass energy in the block


@dataclass(frozen=True)
class Cutout:
    image: np.ndarray  # BGR, PERSON_HEIGHT rows
    mask: np.ndarray  # bool, the person's silhouette


def person_cutout(shared_data: Path) -> Cutout:
    """The largest person of a PennFudan val image, scaled to PERSON_HEIGHT rows."""
    root = shared_data / "seg" / "person"
    image = cv2.imread(str(root / "images/val/pennfudan_PennPed00016.jpg"))
    labels = cv2.imread(str(root / "masks/val/pennfudan_PennPed00016.png"), cv2.IMREAD_GRAYSCALE)
    _, comp, stats, _ = cv2.connectedComponentsWithStats((labels == 1).astype(np.uint8))
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[biggest, :4])
    scale = PERSON_HEIGHT / h
    size = (max(1, round(w * scale)), PERSON_HEIGHT)
    crop = cv2.resize(image[y:y + h, x:x + w], size, interpolation=cv2.INTER_AREA)
    mask = cv2.resize((comp[y:y + h, x:x + w] == biggest).astype(np.uint8), size,
                      interpolation=cv2.INTER_NEAREST).astype(bool)
    return Cutout(crop, mask)


def background(shared_data: Path) -> np.ndarray:
    import av

    with av.open(str(shared_data / "clips" / "car_plate_approach_1280x720.mp4")) as src:
        frame = next(src.decode(video=0)).to_ndarray(format="bgr24")
    return np.ascontiguousarray(frame[:HEIGHT, :WIDTH])


def position(number: int, speed: float) -> int:
    """The cut-out's left column on frame `number`."""
    return round(16 + speed * number)


def frames_for(speed: float, cutout: Cutout) -> int:
    """Frames of one crossing, until the person reaches the right edge."""
    return int((WIDTH - cutout.mask.shape[1] - 32) / speed)


def compose(back: np.ndarray, cutout: Cutout, number: int, speed: float, code: int
            ) -> np.ndarray:
    """Frame `number` of the crossing, with `code` in its barcode."""
    frame = back.copy()
    x = position(number, speed)
    h, w = cutout.mask.shape
    window = frame[TOP:TOP + h, x:x + w]
    window[cutout.mask] = cutout.image[cutout.mask]
    paint_code(frame, code)
    return frame


def encode_clip(target: Path, back: np.ndarray, cutout: Cutout, speed: float, first_code: int
                ) -> Path:
    """The camera clip of one crossing at `speed` px/frame, frame n coded first_code + n."""
    import av

    partial = target.with_suffix(".partial.mp4")
    with av.open(str(partial), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "18", "g": "30", "bf": "0"}
        for number in range(frames_for(speed, cutout)):
            image = compose(back, cutout, number, speed, first_code + number)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = number
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    partial.rename(target)
    return target


def person_window(frame: np.ndarray, cutout: Cutout, number: int, speed: float) -> np.ndarray:
    """The rows and columns of a grey frame where the person is on frame `number`."""
    x = position(number, speed)
    h, w = cutout.mask.shape
    return frame[TOP:TOP + h, x:x + w]


def reference_windows(clip: Path, cutout: Cutout, speed: float) -> list[np.ndarray]:
    """The camera's own frames as decoded (grey), cut to the person: the reference."""
    import av

    with av.open(str(clip)) as src:
        return [person_window(cv2.cvtColor(f.to_ndarray(format="bgr24"), cv2.COLOR_BGR2GRAY),
                              cutout, n, speed)
                for n, f in enumerate(src.decode(video=0))]


def detail(grey: np.ndarray) -> float:
    """Mean |high-pass| of a grey picture: a camera frame ~10, a fail-closed frame ~0."""
    return float(np.abs(_high_pass(grey)).mean())


def _high_pass(grey: np.ndarray) -> np.ndarray:
    g = grey.astype(np.float32)
    return g - cv2.blur(g, (5, 5))


def sharp_share(published: np.ndarray, reference: np.ndarray, mask: np.ndarray
                ) -> float | None:
    """The share of the silhouette `mask` that the grey window `published` shows sharp, with
    `reference` the camera's window (module docstring); None if no block has texture."""
    h, w = mask.shape
    out = _high_pass(published)
    ref = _high_pass(reference)
    sharp = textured = 0
    for by in range(0, h - BLOCK + 1, BLOCK):
        for bx in range(0, w - BLOCK + 1, BLOCK):
            inside = mask[by:by + BLOCK, bx:bx + BLOCK]
            count = int(inside.sum())
            if count < BLOCK * BLOCK // 2:
                continue
            r = ref[by:by + BLOCK, bx:bx + BLOCK][inside]
            if np.abs(r).mean() < TEXTURE_FLOOR:
                continue
            o = out[by:by + BLOCK, bx:bx + BLOCK][inside]
            textured += count
            energy, reference_energy = float((o * o).sum()), float((r * r).sum())
            denominator = float(np.sqrt(reference_energy * energy))
            if (denominator > 0 and float((r * o).sum()) / denominator > SHARP_CORRELATION
                    and energy >= SHARP_ENERGY * reference_energy):
                sharp += count
    return sharp / textured if textured else None
