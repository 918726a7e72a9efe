"""Load YAML into frozen pydantic models, with "file:line:col: key: message" errors."""

from __future__ import annotations

import difflib
import logging
import re
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

import daemon
from daemon.config import Config, ModelConfig
from daemon.errors import ConfigError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

PACKAGE_ROOT = Path(daemon.__file__).resolve().parent
"""Where `engines/` (the shipped models, package data) lives: default (not user-given) relative
paths resolve against it, so an installed package works from any directory."""

_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAX_DEPTH = 64
_VALUE_ERROR_PREFIXES = ("Value error, ", "Assertion failed, ")

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class _Mark:
    """A 1-based line and column in the YAML file."""

    line: int
    col: int

    @classmethod
    def of(cls, node: Node) -> _Mark:
        return cls(node.start_mark.line + 1, node.start_mark.column + 1)


@dataclass
class _Tree:
    """The plain-Python view of a YAML node, with the mark each error should point at.

    `mark` is the key node's position for a mapping entry, the item's own position for a
    sequence item, and the node's position for the document root.
    """

    mark: _Mark
    children: dict[Any, _Tree]


class _Converter:
    """Turns a composed YAML node into plain Python, recording marks and duplicate keys."""

    def __init__(self, loader: yaml.SafeLoader, source: str) -> None:
        self._loader = loader
        self._source = source
        self.problems: list[tuple[_Mark, str]] = []

    def convert(self, node: Node, mark: _Mark, path: Loc, depth: int = 0) -> tuple[Any, _Tree]:
        if depth > _MAX_DEPTH:
            raise ConfigError(
                f"{self._source}:{mark.line}:{mark.col}: nesting deeper than {_MAX_DEPTH} levels"
                " (a recursive YAML anchor?)"
            )
        if isinstance(node, MappingNode):
            self._check_tag(node, _MAP_TAG)
            return self._mapping(node, mark, path, depth)
        if isinstance(node, SequenceNode):
            self._check_tag(node, _SEQ_TAG)
            values: list[Any] = []
            tree = _Tree(mark, {})
            for index, item in enumerate(node.value):
                value, child = self.convert(item, _Mark.of(item), (*path, index), depth + 1)
                values.append(value)
                tree.children[index] = child
            return values, tree
        return self._scalar(node), _Tree(mark, {})

    def _scalar(self, node: Node) -> Any:
        return self._loader.construct_object(node, deep=True)

    def _check_tag(self, node: Node, expected: str) -> None:
        if node.tag != expected:
            mark = _Mark.of(node)
            raise ConfigError(f"{self._source}:{mark.line}:{mark.col}: unsupported tag {node.tag}")

    def _entries(self, node: MappingNode, depth: int) -> list[tuple[Node, Node, bool]]:
        """(key, value, merged) pairs, later ones winning, as PyYAML merges `<<: [*a, *b]`.

        Merged entries come first so explicit keys override them; of several merged mappings,
        the first listed wins.
        """
        if depth > _MAX_DEPTH:
            mark = _Mark.of(node)
            raise ConfigError(
                f"{self._source}:{mark.line}:{mark.col}: '<<' merges nest deeper than"
                f" {_MAX_DEPTH} levels (a recursive YAML anchor?)"
            )
        merged: list[tuple[Node, Node, bool]] = []
        explicit: list[tuple[Node, Node, bool]] = []
        for key, value in node.value:
            if key.tag != _MERGE_TAG:
                explicit.append((key, value, False))
                continue
            sources = value.value if isinstance(value, SequenceNode) else [value]
            for source in reversed(sources):
                if not isinstance(source, MappingNode):
                    mark = _Mark.of(source)
                    raise ConfigError(
                        f"{self._source}:{mark.line}:{mark.col}: '<<' merges only mappings"
                    )
                merged.extend((k, v, True) for k, v, _ in self._entries(source, depth + 1))
        return merged + explicit

    def _mapping(
        self, node: MappingNode, mark: _Mark, path: Loc, depth: int
    ) -> tuple[dict[Any, Any], _Tree]:
        values: dict[Any, Any] = {}
        tree = _Tree(mark, {})
        first_seen: dict[Any, tuple[_Mark, bool]] = {}
        for key_node, value_node, merged in self._entries(node, depth):
            key_mark = _Mark.of(key_node)
            if not isinstance(key_node, ScalarNode):
                raise ConfigError(
                    f"{self._source}:{key_mark.line}:{key_mark.col}: {_format_loc(path)}"
                    f"{': ' if path else ''}keys must be plain scalars, not lists or mappings"
                )
            key = self._scalar(key_node)
            earlier = first_seen.get(key)
            if earlier is not None and not (merged or earlier[1]):
                self.problems.append(
                    (
                        key_mark,
                        f"{_format_loc((*path, key))}: duplicate key"
                        f" (first given on line {earlier[0].line}; YAML would keep only the last)",
                    )
                )
            first_seen[key] = (key_mark, merged)
            value, child = self.convert(value_node, key_mark, (*path, key), depth + 1)
            values[key] = value
            tree.children[key] = child
        return values, tree


def _syntax_error(source: str, exc: yaml.MarkedYAMLError) -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    problem = exc.problem or exc.context or "invalid YAML"
    context = ""
    if exc.context and exc.problem:
        started = exc.context_mark
        since = f" started on line {started.line + 1}" if started is not None else ""
        context = f" ({exc.context}{since})"
    return ConfigError(f"{where}: YAML syntax error: {problem}{context}")


def _format_loc(loc: Loc) -> str:
    """('cameras', 1, 'url') -> 'cameras[1].url'."""
    text = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _read_tree(path: Path, source: str) -> tuple[Any, _Tree | None]:
    """Parse `path`; returns (plain data, mark tree), or (None, None) for an empty document."""
    try:
        text = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{source}: file not found") from exc
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL_TAG):
            return None, None
        converter = _Converter(loader, source)
        data, tree = converter.convert(root, _Mark.of(root), ())
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(source, exc) from exc
    except yaml.YAMLError as exc:  # ReaderError: not UTF-8/16 text, or a control character
        reason = getattr(exc, "reason", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: not readable as YAML text: {reason}") from exc
    finally:
        loader.dispose()
    if converter.problems:
        raise ConfigError(_join(source, converter.problems))
    return data, tree


def _join(source: str, problems: list[tuple[_Mark, str]]) -> str:
    ordered = sorted(problems, key=lambda p: (p[0].line, p[0].col))
    return "\n".join(f"{source}:{mark.line}:{mark.col}: {message}" for mark, message in ordered)


def _locate(tree: _Tree, loc: Loc, missing: bool) -> tuple[_Mark, Loc]:
    """The mark and the user-facing key path of a pydantic error location.

    Parts of `loc` that are not in the YAML (pydantic's union tags such as 'function-after[...]')
    are skipped; a missing key is named but points at the mapping that lacks it.
    """
    node = tree
    shown: list[str | int] = []
    rest: Loc = loc
    for index, part in enumerate(loc):
        child = node.children.get(part)
        if child is not None:
            node = child
            shown.append(part)
            rest = loc[index + 1 :]
    if missing:
        shown.extend(p for p in rest if isinstance(p, int) or p.isidentifier())
    return node.mark, tuple(shown)


def _unwrap(annotation: Any) -> list[Any]:
    """The candidate types an annotation may hold (Optional, Annotated and unions flattened)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _field_names(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys the model accepts at `loc` (the parent of an unknown key), or [] if unknown."""
    candidates: list[Any] = [model]
    for part in loc:
        following: list[Any] = []
        for candidate in candidates:
            origin = typing.get_origin(candidate)
            args = typing.get_args(candidate)
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                field = candidate.model_fields.get(str(part))
                if field is not None:
                    following.extend(_unwrap(field.annotation))
            elif origin in (list, tuple, Sequence, set, frozenset) and isinstance(part, int):
                following.extend(t for arg in args if arg is not Ellipsis for t in _unwrap(arg))
            elif origin is dict and len(args) == 2:
                following.extend(_unwrap(args[1]))
        candidates = following
    names: list[str] = []
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            for name, field in candidate.model_fields.items():
                names.append(field.alias if isinstance(field.alias, str) else name)
    return names


def _message(error: Any, model: type[BaseModel], loc: Loc) -> str:
    if error["type"] == "extra_forbidden" and loc:
        key = loc[-1]
        allowed = _field_names(model, loc[:-1])
        close = difflib.get_close_matches(str(key), allowed, n=1)
        if close:
            return f"unknown key {key!r} (did you mean {close[0]!r}?)"
        if allowed:
            return f"unknown key {key!r} (expected one of: {', '.join(allowed)})"
        return f"unknown key {key!r}"
    message = str(error["msg"])
    for prefix in _VALUE_ERROR_PREFIXES:
        message = message.removeprefix(prefix)
    return message


_KEY_PATH = re.compile(r"^([A-Za-z_]\w*(?:\[\d+\]|\.[A-Za-z_]\w*)*): (.+)$", re.DOTALL)


def _named_in_message(tree: _Tree, message: str) -> tuple[_Mark, Loc, str] | None:
    """A whole-config check's "cameras[1].blur: reason" points at that key, if it is in the file."""
    match = _KEY_PATH.match(message)
    if match is None:
        return None
    loc: Loc = tuple(
        int(index) if index else name
        for index, name in re.findall(r"\[(\d+)\]|([A-Za-z_]\w*)", match.group(1))
    )
    mark, shown = _locate(tree, loc, missing=False)
    if shown != loc:
        return None
    return mark, shown, match.group(2)


def _validation_problems(
    exc: ValidationError, model: type[BaseModel], tree: _Tree
) -> list[tuple[_Mark, str]]:
    problems: list[tuple[_Mark, str]] = []
    for error in exc.errors(include_url=False):
        mark, shown = _locate(tree, tuple(error["loc"]), missing=error["type"] == "missing")
        message = _message(error, model, shown)
        named = _named_in_message(tree, message) if not shown else None
        if named is not None:
            mark, shown, message = named
        problems.append((mark, f"{_format_loc(shown)}: {message}" if shown else message))
    return problems


def parse_yaml_model(path: Path, model: type[M]) -> M:
    """Read the YAML file at `path` and validate it as `model`.

    Every problem becomes one line of the ConfigError's message, sorted by position:
    `FILE:LINE:COL: dotted.key[1].path: message`. LINE and COL are 1-based and point at the
    offending entry's key (for a list item, at the item; for a missing key, at the mapping that
    lacks it). An empty file (or only comments) gives the model's defaults.
    """
    source = str(path)
    data, found = _read_tree(Path(path), source)
    tree = found if found is not None and data is not None else _Tree(_Mark(1, 1), {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"the value {data!r}"
        raise ConfigError(
            f"{source}:{tree.mark.line}:{tree.mark.col}: the top level must be a mapping of"
            f" keys (such as 'blur:'), got {kind}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_join(source, _validation_problems(exc, model, tree))) from exc


def _absolute(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def _resolve_paths(config: Config, config_dir: Path | None) -> Config:
    """Absolute model paths: given in the file against its folder, defaults against the root."""
    given = config.model.model_fields_set if config_dir is not None else set()
    update: dict[str, Path] = {}
    for name in ("path", "manifest", "engine_cache"):
        value = getattr(config.model, name)
        if value is not None:
            base = config_dir if name in given and config_dir is not None else PACKAGE_ROOT
            update[name] = _absolute(value, base)
    model: ModelConfig = config.model.model_copy(update=update)
    return config.model_copy(update={"model": model})


def load_config(path: Path | str | None) -> Config:
    """The validated Config from `path` (None: built-in defaults), with absolute model paths."""
    if path is None:
        return _resolve_paths(Config(), None)
    path = Path(path)
    config = parse_yaml_model(path, Config)
    return _resolve_paths(config, path.expanduser().absolute().parent)


def _summary(config: Config) -> str:
    cameras = len(config.cameras)
    return (
        f"model {config.model.path}, {cameras} camera{'' if cameras == 1 else 's'},"
        f" anonymize: {', '.join(config.anonymize)}"
    )


def check_config_command(path: str) -> int:
    """`check-config`: validate the schema; print "FILE: OK (...)" and return 0, or errors and 2.

    Files the config names (model, manifest) are not required to exist: they may be deployed
    after the config. A missing one is reported as a warning on stderr; the exit code stays 0.
    """
    try:
        config = load_config(Path(path))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    for label, file in (("model", config.model.path), ("manifest", config.model.manifest_path)):
        if not file.is_file():
            print(f"{path}: warning: {label} file {file} does not exist (yet)", file=sys.stderr)
    print(f"{path}: OK ({_summary(config)})")
    return 0
