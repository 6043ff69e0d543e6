"""The dispatch engine: a pool of render workers shared by any number of jobs.

Workers: one actor per GPU, pinned to its node's `farm_tier_<tier>` resource; one CPU worker
when the cluster has no GPU (`start_workers`). Each reports its card, tier and budget once its
model is loaded.

The engine is a thin loop around `farm.core.dispatch.DispatchState`, which makes every
scheduling decision (routing, stealing, escalation, requeue, re-planning, cancellation): `step()`
waits for a worker call to return, turns it into events, hands them to the state machine and
carries out its instructions (send a task, probe or stop a worker, finish a job). Workers are
reached through `farm.runtime.handles` (Ray actors, or objects in this process for tests), so
nothing here depends on how a worker runs. Only small typed tasks and replies cross Ray
(`farm.core.contracts`).

The CPU stage rides the same loop: each committed item with deliverables becomes a `PostTask`
in `farm.post.stage.PostStage`, whose calls (Ray tasks with no GPU) the loop waits on beside the
render calls, so a GPU worker never waits for them. A job whose renders are done but whose
deliverables are not waits in `finishing` and ends when its last deliverable does.

A cancel (`cancel`, `cancel_item`) goes through the state machine too: queued items are
cancelled at once, and each rendering one's worker gets a `cancel` call that runs beside its
render (`CancelRunning`); the render stops at its next denoise step and its reply, a `cancelled`
outcome, frees the worker for its next item.

`step()` is driven from one thread; `admit`, `cancel`, `cancel_item` and the read-only views may
be called from others (under `lock`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from farm.core import dispatch
from farm.core.errors import ModelUnavailableError
from farm.core.job import ItemOutcome, JobState
from farm.core.planner import JobPlan
from farm.core.states import FINAL_ITEM_STATES, RUNNING, SKIPPED, SUCCEEDED
from farm.core.tiers import CPU_TIER, ClusterShape, TierTable, tiers_in_resources
from farm.core.vram import profile_for_model
from farm.models.loading import absolute_model_ref
from farm.post.item import PostResult, PostTask
from farm.post.stage import PostStage, RayPostRunner, ThreadPostRunner, result_of
from farm.runtime.handles import CallPool, RayCallPool, RayWorkerHandle, WorkerCallError, WorkerDied, WorkerHandle
from farm.settings import FarmSettings

log = logging.getLogger(__name__)

COMMITS_WAIT_S = 10.0  # how long one open commits call waits before it returns empty (and is reopened)


class NullReporter:
    def started(self, state, workers):
        pass

    def item_finished(self, state, item_id, outcome):
        pass

    def finished(self, state):
        pass


@dataclass
class Worker:
    """A render worker the engine can use: its handle, the tier it was started for, its `info()`."""

    name: str
    handle: WorkerHandle
    slot_tier: str
    info: dict = field(default_factory=dict)

    @property
    def tier(self) -> str:
        return self.info.get("tier") or self.slot_tier

    @property
    def actor(self) -> Any:
        """The Ray actor behind the handle (None for an in-process worker)."""
        return getattr(self.handle, "actor", None)

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
    done: threading.Event = field(default_factory=threading.Event)


def start_workers(
    model: str,
    resources: dict[str, float],
    table: TierTable,
    *,
    settings: FarmSettings | None = None,
    cpu_workers: int | None = None,
    cpu_threads: int | None = None,
    faults: str | None = None,
    mailbox=None,
    unusable: Callable[[str], None] | None = None,
) -> list[Worker]:
    """Start one render actor per GPU (or CPU workers) and wait for their models to load.
    `mailbox` (farm.runtime.mailbox.RayMailbox): where they report each commit, for the Engine;
    `unusable(tier)` hears of each worker that could not start (the fleet then leaves its GPU be).

    `settings` travel to every worker (which reads no environment of its own for them); the
    keyword arguments override their engine and worker parts."""
    settings = settings or FarmSettings()
    faults = faults if faults is not None else settings.workers.faults
    model = absolute_model_ref(model)
    gpus = int(resources.get("GPU", 0))
    tiers = tiers_in_resources(resources)
    handles: list[Worker] = []
    spawn = dict(settings=settings, faults=faults, mailbox=mailbox)
    if tiers:
        for tier in table.ordered(t for t in tiers if t in table) + sorted(t for t in tiers if t not in table):
            for index in range(tiers[tier]):
                handles.append(spawn_worker(model, f"{tier}-{index}", tier, gpu=bool(gpus), cpu_threads=cpu_threads, **spawn))
    elif gpus:
        for index in range(gpus):  # GPUs without tier labels: each worker measures its card
            handles.append(spawn_worker(model, f"gpu-{index}", None, gpu=True, **spawn))
    elif settings.engine.autoscale_max_workers:
        return []  # no GPU node yet: the autoscaler brings them, and the engine's fleet their workers
    else:
        for name, threads in cpu_worker_specs(settings, cpu_workers, cpu_threads):
            handles.append(spawn_worker(model, name, None, gpu=False, cpu_threads=threads, slot_tier=CPU_TIER, **spawn))
    usable, errors = [], []
    replies = [w.actor.info.remote() for w in handles]
    for worker, reply in zip(handles, replies):
        info = worker.info = _started(worker, reply)
        if info["ok"] and worker.tier != CPU_TIER and worker.tier not in table:
            info["ok"], info["error"] = False, f"its card ({info['card']}) is smaller than the smallest tier"
        (usable if info["ok"] else errors).append(worker)
    for worker in errors:
        log.warning("%s cannot render: %s", worker.name, worker.info["error"])
        if unusable is not None:
            unusable(worker.slot_tier)
    if not usable:
        stop_workers(handles)
        raise ModelUnavailableError(errors[0].info["error"] if errors else "no render workers could start")
    stop_workers(errors)
    return usable


def cpu_worker_specs(settings: FarmSettings, count: int | None = None, threads: int | None = None) -> list[tuple[str, int]]:
    """(name, torch threads) of the CPU workers of a cluster without GPUs: one scheduling slot
    each, but torch uses every core of the node unless told otherwise."""
    count = count or settings.engine.cpu_workers
    threads = threads or settings.engine.cpu_threads or os.cpu_count() or 1
    return [(f"cpu-{index}", threads) for index in range(count)]


def spawn_worker(
    model: str,
    name: str,
    tier: str | None,
    *,
    gpu: bool,
    settings: FarmSettings,
    faults: str | None = None,
    mailbox=None,
    cpu_threads: int | None = None,
    slot_tier: str | None = None,
    namespace: str | None = None,
) -> Worker:
    """Start one render actor (it loads its model in the background; `info()` answers once it
    has). `tier`: pinned to the node resource `farm_tier_<tier>`; None: any GPU (or the CPU).
    `namespace`: a named, detached actor there (the service's workers: they outlive a
    coordinator restart, and the next coordinator adopts them); None: owned by this process."""
    from farm.runtime.workers import WORKER_NAME_PREFIX, RenderWorker

    resources = {f"farm_tier_{tier}": 1} if tier else {}
    options = dict(num_gpus=1 if gpu else 0, num_cpus=1, resources=resources)
    if namespace is not None:
        options.update(name=WORKER_NAME_PREFIX + name, namespace=namespace, lifetime="detached")
    actor = RenderWorker.options(**options).remote(model, name, cpu_threads, faults, tier, settings, mailbox)
    return Worker(name, RayWorkerHandle(actor), slot_tier or tier or "gpu")


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
    for worker in workers:
        worker.handle.kill()


def count_tiers(workers: list[Worker]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for worker in workers:
        counts[worker.tier] = counts.get(worker.tier, 0) + 1
    return counts


class Engine:
    """Drives the admitted jobs' items through the workers (see the module text)."""

    def __init__(
        self,
        workers: list[Worker],
        table: TierTable,
        metrics=None,
        settings: FarmSettings | None = None,
        pool: CallPool | None = None,
        mailbox=None,
        fleet=None,
        post_runner=None,
    ):
        self.workers = list(workers)
        self.fleet = fleet  # farm.runtime.fleet.RayFleet: workers follow the cluster's GPUs (None: a fixed set)
        self.starting: dict[Any, Worker] = {}  # start call -> a worker loading its model
        self._idle_since: dict[str, float] = {}
        self._next_poll = 0.0
        self._adopting: set[str] = set()  # workers of an earlier coordinator that have not answered yet
        self._warming = False  # start workers on every free GPU slot (the farm's start), not only for work
        self._awaiting_since: dict[str, float] = {}  # tier -> when the autoscaler was first asked for it
        self.unprovidable: dict[str, float] = {}  # tier -> since when (epoch s): asked for, never came
        self.requested: dict[str, int] = {}  # GPUs per tier asked of the autoscaler now
        self._model_config_sha256 = self.workers[0].info["model"]["config_sha256"] if self.workers else None
        self.mailbox = mailbox  # where the workers report their commits (farm.runtime.mailbox)
        self.start_errors: list[str] = []  # why the last workers that could not start did not (newest last)
        self.watched: set[str] = set()  # workers whose uploads the open mailbox take is for
        self.table = table
        self.metrics = metrics  # a farm.metrics.FarmMetrics, or None
        if metrics is not None:
            metrics.prepare(table.names())  # counters at 0 before the first event (see farm.metrics)
        self.settings = settings or FarmSettings()
        self.pool = pool or RayCallPool()
        post = self.settings.post
        if post_runner is None:  # Ray tasks beside Ray actors; threads beside in-process workers (tests)
            post_runner = (RayPostRunner(post.num_cpus, post.resource) if isinstance(self.pool, RayCallPool)
                           else ThreadPostRunner(post.concurrency))
        self.post = PostStage(post_runner, post.concurrency)
        self.finishing: dict[str, ActiveJob] = {}  # renders done, deliverables still being made
        # How long a dead worker may take to come back (Ray restarts it and it reloads the model).
        self.restart_timeout_s = self.settings.engine.worker_restart_timeout_s
        calibration = self.settings.vram_calibration
        self.state = dispatch.DispatchState(
            table,
            [(w.name, w.tier) for w in self.workers],
            profile_for=lambda model: profile_for_model(model, calibration=calibration),
            worker_models={w.name: model_id(w.info) for w in self.workers},
            model_key=absolute_model_ref,  # items name local folders as written; workers hold them absolute
        )
        self.jobs: dict[str, ActiveJob] = {}
        self.calls: dict[Any, tuple[str, str]] = {}  # call -> (worker name, "render" | "probe"), or ("", "mailbox")
        self.probe_started: dict[Any, float] = {}
        self._switching: dict[str, str] = {}  # worker -> the model it is switching to
        self._handed_back: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        # The dispatch loop's cost: steps, their wall time, and the part of it in job.json writes.
        self.loop_stats = {"steps": 0, "step_s": 0.0, "record_s": 0.0}

    # --- views ------------------------------------------------------------------------------

    @property
    def shape(self) -> ClusterShape:
        """What jobs are planned for: the workers there are (and those starting), the GPUs of the
        cluster that workers can be started on, and those the autoscaler may bring
        (FARM_AUTOSCALE_MAX_WORKERS; not a tier found unprovidable)."""
        counts = self.state.plan_counts()
        if self.fleet is not None:
            for tier, slots in self.fleet.slots().items():
                counts[tier] = max(counts.get(tier, 0), slots)
            for tier, cap in self.settings.engine.autoscale_max_workers.items():
                if tier in self.table and tier not in self.unprovidable:  # the autoscaler can bring them
                    counts[tier] = max(counts.get(tier, 0), cap)
        return ClusterShape(counts)

    @property
    def queue(self):
        return self.state.queue

    @property
    def draining(self) -> bool:
        return self.state.draining

    @property
    def model_config_sha256(self) -> str:
        return self._model_config_sha256

    def worker_infos(self) -> dict[str, dict]:
        return {w.name: w.public_info() for w in self.workers}

    def busy(self) -> bool:
        """Work to drive: jobs, calls in flight, uploads, or workers still loading (or adopted)."""
        with self.lock:
            return self.state.busy() or bool(self.starting) or self.post.busy() or bool(self.finishing)

    def adopting(self) -> bool:
        """Workers of an earlier coordinator have not all answered `adopt` yet."""
        with self.lock:
            return bool(self._adopting)

    def settled(self) -> bool:
        """Nothing rendering and nothing waiting for upload."""
        with self.lock:
            return self.state.settled()

    # --- jobs -------------------------------------------------------------------------------

    def admit(self, job: ActiveJob, plan: JobPlan, replace_etags: dict[str, str] | None = None,
              post: dict[str, list[str]] | None = None) -> None:
        """Queue a job's planned items; items rejected at plan time fail at once. `post`: items
        committed earlier (skipped) -> the names of their deliverables still to make."""
        with self.lock:
            self.jobs[job.id] = job
            for item_id, names in (post or {}).items():
                self._enqueue_post(job, job.state.spec_item(item_id), names)
            if self.metrics is not None:  # its model's outcome counters at 0, before any outcome
                spec = job.state.spec
                self.metrics.prepare(self.table.names(), sorted({spec.model, *(i.model for i in spec.items if i.model)}))
                self.metrics.prepare_deliverables(sorted({d.name for i in spec.items for d in i.deliverables}))
            self._carry_out(self.state.handle(
                dispatch.JobAdmitted(job.id, job.state, plan, job.priority, dict(replace_etags or {}))
            ))
            self._follow_cluster(force=True)  # workers for its tiers, before anything decides nobody can take it

    def cancel(self, job_id: str) -> bool:
        """Cancel the job's queued items and stop its rendering ones at their next denoise step
        (they end `cancelled`); what has committed, or is committing, stays."""
        with self.lock:
            dropped = self.post.drop(job_id)  # deliverables not started yet: a resume makes them
            job = self.jobs.get(job_id) or self.finishing.get(job_id)
            if job is not None and dropped:
                job.state.post.queued -= len(dropped)
            if job_id in self.finishing:
                self.finishing[job_id].state.cancelled = True  # `cancelling` while its running deliverables end
                self._post_done(job_id)
                return True
            if job_id not in self.jobs:
                return False
            self._carry_out(self.state.handle(dispatch.JobCancelled(job_id)))
            return True

    def cancel_item(self, job_id: str, item_id: str) -> str | None:
        """Cancel one item: what became of it. `cancelled` (it was queued), `cancelling` (its
        render is being stopped), `committing` (it has rendered: its commit stands), or its final
        state when it had ended; None when the job is not running here or has no such item."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None or item_id not in job.state.items:
                return None
            before = job.state.items[item_id].state
            if before in FINAL_ITEM_STATES:
                return str(before)
            self._carry_out(self.state.handle(dispatch.ItemCancelRequested(job_id, item_id)))
            after = job.state.items[item_id].state
            if after != RUNNING:
                return str(after)
            rendering = any((s.job_id, s.item_id) == (job_id, item_id) for s in self.state.rendering())
            return "cancelling" if rendering else "committing"

    def release(self, job_id: str) -> bool:
        """Send no more of the job's items (another coordinator holds its lease now): queued ones
        stay queued in its record, running ones finish and commit; the job then ends here
        (`on_finish`) without any of its queued items being marked."""
        with self.lock:
            if job_id not in self.jobs:
                return False
            dropped = self.post.drop(job_id)  # the new holder makes what is left (its resume scan)
            self.jobs[job_id].state.post.queued -= len(dropped)
            self._carry_out(self.state.handle(dispatch.JobReleased(job_id)))
            return True

    # --- workers --------------------------------------------------------------------------------

    def adopt(self, workers: list[Worker]) -> None:
        """Workers an earlier coordinator started, still alive: each joins as a starting worker
        does, once its `adopt` call answers (after its last render and that render's uploads:
        see `RenderWorkerImpl.adopt`), with its model loaded already."""
        with self.lock:
            events = []
            for worker in workers:
                call = worker.handle.adopt(self.mailbox)
                self.calls[call], self.starting[call] = (worker.name, "start"), worker
                self._adopting.add(worker.name)
                events.append(dispatch.WorkerStarting(worker.name, worker.slot_tier))
            self._carry_out(self.state.handle(*events))

    def warm_start(self, *, cpu_workers: int | None = None, cpu_threads: int | None = None,
                   faults: str | None = None) -> None:
        """The farm's first workers, without waiting for their models: one per free GPU slot of
        the cluster (at most `max_concurrent_loads` loading at once; dispatch starts as soon as
        the first of a tier is ready); GPUs without tier labels get a worker each; a cluster
        without GPUs whose autoscaler is not asked for any gets CPU workers (a fixed set)."""
        with self.lock:
            slots = self.fleet.slots() if self.fleet is not None else {}
            if slots or (self.fleet is not None and self.settings.engine.autoscale_max_workers):
                self._warming = bool(slots)
                self._follow_cluster(force=True)
                return
            if self.workers or self.starting:
                return
            events = []
            spawn = dict(settings=self.settings, faults=faults, mailbox=self.mailbox, namespace=self.fleet.namespace)
            gpus = self.fleet.untiered_gpus()
            if gpus:  # GPUs without tier labels: each worker measures its card
                workers = [spawn_worker(self.fleet.model, f"gpu-{n}", None, gpu=True, **spawn) for n in range(gpus)]
            else:
                workers = [spawn_worker(self.fleet.model, name, None, gpu=False, cpu_threads=threads,
                                        slot_tier=CPU_TIER, **spawn)
                           for name, threads in cpu_worker_specs(self.settings, cpu_workers, cpu_threads)]
            for worker in workers:
                self._starting(worker)
                events.append(dispatch.WorkerStarting(worker.name, worker.slot_tier))
            self._carry_out(self.state.handle(*events))

    def _starting(self, worker: Worker) -> None:
        call = worker.handle.info()
        self.calls[call], self.starting[call] = (worker.name, "start"), worker

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
            self._carry_out(self.state.handle(dispatch.DrainRequested()))

    def hand_back_held(self) -> list[tuple[str, str]]:
        """Items still rendering or uploading when a drain ends go back to their job's queue:
        they never committed, so a resumed job renders them (a late commit is found then)."""
        with self.lock:
            self._carry_out(self.state.handle(dispatch.HandBackHeld()))
            return self._handed_back

    def step(self, timeout: float = 1.0) -> None:
        started = time.perf_counter()
        try:
            self._step(timeout)
        finally:
            self.loop_stats["steps"] += 1
            self.loop_stats["step_s"] += time.perf_counter() - started

    def _step(self, timeout: float) -> None:
        with self.lock:
            stuck = len(self.state.queue) and not self.state.in_flight() and not self.state.starting()
            self._follow_cluster(force=bool(stuck))
            self._carry_out(self.state.handle(dispatch.Tick()))
            self._start_post()
            if not self.calls:
                return
            calls = list(self.calls)
        ready = self.pool.wait(calls, timeout)
        with self.lock:
            # A worker whose node is gone may wait forever for resources to restart on: give up.
            now = time.monotonic()
            ready += [call for call, started in self.probe_started.items()
                      if call not in ready and now - started > self.restart_timeout_s]
            self._carry_out(self.state.handle(*[event for call in ready for event in self._events(call)]))
            self._start_post()
            recording = time.perf_counter()
            for job in [*self.jobs.values(), *self.finishing.values()]:
                if job.recorder is not None:
                    job.recorder.write()
            self.loop_stats["record_s"] += time.perf_counter() - recording
            self.publish()

    def stop_all(self) -> None:
        """Stop every worker, those still starting included (the end of a local run)."""
        with self.lock:
            stop_workers([*self.workers, *self.starting.values()])

    # --- following the cluster -------------------------------------------------------------------

    def _follow_cluster(self, *, force: bool = False) -> None:
        """Start workers on GPUs that joined (while work waits), stop workers idle too long."""
        from farm.core.fleet import FleetWorker, fleet_changes

        now = time.monotonic()
        if self.fleet is None or self.state.draining or (now < self._next_poll and not force):
            return
        engine = self.settings.engine
        self._next_poll = now + engine.cluster_poll_s
        slots = self.fleet.slots()
        self._follow_drains()  # the drains `slots()` found
        if not slots and not engine.autoscale_max_workers:  # a CPU-only cluster: its workers are fixed
            return
        views, starting = [], {}
        for slot in self.state.workers.values():
            if slot.phase is dispatch.WorkerPhase.STARTING:
                starting[slot.tier] = starting.get(slot.tier, 0) + 1
            elif slot.phase not in (dispatch.WorkerPhase.GONE, dispatch.WorkerPhase.DRAINING):
                idle = slot.phase is dispatch.WorkerPhase.IDLE and not slot.uploading
                since = self._idle_since.setdefault(slot.name, now) if idle else None
                if not idle:
                    self._idle_since.pop(slot.name, None)
                views.append(FleetWorker(slot.name, slot.tier, since))
        order = self.table.ordered(t for t in {*slots, *self.state.queue.tiers} if t in self.table)
        queued = self.state.queue.queued_by_tier()
        minimum = dict(engine.min_workers_per_tier)
        if self._warming:  # the farm's start: a worker on every GPU there is
            if all(starting.get(t, 0) + sum(1 for v in views if v.tier == t) >= n for t, n in slots.items()):
                self._warming = False
            else:
                minimum = {t: max(minimum.get(t, 0), n) for t, n in slots.items()}
        changes = fleet_changes(
            slots=slots, workers=views, starting=starting, queued=queued, order=order,
            now=now, idle_timeout_s=engine.worker_idle_timeout_s, min_per_tier=minimum,
            max_loads=engine.max_concurrent_loads,
        )
        events: list[dispatch.Event] = []
        for tier, count in changes.start.items():
            for _ in range(count):
                worker = self.fleet.start(tier)
                self._starting(worker)
                events.append(dispatch.WorkerStarting(worker.name, tier))
                log.info("starting render worker %s (a free %s GPU)", worker.name, tier)
        for name in changes.stop:
            log.info("stopping render worker %s: idle for %.0f s", name, engine.worker_idle_timeout_s)
            events.append(dispatch.WorkerRetired(name))
        if engine.autoscale_max_workers:
            events += self._ask_autoscaler(slots, views, starting, queued, now)
        if events:
            self._carry_out(self.state.handle(*events))

    def _ask_autoscaler(self, slots: dict[str, int], views, starting: dict[str, int], queued: dict[str, int],
                        now: float) -> list[dispatch.Event]:
        """Queued work the workers there are cannot absorb becomes a standing request to Ray's
        autoscaler (`RayFleet.request`); a tier asked for whose first node does not come within
        `autoscale_wait_s` is reported unprovidable and its queue planned elsewhere."""
        from farm.core.fleet import autoscale_demand

        engine = self.settings.engine
        workers, idle = dict(starting), {}
        for view in views:
            workers[view.tier] = workers.get(view.tier, 0) + 1
            if view.idle_since is not None:
                idle[view.tier] = idle.get(view.tier, 0) + 1
        caps = {t: n for t, n in engine.autoscale_max_workers.items() if t in self.table}
        demand = autoscale_demand(queued=queued, workers=workers, idle=idle, caps=caps,
                                  minimum=engine.min_workers_per_tier)
        if demand != self.requested:
            log.info("asking the autoscaler for GPUs per tier: %s", demand or "none")
            self.fleet.request(demand)
            self.requested = demand
        events: list[dispatch.Event] = []
        for tier in list(self.unprovidable):
            if slots.get(tier):  # it came after all
                log.info("tier %s has nodes again", tier)
                del self.unprovidable[tier]
        for tier in list(self._awaiting_since):
            if not queued.get(tier) or slots.get(tier):
                del self._awaiting_since[tier]
        for tier, wanted in demand.items():
            if slots.get(tier) or not queued.get(tier) or tier in self.unprovidable:
                continue
            since = self._awaiting_since.setdefault(tier, now)
            if now - since >= engine.autoscale_wait_s:
                log.warning("tier %s was asked of the autoscaler %.0f s ago and no node came: its work is "
                            "planned on the tiers there are", tier, now - since)
                self.unprovidable[tier] = time.time()
                del self._awaiting_since[tier]
                events.append(dispatch.TierUnprovided(tier))
        awaited = {t: n for t, n in demand.items() if t not in self.unprovidable}
        if awaited != self.state.awaited:
            events.insert(0, dispatch.CapacityAwaited(awaited))
        return events

    def _follow_drains(self) -> None:
        """Workers on nodes being drained (Ray's node drain, or a SIGTERM to the node) take no
        new item and stop once they hold nothing (`dispatch.WorkerDraining`); the worker itself
        decides whether its current item finishes or comes back (`farm.core.drain`)."""
        draining = getattr(self.fleet, "draining", None)  # a fleet that cannot tell: no drains
        nodes = draining() if draining is not None else {}
        if not nodes:
            return
        events: list[dispatch.Event] = []
        for worker in self.workers:
            node = worker.info.get("node_id")
            slot = self.state.workers.get(worker.name)
            if node not in nodes or slot is None or slot.phase not in (dispatch.WorkerPhase.IDLE,
                                                                       dispatch.WorkerPhase.RENDERING):
                continue
            deadline = nodes[node]
            left = "no deadline" if deadline is None else f"it goes in {max(deadline - time.time(), 0):.0f} s"
            log.info("render worker %s: its node %s is being drained (%s): it takes no new item and stops once its "
                     "current one is finished or handed back", worker.name, node[:12], left)
            events.append(dispatch.WorkerDraining(worker.name, deadline))
        if events:
            self._carry_out(self.state.handle(*events))

    def _joined(self, call) -> dispatch.Event:
        worker = self.starting.pop(call)
        adopted = worker.name in self._adopting
        self._adopting.discard(worker.name)
        try:
            info = self.pool.result(call)
        except (WorkerDied, WorkerCallError) as error:
            info = {"ok": False, "error": worker_start_failure(worker.name, str(error))}
        if info.get("ok") and info.get("tier") not in self.table and info.get("tier") != CPU_TIER:
            info["ok"], info["error"] = False, f"its card ({info.get('card')}) is smaller than the smallest tier"
        if info.get("ok") and adopted and self.fleet is not None and model_id(info) not in self._adoptable_models():
            # A worker that switched models before the restart is kept when the farm renders its model.
            info["ok"], info["error"] = False, f"it renders {model_id(info)!r}, not {self.fleet.model!r}"
        if not info.get("ok"):
            log.warning("%s cannot render: %s", worker.name, info.get("error"))
            worker.handle.kill()
            self.start_errors.append(f"{worker.name}: {info.get('error')}")
            del self.start_errors[:-20]
            if self.fleet is not None and not adopted:
                self.fleet.start_failed(worker.slot_tier)
            return dispatch.WorkerStartFailed(worker.name, str(info.get("error")))
        if adopted:
            log.info("adopted render worker %s (%s, model loaded already)", worker.name, info.get("tier"))
        worker.info = info
        self.workers.append(worker)
        if self._model_config_sha256 is None:
            self._model_config_sha256 = info["model"]["config_sha256"]
        return dispatch.WorkerJoined(worker.name, worker.tier, model_id(info))

    def _adoptable_models(self) -> set[str]:
        """Models an adopted worker may hold: the fleet's, and the others this farm renders."""
        return {self.fleet.model, *map(absolute_model_ref, self.settings.allowed_models)}

    def publish(self) -> None:
        """Queue, in-flight and worker gauges (the counters are updated as outcomes arrive)."""
        if self.metrics is None:
            return
        with self.lock:
            self.metrics.engine_state(**self.state.gauges())
            self.metrics.post_state(*self.post.counts())
            caps = self.settings.engine.autoscale_max_workers
            if caps:
                self.metrics.autoscaling(self.requested, set(self.unprovidable), sorted(caps))

    # --- events in, instructions out ------------------------------------------------------------

    def _worker(self, name: str) -> Worker:
        return next(w for w in self.workers if w.name == name)

    def _events(self, call) -> list[dispatch.Event]:
        name, kind = self.calls.pop(call)
        self.probe_started.pop(call, None)
        if kind == "post":
            self._posted(call)
            return []
        if kind == "mailbox":
            return self._reported(call)
        if kind == "start":
            return [self._joined(call)]
        return [self._event(call, name, kind)]

    def _reported(self, call) -> list[dispatch.Event]:
        """The commit reports that arrived; the other watched workers hear "nothing new"."""
        try:
            reports = self.pool.result(call)
        except (WorkerDied, WorkerCallError) as error:  # restarted by Ray; the next take goes on
            log.warning("the commit mailbox failed: %s", error)
            reports = []
        known = {w.name for w in self.workers}
        events = [dispatch.WorkerReplied(r.worker, r.outcomes, r.pending, dispatch.COMMITS, r.sequence)
                  for r in reports if r.worker in known]
        reported = {report.worker for report in reports}
        events += [dispatch.WorkerReplied(name, (), None, dispatch.COMMITS) for name in self.watched - reported
                   if name in known]
        self.watched = set()
        return events

    def _event(self, call, name: str, kind: str) -> dispatch.Event:
        worker = self._worker(name)
        if kind == "probe":
            try:
                info = self.pool.result(call, timeout=0.1)
            except Exception:  # dead, or not back within restart_timeout_s
                info = {"ok": False}
            if info.get("ok"):
                worker.info = info
            else:
                log.warning("worker %s is gone", name)
            return dispatch.WorkerProbed(name, bool(info.get("ok")), model_id(info) if info.get("ok") else None)
        if kind == "switch":
            return self._switched(call, worker)
        try:
            reply = self.pool.result(call)
        except WorkerDied as error:
            # Its other open call fails as well: one event for one death.
            for other in [c for c, (n, k) in self.calls.items() if n == name and k != "probe"]:
                del self.calls[other]
            return dispatch.WorkerLost(name, str(error))
        except WorkerCallError as error:  # the worker's own code raised (a bug); the worker is fine
            return dispatch.WorkerCallFailed(name, str(error), kind)
        memory = reply.memory
        if memory and self.metrics is not None:
            self.metrics.worker_memory(name, worker.tier, memory.get("used"), memory.get("total"))
        sequence = reply.sequence if reply.sequence >= 0 else None
        return dispatch.WorkerReplied(name, reply.outcomes, reply.pending, kind, sequence, reply.escalation,
                                      reply.returned)

    def _switched(self, call, worker: Worker) -> dispatch.Event:
        model = self._switching.pop(worker.name)
        try:
            info = self.pool.result(call)
        except WorkerDied as error:
            for other in [c for c, (n, k) in self.calls.items() if n == worker.name and k != "probe"]:
                del self.calls[other]
            return dispatch.WorkerLost(worker.name, str(error))
        except WorkerCallError as error:  # a bug in the switch: it keeps (we assume) what it held
            log.warning("render worker %s could not switch to %s: %s", worker.name, model, error)
            return dispatch.WorkerSwitched(worker.name, model, False, message=str(error), holds=model_id(worker.info))
        seconds = float(info.get("switch_seconds") or 0.0)
        ok = bool(info.get("ok"))
        if info.get("model"):
            worker.info = info
        if self.metrics is not None:
            self.metrics.model_switched(model, ok, seconds)
        if ok:
            log.info("render worker %s switched to model %s in %.1f s", worker.name, model, seconds)
        else:
            log.warning("render worker %s could not switch to model %s: %s", worker.name, model, info.get("switch_error"))
        return dispatch.WorkerSwitched(worker.name, model, ok, seconds, str(info.get("switch_error") or ""),
                                       holds=model_id(info))

    def _carry_out(self, instructions: list) -> None:
        for instruction in instructions:
            if isinstance(instruction, dispatch.SwitchModel):
                log.info("render worker %s: switching from model %s to %s (%s)", instruction.worker,
                         instruction.from_model, instruction.model, instruction.reason)
                self._idle_since.pop(instruction.worker, None)
                self._switching[instruction.worker] = instruction.model
                self._call(instruction.worker, "switch", instruction.model)
            elif isinstance(instruction, dispatch.SendTask):
                self._idle_since.pop(instruction.worker, None)
                self._call(instruction.worker, "render", instruction.task)
            elif isinstance(instruction, dispatch.CancelRunning):  # runs beside the render; its reply tells
                log.info("render worker %s: stopping item %s of job %s (cancelled)", instruction.worker,
                         instruction.item_id, instruction.job_id)
                self._worker(instruction.worker).handle.cancel(instruction.job_id, instruction.item_id)
            elif isinstance(instruction, dispatch.WatchCommits):
                self._watch(instruction.worker)
            elif isinstance(instruction, dispatch.ProbeWorker):  # restarted by Ray, or gone for good
                self.probe_started[self._call(instruction.worker, "probe")] = time.monotonic()
            elif isinstance(instruction, dispatch.StopWorker):
                worker = self._worker(instruction.worker)
                worker.handle.kill()
                self.workers.remove(worker)
                self._idle_since.pop(worker.name, None)
                if self.metrics is not None:
                    self.metrics.worker_gone(worker.name)  # its memory gauges go with it
            elif isinstance(instruction, dispatch.ItemFinished):
                self._item_finished(instruction.job_id, instruction.outcome)
            elif isinstance(instruction, dispatch.ItemRequeued):
                log.info("item %s of job %s is queued again at once: worker %s handed it back (%s)",
                         instruction.item_id, instruction.job_id, instruction.worker, instruction.message)
                if self.metrics is not None:
                    self.metrics.handed_back.labels(instruction.reason, instruction.tier).inc()
            elif isinstance(instruction, dispatch.ItemsCancelled):
                if self.metrics is not None:  # counted under the job's model (the items are gone from the queue)
                    model = self.jobs[instruction.job_id].state.spec.model
                    self.metrics.items.labels("cancelled", "none", model).inc(instruction.count)
            elif isinstance(instruction, dispatch.HandedBack):
                self._handed_back = list(instruction.items)
            elif isinstance(instruction, dispatch.JobFinished):
                job = self.jobs.pop(instruction.job_id)
                if self.post.pending(job.id):
                    self.finishing[job.id] = job  # it ends with its last deliverable (_post_done)
                else:
                    self._job_finished(job)

    def _watch(self, name: str) -> None:
        """One open take on the mailbox serves every worker with uploads pending."""
        self.watched.add(name)
        if self.mailbox is None:
            raise RuntimeError("an Engine whose workers commit in the background needs their mailbox")
        if not any(kind == "mailbox" for _, kind in self.calls.values()):
            self.calls[self.mailbox.take(COMMITS_WAIT_S)] = ("", "mailbox")

    def _call(self, name: str, kind: str, *args):
        handle = self._worker(name).handle
        if kind == "probe":
            call = handle.info()
        elif kind == "switch":
            call = handle.switch_model(*args)
        else:
            call = handle.render(*args)
        self.calls[call] = (name, kind)
        return call

    def _item_finished(self, job_id: str, outcome: ItemOutcome) -> None:
        job = self.jobs[job_id]
        job.reporter.item_finished(job.state, outcome.item_id, outcome)
        item = job.state.spec_item(outcome.item_id)
        if self.metrics is not None:
            self.metrics.outcome(outcome, job.state.spec.model_of(item))
        if outcome.status in (SUCCEEDED, SKIPPED) and item is not None and item.deliverables:
            self._enqueue_post(job, item)

    # --- the CPU stage (deliverables) ------------------------------------------------------------

    def _enqueue_post(self, job: ActiveJob, item, names: list[str] | None = None) -> None:
        """Queue the item's deliverables (those named, else all) unless the job makes them only
        for picked takes and this take is not picked."""
        spec = job.state.spec
        if job.state.cancelled:  # what still commits after a cancel is kept, but nothing more is made of it
            return
        if spec.deliverables_for == "picked" and item.take is not None and job.state.picks.get(item.take_of) != item.id:
            return
        deliverables = tuple(d for d in item.deliverables if names is None or d.name in names)
        if not deliverables:
            return
        self.post.enqueue(PostTask(job.id, spec.name, spec.output, item.id, deliverables,
                                   self.settings.post.ffmpeg_threads))
        job.state.post.queued += 1

    def enqueue_post(self, job_id: str, item_id: str) -> bool:
        """Make one item's deliverables now (a take picked while its job runs); False when the
        job is not running here."""
        with self.lock:
            job = self.jobs.get(job_id) or self.finishing.get(job_id)
            item = job.state.spec_item(item_id) if job is not None else None
            if item is None or not item.deliverables:
                return False
            self._enqueue_post(job, item)
            return True

    def post_after_job(self, spec, item_id: str) -> None:
        """Make one item's deliverables for a job that has ended (a take picked afterwards):
        counted in the metrics and recorded in the item's sidecar, not in a job state."""
        with self.lock:
            item = next((i for i in spec.items if i.id == item_id), None)
            if item is not None and item.deliverables:
                self.post.enqueue(PostTask(None, spec.name, spec.output, item.id, item.deliverables,
                                           self.settings.post.ffmpeg_threads))

    def _start_post(self) -> None:
        for call, task in self.post.start_ready():
            self.calls[call] = ("", "post")
            job = self.jobs.get(task.job_id) or self.finishing.get(task.job_id)
            if job is not None:
                job.state.post.queued -= 1
                job.state.post.running += 1

    def _posted(self, call) -> None:
        task = self.post.running[call]
        result: PostResult = result_of(self.pool, call, task)
        self.post.finished(call)
        job = self.jobs.get(task.job_id) or self.finishing.get(task.job_id)
        if self.metrics is not None:
            self.metrics.posted(result.results)
        if job is not None:
            progress = job.state.post
            progress.running -= 1
            for one in result.results:
                failure = None
                if one.outcome == "failed":
                    failure = {"item": task.item_id, "deliverable": one.name, "reason": one.reason, "message": one.message}
                    log.warning("deliverable %s of item %s failed (%s): %s", one.name, task.item_id, one.reason,
                                one.message)
                progress.add(one.outcome, one.seconds, failure)
        if task.job_id in self.finishing and not self.post.pending(task.job_id):
            self._post_done(task.job_id)

    def _post_done(self, job_id: str) -> None:
        if not self.post.pending(job_id):
            self._job_finished(self.finishing.pop(job_id))

    def _job_finished(self, job: ActiveJob) -> None:
        if job.on_finish is not None:
            try:
                job.on_finish(job)
            except Exception:  # a failing callback must not stop the engine
                log.exception("finishing job %s", job.id)
        job.done.set()


def model_id(info: dict | None) -> str | None:
    """The model a worker holds, as its `info()` names it (None: not known)."""
    return ((info or {}).get("model") or {}).get("id")
