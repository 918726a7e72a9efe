"""A walking person is never published sharp, in bracket and in hold mode: end to end with the
real default model (multi-scale, analysis at its natural rate) on a 1280x720 30 fps test
camera, through `anonymizer run`, read back by a real RTSP viewer.

The camera plays crossings of a real person cut-out over a real background at 4, 12 and 24
px/frame (tests/motion_scene.py); every frame carries a barcode with its number. The camera is
restarted for each crossing (the daemon reconnects: the first frames of each connection fail
closed), so no person ever appears in the middle of a stream, which hold mode could not
cover. For every published frame, the share of the person's true silhouette left sharp must
stay below 5 %.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import motion_scene as scene
from rtsp_camera import (
    CameraProcess,
    Daemon,
    FfmpegClient,
    free_port,
    http_get,
    metric,
    read_code,
    wait_for,
    wait_port,
)

SPEEDS = (4.0, 12.0, 24.0)
CROSSINGS = {4.0: 1, 12.0: 2, 24.0: 4}  # about 300 camera frames per speed
CODE_STEP = 1000  # barcode = 1000 x (crossing index) + frame number
MAX_SHARP = 0.05
ABOVE = np.s_[40:scene.TOP - 40]  # background rows between the barcode and the person


class GreyViewer(FfmpegClient):
    """Keeps every published frame's barcode and the rows the person walks in (grey)."""

    def __init__(self, url: str) -> None:
        self.frames_kept: list[tuple[int | None, np.ndarray, float]] = []
        super().__init__(url, scene.WIDTH, scene.HEIGHT, timeout=300, pix_fmt="gray")

    def _take(self, index: int, frame: np.ndarray) -> None:
        band = frame[scene.TOP:scene.TOP + scene.PERSON_HEIGHT].copy()
        self.frames_kept.append((read_code(frame), band, scene.detail(frame[ABOVE])))


@pytest.fixture(scope="module")
def crossings(shared_data: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> list[tuple[float, Path, list[np.ndarray]]]:
    """(speed, clip, the camera's windows on the person) per crossing; crossing k's frame n
    carries the code CODE_STEP x (k + 1) + n."""
    folder = tmp_path_factory.mktemp("walk")
    back, cutout = scene.background(shared_data), scene.person_cutout(shared_data)
    out = []
    for speed in SPEEDS:
        windows: list[np.ndarray] = []
        for _ in range(CROSSINGS[speed]):
            index = len(out)
            clip = scene.encode_clip(folder / f"walk-{index}.mp4", back, cutout, speed,
                                     CODE_STEP * (index + 1))
            windows = windows or scene.reference_windows(clip, cutout, speed)
            out.append((speed, clip, windows))
    return out


def _numbered(kept: list[tuple[int | None, np.ndarray, float]]
              ) -> list[tuple[int, np.ndarray, float]]:
    """Each published frame with its camera code; frames whose barcode was unreadable (failed
    closed, or blurred) get the code the frames around them imply when exactly one fits, else
    every code that could fit (the worst counts)."""
    out: list[tuple[int, np.ndarray, float]] = []
    readable = [i for i, (code, _, _) in enumerate(kept) if code is not None]
    for a, b in itertools.pairwise(readable):
        code_a, code_b = kept[a][0], kept[b][0]
        assert code_a is not None and code_b is not None
        out.append((code_a, kept[a][1], kept[a][2]))
        gap = kept[a + 1:b]
        if not gap or code_a // CODE_STEP != code_b // CODE_STEP:
            continue  # between crossings: reconnecting, checked for detail below
        if code_b - code_a - 1 == len(gap):
            out.extend((code_a + 1 + k, band, d) for k, (_, band, d) in enumerate(gap))
        else:
            out.extend((code, band, d) for _, band, d in gap
                       for code in range(code_a + 1, code_b))
    if readable:
        last = kept[readable[-1]]
        assert last[0] is not None
        out.append((last[0], last[1], last[2]))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bracket", "hold"])
def test_a_walking_person_is_never_published_sharp(mode: str, crossings, shared_data: Path,
                                                   tmp_path: Path) -> None:
    cutout = scene.person_cutout(shared_data)
    camera_port, rtsp_port, metrics_port = free_port(), free_port(), free_port()
    daemon = Daemon(tmp_path, f"""
        server: {{port: {rtsp_port}}}
        metrics: {{port: {metrics_port}}}
        viewers: {{auth: false}}
        analysis: {{temporal: {mode}}}
        ingest: {{backoff_initial_s: 0.2, backoff_max_s: 0.5}}
        cameras:
          - name: walk
            url: rtsp://127.0.0.1:{camera_port}/cam
    """, lifetime=400)
    viewer = None
    try:
        assert wait_port(rtsp_port, 90), daemon.log()
        # a first crossing, not measured, brings the output to 1280x720 before the viewer
        # connects (a viewer's raw frames keep the size the stream had when it joined)
        warm = CameraProcess(crossings[-1][1], camera_port, lifetime=60).start()
        try:
            assert wait_for(lambda: metric(http_get(metrics_port, "/metrics")[1],
                                           "frames_published_anonymized_total") > 0, 60), \
                daemon.log()
            viewer = GreyViewer(f"rtsp://127.0.0.1:{rtsp_port}/walk")
            assert viewer.wait_frames(10, 30), viewer.stop() + daemon.log()
        finally:
            warm.kill()
        time.sleep(2.5)  # the warm-up's last frames reach the viewer (pacing: up to ~1.1 s)
        viewer.frames_kept.clear()
        for index, (speed, clip, _) in enumerate(crossings):
            last = CODE_STEP * (index + 1) + scene.frames_for(speed, cutout) - 1
            camera = CameraProcess(clip, camera_port, lifetime=120).start()
            try:
                # the crossing is over when its last frame was published (or 30 s passed)
                wait_for(lambda last=last: any(c is not None and last - 2 <= c <= last
                                               for c, _, _ in viewer.frames_kept[-40:]), 30)
                time.sleep(1.0)
            finally:
                camera.kill()
            time.sleep(1.0)
    finally:
        stderr = viewer.stop() if viewer else ""
        code = daemon.stop()
    assert code == 0, daemon.log()
    kept = viewer.frames_kept
    assert len(kept) > 100, (len(kept), stderr)
    numbered = _numbered(kept)
    worst: dict[float, float] = {}
    published: dict[float, set[int]] = {}  # the codes measured
    leaks = []
    for code_value, band, _ in numbered:
        index, number = divmod(code_value, CODE_STEP)
        if not 1 <= index <= len(crossings):
            continue
        speed, _, windows = crossings[index - 1]
        if number >= len(windows):
            continue
        x = scene.position(number, speed)
        w = cutout.mask.shape[1]
        share = scene.sharp_share(band[:, x:x + w], windows[number], cutout.mask)
        if share is None:
            continue
        if share > worst.get(speed, -1.0):  # kept for the report: published | camera
            cv2.imwrite(str(tmp_path / f"worst-{mode}-{speed:g}.png"),
                        np.hstack([band[:, x:x + w], windows[number]]))
        worst[speed] = max(worst.get(speed, 0.0), share)
        published.setdefault(speed, set()).add(code_value)
        if share >= MAX_SHARP:
            leaks.append((speed, number, round(share, 3)))
    # the measure sees sharp pixels: anonymized frames keep the camera's background detail
    camera_detail = scene.detail(cv2.cvtColor(scene.background(shared_data), cv2.COLOR_BGR2GRAY)
                                 [ABOVE])
    anonymized = [d for code_value, _, d in kept if code_value is not None]
    counts = {speed: len(codes) for speed, codes in published.items()}
    print(f"\n{mode}: frames measured per speed {counts}; worst share per speed "
          f"{ {s: round(v, 3) for s, v in worst.items()} }; {len(leaks)} leaks {leaks[:20]};"
          f" background detail {np.median(anonymized):.2f} (camera {camera_detail:.2f})")
    assert float(np.median(anonymized)) > 0.6 * camera_detail
    assert not leaks, f"{mode}: {len(leaks)} frames show > 5 % of the person sharp: {leaks[:20]}"
    # enough frames measured for the check above to mean something (frames fail closed while
    # hold waits for two analyses of every region after each crossing starts; the 24 px/frame
    # crossing measured 93-96 of 188 on a 2-core machine)
    for speed in SPEEDS:
        frames = CROSSINGS[speed] * scene.frames_for(speed, cutout)
        assert counts.get(speed, 0) > 0.4 * frames, (speed, counts, daemon.log()[-3000:])
