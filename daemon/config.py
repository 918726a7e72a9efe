"""Typed, frozen configuration models; validators are pure (no I/O, no hardware probing).

Loading YAML, resolving paths and turning validation errors into "file:line: key: message"
lines lives in `daemon.configfile`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

DEFAULT_MODEL = Path("engines/deeplabv3_mnv2_voc_257.onnx")


class FrozenModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _odd(value: int, name: str) -> int:
    if value % 2 != 1:
        raise ValueError(f"{name} must be odd, got {value}")
    return value


class ModelConfig(FrozenModel):
    path: Path = Field(DEFAULT_MODEL, description="ONNX segmentation model")
    manifest: Path | None = Field(
        None, description="model manifest; default: the model path with .manifest.yaml"
    )
    device: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="auto: GPU when usable, else CPU (the reason is logged)"
    )
    threads: int = Field(0, ge=0, le=256, description="ONNX Runtime intra-op threads; 0: all cores")

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
    enabled: bool = Field(False, description="also analyze overlapping native-resolution tiles")
    overlap: float = Field(
        0.25, ge=0.0, lt=0.9, description="fraction of a tile shared with its neighbour"
    )


class AnalysisConfig(FrozenModel):
    tiling: TilingConfig = Field(TilingConfig(), description="multi-scale analysis (DESIGN 3)")


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
    mask_dilation: int = Field(3, ge=0, le=64, description="grow masks by this many pixels first")
    global_kernel: int = Field(255, ge=1, le=1023, description="kernel of the global mode (odd)")
    fail_closed: Literal["blur", "black"] = Field(
        "blur", description="what replaces a frame whose analysis failed"
    )

    @field_validator("min_kernel", "max_kernel", "global_kernel")
    @classmethod
    def _kernel_odd(cls, value: int, info: ValidationInfo) -> int:
        return _odd(value, str(info.field_name))

    @model_validator(mode="after")
    def _kernel_range(self) -> BlurConfig:
        if self.min_kernel > self.max_kernel:
            raise ValueError(
                f"min_kernel ({self.min_kernel}) must not exceed max_kernel ({self.max_kernel})"
            )
        return self


_CAMERA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class CameraConfig(FrozenModel):
    """One camera (the daemon issue fills in ingest and per-camera overrides)."""

    name: str = Field(description="path of the republished stream: rtsp://<bind>:<port>/<name>")
    url: str = Field(description="the camera's RTSP URL")
    enabled: bool = Field(True, description="false: keep the entry but do not open the stream")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _CAMERA_NAME.match(value):
            raise ValueError("camera name must be 1-64 letters, digits, '_' or '-'")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("rtsp://", "rtsps://")):
            raise ValueError("camera url must start with rtsp:// or rtsps://")
        return value


class ServerConfig(FrozenModel):
    bind: str = Field("127.0.0.1", description="address of the RTSP server for viewers")
    port: int = Field(8554, ge=1, le=65535, description="TCP port of the RTSP server")


class Config(FrozenModel):
    model: ModelConfig = Field(ModelConfig(), description="segmentation model and device")
    anonymize: tuple[str, ...] = Field(
        ("person",), min_length=1, description="class names (from the model manifest) to blur"
    )
    blur: BlurConfig = Field(BlurConfig(), description="how objects are blurred (DESIGN 2)")
    analysis: AnalysisConfig = Field(AnalysisConfig(), description="how frames are analyzed")
    server: ServerConfig = Field(ServerConfig(), description="where anonymized streams are served")
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
