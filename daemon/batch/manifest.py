"""The run's record: a JSON-lines file in the output folder, appended to by every run.

Records (`type`): `run` (config, model hash, cluster), `worker` (host, pid, backend), `unit`
(one image, video or segment done or failed), `input` (one input's totals, once complete or
failed), `summary` (the run's totals). A rerun reads it back to skip what is complete.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"


@dataclass(frozen=True)
class Fingerprint:
    """What an output depends on: the input's bytes, the model's bytes and the config."""

    source_sha256: str
    model_sha256: str
    config_sha256: str

    def fields(self) -> dict[str, str]:
        return {"sha256": self.source_sha256, "model_sha256": self.model_sha256,
                "config_sha256": self.config_sha256}


class Manifest:
    """Append-only JSON lines, flushed per record (a killed run keeps what it recorded)."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path = path
        self.run_id = run_id
        self._file: IO[str] | None = None

    def __enter__(self) -> Manifest:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def write(self, record_type: str, /, **fields: Any) -> None:
        if self._file is None:
            raise RuntimeError(f"{self.path}: manifest not open (use it as a context manager)")
        record = {"type": record_type, "run": self.run_id, "time": _now(), **fields}
        self._file.write(json.dumps(record, sort_keys=False, default=str) + "\n")
        self._file.flush()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of an existing manifest; a torn last line (a killed run) is skipped."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d: unreadable record skipped", path, number)
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def completed(records: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """The latest `done` record of each unit key (kind "unit") or input source ("input")."""
    field = "key" if kind == "unit" else "source"
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("type") == kind and isinstance(record.get(field), str):
            latest[record[field]] = record
    return {name: r for name, r in latest.items() if r.get("status") == "done"}


def matches(record: Mapping[str, Any], fingerprint: Fingerprint) -> bool:
    return all(record.get(k) == v for k, v in fingerprint.fields().items())
