"""Run a job on a Ray cluster: start render actors, feed items to idle ones, record progress.

Dispatch is pull style: each actor holds at most one item, and gets the next queued item as
soon as it reports back, so a fast worker takes more. Only small task and outcome dicts cross
Ray; videos go from the worker straight to the output store. A worker that dies mid-render
has its item requeued (up to `MAX_ATTEMPTS` tries); the job record is rewritten as items finish.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from farm.core.errors import FarmError, ModelUnavailableError
from farm.core.job import ItemOutcome, JobState
from farm.core.manifest import JobSpec
from farm.runtime.cluster import ClusterInfo, RayCluster
from farm.storage import open_store
from farm.storage.base import job_record_key

log = logging.getLogger(__name__)


class ProgressReporter(Protocol):
    def started(self, state: JobState, workers: list[dict]) -> None: ...

    def item_finished(self, state: JobState, item_id: str, outcome: ItemOutcome) -> None: ...

    def finished(self, state: JobState) -> None: ...


class NullReporter:
    def started(self, state, workers):
        pass

    def item_finished(self, state, item_id, outcome):
        pass

    def finished(self, state):
        pass


@dataclass
class RunOptions:
    address: str | None = None
    workers: int | None = None  # default: one per GPU, or one CPU worker
    cpu_threads: int | None = None  # default: all cores of the worker's node
    record_interval_s: float = 2.0
    reporter: ProgressReporter = field(default_factory=NullReporter)


@dataclass
class _Worker:
    name: str
    actor: object
    info: dict = field(default_factory=dict)


class JobRecorder:
    """Writes `job.json` into the output store, at most every `interval_s` unless forced."""

    def __init__(self, state: JobState, interval_s: float):
        self.state = state
        self.store = open_store(state.spec.output)
        self.key = job_record_key(state.spec.name)
        self.interval_s = interval_s
        self._last = 0.0

    def write(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        self.store.put_bytes(self.key, json.dumps(self.state.to_record(), indent=1).encode(), "application/json")

    @property
    def location(self) -> str:
        return self.store.location(self.key)


def run_job(spec: JobSpec, options: RunOptions | None = None) -> JobState:
    """Render every item of `spec`; returns the final job state. Raises FarmError if nothing can run."""
    options = options or RunOptions()
    state = JobState(spec)
    recorder = JobRecorder(state, options.record_interval_s)
    recorder.write(force=True)
    with RayCluster(options.address) as cluster:
        workers = _start_workers(spec.model, cluster, options)
        try:
            state.workers = {w.name: _public_info(w.info) for w in workers}
            state.start()
            options.reporter.started(state, [w.info for w in workers])
            _dispatch(state, workers, recorder, options.reporter)
        finally:
            _stop_workers(workers)
    state.finish()
    recorder.write(force=True)
    options.reporter.finished(state)
    return state


def _public_info(info: dict) -> dict:
    return {k: info.get(k) for k in ("device", "node_id", "load_seconds", "model")}


def _start_workers(model: str, cluster: ClusterInfo, options: RunOptions) -> list[_Worker]:
    import ray

    from farm.runtime.workers import RenderWorker

    gpus = int(cluster.gpus)
    count = options.workers or gpus or int(os.environ.get("FARM_CPU_WORKERS", "1"))
    threads = options.cpu_threads or _env_int("FARM_CPU_THREADS")
    handles = []
    for index in range(count):
        name = f"worker-{index}"
        if gpus:
            actor = RenderWorker.options(num_gpus=1, num_cpus=1, name=None).remote(model, name, threads)
        else:
            # CPU rendering: one scheduling slot, but torch uses every core of the node.
            actor = RenderWorker.options(num_cpus=1).remote(model, name, threads or os.cpu_count())
        handles.append(_Worker(name, actor))
    usable, errors = [], []
    for worker, info in zip(handles, ray.get([w.actor.info.remote() for w in handles])):
        worker.info = info
        (usable if info["ok"] else errors).append(worker)
    for worker in errors:
        log.warning("%s cannot render: %s", worker.name, worker.info["error"])
    if not usable:
        _stop_workers(handles)
        raise ModelUnavailableError(errors[0].info["error"] if errors else "no render workers could start")
    return usable


def _stop_workers(workers: list[_Worker]) -> None:
    import ray

    for worker in workers:
        try:
            ray.kill(worker.actor, no_restart=True)
        except Exception:  # already gone
            pass


def _dispatch(state: JobState, workers: list[_Worker], recorder: JobRecorder, reporter: ProgressReporter) -> None:
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    queue = deque(state.queued_ids())
    idle = deque(workers)
    in_flight: dict[object, tuple[_Worker, str]] = {}
    while queue or in_flight:
        while idle and queue:
            worker, item_id = idle.popleft(), queue.popleft()
            task = state.task_for(item_id)
            state.mark_running(item_id, worker.name)
            in_flight[worker.actor.render.remote(task.to_dict())] = (worker, item_id)
        if not in_flight:  # every worker is gone
            state.fail_remaining("worker_lost", "every render worker died; check the Ray logs of the workers")
            break
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
        for ref in ready:
            worker, item_id = in_flight.pop(ref)
            try:
                outcome = ItemOutcome.from_dict(ray.get(ref))
            except RayActorError as exc:
                message = f"worker {worker.name} died while rendering: {str(exc).splitlines()[0]}"
                if state.worker_lost(item_id, message):
                    queue.appendleft(item_id)
                if _actor_alive(worker):
                    idle.append(worker)
                continue
            except RayTaskError as exc:  # the actor's own code raised (a bug); the actor is fine
                outcome = ItemOutcome.failure(item_id, "render_error", str(exc).splitlines()[-1])
            state.record(outcome)
            reporter.item_finished(state, item_id, outcome)
            idle.append(worker)
        recorder.write()


def _actor_alive(worker: _Worker, timeout_s: float = 120.0) -> bool:
    """After a crash, Ray restarts the actor (max_restarts); wait for it and check it can render."""
    import ray

    try:
        info = ray.get(worker.actor.info.remote(), timeout=timeout_s)
    except Exception:
        return False
    worker.info = info
    return bool(info.get("ok"))


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    try:
        return int(value) if value else None
    except ValueError:
        raise FarmError(f"{name}={value!r} is not an integer; set it to a whole number or unset it") from None
