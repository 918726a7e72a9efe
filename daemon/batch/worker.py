"""The worker actor: loads the model once, then anonymizes one unit per call."""

from __future__ import annotations

import os
import socket
from collections import Counter
from dataclasses import dataclass, field

from daemon.batch.segments import Segment, write_segment
from daemon.batch.units import Unit
from daemon.config import Config
from daemon.filejob import FileJob, FileOptions, FrameGuard, run_guarded, run_job


@dataclass
class UnitResult:
    """What one unit did: the file path's InputReport, flattened for the driver."""

    key: str
    worker: str  # host:pid
    frames: int = 0
    failed_closed: int = 0
    objects: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0
    error: str | None = None


def worker_config(config: Config, threads: int) -> Config:
    """`config` with `model.threads` set to the CPUs Ray gave this worker, where the config
    leaves it to the machine (0: all cores, which every worker of a node would claim)."""
    if config.model.threads or threads <= 0:
        return config
    model = config.model.model_copy(update={"threads": threads})
    return config.model_copy(update={"model": model})


class UnitWorker:
    """One model load per worker, the same analyzer, anonymizer and fail-closed rule as
    `anonymizer file`; wrapped by `ray.remote` in daemon.batch.driver."""

    def __init__(self, config: Config, options: FileOptions, threads: int) -> None:
        from daemon.analysis import class_ids
        from daemon.backends import open_backend

        config = worker_config(config, threads)
        backend = open_backend(config)
        self._backend = backend.name
        self._analyzer = backend.analyzer
        self._anonymizer = backend.anonymizer(class_ids(self._analyzer.manifest,
                                                        config.anonymize), config.blur)
        self._options = options
        self._name = f"{socket.gethostname()}:{os.getpid()}"

    def describe(self) -> dict[str, object]:
        return {"worker": self._name, "pid": os.getpid(), "host": socket.gethostname(),
                "backend": self._backend}

    def run(self, unit: Unit) -> UnitResult:
        unit.output.parent.mkdir(parents=True, exist_ok=True)
        job = FileJob(unit.source, unit.output)
        if unit.kind == "segment":
            guard = FrameGuard(self._analyzer, self._anonymizer, self._options.fail_closed,
                               unit.source)
            segment = Segment(unit.start, unit.end, unit.first_frame, unit.frames)
            report = run_guarded(job, guard, lambda: write_segment(
                unit.source, unit.output, segment, guard, self._options))
        else:
            report = run_job(job, self._analyzer, self._anonymizer, self._options)
        return UnitResult(unit.key, self._name, report.frames, report.failed_closed,
                          report.objects, report.seconds, report.error)
