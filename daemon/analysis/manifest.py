"""The model manifest: classes, input geometry and normalisation, output kind of an ONNX model."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from daemon.config import FrozenModel
from daemon.configfile import parse_yaml_model
from daemon.errors import ModelError

ClassId = Annotated[int, Field(ge=0, le=255)]

_CLASS_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,63}$")


class InputConfig(FrozenModel):
    """The network input: x = (pixel - mean) / std, per channel in `colour_order`."""

    name: str | None = Field(None, description="ONNX input name; default: the model's only input")
    width: int = Field(ge=1, le=8192, description="input width the frame is stretched to (px)")
    height: int = Field(ge=1, le=8192, description="input height the frame is stretched to (px)")
    colour_order: Literal["RGB", "BGR"] = Field(description="channel order the model expects")
    mean: tuple[float, float, float] = Field(description="per-channel mean, in colour_order")
    std: tuple[float, float, float] = Field(description="per-channel std (> 0), in colour_order")
    layout: Literal["NCHW"] = Field("NCHW", description="tensor layout of the input")
    size: Literal["fixed", "dynamic"] = Field(
        "fixed", description="fixed: the ONNX input is exactly height x width; dynamic: H, W free"
    )

    @field_validator("std")
    @classmethod
    def _positive_std(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) <= 0.0:
            raise ValueError(f"std must be > 0 for every channel, got {list(value)}")
        return value


class OutputConfig(FrozenModel):
    """The network output: per-class scores or class ids."""

    name: str | None = Field(None, description="ONNX output name; default: the model's only output")
    kind: Literal["logits", "labels"] = Field(
        description="logits: float N x C x h x w (channel = class id); labels: integer N x h x w"
    )
    layout: Literal["NCHW"] = Field("NCHW", description="tensor layout (labels have no C axis)")


class Manifest(FrozenModel):
    """What the analyzer needs to know about one ONNX model (`<model>.manifest.yaml`)."""

    name: str = Field(min_length=1, description="model name, used in messages and logs")
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="sha256 of the ONNX file, checked at load"
    )
    classes: dict[str, ClassId] = Field(
        min_length=1, description="class name -> class id (0..255, unique)"
    )
    background: str = Field(description="the class name that means 'nothing to anonymize'")
    input: InputConfig
    output: OutputConfig

    @field_validator("classes")
    @classmethod
    def _unique_ids(cls, value: dict[str, int]) -> dict[str, int]:
        for name in value:
            if not _CLASS_NAME.match(name):
                raise ValueError(
                    f"class name {name!r} must be 1-64 lower-case letters, digits or '_'"
                )
        seen: dict[int, str] = {}
        for name, class_id in value.items():
            if class_id in seen:
                raise ValueError(f"classes {seen[class_id]!r} and {name!r} share id {class_id}")
            seen[class_id] = name
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.background not in self.classes:
            raise ValueError(f"background {self.background!r} is not one of the classes")
        if self.output.kind == "logits":
            ids = sorted(self.classes.values())
            if ids != list(range(len(ids))):
                raise ValueError(
                    "a logits model's class ids are its channel indices: they must be "
                    f"0..{len(ids) - 1} without gaps, got {ids}"
                )
        return self

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in id order."""
        return tuple(sorted(self.classes, key=self.classes.__getitem__))

    @property
    def background_id(self) -> int:
        return self.classes[self.background]


def load_manifest(path: Path) -> Manifest:
    """The manifest at `path`: ModelError if missing, ConfigError (file:line:col) if invalid."""
    if not path.is_file():
        raise ModelError(f"model manifest {path} not found (expected next to the ONNX model)")
    return parse_yaml_model(path, Manifest)


def class_ids(manifest: Manifest, names: Iterable[str]) -> tuple[int, ...]:
    """The ids of the class `names` (e.g. config.anonymize); ModelError names unknown ones."""
    ids: list[int] = []
    for name in names:
        if name not in manifest.classes:
            raise ModelError(
                f"model {manifest.name} has no class {name!r}; it knows: "
                f"{', '.join(manifest.class_names)}"
            )
        ids.append(manifest.classes[name])
    return tuple(ids)


def sha256_file(path: Path) -> str:
    """The hex sha256 of a (model) file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
