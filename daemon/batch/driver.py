"""The Ray side of a batch run: the cluster, the pool of worker actors, and the loop that hands
them units and collects what they did."""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.batch import require_ray
from daemon.batch.units import InputPlan, Unit, plan_input
from daemon.batch.worker import UnitResult, UnitWorker
from daemon.config import Config
from daemon.errors import ConfigError
from daemon.filejob import FileOptions
from daemon.media.atomic import partial_path, remove_path

log = logging.getLogger(__name__)

DEFAULT_OBJECT_STORE = 256 * 2**20  # units and results are small: paths and counters


DEFAULT_WORKER_CPUS = 4.0
"""CPUs per worker when neither --workers nor --cpus-per-worker says: one model per (up to) 4
CPUs. bench/batch.py on a 2-CPU machine: two 1-CPU workers ran at 2.0 frames/s each, one 2-CPU
worker at 5.4 (each worker's decoder, encoder and inference threads compete for the cores)."""


@dataclass(frozen=True)
class ClusterOptions:
    address: str | None = None  # None: a local cluster sized to this machine
    workers: int | None = None  # None: one per DEFAULT_WORKER_CPUS CPUs (per GPU share)
    cpus_per_worker: float | None = None  # None: the cluster's CPUs shared out
    gpus_per_worker: float = 0.0
    object_store_bytes: int = DEFAULT_OBJECT_STORE


class Cluster:
    """Connected to Ray for the duration of a `with` block (a local cluster started and
    stopped with it unless `address` names one, or this process already holds one)."""

    def __init__(self, options: ClusterOptions) -> None:
        self.options = options
        self.ray = require_ray()
        self._owned = False

    def __enter__(self) -> Cluster:
        ray = self.ray
        if not ray.is_initialized():
            if self.options.address is None:
                ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False,
                         object_store_memory=self.options.object_store_bytes,
                         logging_level=logging.WARNING)
            else:
                try:
                    ray.init(address=self.options.address, logging_level=logging.WARNING)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise ConfigError(f"--address {self.options.address}: cannot join the Ray "
                                      f"cluster: {exc}") from None
            self._owned = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owned:
            self.ray.shutdown()

    @property
    def address(self) -> str:
        return str(self.ray.get_runtime_context().gcs_address)

    def worker_shape(self) -> tuple[int, float, float]:
        """(workers, CPUs each, GPUs each) from the options and the cluster's resources."""
        resources = self.ray.cluster_resources()
        cpus = float(resources.get("CPU", 0))
        gpus = float(resources.get("GPU", 0))
        o = self.options
        if o.gpus_per_worker > gpus:
            raise ConfigError(f"--gpus-per-worker {o.gpus_per_worker}: the cluster has "
                              f"{gpus:g} GPUs")
        count = o.workers
        if count is None:
            if o.gpus_per_worker > 0:
                count = int(gpus // o.gpus_per_worker)
            else:
                count = int(cpus // (o.cpus_per_worker or min(cpus, DEFAULT_WORKER_CPUS)))
        count = max(1, count)
        per_cpu = o.cpus_per_worker if o.cpus_per_worker is not None else max(1.0, cpus // count)
        if per_cpu > cpus:
            raise ConfigError(f"--cpus-per-worker {per_cpu:g}: the cluster has {cpus:g} CPUs")
        return count, per_cpu, o.gpus_per_worker

    def plan(self, pairs: Sequence[tuple[Path, Path]], output_dir: Path,
             segment_seconds: float) -> list[InputPlan]:
        """Hash and scan every input where its bytes are (Ray tasks, no CPU reserved)."""
        task = self.ray.remote(num_cpus=0)(plan_input)
        refs = [task.remote(src, out, output_dir, segment_seconds) for src, out in pairs]
        return list(self.ray.get(refs))


@dataclass
class Worker:
    actor: Any  # a Ray actor handle of UnitWorker
    name: str
    info: dict[str, object]


class WorkerPool:
    """`count` UnitWorker actors; a dead one is replaced (each at most once per worker)."""

    def __init__(self, cluster: Cluster, config: Config, options: FileOptions,
                 on_start: Callable[[Worker], None]) -> None:
        self._ray = cluster.ray
        self.count, cpus, gpus = cluster.worker_shape()
        self._cls = self._ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0,
                                     max_task_retries=0)(UnitWorker)
        self._args = (config, options, int(cpus))
        self._on_start = on_start
        self._replacements = self.count
        self.workers = self._start(self.count)

    def _start(self, count: int) -> list[Worker]:
        actors = [self._cls.remote(*self._args) for _ in range(count)]
        infos = self._ray.get([actor.describe.remote() for actor in actors])
        workers = [Worker(actor, str(info["worker"]), info)
                   for actor, info in zip(actors, infos, strict=True)]
        for worker in workers:
            self._on_start(worker)
        return workers

    def replace(self, dead: Worker) -> Worker | None:
        self._ray.kill(dead.actor, no_restart=True)
        if self._replacements <= 0:
            log.warning("worker %s died; no replacement left", dead.name)
            return None
        self._replacements -= 1
        log.warning("worker %s died; starting a replacement", dead.name)
        try:
            return self._start(1)[0]
        except self._ray.exceptions.RayError as exc:
            log.warning("could not start a replacement worker: %s", exc)
            return None


def run_units(pool: WorkerPool, ray: Any, units: Sequence[Unit],
              on_result: Callable[[Unit, UnitResult], None]) -> None:
    """Hand each idle worker the next unit until all are done; a unit whose worker died is
    failed (its partial output removed) and a replacement worker takes the next one."""
    queue = deque(units)
    idle = list(pool.workers)
    running: dict[Any, tuple[Worker, Unit]] = {}
    while queue or running:
        while idle and queue:
            worker, unit = idle.pop(), queue.popleft()
            running[worker.actor.run.remote(unit)] = (worker, unit)
        if not running:
            for unit in queue:
                on_result(unit, UnitResult(unit.key, "-", error="no worker left"))
            return
        ready, _ = ray.wait(list(running), num_returns=1)
        for ref in ready:
            worker, unit = running.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                remove_path(partial_path(unit.output))  # a killed writer cannot clean up
                result = UnitResult(unit.key, worker.name,
                                    error=f"worker {worker.name} died: {type(exc).__name__}")
                replacement = pool.replace(worker)
                if replacement is not None:
                    idle.append(replacement)
            except ray.exceptions.RayError as exc:
                result = UnitResult(unit.key, worker.name, error=f"unexpected: {exc}")
                idle.append(worker)
            else:
                idle.append(worker)
            on_result(unit, result)
