"""Run a job on a Ray cluster: start tiered render actors, plan, feed items, record progress.

Workers: one actor per GPU, pinned to its node's `farm_tier_<tier>` resource; one CPU worker
when the cluster has no GPU. Each actor reports its card, tier and budget once its model is
loaded; the plan (`farm.core.planner`) is made against the tiers that actually came up.

Dispatch is pull style through per-tier queues (`farm.core.scheduler`): an idle worker takes
from its own tier, or steals from a smaller tier, so no GPU idles while work waits. A worker
whose ladder wants a bigger GPU returns `escalate`; the item moves to an idle bigger worker if
there is one, else goes back to the same worker, whose ladder then moves on. Only small task
and outcome dicts cross Ray; videos go from the worker straight to the output store. A worker
that dies mid-render has its item requeued (up to `MAX_ATTEMPTS` tries).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from farm.core.errors import FarmError, ModelUnavailableError, StorageError
from farm.core.job import ESCALATE, ItemOutcome, JobState
from farm.core.ladder import BIGGER_TIER
from farm.core.manifest import JobSpec
from farm.core.planner import JobPlan, Planner, plan_job
from farm.core.scheduler import TierScheduler
from farm.core.tiers import CPU_TIER, ClusterShape, TierTable, load_tier_table, tiers_in_resources
from farm.core.vram import profile_for_model
from farm.runtime.cluster import RayCluster, local_gpu_resources
from farm.storage import open_store
from farm.storage.base import STAGING, job_record_key, job_spec_key
from farm.storage.resume import scan_committed

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
    workers: int | None = None  # CPU workers when the cluster has no GPU (default 1)
    cpu_threads: int | None = None  # default: all cores of the worker's node (CPU workers)
    record_interval_s: float = 2.0
    faults: str | None = None  # fault injection rules for the workers (tests, chaos runs)
    tiers: TierTable | None = None
    force: bool = False  # render items even when an identical result is committed
    manifest: tuple[str, bytes] | None = None  # (file name, bytes) of the manifest as submitted
    reporter: ProgressReporter = field(default_factory=NullReporter)


@dataclass
class _Worker:
    name: str
    actor: Any
    slot_tier: str
    info: dict = field(default_factory=dict)

    @property
    def tier(self) -> str:
        return self.info.get("tier") or self.slot_tier


class JobRecorder:
    """Keeps `job.json` in the output store current without ever blocking the dispatch loop.

    `write()` hands the latest snapshot to a writer thread (at most one write every
    `interval_s`; a newer snapshot replaces an unwritten one). A storage outage delays the
    record, not the job; `close()` writes the final record, waiting for storage if needed.
    """

    def __init__(self, state: JobState, store, interval_s: float):
        self.state = state
        self.store = store
        self.key = job_record_key(state.spec.name)
        self.interval_s = interval_s
        self._last = 0.0
        self._snapshot: bytes | None = None
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="farm-job-record", daemon=True)
        self._thread.start()

    def write(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        snapshot = json.dumps(self.state.to_record(), indent=1).encode()
        with self._wake:
            self._snapshot = snapshot
            self._wake.notify()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while self._snapshot is None and not self._closed:
                    self._wake.wait()
                snapshot, self._snapshot = self._snapshot, None
                closed = self._closed
            if snapshot is not None:
                try:
                    self.store.put_bytes(self.key, snapshot, "application/json")
                except StorageError as error:
                    log.warning("job record not written: %s", error)
            if closed and snapshot is None:
                return

    def close(self, *, final: bool = True) -> None:
        if final:
            self.write(force=True)
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    @property
    def location(self) -> str:
        return self.store.location(self.key)


def write_job_files(store, spec: JobSpec, manifest: tuple[str, bytes] | None) -> None:
    """Store the validated job (`spec.json`, for `farm resume`) and the manifest as submitted,
    only when they differ from what is there, so an identical re-run changes no object."""
    files = [(job_spec_key(spec.name), json.dumps(spec.to_dict(), indent=1).encode())]
    if manifest is not None:
        name, data = manifest
        suffix = name.rsplit(".", 1)[-1].lower() if "." in name else "txt"
        files.append((f"{spec.name}/manifest.{suffix}", data))
    for key, data in files:
        if store.get_bytes(key) != data:
            store.put_bytes(key, data, "application/json" if key.endswith(".json") else "application/octet-stream")


def clear_staging(store, job_name: str) -> None:
    """Remove uploads that never became a committed result (a loser of a race, a killed worker).
    Runs after the workers stopped; a crash before this point leaves them for the next run."""
    for info in list(store.list(f"{job_name}/{STAGING}/")):
        try:
            store.delete(info.key)
        except StorageError as error:
            log.warning("could not remove %s: %s", info.key, error)


def run_job(spec: JobSpec, options: RunOptions | None = None) -> JobState:
    """Render every item of `spec` not already committed; returns the final job state.

    Raises FarmError when the job cannot start (output storage or model unavailable) before
    any GPU time is spent.
    """
    options = options or RunOptions()
    table = options.tiers or load_tier_table()
    store = open_store(spec.output)
    store.check_access(spec.name)
    write_job_files(store, spec, options.manifest)
    state = JobState(spec)
    had_record = store.head(job_record_key(spec.name)) is not None
    recorder = JobRecorder(state, store, options.record_interval_s)
    local = local_gpu_resources(table) if not (options.address or os.environ.get("RAY_ADDRESS")) else {}
    try:
        with RayCluster(options.address, **local) as cluster:
            workers = _start_workers(spec.model, cluster.resources, options, table)
            try:
                state.workers = {w.name: _public_info(w.info) for w in workers}
                config_sha256 = workers[0].info["model"]["config_sha256"]
                decision = scan_committed(store, spec, model_config_sha256=config_sha256, force=options.force)
                for item_id, why in decision.skip.items():
                    state.mark_skipped(item_id, why)
                todo = replace(spec, items=[i for i in spec.items if i.id not in decision.skip], rejected=[])
                plan = plan_job(todo, ClusterShape(_count_tiers(workers)), table)
                state.plan = {k: v for k, v in plan.to_dict().items() if k != "items"}
                state.start()
                options.reporter.started(state, [w.info for w in workers])
                if todo.items or spec.rejected or not had_record:
                    recorder.write(force=True)
                Dispatcher(state, plan, workers, table, recorder, options.reporter, decision.replace).run()
            finally:
                _stop_workers(workers)
        clear_staging(store, spec.name)
        state.finish()
    finally:
        # A re-run that found everything committed changes no object, job record included.
        unchanged = had_record and not state.worked and not spec.rejected
        recorder.close(final=not unchanged)
    options.reporter.finished(state)
    return state


def _public_info(info: dict) -> dict:
    return {k: info.get(k) for k in ("tier", "device", "card", "node_id", "load_seconds", "model")}


def _count_tiers(workers: list[_Worker]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for worker in workers:
        counts[worker.tier] = counts.get(worker.tier, 0) + 1
    return counts


def _start_workers(model: str, resources: dict[str, float], options: RunOptions, table: TierTable) -> list[_Worker]:
    import ray

    from farm.runtime.workers import RenderWorker

    gpus = int(resources.get("GPU", 0))
    tiers = tiers_in_resources(resources)
    handles: list[_Worker] = []
    if tiers:
        for tier in table.ordered(t for t in tiers if t in table) + sorted(t for t in tiers if t not in table):
            for index in range(tiers[tier]):
                actor = RenderWorker.options(
                    num_gpus=1 if gpus else 0, num_cpus=1, resources={f"farm_tier_{tier}": 1}
                ).remote(model, f"{tier}-{index}", options.cpu_threads, options.faults, tier)
                handles.append(_Worker(f"{tier}-{index}", actor, tier))
    elif gpus:
        for index in range(gpus):  # GPUs without tier labels: each worker measures its card
            actor = RenderWorker.options(num_gpus=1, num_cpus=1).remote(model, f"gpu-{index}", None, options.faults)
            handles.append(_Worker(f"gpu-{index}", actor, "gpu"))
    else:
        count = options.workers or int(os.environ.get("FARM_CPU_WORKERS", "1"))
        threads = options.cpu_threads or _env_int("FARM_CPU_THREADS")
        for index in range(count):
            # CPU rendering: one scheduling slot, but torch uses every core of the node.
            actor = RenderWorker.options(num_cpus=1).remote(model, f"cpu-{index}", threads or os.cpu_count(), options.faults)
            handles.append(_Worker(f"cpu-{index}", actor, CPU_TIER))
    usable, errors = [], []
    for worker, info in zip(handles, ray.get([w.actor.info.remote() for w in handles])):
        worker.info = info
        if info["ok"] and worker.tier != CPU_TIER and worker.tier not in table:
            info["ok"], info["error"] = False, f"its card ({info['card']}) is smaller than the smallest tier"
        (usable if info["ok"] else errors).append(worker)
    for worker in errors:
        log.warning("%s cannot render: %s", worker.name, worker.info["error"])
    if not usable:
        _stop_workers(handles)
        raise ModelUnavailableError(errors[0].info["error"] if errors else "no render workers could start")
    _stop_workers(errors)
    return usable


def _stop_workers(workers: list[_Worker]) -> None:
    import ray

    for worker in workers:
        try:
            ray.kill(worker.actor, no_restart=True)
        except Exception:  # already gone
            pass


class Dispatcher:
    """The dispatch loop of one job: queues per tier, idle workers, in-flight renders, uploads.

    A worker's `render` returns once the item is encoded and queued for upload; the item stays
    `running` until an outcome for it arrives (with a later call, or from `flush`, which an idle
    worker with pending uploads is sent). An item counts as done only when its sidecar is stored.
    """

    def __init__(
        self, state: JobState, plan: JobPlan, workers: list[_Worker], table: TierTable, recorder, reporter,
        replace_etags: dict[str, str] | None = None,
    ):
        self.state = state
        self.plan = plan
        self.table = table
        self.recorder = recorder
        self.reporter = reporter
        self.workers = workers
        tiers = [CPU_TIER] if plan.shape.present == [CPU_TIER] else table.ordered(plan.shape.present)
        self.scheduler = TierScheduler(tiers, plan.shape.workers)
        self.idle: list[_Worker] = list(workers)
        self.in_flight: dict[Any, tuple[_Worker, str | None]] = {}  # ref -> (worker, item id, or None for a flush)
        self.uploading: dict[str, set[str]] = {w.name: set() for w in workers}
        self.probing: dict[Any, _Worker] = {}
        self.extras: dict[str, dict[str, Any]] = {}
        for item_plan in plan.items:
            state.mark_planned(item_plan.item_id, item_plan.tier)
            if item_plan.rejected:
                state.fail(item_plan.item_id, "no_fitting_tier", item_plan.rejected)
                continue
            self.extras[item_plan.item_id] = {
                "settings": item_plan.settings.to_dict(),
                "planned_tier": item_plan.tier,
                "degradations": [d.to_dict() for d in item_plan.degradations],
                "estimate_gib": round(item_plan.estimate.total_gib, 2) if item_plan.estimate else None,
                "replace_etag": (replace_etags or {}).get(item_plan.item_id),
            }
            self.scheduler.push(item_plan.item_id, item_plan.tier)

    def _busy(self) -> bool:
        return bool(len(self.scheduler) or self.in_flight or self.probing or any(self.uploading.values()))

    def run(self) -> None:
        import ray

        while self._busy():
            self._fill()
            if not self.in_flight and not self.probing:
                if len(self.scheduler):  # work left, nobody able to take it
                    self.state.fail_remaining("worker_lost", "no render worker left that can take these items")
                break
            refs = list(self.in_flight) + list(self.probing)
            ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in self.probing:
                    self._probed(ref)
                else:
                    self._finished(ref)
            self.recorder.write()

    def _fill(self) -> None:
        # Smallest tiers choose first, so big workers only steal what small ones cannot take now.
        for worker in sorted(self.idle, key=lambda w: self._rank(w.tier)):
            taken = self.scheduler.take(worker.tier)
            if taken is not None:
                self.idle.remove(worker)
                self._send(worker, taken[0])
            elif self.uploading[worker.name]:
                self.idle.remove(worker)
                self.in_flight[worker.actor.flush.remote()] = (worker, None)

    def _rank(self, tier: str) -> int:
        return self.scheduler.rank.get(tier, -1)

    def _send(self, worker: _Worker, item_id: str, *, new_attempt: bool = True, allow_bigger: bool = True) -> None:
        extras = self.extras[item_id]
        bigger = allow_bigger and worker.tier in self.scheduler.rank and bool(self.scheduler.bigger_tiers(worker.tier))
        task = self.state.task_for(
            item_id,
            settings=extras["settings"],
            planned_tier=extras["planned_tier"],
            degradations=list(extras["degradations"]),
            ooms=list(extras.get("ooms", ())),
            bigger_tier_available=bigger,
            estimate_gib=extras["estimate_gib"],
            replace_etag=extras["replace_etag"],
        )
        self.state.mark_running(item_id, worker.name, worker.tier, new_attempt=new_attempt)
        self.in_flight[worker.actor.render.remote(task.to_dict())] = (worker, item_id)

    def _finished(self, ref) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        worker, item_id = self.in_flight.pop(ref)
        try:
            reply = ray.get(ref)
        except RayActorError as exc:
            self._worker_died(worker, item_id, str(exc).splitlines()[0])
            return
        except RayTaskError as exc:  # the actor's own code raised (a bug); the actor is fine
            message = str(exc).splitlines()[-1]
            reply = {"outcomes": [], "pending": sorted(self.uploading[worker.name])}
            if item_id is not None:
                reply["outcomes"].append(ItemOutcome.failure(item_id, "render_error", message).to_dict())
        self.uploading[worker.name] = set(reply["pending"])
        escalated = None
        for data in reply["outcomes"]:
            outcome = ItemOutcome.from_dict(data)
            if outcome.status == ESCALATE:
                escalated = outcome
                continue
            self.state.record(outcome)
            self.reporter.item_finished(self.state, outcome.item_id, outcome)
        if escalated is not None:
            self._escalate(worker, escalated.item_id, escalated)
        else:
            self.idle.append(worker)

    def _worker_died(self, worker: _Worker, item_id: str | None, reason: str) -> None:
        """Requeue what the worker held: the item it was rendering and its unfinished uploads."""
        message = f"worker {worker.name} died: {reason}"
        lost = set(self.uploading.pop(worker.name, set()))
        self.uploading[worker.name] = set()
        if item_id is not None:
            lost.add(item_id)
        for lost_id in sorted(lost):
            if self.state.worker_lost(lost_id, message):
                self.scheduler.push(lost_id, self.extras[lost_id]["planned_tier"], front=True)
        self.probing[worker.actor.info.remote()] = worker  # restarted by Ray, or gone for good

    def _escalate(self, worker: _Worker, item_id: str, outcome: ItemOutcome) -> None:
        """Out of memory with a bigger tier in the cluster: move there if one is idle now."""
        extras = self.extras[item_id]
        extras["settings"], extras["degradations"] = outcome.settings, list(outcome.degradations)
        extras["ooms"] = list(outcome.ooms)
        bigger = [w for w in self.idle if self._rank(w.tier) > self._rank(worker.tier)]
        if not bigger:
            self._send(worker, item_id, new_attempt=False, allow_bigger=False)
            return
        self.idle.append(worker)
        target = min(bigger, key=lambda w: self._rank(w.tier))
        extras["degradations"].append(
            {"step": BIGGER_TIER, "from": worker.tier, "to": target.tier, "why": outcome.message}
        )
        self.idle.remove(target)
        self._send(target, item_id, new_attempt=False)

    def _probed(self, ref) -> None:
        import ray

        worker = self.probing.pop(ref)
        try:
            info = ray.get(ref)
        except Exception:
            info = {"ok": False}
        if info.get("ok"):
            worker.info = info
            self.idle.append(worker)
            return
        log.warning("worker %s is gone", worker.name)
        self.workers.remove(worker)
        orphans = self.scheduler.worker_gone(worker.tier)
        if orphans:
            self._replan(orphans)

    def _replan(self, item_ids: list[str]) -> None:
        """The last worker of a tier is gone: plan its queued items on the tiers that are left."""
        counts = _count_tiers(self.workers)
        if not counts:
            for item_id in item_ids:
                self.state.fail(item_id, "worker_lost", "every render worker is gone")
            return
        planner = Planner(self.table, ClusterShape(counts), profile_for_model(self.state.spec.model))
        items = {item.id: item for item in self.state.spec.items}
        for item_id in item_ids:
            item_plan = planner.plan_item(items[item_id], order=self.state.spec.degrade_order, unfit=self.state.spec.unfit)
            if item_plan.rejected:
                self.state.fail(item_id, "no_fitting_tier", item_plan.rejected)
                continue
            self.extras[item_id].update(
                settings=item_plan.settings.to_dict(),
                planned_tier=item_plan.tier,
                degradations=[d.to_dict() for d in item_plan.degradations],
            )
            self.state.mark_planned(item_id, item_plan.tier)
            self.scheduler.push(item_id, item_plan.tier)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    try:
        return int(value) if value else None
    except ValueError:
        raise FarmError(f"{name}={value!r} is not an integer; set it to a whole number or unset it") from None
