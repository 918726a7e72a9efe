"""`anonymizer demo`: the bundled sample clip served as a camera, anonymized by the daemon.

The camera (daemon.demo.camera, looped forever, in a child process) listens on a free
127.0.0.1 port; the daemon runs exactly as `anonymizer run` does, on a config written for it
(the built-in defaults plus that one camera), and republishes the anonymized stream. Ctrl-C
stops both; the camera is never left behind.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from daemon.errors import ConfigError, StreamError

SAMPLE_CLIP = Path(__file__).resolve().parents[1] / "samples" / "pedestrians_768x576.mp4"
"""The bundled sample (daemon/samples/README.md: provenance and licence)."""

CAMERA_NAME = "demo"


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clip", type=Path, default=SAMPLE_CLIP,
                        help="video the test camera serves, looped (default: the bundled sample)")
    parser.add_argument("--bind", default="127.0.0.1",
                        help="address the anonymized stream is served on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8554, help="RTSP port (default: 8554)")
    parser.add_argument("--metrics-port", type=int, default=9108,
                        help="metrics and health port on 127.0.0.1 (default: 9108)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def demo_config(camera_url: str, bind: str, port: int, metrics_port: int) -> str:
    """The daemon's config for the demo: the defaults, one camera, viewers without a login.

    Viewers need no login, so a bind other than loopback is refused: anyone on the network
    could watch (the stream is anonymized, but a demo should not expose a camera).
    """
    if bind not in ("127.0.0.1", "::1", "localhost"):
        raise ConfigError(f"demo: --bind {bind}: the demo's viewers need no password, so it"
                          " serves on 127.0.0.1 only; use `anonymizer run` with viewer"
                          " users to serve a network")
    return (
        f"server:\n  bind: {bind}\n  port: {port}\n"
        "viewers:\n  auth: false\n"
        f"metrics:\n  bind: 127.0.0.1\n  port: {metrics_port}\n"
        f"cameras:\n  - name: {CAMERA_NAME}\n    url: {camera_url}\n"
    )


class CameraProcess:
    """`python -m daemon.demo.camera` as a child; `start()` returns once it listens."""

    def __init__(self, clip: Path, port: int, path: str) -> None:
        self.url = f"rtsp://127.0.0.1:{port}{path}"
        self._command = [sys.executable, "-m", "daemon.demo.camera", "--port", str(port),
                         "--clip", str(clip), "--path", path, "--looped", "--lifetime", "0"]
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(self._command, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "READY":
            self.stop()
            raise StreamError("demo: the test camera did not start (its error is above)")

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


def demo_command(args: argparse.Namespace) -> int:
    from daemon.service.run import run_command

    clip: Path = args.clip
    if not clip.is_file():
        raise StreamError(f"demo: {clip}: no such clip")
    camera = CameraProcess(clip.resolve(), free_port(), "/camera")
    config = demo_config(camera.url, args.bind, args.port, args.metrics_port)
    stream = f"rtsp://{args.bind}:{args.port}/{CAMERA_NAME}"
    metrics = f"http://127.0.0.1:{args.metrics_port}/metrics"

    def announce() -> None:
        print(f"anonymized stream: {stream}\n"
              f"metrics:           {metrics}\n"
              f"watch it with:     ffplay -rtsp_transport tcp {stream}\n"
              "Ctrl-C stops the demo.", flush=True)

    print(f"demo: a test camera serves {clip.name} (looped) at {camera.url}; loading the"
          " model ...", file=sys.stderr, flush=True)
    camera.start()
    try:
        with tempfile.TemporaryDirectory(prefix="anonymizer-demo-") as folder:
            path = Path(folder) / "demo.yaml"
            path.write_text(config, encoding="utf-8")
            return run_command(str(path), on_ready=announce)
    finally:
        camera.stop()
