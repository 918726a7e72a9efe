"""systemd/anonymizer.service really starts the daemon: the real `anonymizer` (ExecStartPre=
check-config, then ExecStart= run), the real model on the CPU, a real RTSP camera and viewer,
under the sandbox the unit file itself describes (seccomp filters expanded by
`systemd-analyze syscall-filter` and loaded with libseccomp, a read-only system, private /tmp,
hidden homes, an unprivileged dynamic-user-like uid, the unit's Environment= and directories),
applied by tests/unit_sandbox.py without systemd. See systemd/README.md.

ANONYMIZER_UNIT=/path/to/other.service runs the same test against another unit file (e.g. the
unit of an older commit, to see it fail). Quick tests below check the launcher itself.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from rtsp_camera import CameraProcess, FfmpegClient, free_port, marked_clip
from unit_sandbox import (
    ALLOW,
    Sandbox,
    Unit,
    describe_exit,
    parse_bytes,
    syscall_filter,
    unavailable,
)

REPO = Path(__file__).resolve().parents[1]
UNIT = Path(os.environ.get("ANONYMIZER_UNIT", REPO / "systemd" / "anonymizer.service"))
MARKED_SOURCE = "kinetics_style_armwrestling_340x256.mp4"  # 340x256, 28 fps, people
MARKED_SIZE = (340, 256)
CAMERA_USER, CAMERA_PASSWORD, VIEWER_PASSWORD = "admin", "cam-Secret-7", "view-Secret-9"


@pytest.fixture(scope="module")
def marked_feed(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sandbox-feed")
    return marked_clip(shared_data / "clips" / MARKED_SOURCE, folder / "marked.mp4", 4)


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[tuple[socket.socket, list[str]]]:
    """A datagram socket standing in for systemd's /run/systemd/notify, and what it got."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(0.2)
    yield sock, []
    sock.close()


def _receive(sock: socket.socket, got: list[str], until: str, timeout: float,
             alive) -> bool:
    """Collect notifications until one contains `until` (False: timeout or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(until in message for message in got):
            return True
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            if not alive():
                return any(until in message for message in got)
    return any(until in message for message in got)


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.mark.slow
@pytest.mark.parametrize("device", ["openvino", "onnxruntime"])
def test_the_unit_starts_the_daemon_under_its_own_sandbox(
        device: str, marked_feed: Path, tmp_path: Path,
        notify: tuple[socket.socket, list[str]]) -> None:
    """The default CPU backend (OpenVINO) and the fallback (ONNX Runtime): each pins threads
    and places memory in its own way (sched_setaffinity, mbind)."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    unit = Unit.parse(UNIT)
    sandbox = Sandbox(unit, tmp_path / "sbx", substitute={"/opt/anonymizer": str(REPO)})
    names = sandbox.credential_names()
    camera_credential = names[0] if names else None
    viewer_credential = names[1] if len(names) > 1 else None
    secrets = dict(zip(names, [CAMERA_PASSWORD, VIEWER_PASSWORD], strict=False))
    for name in names:  # the files LoadCredential= reads (root only, as systemd/README.md says)
        source = sandbox.path(f"/etc/anonymizer/credentials/{name}")
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(secrets.get(name, "unused") + "\n")
        source.chmod(0o600)

    camera = CameraProcess(marked_feed, user=CAMERA_USER if camera_credential else None,
                           password=CAMERA_PASSWORD, lifetime=150).start()
    rtsp_port, metrics_port = free_port(), free_port()
    credentials = (f"credentials: {{username: {CAMERA_USER},"
                   f" password_credential: {camera_credential}}}" if camera_credential else "")
    viewers = (f"{{users: [{{username: nvr, password_credential: {viewer_credential}}}]}}"
               if viewer_credential else "{auth: false}")
    # a host name, not 127.0.0.1: name resolution runs under the filters too (glibc's
    # getaddrinfo() asks netlink for the local addresses; RestrictAddressFamilies= has none)
    camera_url = camera.url.replace("127.0.0.1", "localhost")
    # ExecStart='s config path, mapped into the sandbox's ConfigurationDirectory=
    config = sandbox.path("/etc/anonymizer/config.yaml")
    config.write_text(textwrap.dedent(f"""
        model: {{device: {device}}}
        server: {{port: {rtsp_port}}}
        metrics: {{port: {metrics_port}}}
        viewers: {viewers}
        service: {{stop_timeout_s: 5.0}}
        cameras:
          - name: marked
            url: {camera_url}
            {credentials}
    """))
    sock, got = notify
    sock.bind(str(sandbox.notify_socket))
    sandbox.notify_socket.chmod(0o777)  # like /run/systemd/notify: the service user sends
    expose = [sys.base_prefix]  # this checkout's interpreter (a pyenv build under /root)
    journal = tmp_path / "journal.log"
    viewer = direct = daemon = None
    started = time.monotonic()
    try:
        for argv in sandbox.commands("ExecStartPre"):
            pre = sandbox.popen(argv, journal, expose)
            code = pre.wait(60)
            assert code == 0, (f"ExecStartPre={' '.join(argv)}: {describe_exit(code, pre.pid)}\n"
                               + journal.read_text(errors="replace"))
        (argv,) = sandbox.commands("ExecStart")
        daemon = sandbox.popen(argv, journal, expose)

        def log() -> str:
            return (f"daemon {describe_exit(daemon.poll(), daemon.pid)}; notifications {got}\n"
                    + journal.read_text(errors="replace")[-6000:])

        def alive() -> bool:
            return daemon.poll() is None

        timeout = min(float(unit.last("TimeoutStartSec", "90") or 90), 90.0)
        assert _receive(sock, got, "READY=1", timeout, alive), "no READY=1: " + log()
        ready_s = time.monotonic() - started
        # the watchdog is fed (WatchdogSec= would otherwise restart the service)
        assert _receive(sock, got, "WATCHDOG=1", 10, alive), "no WATCHDOG=1: " + log()

        login = f"nvr:{VIEWER_PASSWORD}@" if viewer_credential else ""
        viewer = FfmpegClient(f"rtsp://{login}127.0.0.1:{rtsp_port}/marked", *MARKED_SIZE,
                              timeout=60)
        direct = FfmpegClient(camera.url.replace("rtsp://", f"rtsp://{CAMERA_USER}:"
                                                 f"{CAMERA_PASSWORD}@"), *MARKED_SIZE, timeout=30)
        assert viewer.wait_frames(60, 40), viewer.stop() + log()
        assert direct.wait_frames(10, 10), direct.stop()
        peak_rss = _peak_rss(daemon.pid)
        assert daemon.poll() is None, log()

        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(20)
        assert code == 0, f"SIGTERM: {describe_exit(code, daemon.pid)}\n" + log()
        assert _receive(sock, got, "STOPPING=1", 2, lambda: False), log()
    finally:
        for client in (viewer, direct):
            if client is not None:
                client.stop()
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
        camera.kill()

    text = journal.read_text(errors="replace")
    for bad in ("cannot cache", "SIGSYS", "Traceback", "Operation not permitted",
                "Read-only file system", "Permission denied"):
        assert bad not in text, f"{bad!r} in the daemon's log:\n{text[-6000:]}"
    for secret in (CAMERA_PASSWORD, VIEWER_PASSWORD):
        assert secret not in text
    # the camera shows the mark raw; not one frame the daemon published does
    assert np.median(direct.scores) > 0.8, direct.scores[:10]
    scores = np.array(viewer.scores)
    assert scores.max() < 0.3, f"a raw frame leaked: max leak score {scores.max():.2f}"
    # numba's compiled kernels went to the unit's cache directory (NUMBA_CACHE_DIR=)
    cache = Path(sandbox.env["CACHE_DIRECTORY"])
    assert any(cache.rglob("*.nbi")), sorted(str(p) for p in cache.rglob("*"))
    limit = parse_bytes(unit.last("MemoryMax", "infinity") or "infinity")
    if limit is not None:  # no cgroup here: the peak RSS must leave MemoryMax= a wide margin
        assert peak_rss < limit / 2, (peak_rss, limit)
    print(f"READY after {ready_s:.1f} s, {viewer.frames} frames, peak RSS "
          f"{peak_rss / 2**20:.0f} MiB, max leak score {scores.max():.2f}")


# --- the launcher itself: systemd's filter semantics, and that a refused call is refused -------


def _unit(tmp_path: Path, service: str) -> Unit:
    path = tmp_path / "probe.service"
    path.write_text("[Service]\n" + textwrap.dedent(service))
    return Unit.parse(path)


def test_system_call_filter_lines_combine_as_in_systemd(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    allow_list, calls = syscall_filter(_unit(tmp_path, """
        SystemCallFilter=@system-service
        SystemCallFilter=~@resources
        SystemCallFilter=sched_setaffinity
        SystemCallFilter=~ioprio_set:EACCES
    """))
    assert allow_list  # the first line is an allow-list: @default comes with it
    assert calls["execve"] == calls["read"] == calls["sched_setaffinity"] == ALLOW
    assert "mbind" not in calls and "mount" not in calls  # removed / never listed: refused
    assert calls["ioprio_set"] == errno.EACCES  # kept, failing with its own errno
    allow_list, calls = syscall_filter(_unit(tmp_path, """
        SystemCallFilter=~@mount ptrace:EACCES
        SystemCallFilter=umount2
    """))
    assert not allow_list and "execve" not in calls and "umount2" not in calls
    assert calls["mount"] == ALLOW and calls["ptrace"] == errno.EACCES  # ALLOW: default action
    reset = _unit(tmp_path, "SystemCallFilter=@basic-io\nSystemCallFilter=\n")
    assert syscall_filter(reset) == (False, {})


@pytest.mark.parametrize(("error_number", "expected"), [("", -signal.SIGSYS), ("EPERM", 1)])
def test_a_refused_call_kills_or_fails(tmp_path: Path, error_number: str,
                                       expected: int) -> None:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    unit = _unit(tmp_path, f"""
        SystemCallFilter=@system-service
        SystemCallFilter=~uname
        SystemCallErrorNumber={error_number}
        ExecStart=/usr/bin/uname -r
    """)
    sandbox = Sandbox(unit, tmp_path / "sbx")
    log = tmp_path / "uname.log"
    (argv,) = sandbox.commands("ExecStart")
    code = sandbox.popen(argv, log).wait(30)
    assert code == expected, (describe_exit(code), log.read_text())
    if expected == 1:
        assert "Operation not permitted" in log.read_text()
    allowed = _unit(tmp_path, "SystemCallFilter=@system-service\nExecStart=/usr/bin/uname -r\n")
    assert Sandbox(allowed, tmp_path / "sbx2").popen(argv, log).wait(30) == 0, log.read_text()
