"""SIGHUP on the running daemon, seen by real viewers on 127.0.0.1: auth turned on ends the
anonymous viewers, a removed user's open session ends, a removed camera's viewers get EOF
within 2 s, a new port moves the server; the others keep watching; no traceback in the log."""

from __future__ import annotations

import signal
import textwrap
import time
from pathlib import Path

import pytest
from rtsp_camera import CameraProcess, Daemon, free_port, http_get, looped_clip, wait_for
from rtsp_client import RawRtspClient

SOURCE = "kinetics_style_armwrestling_340x256.mp4"


def _config(rtsp_port: int, metrics_port: int, *, users: list[str] | None,
            cameras: list[str], url: str) -> str:
    viewers = "viewers: {auth: false}" if users is None else "viewers:\n  users:\n" + "".join(
        f"    - {{username: {u}, password: {u}-pass}}\n" for u in users)
    cams = "".join(f"  - name: {c}\n    url: {url}\n" for c in cameras)
    return textwrap.dedent(f"""\
        server: {{port: {rtsp_port}}}
        metrics: {{port: {metrics_port}, health_window_s: 2.0}}
        analysis: {{budget_ms: 400}}
        ingest: {{watchdog_s: 2.0, backoff_initial_s: 0.3, backoff_max_s: 1.0}}
        service: {{stop_timeout_s: 5.0}}
        """) + viewers + "\ncameras:\n" + cams


def _reload(daemon: Daemon, config: str) -> float:
    """Write `config`, SIGHUP; the time the signal was sent."""
    count = daemon.log().count("reload: reading")
    daemon.config_path.write_text(config)
    sent = time.monotonic()
    daemon.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: daemon.log().count("reload: reading") > count, 10), daemon.log()
    return sent


@pytest.mark.slow
def test_sighup_applies_viewers_auth_cameras_and_port(shared_data: Path,
                                                      tmp_path: Path) -> None:
    clip = looped_clip(shared_data / "clips" / SOURCE, tmp_path / "feed.mp4", 40)
    camera = CameraProcess(clip, lifetime=240).start()
    control = tmp_path / "control"
    control.mkdir()
    rtsp_port, metrics_port = free_port(), free_port()

    def config(users: list[str] | None, cameras: list[str], port: int = rtsp_port) -> str:
        return _config(port, metrics_port, users=users, cameras=cameras, url=camera.url)

    daemon = Daemon(tmp_path, config(None, ["a", "b"]), fake=control, lifetime=200)
    clients: list[RawRtspClient] = []

    def viewer(path: str, login: tuple[str, str] | None, port: int = rtsp_port
               ) -> RawRtspClient:
        client = RawRtspClient("127.0.0.1", port)
        clients.append(client)
        client.play_url(f"rtsp://127.0.0.1:{port}/{path}", auth=login)
        assert len(client.read_rtp(1.5)) > 10, daemon.log()
        return client

    try:
        assert wait_for(lambda: "b: publishing" in http_get(metrics_port, "/healthz")[1]
                        and "a: publishing" in http_get(metrics_port, "/healthz")[1], 60), \
            daemon.log()
        anonymous = viewer("a", None)

        # auth off -> on: the anonymous viewer is cut off, a new one gets 401
        _reload(daemon, config(["nvr", "ops"], ["a", "b"]))
        assert anonymous.closed_by_server(5.0), daemon.log()
        with RawRtspClient("127.0.0.1", rtsp_port) as probe:
            assert probe.request("DESCRIBE", f"rtsp://127.0.0.1:{rtsp_port}/a").status == 401
        nvr = viewer("a", ("nvr", "nvr-pass"))
        ops = viewer("a", ("ops", "ops-pass"))
        on_b = viewer("b", ("nvr", "nvr-pass"))

        # ops removed from viewers.users: its open session ends, nvr's go on
        _reload(daemon, config(["nvr"], ["a", "b"]))
        assert ops.closed_by_server(5.0), daemon.log()
        assert len(nvr.read_rtp(1.0)) > 10 and len(on_b.read_rtp(1.0)) > 10

        # camera b removed: its viewer gets EOF within 2 s of the signal, a's viewer goes on
        sent = _reload(daemon, config(["nvr"], ["a"]))
        assert on_b.closed_by_server(2.0), daemon.log()
        assert time.monotonic() - sent < 2.0
        assert len(nvr.read_rtp(1.0)) > 10

        # a new port: the old address closes, viewers reconnect to the new one
        new_port = free_port()
        _reload(daemon, config(["nvr"], ["a"], port=new_port))
        assert nvr.closed_by_server(5.0), daemon.log()
        viewer("a", ("nvr", "nvr-pass"), port=new_port)
    finally:
        for client in clients:
            client.close()
        code = daemon.stop()
        camera.kill()
    log = daemon.log()
    assert code == 0, log
    assert "Traceback" not in log, log
    assert "viewers.auth was turned on" in log
    assert "user ops was removed from viewers.users" in log
    assert "the camera was removed or restarted" in log
    assert "RTSP server moved from" in log
