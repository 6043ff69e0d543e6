"""The dispatch engine: a pool of render actors shared by any number of jobs.

Workers: one actor per GPU, pinned to its node's `farm_tier_<tier>` resource; one CPU worker
when the cluster has no GPU. Each reports its card, tier and budget once its model is loaded.

Jobs are admitted with a plan (`farm.core.planner`); their items wait in per-job, per-tier
queues (`farm.core.jobqueue`): an idle worker serves the highest priority first, jobs of one
priority in turn, and within a job its own tier first, then smaller tiers (stealing), so no GPU
idles while work waits. A worker whose ladder wants a bigger GPU returns `escalate`: the item
moves to an idle bigger worker if there is one, else goes back to the same worker.

A worker's `render` returns as soon as the item is encoded and queued for upload; the item
stays `running` until its outcome arrives (with a later call, or from `flush`, which an idle
worker with pending uploads is sent). Only small task and outcome dicts cross Ray. A worker
that dies has its items requeued (up to `MAX_ATTEMPTS` tries). The engine is driven by `step()`
from one thread; `admit`, `cancel` and the read-only views may be called from others.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from farm.core.errors import FarmError, ModelUnavailableError
from farm.core.job import ESCALATE, ItemOutcome, JobState
from farm.core.jobqueue import JobQueue
from farm.core.ladder import BIGGER_TIER
from farm.core.planner import JobPlan, Planner
from farm.core.tiers import CPU_TIER, ClusterShape, TierTable, tiers_in_resources
from farm.core.vram import profile_for_model

log = logging.getLogger(__name__)

# How long a dead worker may take to come back (Ray restarts it and it reloads the model).
PROBE_TIMEOUT_S = float(os.environ.get("FARM_WORKER_RESTART_TIMEOUT_S", "180"))


class NullReporter:
    def started(self, state, workers):
        pass

    def item_finished(self, state, item_id, outcome):
        pass

    def finished(self, state):
        pass


@dataclass
class Worker:
    name: str
    actor: Any
    slot_tier: str
    info: dict = field(default_factory=dict)

    @property
    def tier(self) -> str:
        return self.info.get("tier") or self.slot_tier

    def public_info(self) -> dict:
        return {k: self.info.get(k) for k in ("tier", "device", "card", "node_id", "load_seconds", "model")}


@dataclass
class ActiveJob:
    """A job the engine is running: its state, where it records, and what to do at the end."""

    id: str
    state: JobState
    recorder: Any = None
    priority: int = 0
    reporter: Any = field(default_factory=NullReporter)
    on_finish: Callable[[ActiveJob], None] | None = None
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)


def start_workers(
    model: str,
    resources: dict[str, float],
    table: TierTable,
    *,
    cpu_workers: int | None = None,
    cpu_threads: int | None = None,
    faults: str | None = None,
) -> list[Worker]:
    """Start one render actor per GPU (or CPU workers) and wait for their models to load."""
    from farm.models.loading import absolute_model_ref
    from farm.runtime.workers import RenderWorker

    model = absolute_model_ref(model)
    gpus = int(resources.get("GPU", 0))
    tiers = tiers_in_resources(resources)
    handles: list[Worker] = []
    if tiers:
        for tier in table.ordered(t for t in tiers if t in table) + sorted(t for t in tiers if t not in table):
            for index in range(tiers[tier]):
                actor = RenderWorker.options(
                    num_gpus=1 if gpus else 0, num_cpus=1, resources={f"farm_tier_{tier}": 1}
                ).remote(model, f"{tier}-{index}", cpu_threads, faults, tier)
                handles.append(Worker(f"{tier}-{index}", actor, tier))
    elif gpus:
        for index in range(gpus):  # GPUs without tier labels: each worker measures its card
            actor = RenderWorker.options(num_gpus=1, num_cpus=1).remote(model, f"gpu-{index}", None, faults)
            handles.append(Worker(f"gpu-{index}", actor, "gpu"))
    else:
        count = cpu_workers or int(os.environ.get("FARM_CPU_WORKERS", "1"))
        threads = cpu_threads or _env_int("FARM_CPU_THREADS")
        for index in range(count):
            # CPU rendering: one scheduling slot, but torch uses every core of the node.
            actor = RenderWorker.options(num_cpus=1).remote(model, f"cpu-{index}", threads or os.cpu_count(), faults)
            handles.append(Worker(f"cpu-{index}", actor, CPU_TIER))
    usable, errors = [], []
    replies = [w.actor.info.remote() for w in handles]
    for worker, reply in zip(handles, replies):
        info = worker.info = _started(worker, reply)
        if info["ok"] and worker.tier != CPU_TIER and worker.tier not in table:
            info["ok"], info["error"] = False, f"its card ({info['card']}) is smaller than the smallest tier"
        (usable if info["ok"] else errors).append(worker)
    for worker in errors:
        log.warning("%s cannot render: %s", worker.name, worker.info["error"])
    if not usable:
        stop_workers(handles)
        raise ModelUnavailableError(errors[0].info["error"] if errors else "no render workers could start")
    stop_workers(errors)
    return usable


def _started(worker: Worker, reply) -> dict:
    """The worker's `info()`, or why its process could not start (an import error, a missing
    dependency or a shadowing folder on its node): the cause and the node, no traceback."""
    import ray
    from ray.exceptions import RayActorError

    try:
        return ray.get(reply)
    except RayActorError as error:
        return {"ok": False, "error": worker_start_failure(worker.name, str(error)), "tier": None}


def worker_start_failure(name: str, text: str) -> str:
    """'render worker NAME on node IP could not start: CAUSE' from Ray's actor-died message."""
    import re

    node = re.search(r"\bip=([0-9a-fA-F.:]+)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b", line)]
    cause = causes[-1] if causes else (lines[-1] if lines else "unknown error")
    where = f" on node {node.group(1)}" if node else ""
    return f"render worker {name}{where} could not start: {cause[:300]}"


def stop_workers(workers: list[Worker]) -> None:
    import ray

    for worker in workers:
        try:
            ray.kill(worker.actor, no_restart=True)
        except Exception:  # already gone
            pass


def count_tiers(workers: list[Worker]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for worker in workers:
        counts[worker.tier] = counts.get(worker.tier, 0) + 1
    return counts


class Engine:
    def __init__(self, workers: list[Worker], table: TierTable, metrics=None):
        self.workers = list(workers)
        self.table = table
        self.metrics = metrics  # a farm.metrics.FarmMetrics, or None
        counts = count_tiers(self.workers)
        tiers = [CPU_TIER] if set(counts) == {CPU_TIER} else table.ordered(counts)
        self.queue = JobQueue(tiers, counts)
        self.jobs: dict[str, ActiveJob] = {}
        self.idle: list[Worker] = list(workers)
        self.in_flight: dict[Any, tuple[Worker, str | None, str | None]] = {}  # ref -> (worker, job, item)
        self.uploading: dict[str, set[tuple[str, str]]] = {w.name: set() for w in workers}
        self.probing: dict[Any, Worker] = {}
        self.probe_started: dict[Any, float] = {}
        self.draining = False  # stopping: no new work is sent (see `drain`)
        self.lock = threading.RLock()

    # --- views ------------------------------------------------------------------------------

    @property
    def shape(self) -> ClusterShape:
        return ClusterShape(count_tiers(self.workers))

    @property
    def model_config_sha256(self) -> str:
        return self.workers[0].info["model"]["config_sha256"]

    def worker_infos(self) -> dict[str, dict]:
        return {w.name: w.public_info() for w in self.workers}

    def busy(self) -> bool:
        with self.lock:
            return bool((self.jobs and not self.draining) or self.in_flight or self.probing or any(self.uploading.values()))

    # --- jobs -------------------------------------------------------------------------------

    def admit(self, job: ActiveJob, plan: JobPlan, replace_etags: dict[str, str] | None = None) -> None:
        """Queue a job's planned items; items rejected at plan time fail at once."""
        with self.lock:
            self.jobs[job.id] = job
            self.queue.add_job(job.id, job.priority)
            for item_plan in plan.items:
                job.state.mark_planned(item_plan.item_id, item_plan.tier)
                if item_plan.rejected:
                    job.state.fail(item_plan.item_id, "no_fitting_tier", item_plan.rejected)
                    continue
                # The plan itself, shared by identical items: a job of 100,000 items keeps
                # one small dict per item, and the task fields are built when it is sent.
                job.extras[item_plan.item_id] = {"plan": item_plan}
                if replace_etags and item_plan.item_id in replace_etags:
                    job.extras[item_plan.item_id]["replace_etag"] = replace_etags[item_plan.item_id]
                self.queue.push(job.id, item_plan.item_id, item_plan.tier)
            job.state.start()
            self._finish_if_done(job)

    def cancel(self, job_id: str) -> bool:
        """Drop the job's queued items; running ones finish (their results are kept)."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return False
            job.state.cancelled = True
            dropped = self.queue.remove_job(job_id)
            for item_id in dropped:
                job.state.mark_cancelled(item_id)
            if self.metrics is not None and dropped:
                self.metrics.items.labels("cancelled", "none", job.state.spec.model).inc(len(dropped))
            self._finish_if_done(job)
            return True

    # --- the loop -----------------------------------------------------------------------------

    def run_until_done(self, stop: threading.Event | None = None, grace_s: float = 30.0) -> bool:
        """Drive every admitted job to its end; False when `stop` was set first (then `drain`)."""
        while self.busy():
            if stop is not None and stop.is_set():
                self.drain(grace_s)
                return False
            self.step()
        return True

    def drain(self, grace_s: float) -> list[tuple[str, str]]:
        """Stop (for the thread that drives `step`): send no new work, give running items and
        pending uploads up to `grace_s` to finish, then hand back what is still running."""
        self.begin_drain()
        deadline = time.monotonic() + grace_s
        while not self.settled() and time.monotonic() < deadline:
            self.step(min(1.0, max(deadline - time.monotonic(), 0.01)))
        return self.hand_back_held()

    def begin_drain(self) -> None:
        with self.lock:
            self.draining = True

    def settled(self) -> bool:
        """Nothing rendering and nothing waiting for upload."""
        with self.lock:
            return not self.in_flight and not any(self.uploading.values())

    def hand_back_held(self) -> list[tuple[str, str]]:
        """Items still rendering or uploading when a drain ends go back to their job's queue:
        they never committed, so a resumed job renders them (a late commit is found then)."""
        with self.lock:
            held = {(job, item) for _, job, item in self.in_flight.values() if item is not None}
            held |= {pair for pending in self.uploading.values() for pair in pending}
            for job_id, item_id in held:
                if job_id in self.jobs:
                    self.jobs[job_id].state.hand_back(item_id)
            return sorted(held)

    def step(self, timeout: float = 1.0) -> None:
        import ray

        with self.lock:
            self._fill()
            if not self.in_flight and not self.probing:
                if len(self.queue) and not self.draining:  # work left, nobody able to take it
                    for job in list(self.jobs.values()):
                        job.state.fail_remaining("worker_lost", "no render worker left that can take these items")
                        self.queue.remove_job(job.id)
                        self._finish_if_done(job)
                return
            refs = list(self.in_flight) + list(self.probing)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        with self.lock:
            # A worker whose node is gone may wait forever for resources to restart on: give up.
            now = time.monotonic()
            ready += [ref for ref in self.probing if ref not in ready and now - self.probe_started[ref] > PROBE_TIMEOUT_S]
            for ref in ready:
                if ref in self.probing:
                    self._probed(ref)
                else:
                    self._finished(ref)
            for job in list(self.jobs.values()):
                if job.recorder is not None:
                    job.recorder.write()
            self.publish()

    def publish(self) -> None:
        """Queue, in-flight and worker gauges (the counters are updated as outcomes arrive)."""
        if self.metrics is None:
            return
        with self.lock:
            in_flight: dict[str, int] = {}
            for worker, _job, item in self.in_flight.values():
                if item is not None:
                    in_flight[worker.tier] = in_flight.get(worker.tier, 0) + 1
            for worker in self.workers:
                uploads = len(self.uploading.get(worker.name, ()))
                if uploads:
                    in_flight[worker.tier] = in_flight.get(worker.tier, 0) + uploads
            busy = {w.name for w, _, _ in self.in_flight.values()}
            states: dict[tuple[str, str], int] = {}
            for worker in self.workers:
                key = (worker.tier, "busy" if worker.name in busy else "idle")
                states[key] = states.get(key, 0) + 1
            for worker in self.probing.values():
                states[(worker.tier, "lost")] = states.get((worker.tier, "lost"), 0) + 1
            self.metrics.engine_state(queued=self.queue.queued_by_tier(), in_flight=in_flight, workers=states)

    def _fill(self) -> None:
        # Smallest tiers choose first, so big workers only steal what small ones cannot take now.
        for worker in sorted(self.idle, key=lambda w: self._rank(w.tier)):
            taken = None if self.draining else self.queue.take(worker.tier)
            if taken is not None:
                self.idle.remove(worker)
                self._send(worker, taken[0], taken[1])
            elif self.uploading[worker.name]:
                self.idle.remove(worker)
                self.in_flight[worker.actor.flush.remote()] = (worker, None, None)

    def _rank(self, tier: str) -> int:
        return self.queue.tiers.index(tier) if tier in self.queue.tiers else -1

    def _send(self, worker: Worker, job_id: str, item_id: str, *, new_attempt: bool = True, allow_bigger: bool = True) -> None:
        job = self.jobs[job_id]
        extras = job.extras[item_id]
        plan = extras["plan"]
        task = job.state.task_for(
            item_id,
            job_id=job_id,
            settings=extras["settings"] if "settings" in extras else plan.settings.to_dict(),
            planned_tier=plan.tier,
            degradations=list(extras["degradations"]) if "degradations" in extras else [d.to_dict() for d in plan.degradations],
            ooms=list(extras.get("ooms", ())),
            bigger_tier_available=allow_bigger and self.queue.has_bigger_tier(worker.tier),
            estimate_gib=round(plan.estimate.total_gib, 2) if plan.estimate else None,
            replace_etag=extras.get("replace_etag"),
        )
        job.state.mark_running(item_id, worker.name, worker.tier, new_attempt=new_attempt)
        self.in_flight[worker.actor.render.remote(task.to_dict())] = (worker, job_id, item_id)

    def _finished(self, ref) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        worker, job_id, item_id = self.in_flight.pop(ref)
        try:
            reply = ray.get(ref)
        except RayActorError as exc:
            self._worker_died(worker, job_id, item_id, str(exc).splitlines()[0])
            return
        except RayTaskError as exc:  # the actor's own code raised (a bug); the actor is fine
            reply = {"outcomes": [], "pending": [list(p) for p in self.uploading[worker.name]]}
            if item_id is not None:
                failure = ItemOutcome.failure(item_id, "render_error", str(exc).splitlines()[-1], job_id=job_id)
                reply["outcomes"].append(failure.to_dict())
        self.uploading[worker.name] = {tuple(pending) for pending in reply["pending"]}
        memory = reply.get("memory")
        if memory and self.metrics is not None:
            self.metrics.worker_memory(worker.name, worker.tier, memory.get("used"), memory.get("total"))
        escalated = None
        for data in reply["outcomes"]:
            outcome = ItemOutcome.from_dict(data)
            if outcome.status == ESCALATE:
                escalated = outcome
            else:
                self._record(outcome)
        if escalated is not None and escalated.job_id in self.jobs and self.draining:
            self.jobs[escalated.job_id].state.hand_back(escalated.item_id)  # stopping: not moved on
            self.idle.append(worker)
        elif escalated is not None and escalated.job_id in self.jobs:
            self._escalate(worker, escalated)
        else:
            self.idle.append(worker)
        self._finish_finished_jobs()

    def _record(self, outcome: ItemOutcome) -> None:
        job = self.jobs.get(outcome.job_id)
        if job is None:  # a job finished or cancelled meanwhile; its result is committed anyway
            return
        job.state.record(outcome)
        job.reporter.item_finished(job.state, outcome.item_id, outcome)
        if self.metrics is not None:
            self.metrics.outcome(outcome, job.state.spec.model)

    def _worker_died(self, worker: Worker, job_id: str | None, item_id: str | None, reason: str) -> None:
        """Requeue what the worker held: the item it was rendering and its unfinished uploads."""
        message = f"worker {worker.name} died: {reason}"
        lost = set(self.uploading.get(worker.name, set()))
        self.uploading[worker.name] = set()
        if item_id is not None:
            lost.add((job_id, item_id))
        for lost_job, lost_item in sorted(lost):
            job = self.jobs.get(lost_job)
            if job is not None and job.state.worker_lost(lost_item, message) and not job.state.cancelled:
                self.queue.push(lost_job, lost_item, job.extras[lost_item]["plan"].tier, front=True)
        probe = worker.actor.info.remote()  # restarted by Ray, or gone for good
        self.probing[probe] = worker
        self.probe_started[probe] = time.monotonic()
        self._finish_finished_jobs()

    def _escalate(self, worker: Worker, outcome: ItemOutcome) -> None:
        """Out of memory with a bigger tier in the cluster: move there if one is idle now."""
        job = self.jobs[outcome.job_id]
        extras = job.extras[outcome.item_id]
        extras["settings"], extras["degradations"] = outcome.settings, list(outcome.degradations)
        extras["ooms"] = list(outcome.ooms)
        bigger = [w for w in self.idle if self._rank(w.tier) > self._rank(worker.tier)]
        if not bigger:
            self._send(worker, job.id, outcome.item_id, new_attempt=False, allow_bigger=False)
            return
        self.idle.append(worker)
        target = min(bigger, key=lambda w: self._rank(w.tier))
        extras["degradations"].append({"step": BIGGER_TIER, "from": worker.tier, "to": target.tier, "why": outcome.message})
        self.idle.remove(target)
        self._send(target, job.id, outcome.item_id, new_attempt=False)

    def _probed(self, ref) -> None:
        import ray

        worker = self.probing.pop(ref)
        self.probe_started.pop(ref, None)
        try:
            info = ray.get(ref, timeout=0.1)
        except Exception:  # dead, or not back within PROBE_TIMEOUT_S
            info = {"ok": False}
        if info.get("ok"):
            worker.info = info
            self.idle.append(worker)
            return
        log.warning("worker %s is gone", worker.name)
        try:
            ray.kill(worker.actor, no_restart=True)  # stop Ray from restarting it somewhere later
        except Exception:
            pass
        self.workers.remove(worker)
        self.uploading.pop(worker.name, None)
        orphans = self.queue.worker_gone(worker.tier)
        if orphans:
            self._replan(orphans)
        self._finish_finished_jobs()

    def _replan(self, orphans: list[tuple[str, str]]) -> None:
        """The last worker of a tier is gone: plan its queued items on the tiers that are left."""
        counts = count_tiers(self.workers)
        for job_id, item_id in orphans:
            job = self.jobs[job_id]
            if not counts:
                job.state.fail(item_id, "worker_lost", "every render worker is gone")
                continue
            planner = Planner(self.table, ClusterShape(counts), profile_for_model(job.state.spec.model))
            item = next(i for i in job.state.spec.items if i.id == item_id)
            item_plan = planner.plan_item(item, order=job.state.spec.degrade_order, unfit=job.state.spec.unfit)
            if item_plan.rejected:
                job.state.fail(item_id, "no_fitting_tier", item_plan.rejected)
                continue
            job.extras[item_id] = {"plan": item_plan, **{k: v for k, v in job.extras[item_id].items() if k == "replace_etag"}}
            job.state.mark_planned(item_id, item_plan.tier)
            self.queue.push(job_id, item_id, item_plan.tier)

    # --- finishing jobs -----------------------------------------------------------------------

    def _holds(self, job_id: str) -> bool:
        if job_id in self.queue.jobs and self.queue.queued(job_id):
            return True
        if any(j == job_id for _, j, _ in self.in_flight.values()):
            return True
        return any(j == job_id for pending in self.uploading.values() for j, _ in pending)

    def _finish_finished_jobs(self) -> None:
        for job in list(self.jobs.values()):
            self._finish_if_done(job)

    def _finish_if_done(self, job: ActiveJob) -> None:
        if job.id not in self.jobs or self._holds(job.id):
            return
        del self.jobs[job.id]
        self.queue.remove_job(job.id)
        if job.on_finish is not None:
            try:
                job.on_finish(job)
            except Exception:  # a failing callback must not stop the engine
                log.exception("finishing job %s", job.id)
        job.done.set()


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    try:
        return int(value) if value else None
    except ValueError:
        raise FarmError(f"{name}={value!r} is not an integer; set it to a whole number or unset it") from None
