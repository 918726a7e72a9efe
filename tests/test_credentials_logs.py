"""Credentials and logs (issue 14, part 5): camera URLs with any character in the password,
clear config errors instead of tracebacks, one log filter that redacts every secret the config
knows (and whatever looks like one) from every line, GStreamer's debug output included, password
files read to their first line only, permission warnings; end to end with the real daemon and
the real test camera (Digest auth, a password with / ? # @ : and %)."""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from daemon import logsafety
from daemon.config import CameraUrl, Config, ViewerUserConfig, parse_camera_url
from daemon.configfile import load_config
from daemon.errors import ConfigError
from daemon.logsafety import RedactingFilter, SecretRegistry, is_secret_key
from daemon.service import credentials
from daemon.service.credentials import read_first_line, read_secret, warn_if_exposed
from daemon.streams.ingest import CameraSource

sys.path.insert(0, str(Path(__file__).parent))
from rtsp_camera import (
    CameraProcess,
    Daemon,
    FfmpegClient,
    free_port,
    http_get,
    looped_clip,
    metric,
    wait_for,
    wait_port,
)

REPO = Path(__file__).resolve().parents[1]
# every character that breaks a naive URL parser, and a literal '%41' that must stay '%41'
PASSWORD = "Cam/pa?ss#w@rd:%41-x"


def _forms(secret: str) -> set[str]:
    """The ways a secret could show up in a log: raw, percent-encoded (either case, with '/'
    kept or not, '+' for spaces), double-encoded, backslash-escaped (GstStructure, repr)."""
    encoded = quote(secret, safe="")
    lower = re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), encoded)
    gst_escaped = "".join(c if c.isalnum() or c in "_-+/:." else "\\" + c for c in secret)
    return {secret, encoded, lower, quote(secret), quote_plus(secret),
            quote(encoded, safe=""), gst_escaped, repr(secret)[1:-1]}


# --- camera URLs ---------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "location", "user", "password"), [
    (f"rtsp://admin:{quote(PASSWORD, safe='')}@10.0.0.5:554/s1", "rtsp://10.0.0.5:554/s1",
     "admin", PASSWORD),
    # lower-case escapes, a raw ':' in the password, a user with an encoded '@'
    ("rtsp://us%40er:a:b%2fc%3f%23@cam.local/live?x=1", "rtsp://cam.local/live?x=1",
     "us@er", "a:b/c?#"),
    # RFC 3986 allows these raw in userinfo: accepted as written
    ("rtsps://u:p!$&'()*+,;=~._-@h:8322/x#frag", "rtsps://h:8322/x#frag", "u", "p!$&'()*+,;=~._-"),
    ("rtsp://u:pässwörd@h/x", "rtsp://h/x", "u", "pässwörd"),
    ("rtsp://u:p%C3%A4ss@[2001:db8::1]:8554/x", "rtsp://[2001:db8::1]:8554/x", "u", "päss"),
    ("rtsp://u@h/x", "rtsp://h/x", "u", None),
    ("rtsp://u:@h:0554/x", "rtsp://h:554/x", "u", ""),
    ("rtsp://h:/x", "rtsp://h/x", None, None),
    ("rtsp://h", "rtsp://h", None, None),
])
def test_camera_urls_parse_with_any_character_in_the_password(
        url: str, location: str, user: str | None, password: str | None) -> None:
    parsed = parse_camera_url(url)
    assert (parsed.location, parsed.username, parsed.password) == (location, user, password)
    if password:
        assert password not in repr(parsed)


def test_query_string_secrets_are_found_raw_and_decoded() -> None:
    parsed = parse_camera_url("rtsp://h/x?channel=1&token=ab%2Fcd&api_key=K3y-1;X-Amz-Signature=s1g"
                              "&subtype=0#token=not-in-the-query")
    assert set(parsed.query_secrets) == {"ab%2Fcd", "ab/cd", "K3y-1", "s1g"}
    assert is_secret_key("pwd") and is_secret_key("access_token") and is_secret_key("user-pw")
    assert not is_secret_key("channel") and not is_secret_key("keyframe")


@pytest.mark.parametrize(("url", "expected"), [
    (f"rtsp://adm1n:{PASSWORD}@10.9.8.7/strm1", "'@' after its host part"),  # '/' first
    ("rtsp://adm1n:Zq?Zq@10.9.8.7/strm1", "'@' after its host part"),
    ("rtsp://adm1n:Zq#Zq@10.9.8.7/strm1", "'@' after its host part"),
    ("rtsp://adm1n:Zq@Zq@10.9.8.7/strm1", "more than one '@'"),
    ("rtsp://adm1n:Zq%zzZq@10.9.8.7/strm1", "write a literal '%' as %25"),
    ("rtsp://adm1n:Zq%ffZq@10.9.8.7/strm1", "not valid percent-encoded UTF-8"),
    ("rtsp://adm1n:Zq Zq@10.9.8.7/strm1", "space or a control character"),
    ("rtsp://adm1n:Zq-Zq/strm1", "port of the camera url"),  # the host left out
    ("rtsp://:Zq-Zq@10.9.8.7/strm1", "no user name"),
    ("rtsp://adm1n:Zq-Zq@/strm1", "no host"),
    ("rtsp://adm1n:Zq-Zq@::1/strm1", "in brackets"),
    ("rtsp://adm1n:Zq-Zq@[::1/strm1", "unclosed '['"),
    ("http://adm1n:Zq-Zq@10.9.8.7/strm1", "must start with rtsp:// or rtsps://"),
])
def test_ambiguous_or_broken_urls_are_refused_without_echoing_them(url: str,
                                                                   expected: str) -> None:
    with pytest.raises(ValueError, match=r"camera url|user or password|IPv6") as info:
        parse_camera_url(url)
    message = str(info.value)
    assert expected in message
    for part in ("adm1n", "Zq", "10.9.8.7", "strm1", "Cam", "w@rd"):
        assert part not in message
    if expected.startswith(("'@'", "more")):
        assert "%2F" in message and "credentials:" in message
    with pytest.raises(ConfigError):  # the ingest side: a ConfigError, not a ValueError
        CameraSource.parse(url)


def test_camera_source_takes_the_credentials_block_over_the_url() -> None:
    source = CameraSource.parse("rtsp://h:554/cam?token=t0k", "admin", PASSWORD)
    assert (source.location, source.username, source.password) == (
        "rtsp://h:554/cam?token=t0k", "admin", PASSWORD)
    assert PASSWORD not in repr(source)
    assert isinstance(parse_camera_url("rtsp://h/x"), CameraUrl)


def _config_file(tmp_path: Path, cameras: str, extra: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("viewers: {auth: false}\n" + extra + "cameras:\n" + textwrap.dedent(cameras))
    return path


def test_a_raw_password_in_a_url_is_a_config_error_with_file_line_and_key(
        tmp_path: Path) -> None:
    path = _config_file(tmp_path, f"""\
        - name: ok
          url: rtsp://10.0.0.1/s
        - name: door
          enabled: false
          url: "rtsp://admin:{PASSWORD}@10.0.0.5/s1"
    """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}:7:3: cameras[1].url: camera url has an '@' after its"
                              " host part"), message
    assert "percent-encode" in message and "credentials:" in message
    # neither the message nor the chained pydantic error (a traceback would print it) has it
    chained = str(info.value.__cause__)
    for text in (message, chained):
        assert not any(form in text for form in _forms(PASSWORD) | {"Cam/pa", "ss#w"}), text


def test_a_user_in_the_url_and_a_credentials_block_is_refused_at_the_url(
        tmp_path: Path) -> None:
    path = _config_file(tmp_path, """\
        - name: door
          url: rtsp://admin:secret-x@10.0.0.5/s1
          credentials: {username: admin, password: other-secret}
    """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}:4:3: cameras[0].url: has a user name (and password) and the camera's"
        " credentials: block gives one too; keep only one of them")


def test_check_config_refuses_a_raw_password_and_never_prints_it(tmp_path: Path) -> None:
    path = _config_file(tmp_path, f"""\
        - name: door
          url: rtsp://admin:{PASSWORD}@10.0.0.5:554/s1
    """)
    out = subprocess.run([sys.executable, "-m", "daemon", "check-config", str(path)],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 2, out
    assert out.stderr.startswith(f"{path}:4:3: cameras[0].url: camera url has an '@' after its"
                                 " host part: a user or password with a raw '/', '?', '#' or"
                                 " '@' is ambiguous; percent-encode"), out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    for form in _forms(PASSWORD) | {"Cam/pa", "ss#w", "Cam", "w@rd"}:
        assert form not in out.stderr


def test_the_config_lists_its_inline_secrets() -> None:
    config = Config(
        viewers={"users": [{"username": "v", "password": "inline-viewer"},
                           {"username": "w", "password_file": "/nonexistent"}]},
        cameras=[
            {"name": "a", "url": f"rtsp://u:{quote(PASSWORD, safe='')}@h/x?token=t0k-1&ch=2"},
            {"name": "b", "url": "rtsp://h/y",
             "credentials": {"username": "u", "password": "inline-cam"}},
        ])
    assert set(config.inline_secrets) == {PASSWORD, "t0k-1", "inline-cam", "inline-viewer"}


# --- the log filter --------------------------------------------------------------------------


@pytest.fixture
def filtered() -> Iterator[tuple[logging.Logger, io.StringIO, SecretRegistry]]:
    """A logger tree like the daemon's: a handler on the parent (the root's stand-in) with the
    filter, records logged by a child logger (propagation, as every module logger does)."""
    registry = SecretRegistry()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    parent = logging.getLogger("test_credentials_logs.root")
    parent.propagate = False
    parent.setLevel(logging.DEBUG)
    parent.addHandler(handler)
    handler.addFilter(RedactingFilter(registry))
    yield logging.getLogger("test_credentials_logs.root.module"), stream, registry
    parent.removeHandler(handler)


@pytest.mark.parametrize("secret", [
    PASSWORD, "sl/as/h-pass", "q?uestion-pass", "ha#sh-pass", "a@t@pass", "co:lo:n-pass",
    "per%25cent%zz", "sp ace+plus pass", "back\\slash'quote\"pass", "ünï-cödé/pass",
])
def test_every_form_of_a_known_secret_is_redacted(
        filtered: tuple[logging.Logger, io.StringIO, SecretRegistry], secret: str) -> None:
    log, stream, registry = filtered
    registry.add(secret)
    for form in sorted(_forms(secret)):
        log.info("camera x: %s | in text %s.", form, form)
    log.warning("location rtsp://admin:%s@10.0.0.5/s1", quote(secret, safe=""))
    text = stream.getvalue()
    assert text.count("***") >= 2 * len(_forms(secret)), text
    for form in _forms(secret):
        assert form not in text, (form, text)
    assert "camera x: *** | in text ***." in text


def test_secret_shapes_are_redacted_even_when_unknown(
        filtered: tuple[logging.Logger, io.StringIO, SecretRegistry]) -> None:
    log, stream, _ = filtered
    lines = {
        "rtsp://admin:hunter2@10.0.0.5:554/s1": "rtsp://***@10.0.0.5:554/s1",
        "rtsp://admin:p@ss@host/x": "rtsp://***@host/x",  # up to the last '@'
        "GET rtsp://h/cam?channel=1&token=abc%2Fdef&x=2 RTSP/1.0":
            "GET rtsp://h/cam?channel=1&token=***&x=2 RTSP/1.0",
        "rtsp://h/c?pwd=1&password=2&auth=3&api_key=4&X-Amz-Signature=5&sig=6":
            "rtsp://h/c?pwd=***&password=***&auth=***&api_key=***&X-Amz-Signature=***&sig=***",
        "next=rtsp%3A%2F%2Fh%2Fcam%3Ftoken%3Dabcdef%26x%3D1":
            "next=rtsp%3A%2F%2Fh%2Fcam%3Ftoken%3D***%26x%3D1",
        'text=(string)"Connecting\\ to\\ rtsp://h:1/x\\?token\\=abc\\ def", percent=(int)0':
            'text=(string)"Connecting\\ to\\ rtsp://h:1/x\\?token\\=***", percent=(int)0',
        "rtspsrc user-id=admin user-pw=hunter2 latency=100":
            "rtspsrc user-id=*** user-pw=*** latency=100",
        "{'password': 'hunter2', 'x': 1}": "{'password': '***', 'x': 1}",
        'json {"token": "abc", "n": 2}': 'json {"token": "***", "n": 2}',
        "Authorization: Basic YWRtaW46aHVudGVyMg==": "Authorization: Basic ***",
        "keyframe=1 bypass=2 rtsp://h/x": "keyframe=1 bypass=2 rtsp://h/x",  # left alone
    }
    for line in lines:
        log.info("%s", line)
    assert stream.getvalue().splitlines() == [
        f"INFO test_credentials_logs.root.module: {out}" for out in lines.values()]


def test_tracebacks_args_and_stacks_are_redacted(
        filtered: tuple[logging.Logger, io.StringIO, SecretRegistry]) -> None:
    log, stream, registry = filtered
    registry.add(PASSWORD)
    try:
        raise ValueError(f"Port could not be cast to integer value as {PASSWORD!r}")
    except ValueError:
        log.exception("camera %s failed with %r", "door", {"pw": PASSWORD})
    try:
        try:
            raise OSError(f"rtsp://admin:{quote(PASSWORD, safe='')}@h/x")
        except OSError as exc:
            raise RuntimeError("while connecting") from exc
    except RuntimeError:
        log.error("chained", exc_info=True)
    log.info("stack", stack_info=True, extra={})
    log.info("bad args %d", PASSWORD)  # a broken %-format must not print the args raw
    log.info({"dict-as-message": PASSWORD})
    text = stream.getvalue()
    assert "Traceback (most recent call last)" in text and "ValueError" in text
    assert "The above exception was the direct cause" in text
    assert "bad args" in text and "unformattable log arguments" in text
    for form in _forms(PASSWORD):
        assert form not in text, (form, text)


def test_secrets_added_later_are_redacted_from_then_on(
        filtered: tuple[logging.Logger, io.StringIO, SecretRegistry]) -> None:
    log, stream, registry = filtered
    registry.add("first-secret")
    log.info("first-secret second-secret")
    registry.add("second-secret", None, "", "abc")  # a reload found a new one; too short: no
    log.info("first-secret second-secret abc")
    assert stream.getvalue().splitlines() == [
        "INFO test_credentials_logs.root.module: *** second-secret",
        "INFO test_credentials_logs.root.module: *** *** abc"]
    assert len(registry) == 2


def test_install_covers_every_handler_of_the_logger_once() -> None:
    logger = logging.getLogger("test_credentials_logs.install")
    handlers = [logging.StreamHandler(io.StringIO()), logging.StreamHandler(io.StringIO())]
    for handler in handlers:
        logger.addHandler(handler)
    try:
        logsafety.install(logger, hooks=False)
        logsafety.install(logger, hooks=False)
        assert all(h.filters == [logsafety.FILTER] for h in handlers)
    finally:
        for handler in handlers:
            logger.removeHandler(handler)


def test_the_camera_login_is_known_with_its_basic_auth_header() -> None:
    logsafety.add_login("admin", "login-Secret-1")
    header = base64.b64encode(b"admin:login-Secret-1").decode()
    assert logsafety.redact(f"x login-Secret-1 {header} y") == "x *** *** y"


# --- password files ----------------------------------------------------------------------


@pytest.mark.parametrize(("content", "expected"), [
    (f"{PASSWORD}\nsecond line\nthird\n".encode(), PASSWORD),
    (b"crlf-pass\r\nnext\r\n", "crlf-pass"),
    (b"no-newline", "no-newline"),
    ("\ufeffbom-pass \n".encode(), "bom-pass "),  # a BOM goes, spaces stay
])
def test_a_password_file_gives_its_first_line(tmp_path: Path, content: bytes,
                                              expected: str) -> None:
    path = tmp_path / "pass"
    path.write_bytes(content)
    assert read_first_line(path, "camera x") == expected


@pytest.mark.parametrize(("content", "expected"), [
    (b"", "camera x: password file {path} is empty"),
    (b"\nsecret-on-line-2\n", "camera x: the first line of password file {path} is empty"),
    (b"\r\nsecret-on-line-2\n", "camera x: the first line of password file {path} is empty"),
    (b"\xff\xfesecret\n", "camera x: password file {path} is not UTF-8 text"),
    (b"x" * (64 * 1024 + 1), "camera x: the first line of password file {path} is longer"),
])
def test_a_bad_password_file_is_a_config_error_without_its_content(
        tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "pass"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        read_first_line(path, "camera x")
    assert str(info.value).startswith(expected.format(path=path))
    assert "secret" not in str(info.value)


def test_read_secret_reads_the_first_line_and_tells_the_filter(tmp_path: Path) -> None:
    path = tmp_path / "viewer-pass"
    path.write_text("file-Secret-42\nold-Secret-41\n")
    path.chmod(0o600)
    user = ViewerUserConfig(username="v", password_credential="viewer-pass")
    assert read_secret(user, "viewer v", {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == \
        "file-Secret-42"
    assert logsafety.redact("got file-Secret-42 / old-Secret-41") == "got *** / old-Secret-41"


def test_files_others_can_read_are_warned_about_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=credentials.log.name)
    exposed, private = tmp_path / "exposed", tmp_path / "private"
    for path, mode in ((exposed, 0o644), (private, 0o600)):
        path.write_text("warn-Secret-7\n")
        path.chmod(mode)
    for _ in range(3):  # start and two reloads
        for path in (exposed, private):
            read_secret(ViewerUserConfig(username="v", password_file=path), "viewers.users[0]")
    assert [r.getMessage() for r in caplog.records] == [
        f"viewers.users[0]: password file {exposed} is accessible to group or others (mode"
        " 0644): chmod 600 it (or 640 with a group only the service is in)"]
    assert warn_if_exposed(exposed, "again") and not warn_if_exposed(private, "again")
    assert len(caplog.records) == 1


# --- GStreamer's debug output ------------------------------------------------------------

_GST_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
from daemon import logsafety
logsafety.install()
logsafety.add_secrets(sys.argv[1])
from daemon.streams.gst import gst
Gst = gst()[0]
pipe = Gst.parse_launch("rtspsrc name=src ! fakesink")
src = pipe.get_by_name("src")
src.set_property("location", sys.argv[2])
src.set_property("user-id", "admin")
src.set_property("user-pw", sys.argv[1])
pipe.set_state(Gst.State.PLAYING)
pipe.get_bus().timed_pop_filtered(5 * Gst.SECOND, Gst.MessageType.ERROR)
pipe.set_state(Gst.State.NULL)
"""


def test_gstreamer_debug_output_goes_through_the_filter() -> None:
    """GST_DEBUG output of rtspsrc (the URL with its token, the password property) reaches the
    log as `gstreamer` records, redacted; nothing is printed by GStreamer's own handler."""
    token = "gst-Token-55"
    url = f"rtsp://127.0.0.1:{free_port()}/cam?token={token}&ch=1"
    out = subprocess.run(
        [sys.executable, "-c", _GST_SCRIPT, PASSWORD, url], capture_output=True, text=True,
        cwd=REPO, timeout=60, env={**os.environ, "GST_DEBUG": "*:4,rtspsrc:6,GST_BUS:5"})
    lines = out.stderr.splitlines()
    routed = [line for line in lines if line.startswith(("DEBUG gstreamer:", "INFO gstreamer:",
                                                         "WARNING gstreamer:",
                                                         "ERROR gstreamer:"))]
    assert len(routed) > 50, out.stderr[-3000:]
    assert any("rtspsrc" in line and "cam?token=***" in line for line in routed)
    # only GStreamer's lines from before the daemon could route them (gst_init) are unrouted
    assert all("GST_INIT" in line or "GST_REGISTRY" in line or "GST_PLUGIN" in line
               or line.startswith(("DEBUG", "INFO", "WARNING", "ERROR")) for line in lines), \
        [line for line in lines if not line.startswith(("DEBUG", "INFO", "WARN", "ERROR"))][:5]
    for form in _forms(PASSWORD) | _forms(token):
        assert form not in out.stderr, form


# --- end to end: the real daemon and the real test camera -------------------------------------


@pytest.fixture(scope="module")
def feed(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("feed")
    return looped_clip(shared_data / "clips" / "kinetics_style_armwrestling_340x256.mp4",
                       folder / "loop.mp4", 9)


def _reload(daemon: Daemon, config: str) -> None:
    count = daemon.log().count("reload: reading")
    daemon.config_path.write_text(textwrap.dedent(config))
    daemon.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: daemon.log().count("reload: reading") > count, 10), daemon.log()


@pytest.mark.slow
def test_daemon_with_hard_passwords_connects_survives_a_bad_reload_and_logs_no_secret(
        feed: Path, tmp_path: Path) -> None:
    viewer = "View/er?pa#ss@w:rd%zz"
    token, token2 = "Tok3n-SECRET-77", "Tok3n-SECRET-88"
    camera = CameraProcess(feed, user="admin", password=PASSWORD, lifetime=120).start()
    control = tmp_path / "control"
    control.mkdir()
    cam_pass, viewer_pass = tmp_path / "cam-pass", tmp_path / "viewer-pass"
    cam_pass.write_text(f"{PASSWORD}\nold-Password-line\n# a comment\n")
    cam_pass.chmod(0o600)
    viewer_pass.write_text(viewer + "\n")
    viewer_pass.chmod(0o644)  # warned about, once
    rtsp_port, metrics_port = free_port(), free_port()
    host = f"127.0.0.1:{camera.port}"

    def config(url_b: str) -> str:
        return f"""
            server: {{port: {rtsp_port}}}
            metrics: {{port: {metrics_port}, health_window_s: 2.0}}
            viewers:
              users:
                - username: nvr
                  password_file: {viewer_pass}
            analysis: {{budget_ms: 400}}
            ingest: {{watchdog_s: 2.0, connect_timeout_s: 3.0, backoff_initial_s: 0.3,
                      backoff_max_s: 1.0}}
            service: {{stop_timeout_s: 5.0}}
            cameras:
              - name: a
                url: {camera.url}
                credentials:
                  username: admin
                  password_file: {cam_pass}
              - name: b
                url: "{url_b}"
        """

    encoded = f"rtsp://admin:{quote(PASSWORD, safe='')}@{host}/cam"
    good = config(f"{encoded}?token={token}")
    daemon = Daemon(tmp_path, good, fake=control, lifetime=100,
                    env={"GST_DEBUG": "3,rtspsrc:5"})
    client = None
    try:
        assert wait_port(rtsp_port, 60), daemon.log()

        def publishing() -> bool:
            health = http_get(metrics_port, "/healthz")[1]
            return "a: publishing" in health and "b: publishing" in health

        assert wait_for(publishing, 30), http_get(metrics_port, "/healthz")[1] + daemon.log()
        client = FfmpegClient(f"rtsp://nvr:{quote(viewer, safe='')}@127.0.0.1:{rtsp_port}/b",
                              340, 256, timeout=60)
        assert client.wait_frames(10, 15), client.stop() + daemon.log()

        # SIGHUP with a raw '#' (and '/', '?', '@') in a URL: logged, the old config runs on
        _reload(daemon, config(f"rtsp://admin:{PASSWORD}@{host}/cam?token={token}"))
        assert wait_for(lambda: "reload failed, keeping the running configuration" in
                        daemon.log(), 10), daemon.log()
        frames = client.frames
        time.sleep(1.5)
        assert daemon.proc.poll() is None and publishing()
        assert client.frames > frames + 10
        line = next(n for n, text in enumerate(textwrap.dedent(good).splitlines(), 1)
                    if "name: b" in text) + 1
        assert (f"{daemon.config_path}:{line}:5: cameras[1].url: camera url has an '@' after"
                " its host part") in daemon.log()

        # a good reload with a new token: b restarts with it, the new secret is known too
        _reload(daemon, config(f"{encoded}?token={token2}"))
        assert wait_for(lambda: "reload: configuration applied" in daemon.log(), 10), \
            daemon.log()
        assert wait_for(publishing, 15), daemon.log()

        def anonymized(name: str) -> float:
            text = http_get(metrics_port, "/metrics")[1]
            return metric(text, "frames_published_anonymized_total", camera=name)

        assert anonymized("a") > 50  # a ran on through both reloads
        assert wait_for(lambda: anonymized("b") > 10, 10)  # b restarted, publishing again
    finally:
        if client:
            client.stop()
        code = daemon.stop()
        camera.kill()
    log = daemon.log()
    assert code == 0, log[-4000:]
    assert "camera a: connected" in log and "camera b: connected" in log
    assert log.count("camera b: connecting to") >= 2  # restarted by the good reload
    # GStreamer's debug output flowed through the filter
    assert log.count("gstreamer: ") > 20, log[-4000:]
    assert "cam?token=***" in log
    assert "Traceback" not in log
    # warned once each, through start and two reloads: the 0644 viewer file, and the config
    # file (the Daemon helper writes it 0644) since it holds a password in b's url
    assert log.count(f"password file {viewer_pass} is accessible to group or others") == 1
    assert log.count(f"config file (it holds passwords) {daemon.config_path} is accessible") == 1
    assert str(cam_pass) not in log  # mode 0600: no warning
    basic = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    for secret in (PASSWORD, viewer, token, token2, basic):
        for form in _forms(secret):
            assert form not in log, (form, [n for n in log.splitlines() if form in n][:3])
