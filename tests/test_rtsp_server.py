"""The viewer-facing RTSP server on 127.0.0.1, probed with a raw-socket client
(tests/rtsp_client.py): what an unauthenticated or hostile client can and cannot do, limits,
slow and stalled viewers, reload (users, auth, address), removed cameras, pacing.

The server and a real publisher (real H.264 encoder and RTP payloader) run in this process,
fed with SafeFrames at 30 fps; every client is a real TCP connection.
"""

from __future__ import annotations

import itertools
import logging
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import pytest
from rtsp_camera import free_port
from rtsp_client import RawRtspClient, frames_of

from daemon import safe
from daemon.streams.publish import CameraClock, CameraPublisher, PacingDelay
from daemon.streams.rtsp_server import RtspServer, ServerSettings
from daemon.types import FrameTime

USERS = {"nvr": "nvr-pass", "ops": "ops-pass"}
NVR = ("nvr", "nvr-pass")
OPS = ("ops", "ops-pass")
FPS = 30.0
METHODS = ("DESCRIBE", "SETUP", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER", "SET_PARAMETER")


class _Passthrough:
    """An anonymizer for frames with nothing to blur (all-zero labels): the frame as it is."""

    def anonymize(self, frame, labels):
        from daemon.anonymizer.cpu import AnonymizedFrame

        return AnonymizedFrame(frame.copy(), ())


def _frames(count: int, width: int = 640, height: int = 360) -> list[safe.SafeFrame]:
    """Noise frames (hard to encode: about the encoder's 4 Mb/s) as anonymized SafeFrames."""
    rng = np.random.default_rng(1)
    labels = np.zeros((height, width), np.uint8)
    return [safe.anonymized(_Passthrough(), rng.integers(0, 255, (height, width, 3), np.uint8),
                            labels) for _ in range(count)]


class Feeder:
    """Publishes frames at FPS with camera timestamps, like a camera pipeline would."""

    def __init__(self, publisher: CameraPublisher, *, burst: int = 1) -> None:
        self.publisher = publisher
        self.burst = burst  # release frames this many at a time (as bracketing does)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._frames = _frames(8)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        index = 0
        while not self._stop.is_set():
            due = start + (index + self.burst) / FPS
            time.sleep(max(0.0, due - time.monotonic()))
            for k in range(index, index + self.burst):
                when = FrameTime(1, start + k / FPS, int(k * 1e9 / FPS))
                self.publisher.publish(self._frames[k % len(self._frames)], when)
            index += self.burst

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)


@dataclass
class Served:
    server: RtspServer
    publisher: CameraPublisher
    feeder: Feeder

    @property
    def port(self) -> int:
        return self.server.port

    def url(self, path: str = "cam") -> str:
        return f"rtsp://127.0.0.1:{self.port}/{path}"

    def client(self, **kwargs) -> RawRtspClient:
        return RawRtspClient("127.0.0.1", self.port, **kwargs)


def serve(settings: ServerSettings, *, delay_s: float = 0.0, burst: int = 1) -> Served:
    server = RtspServer(settings)
    server.start()
    publisher = CameraPublisher("cam", FPS, PacingDelay(delay_s, 1.0))
    server.mount(publisher)
    return Served(server, publisher, Feeder(publisher, burst=burst))


def close(served: Served) -> None:
    served.feeder.stop()
    served.server.stop(2.0)
    served.publisher.close()


SETTINGS = ServerSettings(bind="127.0.0.1", port=0, users=USERS, login_timeout_s=2.0,
                          max_unauthenticated=4, max_sessions=6, max_sessions_per_user=3,
                          viewer_max_lag_s=1.0, viewer_stall_s=10.0)


@pytest.fixture
def served() -> Iterator[Served]:
    s = serve(replace(SETTINGS, port=free_port()))
    yield s
    close(s)


def _seq_gaps(packets) -> int:
    seqs = [p.seq for _, p in packets]
    return sum(1 for a, b in itertools.pairwise(seqs) if (b - a) % 65536 != 1)


# --- authentication ---------------------------------------------------------------------------


def test_every_method_but_options_needs_a_login(served: Served) -> None:
    with served.client() as c:
        assert c.request("OPTIONS", served.url()).status == 200
        for method in METHODS:
            reply = c.request(method, served.url(),
                              {"Session": "12345678", "Transport": "RTP/AVP/TCP;interleaved=0-1"})
            assert reply.status == 401, (method, reply)
            assert (reply.header("www-authenticate") or "").startswith("Digest ")
        # and nothing was played to it
        assert c.read_rtp(1.0) == []


def test_unknown_and_known_paths_answer_alike_before_login(served: Served) -> None:
    answers = []
    for path in ("cam", "nope", "cam/stream=0", "../etc/passwd"):
        with served.client() as c:
            reply = c.request("DESCRIBE", served.url(path))
            answers.append((reply.status, sorted(reply.headers), reply.body))
    assert all(a == answers[0] for a in answers), answers
    assert answers[0][0] == 401
    with served.client() as c:  # after a login the path matters
        assert c.request("DESCRIBE", served.url("nope"), auth=NVR).status == 404
        assert c.request("DESCRIBE", served.url("cam"), auth=NVR).status == 200


def test_wrong_password_is_refused_then_the_connection_closed(served: Served,
                                                              caplog) -> None:
    caplog.set_level(logging.INFO, "daemon.streams.rtsp_server")
    statuses = []
    with served.client() as c:
        try:
            for login in (("nvr", "wrong"), ("nobody", "x"), ("nvr", "wrong")):
                statuses.append(c.request("DESCRIBE", served.url(), auth=login).status)
        except ConnectionError:
            pass
        assert c.closed_by_server(3.0)
    assert set(statuses) == {401}
    assert "3 failed logins" in caplog.text


def test_a_replayed_session_id_is_refused_and_gets_no_rtp(served: Served) -> None:
    victim = served.client()
    try:
        session = victim.play_url(served.url(), auth=NVR)
        assert len(victim.read_rtp(1.5)) > 20
        headers = {"Session": session, "Transport": "RTP/AVP/TCP;unicast;interleaved=0-1",
                   "Range": "npt=0-"}
        control = served.url() + "/stream=0"
        # without a login: 401 for every method, whatever the Session says (no id oracle)
        with served.client() as anonymous:
            for method in METHODS:
                assert anonymous.request(method, control, headers).status == 401, method
            assert anonymous.read_rtp(1.0) == []
        # logged in, as another user and as the victim's own user: the session is unknown here
        for login in (OPS, NVR):
            with served.client() as attacker:
                assert attacker.request("OPTIONS", served.url()).status == 200
                for method in ("SETUP", "PLAY", "PAUSE", "GET_PARAMETER", "SET_PARAMETER",
                               "TEARDOWN"):
                    reply = attacker.request(method, control, headers, auth=login)
                    assert reply.status == 454, (login[0], method, reply)
                assert attacker.read_rtp(1.0) == [], login[0]
        # an unknown id answers exactly like the real one (no oracle after login either)
        with served.client() as prober:
            real = prober.request("GET_PARAMETER", served.url(), {"Session": session}, auth=NVR)
            bogus = prober.request("GET_PARAMETER", served.url(), {"Session": "x" * 22},
                                   auth=NVR)
            assert (real.status, sorted(real.headers)) == (bogus.status, sorted(bogus.headers))
        # the victim was never disturbed: it still receives, without a gap
        packets = victim.read_rtp(1.5)
        assert len(packets) > 20
        assert _seq_gaps(victim.rtp) == 0
        assert victim.request("TEARDOWN", served.url(), {"Session": session},
                              auth=NVR).status == 200
    finally:
        victim.close()


def test_session_ids_and_nonces_are_fresh_and_long(served: Served) -> None:
    ids, nonces = set(), set()
    for _ in range(3):
        with served.client() as c:
            session = c.play_url(served.url(), auth=OPS)
            ids.add(session)
            nonces.add(c._nonce)
            c.request("TEARDOWN", served.url(), {"Session": session}, auth=OPS)
    assert len(ids) == 3 and len(nonces) == 3
    assert all(len(i) >= 22 for i in ids)  # 128 bits in base64url
    assert all(len(n) >= 32 for n in nonces)  # 128 bits in hex


# --- limits -----------------------------------------------------------------------------------


def test_connections_that_never_log_in_are_limited_and_timed_out(served: Served,
                                                                 caplog) -> None:
    caplog.set_level(logging.INFO, "daemon.streams.rtsp_server")
    idle = [served.client() for _ in range(SETTINGS.max_unauthenticated)]
    try:
        time.sleep(0.3)
        with served.client() as extra:  # past the limit: closed at once
            assert extra.closed_by_server(1.0)
        with served.client() as c:  # a client that logs in is not blocked for long...
            pass
        started = time.monotonic()
        assert all(c.closed_by_server(SETTINGS.login_timeout_s + 3.0) for c in idle)
        assert time.monotonic() - started < SETTINGS.login_timeout_s + 3.0
    finally:
        for c in idle:
            c.close()
    assert "did not authenticate within 2 s" in caplog.text
    assert "server.max_unauthenticated" in caplog.text
    with served.client() as c:  # ...and once the idle ones are gone, logins work again
        assert c.request("DESCRIBE", served.url(), auth=NVR).status == 200


def _setup_status(served: Served, login: tuple[str, str]) -> tuple[int, RawRtspClient]:
    c = served.client()
    c.request("DESCRIBE", served.url(), auth=login)
    reply = c.request("SETUP", served.url() + "/stream=0",
                      {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"}, auth=login)
    return reply.status, c


def test_sessions_are_limited_per_user_and_in_all() -> None:
    s = serve(replace(SETTINGS, port=free_port(), max_sessions=4, max_sessions_per_user=3))
    clients: list[RawRtspClient] = []
    try:
        statuses = []
        for login in (NVR, NVR, NVR, NVR, OPS, OPS):
            status, c = _setup_status(s, login)
            statuses.append(status)
            clients.append(c)
        # three for nvr, its fourth refused; one for ops, then the total of 4 is reached
        assert statuses == [200, 200, 200, 453, 200, 453], statuses
        clients[0].close()  # a session ends: room again
        time.sleep(0.5)
        status, c = _setup_status(s, OPS)
        clients.append(c)
        assert status == 200
    finally:
        for c in clients:
            c.close()
        close(s)


def test_udp_is_answered_461(served: Served) -> None:
    with served.client() as c:
        c.request("DESCRIBE", served.url(), auth=NVR)
        reply = c.request("SETUP", served.url() + "/stream=0",
                          {"Transport": "RTP/AVP;unicast;client_port=5000-5001"}, auth=NVR)
        assert reply.status == 461


# --- slow and stalled viewers -----------------------------------------------------------------


def test_a_slow_viewer_is_caught_up_alone_at_keyframes(served: Served, caplog) -> None:
    caplog.set_level(logging.INFO, "daemon.streams.rtsp_server")
    steady = served.client()
    slow = served.client()
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    try:
        steady.play_url(served.url(), auth=NVR)
        slow.play_url(served.url(), auth=OPS)
        reader = threading.Thread(target=steady.read_rtp, args=(8.0,))
        reader.start()  # the steady viewer reads all along
        slow.read_rtp(1.0)
        time.sleep(4.0)  # the slow one stops reading for 4 s: the server must not wait for it
        late = slow.read_rtp(3.0)
        reader.join()
    finally:
        steady.close()
        slow.close()
    # the steady viewer got every frame of those seconds, without a gap
    steady_frames = frames_of(steady.rtp)
    assert len(steady_frames) > 8.0 * FPS * 0.9, len(steady_frames)
    assert _seq_gaps(steady.rtp) == 0
    # the slow one: frames were dropped for it, logged, and it resumed at a keyframe with its
    # own consecutive sequence numbers (a jump in time, no packet loss)
    slow_lines = [line for line in caplog.text.splitlines() if "too slow" in line]
    assert slow_lines and all("ops@" in line for line in slow_lines), slow_lines
    assert _seq_gaps(slow.rtp) == 0
    stamps = [t for _, t in frames_of(slow.rtp)]
    jumps = [(b - a) % 2**32 for a, b in itertools.pairwise(stamps)]
    assert max(jumps) > 1.5 * 90_000, "no frames were skipped for the slow viewer"
    assert late, "it received nothing after it resumed reading"


def test_a_stalled_viewer_is_disconnected_with_a_log_line(caplog) -> None:
    caplog.set_level(logging.INFO, "daemon.streams.rtsp_server")
    s = serve(replace(SETTINGS, port=free_port(), viewer_stall_s=2.0))
    stalled = s.client()
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    other = s.client()
    try:
        stalled.play_url(s.url(), auth=OPS)
        other.play_url(s.url(), auth=NVR)
        assert wait_until(lambda: "stalled" in caplog.text, 12.0), caplog.text
        assert stalled.closed_by_server(3.0)
        assert len(other.read_rtp(1.0)) > 20  # the other viewer goes on
    finally:
        stalled.close()
        other.close()
        close(s)
    assert "ops@127.0.0.1" in caplog.text and "disconnected: stalled" in caplog.text


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


# --- reload, removal --------------------------------------------------------------------------


def test_reload_ends_revoked_users_and_anonymous_sessions(served: Served) -> None:
    nvr, ops = served.client(), served.client()
    try:
        nvr.play_url(served.url(), auth=NVR)
        ops.play_url(served.url(), auth=OPS)
        served.server.configure(replace(served.server.settings, users={"nvr": "nvr-pass"}))
        assert ops.closed_by_server(2.0)
        assert len(nvr.read_rtp(1.0)) > 20  # nvr keeps watching
        with served.client() as c:
            assert c.request("DESCRIBE", served.url(), auth=OPS).status == 401
        served.server.configure(replace(served.server.settings, users={"nvr": "new-pass"}))
        assert nvr.closed_by_server(2.0)  # a changed password ends the old login's sessions
    finally:
        nvr.close()
        ops.close()


def test_auth_off_then_on_ends_anonymous_viewers() -> None:
    s = serve(replace(SETTINGS, port=free_port(), users=None))
    anonymous = s.client()
    try:
        anonymous.play_url(s.url())
        assert len(anonymous.read_rtp(1.0)) > 20
        s.server.configure(replace(s.server.settings, users=USERS))
        assert anonymous.closed_by_server(2.0)
        with s.client() as c:
            assert c.request("DESCRIBE", s.url()).status == 401
            assert c.request("DESCRIBE", s.url(), auth=NVR).status == 200
    finally:
        anonymous.close()
        close(s)


def test_rebind_moves_the_server_and_viewers_reconnect(served: Served) -> None:
    viewer = served.client()
    old_port, new_port = served.port, free_port()
    try:
        viewer.play_url(served.url(), auth=NVR)
        served.server.configure(replace(served.server.settings, port=new_port))
        assert viewer.closed_by_server(2.0)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", old_port), timeout=1.0).close()
        with served.client() as again:
            assert served.port == new_port
            again.play_url(served.url(), auth=NVR)
            assert len(again.read_rtp(1.0)) > 20
    finally:
        viewer.close()


def test_a_bind_that_fails_changes_nothing(served: Served) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        from daemon.errors import StreamError

        with pytest.raises(StreamError, match="cannot listen"):
            served.server.configure(replace(served.server.settings,
                                            port=taken.getsockname()[1]))
    with served.client() as c:
        c.play_url(served.url(), auth=NVR)


def test_unmounting_a_camera_ends_its_viewers_within_2s(served: Served) -> None:
    viewer = served.client()
    try:
        viewer.play_url(served.url(), auth=NVR)
        viewer.read_rtp(0.5)
        started = time.monotonic()
        served.server.unmount(served.publisher)
        assert viewer.closed_by_server(2.0)
        assert time.monotonic() - started < 2.0
        with served.client() as c:
            assert c.request("DESCRIBE", served.url(), auth=NVR).status == 404
    finally:
        viewer.close()


# --- pacing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("delay_s", [0.0, 0.5])
def test_bursts_leave_at_the_camera_cadence_with_its_timestamps(delay_s: float) -> None:
    """Frames released 10 at a time (as bracketing releases them): with a pacing delay they
    leave one by one at 30 fps; RTP timestamps are the camera's either way."""
    s = serve(replace(SETTINGS, port=free_port(), users=None), delay_s=delay_s, burst=10)
    viewer = s.client()
    try:
        viewer.play_url(s.url())
        frames = frames_of(viewer.read_rtp(4.0))
    finally:
        viewer.close()
        close(s)
    arrivals = [a for a, _ in frames]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    stamps = [t for _, t in frames]
    steps = {(b - a) % 2**32 for a, b in itertools.pairwise(stamps)}
    assert steps <= {2999, 3000, 3001}, steps  # 90 kHz / 30 fps, from the camera's timestamps
    bunched = sum(1 for g in gaps if g < 0.008) / len(gaps)
    if delay_s:
        assert bunched < 0.2, (bunched, statistics.median(gaps))
        assert 0.025 < statistics.median(gaps) < 0.042
    else:
        assert bunched > 0.5, bunched  # the unpaced control: bursts reach the viewer


def test_a_learned_delay_follows_release_lag_up_at_once_down_slowly() -> None:
    delay = PacingDelay(None, 1.1)
    frame_s = 1 / FPS
    values = [delay.observe(0.3, frame_s) for _ in range(600)]
    assert values[0] == 1.1  # starts at the cap: safe before anything is known
    assert abs(values[-1] - 0.35) < 1e-9  # 98 % of the lags + 50 ms margin
    falls = [a - b for a, b in itertools.pairwise(values)]
    assert max(falls) <= 0.05 * frame_s + 1e-12  # never faster than 5 % above the cadence
    for _ in range(10):  # a few late frames (2 % of 300 is 6): it rises at once
        delay.observe(0.8, frame_s)
    assert abs(delay.value - 0.85) < 1e-9
    assert PacingDelay(None, 0.4).observe(5.0, frame_s) == 0.4  # never above the cap
    fixed = PacingDelay(0.2, 1.1)
    assert [fixed.observe(lag, frame_s) for lag in (0.0, 3.0)] == [0.2, 0.2]


def test_the_camera_clock_removes_arrival_jitter_and_restarts_on_a_new_connection() -> None:
    rng = np.random.default_rng(3)
    clock = CameraClock()
    start = 1000.0
    ideal = []
    for k in range(300):  # arrivals jittered by up to 40 ms (network, decoding), never early
        pts = int(k * 1e9 / FPS)
        ideal.append(clock.arrival(FrameTime(1, start + k / FPS + rng.uniform(0, 0.04), pts)))
    steps = np.diff(ideal[30:])  # once early arrivals were seen, the cadence is the camera's
    assert np.abs(steps - 1 / FPS).max() < 0.002, (steps.min(), steps.max())
    assert np.mean(np.abs(steps - 1 / FPS) < 1e-6) > 0.9
    assert 0 <= ideal[-1] - (start + 299 / FPS) < 0.005
    # a new connection (timestamps restart) and a frame without a timestamp start anew
    assert clock.arrival(FrameTime(2, 2000.0, 0)) == 2000.0
    assert clock.arrival(FrameTime(2, 2000.5, None)) == 2000.5
    # a camera clock drifting late by more than 0.5 s re-anchors instead of holding frames back
    assert clock.arrival(FrameTime(2, 2001.0, 0)) == 2001.0
    assert clock.arrival(FrameTime(2, 2002.7, int(1e9))) == 2002.7
