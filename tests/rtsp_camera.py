"""Test helpers for the daemon: a real RTSP test camera (daemon.demo.camera's GstRtspServer
serving a pre-encoded clip on 127.0.0.1, in a subprocess, so tests can SIGKILL, SIGSTOP and
restart it like a real camera), clips with a known sensitive square, and an ffmpeg RTSP client.

Camera: python -m daemon.demo.camera --port P --clip FILE [--path /cam] [--user u --password p]
(it exits by itself after --lifetime seconds).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.analysis.multiscale import MultiScaleAnalyzer
from daemon.demo.command import free_port

if TYPE_CHECKING:
    import numpy as np

# The "sensitive region": a checkerboard square painted into every frame of a marked clip. A raw
# frame shows it; anonymized or fail-closed frames never do.
MARK_BOX = (48, 48, 96, 96)  # x, y, w, h
MARK_CELL = 8


def mark_pattern(h: int, w: int):
    import numpy as np

    yy, xx = np.mgrid[0:h, 0:w]
    board = ((yy // MARK_CELL + xx // MARK_CELL) % 2).astype(np.uint8)
    return np.where(board[..., None] == 1, np.uint8(255), np.uint8(0)).repeat(3, axis=2)


def leak_score(frame) -> float:
    """How much of the checkerboard's contrast the MARK_BOX region of a BGR frame shows: the
    region's projection on the (zero-mean) pattern, 1.0 for the raw square, ~0 for a flat or
    unrelated region. The paper's blur leaves a weak periodic residue of a checkerboard (a box
    filter passes ~16 % of its fundamental); a raw frame shows it at ~0.9-1.0 after coding."""
    import numpy as np

    x, y, w, h = MARK_BOX
    region = frame[y:y + h, x:x + w].astype(np.float32).mean(axis=2)
    pattern = mark_pattern(h, w)[..., 0].astype(np.float32)
    pattern -= pattern.mean()
    region -= region.mean()
    return float((region * pattern).sum() / (pattern * pattern).sum())


# A frame-number barcode: a row of CODE_BITS black/white cells at the top-right corner, so a
# viewer knows which camera frame each published frame is (fail-closed frames blur it away).
CODE_BITS = 16
CODE_CELL = 16


def code_box(width: int) -> tuple[int, int]:
    """(x, y) of the barcode: a row of CODE_BITS cells at the top-right corner."""
    return width - CODE_BITS * CODE_CELL - 8, 8


def paint_code(frame: np.ndarray, number: int) -> None:
    x0, y0 = code_box(frame.shape[1])
    for bit in range(CODE_BITS):
        value = 255 if (number >> bit) & 1 else 0
        x = x0 + bit * CODE_CELL
        frame[y0:y0 + CODE_CELL, x:x + CODE_CELL] = value


def read_code(frame: np.ndarray) -> int | None:
    x0, y0 = code_box(frame.shape[1])
    number = 0
    for bit in range(CODE_BITS):
        x = x0 + bit * CODE_CELL
        cell = frame[y0 + 4:y0 + CODE_CELL - 4, x + 4:x + CODE_CELL - 4].mean()
        if 60 < cell < 195:
            return None  # blurred or failed closed: not readable
        number |= (cell >= 128) << bit
    return number


def looped_clip(source: Path, target: Path, loops: int) -> Path:
    """`source` played `loops` times, stream-copied (no re-encode): a long real camera feed."""
    if not target.exists():
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-stream_loop",
                        str(loops - 1), "-i", str(source), "-an", "-c", "copy", str(target)],
                       check=True, timeout=120)
    return target


def marked_clip(source: Path, target: Path, loops: int) -> Path:
    """`source` with the checkerboard painted over MARK_BOX in every frame, H.264, looped."""
    import cv2

    if not target.exists():
        x, y, w, h = MARK_BOX
        png = target.with_suffix(".mark.png")
        cv2.imwrite(str(png), mark_pattern(h, w))
        subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-stream_loop", str(loops - 1),
             "-i", str(source), "-i", str(png), "-filter_complex", f"[0:v][1:v]overlay={x}:{y}",
             "-an", "-c:v", "libx264", "-preset", "ultrafast", "-g", "15", "-bf", "0",
             "-pix_fmt", "yuv420p", str(target)],
            check=True, timeout=300)
    return target


class FfmpegClient:
    """A real RTSP viewer: ffmpeg (TCP) decoding to raw BGR on a pipe, read in a thread.

    Keeps, per frame, the arrival time and `leak_score`; keeps every `keep_every`-th frame.
    """

    def __init__(self, url: str, width: int, height: int, *, keep_every: int = 10,
                 timeout: float = 60.0, crop_rows: int | None = None,
                 pix_fmt: str = "bgr24") -> None:
        import threading

        self.url = url
        self.width = width
        # crop_rows: ffmpeg keeps only the top rows (MARK_BOX and the bench's barcode), so a
        # Python reader keeps up with 720p30
        self.height = crop_rows or height
        crop = ["-vf", f"crop={width}:{crop_rows}:0:0"] if crop_rows else []
        self.arrivals: list[float] = []
        self.scores: list[float] = []
        self.kept: list[tuple[int, object]] = []
        self._keep_every = keep_every
        self._channels = 1 if pix_fmt == "gray" else 3
        self.proc = subprocess.Popen(
            ["timeout", "-s", "KILL", str(timeout), "ffmpeg", "-nostdin", "-loglevel", "error",
             "-rtsp_transport", "tcp", "-fflags", "nobuffer", "-flags", "low_delay",
             "-i", url, "-an", *crop, "-f", "rawvideo", "-pix_fmt", pix_fmt,
             "-fps_mode", "passthrough", "pipe:1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._guarded_read, daemon=True)
        self._thread.start()

    def _guarded_read(self) -> None:
        try:
            self._read()
        except BaseException as exc:  # kept for the test's message; ffmpeg is then stopped
            self.error = exc
            self.proc.kill()

    def _read(self) -> None:
        """Every decoded frame, its arrival time noted, to `_take` (until ffmpeg ends)."""
        import numpy as np

        size = self.width * self.height * self._channels
        shape = (self.height, self.width, 3) if self._channels == 3 else (self.height, self.width)
        assert self.proc.stdout is not None
        while True:
            data = self.proc.stdout.read(size)
            if len(data) < size:
                return
            self.arrivals.append(time.monotonic())
            self._take(len(self.arrivals) - 1, np.frombuffer(data, np.uint8).reshape(shape))

    def _take(self, index: int, frame: np.ndarray) -> None:
        """What a viewer keeps of frame `index`: its leak score, every keep_every-th frame."""
        self.scores.append(leak_score(frame))
        if index % self._keep_every == 0:
            self.kept.append((index, frame))

    @property
    def frames(self) -> int:
        return len(self.arrivals)

    def wait_frames(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.frames >= count:
                return True
            if self.proc.poll() is not None and not self._thread.is_alive():
                return False
            time.sleep(0.05)
        return False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> str:
        """Stop ffmpeg (its whole process group: `timeout` and ffmpeg, which can sit in a read
        from a server that is gone); its stderr."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError):  # whatever is left of the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)
        self._thread.join(5)
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")

    def fps(self, since: float = 0.0) -> float:
        times = [t for t in self.arrivals if t >= since]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])


class CodeClient(FfmpegClient):
    """An ffmpeg viewer that also reads each frame's barcode (None if unreadable: blurred or
    failed closed) into `codes`, beside `arrivals` (and `scores` when the rows it keeps hold
    MARK_BOX); it keeps no frames."""

    def __init__(self, url: str, width: int, height: int, *, crop_rows: int = 32,
                 timeout: float = 60.0) -> None:
        self.codes: list[int | None] = []
        super().__init__(url, width, height, keep_every=10**9, crop_rows=crop_rows,
                         timeout=timeout)

    def _take(self, index: int, frame: np.ndarray) -> None:
        self.codes.append(read_code(frame))
        if self.height >= MARK_BOX[1] + MARK_BOX[3]:
            self.scores.append(leak_score(frame))


class FakeAnalyzer(MultiScaleAnalyzer):
    """The analyzer seam, faked (one full-frame region, no tiles): MARK_BOX is a person;
    files in `control` make it misbehave (`fail`: raise EngineError; `slow`: sleep that many
    seconds per call)."""

    backend = "fake (tests)"

    def __init__(self, manifest, control: Path) -> None:
        from daemon.analysis import class_ids

        super().__init__(manifest, None, ())
        self._person = class_ids(manifest, ["person"])[0]
        self._control = control

    def _pass(self, image):
        import numpy as np

        from daemon.errors import EngineError

        if (self._control / "fail").exists():
            raise EngineError("forced failure (test)")
        slow = self._control / "slow"
        if slow.exists():
            time.sleep(float(slow.read_text() or "2"))
        labels = np.zeros(image.shape[:2], np.uint8)
        x, y, w, h = MARK_BOX
        labels[y:y + h, x:x + w] = self._person
        time.sleep(0.03)  # about the real model's cost
        return labels


class SmallObjectAnalyzer(MultiScaleAnalyzer):
    """A detector that, like a segmentation network, misses objects that are small in its
    input: each pass stretches its image to the manifest's input size (as the real analyzers
    do) and calls "person" every high-contrast blob (the checkerboard) at least MIN_SIDE input
    pixels wide and tall. On a 1280 x 720 frame squeezed to 513 x 513 the 96 px MARK_BOX is
    38 px wide and is missed; a native-scale tile sees it whole. The real multi-scale plan
    (the config's tiling) decides which regions there are."""

    backend = "small-object fake (tests)"
    MIN_SIDE = 50

    def __init__(self, manifest, tiling, protected) -> None:
        from daemon.analysis import class_ids

        super().__init__(manifest, tiling, protected)
        self._person = class_ids(manifest, ["person"])[0]

    def _pass(self, image):
        import cv2
        import numpy as np

        spec = self.manifest.input
        small = cv2.resize(image, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR)
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32)
        mean = cv2.blur(grey, (9, 9))
        spread = np.sqrt(np.maximum(cv2.blur(grey * grey, (9, 9)) - mean * mean, 0))
        count, blobs, stats, _ = cv2.connectedComponentsWithStats((spread > 100).astype(np.uint8))
        big = [i for i in range(1, count)
               if stats[i, cv2.CC_STAT_WIDTH] >= self.MIN_SIDE
               and stats[i, cv2.CC_STAT_HEIGHT] >= self.MIN_SIDE]
        labels = np.where(np.isin(blobs, big), self._person, 0).astype(np.uint8)
        time.sleep(0.02)  # a pass of the real model costs 15-30 ms
        height, width = image.shape[:2]
        return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)


class MarkedAnalyzer:
    """The real analyzer (its plan, tiles and all), with MARK_BOX added as a person (the
    soak's sensitive region) in every region that overlaps it."""

    def __init__(self, real) -> None:
        from daemon.analysis import class_ids

        self.manifest = real.manifest
        self._real = real
        self._person = class_ids(real.manifest, ["person"])[0]

    def plan(self, height, width):
        return self._real.plan(height, width)

    def labels(self, frame):
        labels = self._real.labels(frame)
        x, y, w, h = MARK_BOX
        labels[y:y + h, x:x + w] = self._person
        return labels

    @property
    def parallel(self):
        return self._real.parallel

    def regions_labels(self, frame, regions):
        results = self._real.regions_labels(frame, regions)
        x, y, w, h = MARK_BOX
        for region, labels in zip(regions, results, strict=True):
            top, left = max(y - region.y, 0), max(x - region.x, 0)
            bottom = min(y + h - region.y, region.height)
            right = min(x + w - region.x, region.width)
            if top < bottom and left < right:
                labels[top:bottom, left:right] = self._person
        return results


class SlowAnonymizer:
    """The real CPU anonymizer, slowed by the seconds in the control file `slow_anonymizer`
    per frame (a render stage slower than the camera)."""

    def __init__(self, real, control: Path) -> None:
        self._real = real
        self._control = control

    def anonymize(self, frame, labels):
        delay = self._control / "slow_anonymizer"
        if delay.exists():
            time.sleep(float(delay.read_text() or "0.06"))
        return self._real.anonymize(frame, labels)


def run_daemon_with_fake_analyzer(control: Path, argv: list[str]) -> int:
    """`anonymizer ARGV` in this process with the analyzer replaced by FakeAnalyzer."""
    from daemon import cli
    from daemon.analysis import class_ids, load_manifest
    from daemon.anonymizer.cpu import CpuAnonymizer
    from daemon.backends import Backend
    from daemon.service import supervisor

    real_open = supervisor.open_backend

    def fake(config):
        if (control / "small").exists():  # misses small objects; the config's tiling plan
            manifest = load_manifest(config.model.manifest_path)
            analyzer = SmallObjectAnalyzer(manifest, config.analysis.tiling,
                                           class_ids(manifest, config.anonymize))
            return Backend("small", analyzer, CpuAnonymizer)
        if (control / "real").exists():  # the real model, plus MARK_BOX always a person
            real = real_open(config)
            return Backend("marked", MarkedAnalyzer(real.analyzer), real.anonymizer)
        analyzer = FakeAnalyzer(load_manifest(config.model.manifest_path), control)
        return Backend("fake", analyzer,
                       lambda ids, blur: SlowAnonymizer(CpuAnonymizer(ids, blur), control))

    supervisor.open_backend = fake
    return cli.main(argv)


def daemon_main(argv: list[str]) -> int:
    """`daemon LIFETIME CONTROL|- ANONYMIZER-ARGS...`: the daemon, killed after LIFETIME s
    whatever happens (a crashed test run leaves nothing behind); CONTROL: fake analyzer."""
    import threading

    lifetime, control, rest = float(argv[0]), argv[1], argv[2:]
    timer = threading.Timer(lifetime, os.kill, (os.getpid(), signal.SIGKILL))
    timer.daemon = True
    timer.start()
    if control == "-":
        from daemon import cli

        return cli.main(rest)
    return run_daemon_with_fake_analyzer(Path(control), rest)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "daemon":
        return daemon_main(sys.argv[2:])
    raise SystemExit("usage: rtsp_camera.py daemon LIFETIME FAKE|- ANONYMIZER-ARGS...")


def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


class CameraProcess:
    """The camera subprocess; `start()`, `kill()`, `pause()`/`resume()` (SIGSTOP/SIGCONT)."""

    def __init__(self, clip: Path, port: int | None = None, *,
                 user: str | None = None, password: str | None = None,
                 lifetime: float = 600.0) -> None:
        self.clip = clip
        self.port = port or free_port()
        self.user = user
        self.password = password
        self.lifetime = lifetime
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self) -> CameraProcess:
        command = [sys.executable, "-m", "daemon.demo.camera", "--port", str(self.port),
                   "--clip", str(self.clip),
                   "--lifetime", str(self.lifetime)]
        if self.user:
            command += ["--user", self.user, "--password", self.password or ""]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "GST_DEBUG": "0"})
        if not wait_port(self.port, 15.0):
            self.kill()
            raise RuntimeError(f"test camera on port {self.port} did not start")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


HELPER = Path(__file__)
REPO = HELPER.resolve().parents[1]


class Daemon:
    """`anonymizer run -c CONFIG` in a subprocess (killed by itself after `lifetime` s)."""

    def __init__(self, folder: Path, config: str, *, fake: Path | None = None,
                 env: dict[str, str] | None = None, lifetime: float = 240.0) -> None:
        self.config_path = folder / "config.yaml"
        self.config_path.write_text(textwrap.dedent(config))
        self.log_path = folder / "daemon.log"
        self._log = self.log_path.open("wb")
        command = [sys.executable, str(HELPER), "daemon", str(lifetime),
                   str(fake) if fake else "-", "-v", "run", "-c", str(self.config_path)]
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=REPO, env={**os.environ, **(env or {})})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:  # not listening (yet)
        return 0, ""


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(f"anonymizer_{name}{{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


if __name__ == "__main__":
    sys.exit(main())
