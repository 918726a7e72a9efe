"""A model's inputs and outputs, checked against its manifest (the same rule for every backend)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from daemon.analysis.host import show_shape as _show
from daemon.analysis.manifest import Manifest
from daemon.errors import ModelError


@dataclass(frozen=True)
class Port:
    """One input or output: its name, its type in ONNX's spelling ('tensor(float)') and its
    shape (an int per static dimension, a name or None per symbolic one)."""

    name: str
    type: str
    shape: tuple[int | str | None, ...]


_FLOAT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}
_INT_TYPES = {f"tensor({t})" for t in ("uint8", "int8", "uint16", "int16", "int32", "int64")}

Dim = int | str | None


def _agrees(actual: Sequence[Dim], expected: Sequence[int | None]) -> bool:
    """An int expects that int (a symbolic dim also fits it); None expects a symbolic dim."""
    if len(actual) != len(expected):
        return False
    for have, want in zip(actual, expected, strict=True):
        if want is None:
            if isinstance(have, int):
                return False
        elif isinstance(have, int) and have != want:
            return False
    return True


def _pick(args: Sequence[Port], name: str | None, what: str, path: Path) -> Port:
    if name is not None:
        for arg in args:
            if arg.name == name:
                return arg
        names = ", ".join(repr(a.name) for a in args)
        raise ModelError(f"model {path}: the manifest names {what} {name!r}; the ONNX has {names}")
    if len(args) != 1:
        raise ModelError(
            f"model {path}: has {len(args)} {what}s; name the one to use in the manifest"
        )
    return args[0]



def check_io(inputs: Sequence[Port], outputs: Sequence[Port], manifest: Manifest, path: Path
             ) -> tuple[str, str, str]:
    """(input name, output name, input dtype) of a model whose ports agree with `manifest`;
    ModelError (one line) saying what disagrees."""
    spec, out = manifest.input, manifest.output
    source = _pick(inputs, spec.name, "input", path)
    if source.type not in _FLOAT_TYPES:
        raise ModelError(
            f"model {path}: input {source.name!r} is {source.type}, expected float"
        )
    hw: list[int | None] = [spec.height, spec.width] if spec.size == "fixed" else [None, None]
    if not _agrees(source.shape, [1, 3, *hw]):
        raise ModelError(
            f"model {path}: input {source.name!r} is {_show(source.shape)}; manifest "
            f"{manifest.name!r} says 1 x 3 x {spec.height} x {spec.width} "
            f"({spec.size} size, NCHW)"
        )
    target = _pick(outputs, out.name, "output", path)
    classes = len(manifest.classes)
    if out.kind == "logits":
        ok = target.type in _FLOAT_TYPES and len(target.shape) == 4
        ok = ok and _agrees(target.shape[:2], [1, classes])
        wanted = f"float 1 x {classes} x h x w logits"
    else:
        ok = target.type in _INT_TYPES and len(target.shape) == 3
        ok = ok and _agrees(target.shape[:1], [1])
        wanted = "integer 1 x h x w labels"
    if not ok:
        raise ModelError(
            f"model {path}: output {target.name!r} is {target.type} {_show(target.shape)}; "
            f"manifest {manifest.name!r} says {wanted}"
        )
    return source.name, target.name, _FLOAT_TYPES[source.type]

