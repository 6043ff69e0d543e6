"""The dispatch state machine: every scheduling decision of the farm, as pure code.

In the manner of Dask distributed's worker state machine: the runtime turns what happened (a job
admitted, a worker's reply, a worker lost, a cancel) into events, `DispatchState.handle(*events)`
updates the state and returns instructions (send this task to that worker, probe a worker, stop
one, a job is finished), and the runtime carries them out. No I/O, no Ray and no clock here:
times, when they matter, come inside events (a probe that timed out arrives as `WorkerProbed`
with `ok=False`).

The decisions it owns:
- routing: an idle worker takes the highest-priority job's item, jobs of one priority in turn,
  its own tier first, then smaller tiers (stealing), the longest estimated item first; smallest
  workers choose first (`farm.core.jobqueue`);
- a worker's reply: outcomes recorded, uploads still pending remembered (the item stays
  `running` until its commit is reported); while a worker has uploads pending, its commits are
  watched (`WatchCommits`: the runtime keeps a take open on the mailbox the workers report
  to), so each commit is an event the moment it happens, also while the worker renders;
- escalation: a worker whose ladder wants a bigger GPU hands the item back; it moves to an idle
  worker of the nearest bigger tier, else goes back to the same worker with the bigger tier
  refused; "a bigger tier is available" means a live worker of a bigger tier exists;
- a worker lost mid-item: what it held (rendering and uploading) is queued again at the front
  (up to `MAX_ATTEMPTS` tries), and the worker probed; gone for good: its tier's queued items
  are planned again on the tiers left, or fail when no worker is left;
- cancellation, of a job (`JobCancelled`) or of one item (`ItemCancelRequested`): queued items
  are cancelled at once; a rendering one's worker is told to stop at its next denoise step
  (`CancelRunning`), and its reply's `cancelled` outcome (nothing committed) frees it for its
  next item; what has rendered and is committing stays (its commit and its result stand), as
  does a render that committed before the cancel reached it: an item ends cancelled or
  committed, never both;
- release (the job's lease went to another coordinator): queued items leave the queue as they
  are, running ones finish; nothing of the job is sent again (no requeue, no escalation);
- nobody left who can take the queued work: those items fail, unless the autoscaler was asked
  for their tier (`CapacityAwaited`): they wait, until the runtime says it did not come
  (`TierUnprovided`: planned on the tiers there are);
- draining: nothing new is sent; what is still held can be handed back;
- a worker's node being drained (Ray's node drain, or a SIGTERM to the node; `WorkerDraining`
  from the runtime, or a `ReturnedItem` in the worker's own reply): the worker takes nothing new
  and is not counted as capacity (its tier's queue is planned elsewhere when it was the last);
  an item it returns unfinished is queued again at once at the front, its attempt not counted;
  it is stopped once it holds nothing (see `farm.core.drain`);
- a job's end: nothing of it queued, rendering or uploading;
- models: an item names the model that renders it and a worker holds one model; a worker takes
  only its model's items, and an idle worker whose model has nothing queued switches to a
  waiting model when `farm.core.switching` says that shortens that model's finish
  (`SwitchModel`, answered by `WorkerSwitched`); a model that no live worker can load fails
  its items.

Per-item state: `JobState.items` (the job record's view) and one `DispatchItem` per queued or
running item (its plan and what the ladder changed so far).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Iterable

from farm.core.contracts import Escalation, ItemOutcome, RenderTask, ReturnedItem
from farm.core.errors import FailureReason
from farm.core.job import JobState
from farm.core.jobqueue import JobQueue
from farm.core.ladder import BIGGER_TIER, Degradation, OomRecord, RenderSettings, blocked_on
from farm.core.planner import ItemPlan, JobPlan, Planner
from farm.core.states import CANCELLED, QUEUED, RUNNING
from farm.core.switching import QueueView, SwitchPolicy, WorkerView, decide_switches
from farm.core.tiers import CPU_TIER, ClusterShape, TierTable
from farm.core.vram import I2VGENXL_PROFILE, ModelProfile

# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobAdmitted:
    """A job's planned items join the queue (items rejected at plan time fail at once)."""

    job_id: str
    state: JobState
    plan: JobPlan
    priority: int = 0
    replace_etags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobCancelled:
    """The job is cancelled: its queued items are cancelled at once, its rendering ones stopped
    (`CancelRunning`); what is committing stays."""

    job_id: str


@dataclass(frozen=True)
class ItemCancelRequested:
    """One item is cancelled: queued, at once; rendering, its worker is told to stop
    (`CancelRunning`) and its reply brings the `cancelled` outcome; rendered and committing, or
    ended, it stays as it is."""

    job_id: str
    item_id: str


@dataclass(frozen=True)
class JobReleased:
    """The job is no longer this farm's to run (its lease went to another coordinator): its
    queued items leave the queue untouched (still queued in its record, for the new holder);
    what is rendering or uploading finishes and is recorded, nothing of it is sent again."""

    job_id: str


RENDER, COMMITS = "render", "commits"  # a render call's reply, or a commit report


@dataclass(frozen=True)
class WorkerReplied:
    """A worker's call returned: finished outcomes, an escalation, and what still uploads. `call`
    is RENDER (the worker is free again) or COMMITS (a watch on its uploads; the worker may still
    be rendering). `sequence` orders the worker's reports: an older report's pending list is stale."""

    worker: str
    outcomes: tuple[ItemOutcome, ...]
    pending: tuple[tuple[str, str], ...] | None  # None: no news of the uploads (a watch that timed out)
    call: str = RENDER
    sequence: int | None = None
    escalation: Escalation | None = None
    returned: ReturnedItem | None = None  # the task handed back unfinished: the worker's node is draining


@dataclass(frozen=True)
class WorkerCallFailed:
    """The worker's own code raised (a bug): the item it was given fails, the worker is fine."""

    worker: str
    message: str
    call: str = RENDER


@dataclass(frozen=True)
class WorkerLost:
    """The worker's process died (or its node left) during a call (one event per death: the
    runtime drops the worker's other calls)."""

    worker: str
    message: str


@dataclass(frozen=True)
class WorkerProbed:
    """The answer to a probe of a lost worker: back (restarted, model loaded) or gone for good."""

    worker: str
    ok: bool
    model: str | None = None  # the model it holds once back (a restart loads its first one)


@dataclass(frozen=True)
class WorkerSwitched:
    """A worker's model switch ended: it holds `model` now (ok), or could not load it (it holds
    `holds`: its earlier model, loaded again, or None)."""

    worker: str
    model: str
    ok: bool
    seconds: float = 0.0
    message: str = ""
    holds: str | None = None


@dataclass(frozen=True)
class WorkerStarting:
    """The runtime started a worker for `tier` (it loads its model): queued work for that tier
    is not failed as "nobody can take it" while it starts."""

    worker: str
    tier: str


@dataclass(frozen=True)
class WorkerJoined:
    """A started worker is ready (model loaded, card measured: `tier` is what it found)."""

    worker: str
    tier: str
    model: str | None = None


@dataclass(frozen=True)
class WorkerStartFailed:
    worker: str
    message: str


@dataclass(frozen=True)
class WorkerRetired:
    """An idle worker is stopped on purpose (idle too long: its GPU is released)."""

    worker: str


@dataclass(frozen=True)
class WorkerDraining:
    """The worker's node is being drained (it goes at `deadline_s`, epoch seconds; None: once
    idle): the worker takes nothing new, and is stopped once it holds nothing. What it renders
    now finishes, or comes back as a `ReturnedItem` (the worker decides: `farm.core.drain`)."""

    worker: str
    deadline_s: float | None = None


@dataclass(frozen=True)
class DrainRequested:
    """The farm is stopping: send nothing new."""


@dataclass(frozen=True)
class HandBackHeld:
    """A drain is over: items still rendering or uploading go back to their job's queue state."""


@dataclass(frozen=True)
class CapacityAwaited:
    """The GPUs per tier the autoscaler is asked for now (replacing the previous ask): work
    planned for such a tier waits for its nodes, and plans count on them."""

    tiers: dict[str, int]


@dataclass(frozen=True)
class TierUnprovided:
    """A tier that was asked for did not come in time: its queued work is planned on the
    tiers there are, and new plans no longer count on it."""

    tier: str


@dataclass(frozen=True)
class Tick:
    """Nothing happened; look for work to send (and for work nobody can take)."""


Event = (JobAdmitted | JobCancelled | ItemCancelRequested | JobReleased | WorkerReplied | WorkerCallFailed | WorkerLost
         | WorkerProbed | WorkerSwitched | WorkerStarting | WorkerJoined | WorkerStartFailed | WorkerRetired | WorkerDraining
         | CapacityAwaited | TierUnprovided | DrainRequested | HandBackHeld | Tick)

# --- instructions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendTask:
    worker: str
    task: RenderTask


@dataclass(frozen=True)
class CancelRunning:
    """Tell the worker to stop its render of (job, item) at its next denoise step. The call runs
    beside the render; nothing waits for its answer: the render's reply says how the item ended
    (cancelled, or committed when the cancel came too late)."""

    worker: str
    job_id: str
    item_id: str


@dataclass(frozen=True)
class WatchCommits:
    """Wait for the worker's commit reports (answered by a WorkerReplied with call COMMITS)."""

    worker: str


@dataclass(frozen=True)
class ProbeWorker:
    worker: str


@dataclass(frozen=True)
class SwitchModel:
    """Unload the worker's model and load `model` (answered by `WorkerSwitched`)."""

    worker: str
    model: str
    from_model: str | None
    reason: str


@dataclass(frozen=True)
class StopWorker:
    """Stop a worker that is gone for good (so that nothing restarts it somewhere later)."""

    worker: str


@dataclass(frozen=True)
class ItemFinished:
    """An item reached its final state through an outcome (for progress and metrics)."""

    job_id: str
    outcome: ItemOutcome


@dataclass(frozen=True)
class ItemRequeued:
    """A worker handed an item back unfinished (`reason`: its node is draining); it is queued
    again (for the log and the metrics)."""

    job_id: str
    item_id: str
    worker: str
    tier: str
    reason: str
    message: str


@dataclass(frozen=True)
class ItemsCancelled:
    job_id: str
    count: int


@dataclass(frozen=True)
class HandedBack:
    items: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class JobFinished:
    job_id: str


Instruction = (SendTask | CancelRunning | WatchCommits | ProbeWorker | SwitchModel | StopWorker | ItemFinished | ItemRequeued
               | ItemsCancelled | HandedBack | JobFinished)

# --- state -------------------------------------------------------------------------------------


class WorkerPhase(str, Enum):
    STARTING = "starting"  # started by the runtime, loading its model
    IDLE = "idle"
    RENDERING = "rendering"
    PROBING = "probing"  # lost: waiting to hear whether it is back or gone
    SWITCHING = "switching"  # unloading its model and loading another
    DRAINING = "draining"  # its node is being drained: takes nothing new; may still render and upload
    GONE = "gone"


_WORKER_TRANSITIONS = {
    WorkerPhase.STARTING: {WorkerPhase.IDLE, WorkerPhase.GONE},
    # An idle worker dies in its commits call, or is retired (idle too long).
    WorkerPhase.IDLE: {WorkerPhase.RENDERING, WorkerPhase.PROBING, WorkerPhase.DRAINING, WorkerPhase.GONE,
                       WorkerPhase.SWITCHING},
    WorkerPhase.SWITCHING: {WorkerPhase.IDLE, WorkerPhase.PROBING, WorkerPhase.DRAINING, WorkerPhase.GONE},
    WorkerPhase.RENDERING: {WorkerPhase.IDLE, WorkerPhase.RENDERING, WorkerPhase.PROBING, WorkerPhase.DRAINING},
    WorkerPhase.PROBING: {WorkerPhase.IDLE, WorkerPhase.GONE},
    # Draining: stopped once it holds nothing, or lost (its node went); never back to work.
    WorkerPhase.DRAINING: {WorkerPhase.GONE},
    WorkerPhase.GONE: set(),
}


class IllegalTransition(RuntimeError):
    """A state change the machine does not allow (a bug in the caller or in the machine)."""


@dataclass
class WorkerSlot:
    """What the dispatcher knows of one worker."""

    name: str
    tier: str
    phase: WorkerPhase = WorkerPhase.IDLE
    job_id: str | None = None  # the item it is rendering
    item_id: str | None = None
    uploading: set[tuple[str, str]] = field(default_factory=set)
    watching: bool = False  # a commits call is open
    sequence: int = -1  # of the newest report whose pending list `uploading` is
    model: str | None = None  # the model it holds (None: not known; it takes any model's items)
    items_since_switch: int = 1_000_000  # renders since its last model switch
    refused_models: set[str] = field(default_factory=set)  # models it could not load

    @property
    def live(self) -> bool:
        return self.phase in (WorkerPhase.IDLE, WorkerPhase.RENDERING, WorkerPhase.DRAINING, WorkerPhase.SWITCHING)

    @property
    def in_render(self) -> bool:
        """A render call is open (a draining worker may still be rendering)."""
        return self.item_id is not None and self.phase in (WorkerPhase.RENDERING, WorkerPhase.DRAINING)

    def move(self, phase: WorkerPhase) -> None:
        if phase not in _WORKER_TRANSITIONS[self.phase]:
            raise IllegalTransition(f"worker {self.name}: {self.phase.value} -> {phase.value}")
        self.phase = phase
        if phase not in (WorkerPhase.RENDERING, WorkerPhase.DRAINING):  # a draining worker keeps its render
            self.job_id = self.item_id = None


@dataclass
class DispatchItem:
    """One queued or running item: its plan, and what the ladder has changed since."""

    plan: ItemPlan
    settings: RenderSettings | None = None  # None: the plan's
    degradations: tuple[Degradation, ...] | None = None  # None: the plan's
    ooms: tuple[OomRecord, ...] = ()
    replace_etag: str | None = None
    model: str = ""  # the model that renders it ("": any worker's)


@dataclass
class DispatchJob:
    id: str
    state: JobState
    priority: int
    items: dict[str, DispatchItem] = field(default_factory=dict)
    released: bool = False  # its lease went to another coordinator (`JobReleased`)
    cancelling: set[str] = field(default_factory=set)  # items cancelled one by one while they rendered

    def cancel_wanted(self, item_id: str) -> bool:
        """Whether the item, still running, is to end cancelled (its job or itself was)."""
        return self.state.cancelled or item_id in self.cancelling


class DispatchState:
    """The scheduling state of a farm: its workers, the admitted jobs and their queues."""

    def __init__(
        self,
        table: TierTable,
        workers: Iterable[tuple[str, str]],
        *,
        profile_for: Callable[[str], ModelProfile] = lambda model: I2VGENXL_PROFILE,
        worker_models: dict[str, str] | None = None,
        model_key: Callable[[str], str] = lambda ref: ref,
        switch_policy: SwitchPolicy = SwitchPolicy(),
        default_load_seconds: float = 60.0,
    ):
        self.table = table
        self.profile_for = profile_for  # the estimator's profile of a model, for re-planning
        self.model_key = model_key  # an item's model reference as workers name it (local folders absolute)
        self.switch_policy = switch_policy
        self.default_load_seconds = default_load_seconds  # a model's load time until one was measured
        self.load_seconds: dict[str, float] = {}  # measured per model (switches)
        models = worker_models or {}
        self.workers: dict[str, WorkerSlot] = {name: WorkerSlot(name, tier, model=models.get(name))
                                               for name, tier in workers}
        counts = self.live_counts()
        tiers = [CPU_TIER] if set(counts) == {CPU_TIER} else table.ordered(counts)
        self.queue = JobQueue(tiers, counts)
        self.jobs: dict[str, DispatchJob] = {}
        self.draining = False
        self.awaited: dict[str, int] = {}  # tier -> GPUs asked of the autoscaler (CapacityAwaited)

    # --- views -----------------------------------------------------------------------------

    def live_counts(self) -> dict[str, int]:
        """Workers per tier that have joined and are not gone (a lost one may come back), nor
        draining (it takes nothing new)."""
        counts: dict[str, int] = {}
        for slot in self.workers.values():
            if slot.phase not in (WorkerPhase.GONE, WorkerPhase.STARTING, WorkerPhase.DRAINING):
                counts[slot.tier] = counts.get(slot.tier, 0) + 1
        return counts

    def expected_counts(self) -> dict[str, int]:
        """Live workers and those still starting, per tier: what plans are made for."""
        counts = self.live_counts()
        for slot in self.workers.values():
            if slot.phase is WorkerPhase.STARTING:
                counts[slot.tier] = counts.get(slot.tier, 0) + 1
        return counts

    def starting(self) -> bool:
        return any(s.phase is WorkerPhase.STARTING for s in self.workers.values())

    def plan_counts(self) -> dict[str, int]:
        """What plans count on: the workers there are and are starting, and the GPUs asked of the
        autoscaler (a tier that was asked for is planned for before its first node arrives)."""
        counts = self.expected_counts()
        for tier, wanted in self.awaited.items():
            counts[tier] = max(counts.get(tier, 0), wanted)
        return counts

    @property
    def shape(self) -> ClusterShape:
        return ClusterShape(self.plan_counts())

    def rendering(self) -> list[WorkerSlot]:
        return [s for s in self.workers.values() if s.in_render]

    def held(self) -> set[tuple[str, str]]:
        """(job, item) pairs that are rendering or uploading."""
        pairs = {(s.job_id, s.item_id) for s in self.rendering()}
        return pairs | {pair for s in self.workers.values() for pair in s.uploading}

    def in_flight(self) -> bool:
        """Some call is open: a render, a commits watch or a probe."""
        return any(s.in_render or s.phase in (WorkerPhase.PROBING, WorkerPhase.SWITCHING) or s.watching
                   for s in self.workers.values())

    def busy(self) -> bool:
        return bool((self.jobs and not self.draining) or self.in_flight() or self.uploads())

    def uploads(self) -> bool:
        return any(s.uploading for s in self.workers.values())

    def settled(self) -> bool:
        """Nothing rendering and nothing waiting for upload."""
        return not self.rendering() and not self.uploads()

    def gauges(self) -> dict[str, dict]:
        """Queue, in-flight and worker-state counts per tier (for the metrics)."""
        in_flight: dict[str, int] = {}
        states: dict[tuple[str, str], int] = {}
        for slot in self.workers.values():
            if slot.phase is WorkerPhase.GONE:
                continue
            held = slot.in_render + len(slot.uploading)
            if held:
                in_flight[slot.tier] = in_flight.get(slot.tier, 0) + held
            state = {WorkerPhase.PROBING: "lost", WorkerPhase.IDLE: "idle", WorkerPhase.STARTING: "starting",
                     WorkerPhase.DRAINING: "draining", WorkerPhase.SWITCHING: "switching"}.get(slot.phase, "busy")
            states[(slot.tier, state)] = states.get((slot.tier, state), 0) + 1
        return {"queued": self.queue.queued_by_tier(), "in_flight": in_flight, "workers": states}

    # --- the machine -------------------------------------------------------------------------

    def handle(self, *events: Event) -> list[Instruction]:
        out: list[Instruction] = []
        for event in events:
            handler = getattr(self, f"_on_{type(event).__name__}")
            handler(event, out)
        self._stop_drained(out)
        self._fill(out)
        self._watch(out)
        self._finish_finished_jobs(out)
        return out

    def _on_JobAdmitted(self, event: JobAdmitted, out: list) -> None:
        job = DispatchJob(event.job_id, event.state, event.priority)
        self.jobs[job.id] = job
        self.queue.add_job(job.id, job.priority)
        for item_plan in event.plan.items:
            job.state.mark_planned(item_plan.item_id, item_plan.tier)
            if item_plan.rejected:
                job.state.fail(item_plan.item_id, FailureReason.NO_FITTING_TIER, item_plan.rejected)
                continue
            # The plan itself, shared by identical items: a job of 100,000 items keeps one small
            # record per item; the task is built when it is sent.
            spec = job.state.spec
            model = self.model_key(spec.model_of(job.state.spec_item(item_plan.item_id)))
            job.items[item_plan.item_id] = DispatchItem(item_plan, replace_etag=event.replace_etags.get(item_plan.item_id),
                                                        model=model)
            self._ensure_tier(item_plan.tier)
            self.queue.push(job.id, item_plan.item_id, item_plan.tier, work=item_plan.seconds or 0.0, model=model)
        job.state.start()

    def _on_JobCancelled(self, event: JobCancelled, out: list) -> None:
        job = self.jobs.get(event.job_id)
        if job is None:
            return
        job.state.cancelled = True
        dropped = self.queue.remove_job(job.id)
        for item_id in dropped:
            job.state.mark_cancelled(item_id)
            job.items.pop(item_id, None)
        if dropped:
            out.append(ItemsCancelled(job.id, len(dropped)))
        for slot in self.rendering():  # stopped at their next step; their replies bring the outcomes
            if slot.job_id == job.id:
                out.append(CancelRunning(slot.name, job.id, slot.item_id))

    def _on_ItemCancelRequested(self, event: ItemCancelRequested, out: list) -> None:
        job = self.jobs.get(event.job_id)
        if job is None or event.item_id not in job.state.items:
            return
        item_id = event.item_id
        state = job.state.items[item_id].state
        if state == QUEUED:
            self.queue.remove_items({(job.id, item_id)})
            job.state.mark_cancelled(item_id, "the item was cancelled before it started")
            job.items.pop(item_id, None)
            out.append(ItemsCancelled(job.id, 1))
            return
        if state != RUNNING:  # ended already: its result stands
            return
        slot = next((s for s in self.rendering() if (s.job_id, s.item_id) == (job.id, item_id)), None)
        if slot is not None:  # not rendering: it is committing, and its commit stands
            job.cancelling.add(item_id)
            out.append(CancelRunning(slot.name, job.id, item_id))

    def _cancel_unfinished(self, job: DispatchJob, item_id: str, out: list) -> None:
        """A running item that is to end cancelled came back without an outcome (escalated,
        handed back, or its worker lost): cancelled now, as a queued one would be."""
        job.state.hand_back(item_id)
        job.state.mark_cancelled(item_id, "cancelled while it rendered; nothing was committed")
        job.items.pop(item_id, None)
        job.cancelling.discard(item_id)
        out.append(ItemsCancelled(job.id, 1))

    def _on_JobReleased(self, event: JobReleased, out: list) -> None:
        job = self.jobs.get(event.job_id)
        if job is None:
            return
        job.released = True
        for item_id in self.queue.remove_job(job.id):
            job.items.pop(item_id, None)

    def _drop_released(self, job: DispatchJob, item_id: str) -> None:
        """An item of a released job that came back unfinished: queued in its record, not here."""
        if job.state.items[item_id].state == RUNNING:
            job.state.hand_back(item_id)
        job.items.pop(item_id, None)

    def _on_WorkerReplied(self, event: WorkerReplied, out: list) -> None:
        slot = self.workers[event.worker]
        if event.call == COMMITS:
            slot.watching = False
        if not slot.live:  # it died since: what it held is queued again (a commit is found then)
            return
        if event.pending is not None and (event.sequence is None or event.sequence > slot.sequence):
            slot.uploading = {tuple(pair) for pair in event.pending}
            slot.sequence = slot.sequence if event.sequence is None else event.sequence
        for outcome in event.outcomes:
            slot.uploading.discard((outcome.job_id, outcome.item_id))
            self._record(outcome, out)
        if event.call == COMMITS:
            return
        if event.returned is not None:
            self._returned(slot, event.returned, out)
            return
        escalated = event.escalation
        job = self.jobs.get(escalated.job_id) if escalated is not None else None
        self._render_ended(slot)
        if job is None:
            return
        if job.state.items[escalated.item_id].state == RUNNING and job.cancel_wanted(escalated.item_id):
            self._cancel_unfinished(job, escalated.item_id, out)  # not moved on to a bigger card
            return
        if self.draining:  # stopping: not moved on
            job.state.hand_back(escalated.item_id)
            return
        if job.released:  # another coordinator runs the job now
            self._drop_released(job, escalated.item_id)
            return
        self._escalate(slot, job, escalated, out)

    def _render_ended(self, slot: WorkerSlot) -> None:
        """A render call returned: the worker is free again (a draining one only holds less)."""
        slot.items_since_switch += 1
        if slot.phase is WorkerPhase.DRAINING:
            slot.job_id = slot.item_id = None
        else:
            slot.move(WorkerPhase.IDLE)

    def _returned(self, slot: WorkerSlot, returned: ReturnedItem, out: list) -> None:
        """The worker handed its task back unfinished, its node being drained: the worker drains
        (it takes nothing new), the item is queued again at once, the attempt taken back."""
        held = (slot.job_id, slot.item_id)
        if slot.phase is not WorkerPhase.DRAINING:
            self._start_draining(slot)
        slot.job_id = slot.item_id = None
        job = self.jobs.get(returned.job_id)
        if job is None or held != (returned.job_id, returned.item_id) or job.state.items[returned.item_id].state != RUNNING:
            return  # stale: the item ended or moved meanwhile
        item_id = returned.item_id
        # Every run is part of a counted attempt (a move to a bigger GPU continues one): take it back.
        job.state.hand_back(item_id, uncount=True)
        out.append(ItemRequeued(job.id, item_id, slot.name, slot.tier, returned.reason, returned.message))
        if job.cancel_wanted(item_id):  # cancelled meanwhile: dropped as the queued ones were
            job.state.mark_cancelled(item_id, "cancelled while it rendered; nothing was committed")
            job.items.pop(item_id, None)
            job.cancelling.discard(item_id)
            out.append(ItemsCancelled(job.id, 1))
        elif job.released:
            job.items.pop(item_id, None)
        elif not self.draining:  # the farm stopping: kept queued for a resumed job
            self._requeue(job.id, item_id)

    def _requeue(self, job_id: str, item_id: str) -> None:
        """Back to the front of its tier's queue; planned again when no worker of that tier is left."""
        item = self.jobs[job_id].items[item_id]
        tier = item.plan.tier
        if self.expected_counts().get(tier):
            self.queue.push(job_id, item_id, tier, front=True, model=item.model)
        else:
            self._replan([(job_id, item_id)])

    def _start_draining(self, slot: WorkerSlot) -> None:
        """The worker stops counting as capacity: when it was its tier's last, the tier's queue
        is planned on the tiers left (as for a worker gone)."""
        slot.move(WorkerPhase.DRAINING)
        orphans = self.queue.worker_gone(slot.tier)
        if orphans:
            self._replan(orphans)

    def _stop_drained(self, out: list) -> None:
        """Draining workers that hold nothing any more (no render, no upload) are stopped."""
        for slot in self.workers.values():
            if slot.phase is WorkerPhase.DRAINING and not slot.in_render and not slot.uploading:
                slot.move(WorkerPhase.GONE)
                slot.watching = False
                out.append(StopWorker(slot.name))

    def _on_WorkerCallFailed(self, event: WorkerCallFailed, out: list) -> None:
        slot = self.workers[event.worker]
        if event.call == COMMITS:  # opened again by the next handle while uploads are pending
            slot.watching = False
            return
        if slot.in_render:
            failure = ItemOutcome.failure(slot.item_id, FailureReason.RENDER_ERROR, event.message, job_id=slot.job_id)
            self._record(failure, out)
        self._render_ended(slot)

    def _on_WorkerLost(self, event: WorkerLost, out: list) -> None:
        """Requeue what the worker held: the item it was rendering and its unfinished uploads."""
        slot = self.workers[event.worker]
        if not slot.live:  # already being probed
            return
        message = f"worker {slot.name} died: {event.message}"
        lost = set(slot.uploading)
        if slot.in_render:
            lost.add((slot.job_id, slot.item_id))
        slot.uploading, slot.watching = set(), False
        drained = slot.phase is WorkerPhase.DRAINING  # its node went: not probed, stopped for good
        slot.move(WorkerPhase.GONE if drained else WorkerPhase.PROBING)
        for job_id, item_id in sorted(lost, reverse=True):  # each to the front: the first ends first
            job = self.jobs.get(job_id)
            if job is None:
                continue
            wanted = job.cancel_wanted(item_id)
            requeued = job.state.worker_lost(item_id, message)
            if requeued and wanted:  # cancelled: not rendered again
                job.state.mark_cancelled(item_id, "cancelled while it rendered; its worker was lost")
                job.items.pop(item_id, None)
                job.cancelling.discard(item_id)
                out.append(ItemsCancelled(job_id, 1))
            elif requeued and not job.released:
                self._requeue(job_id, item_id)
            elif job.released:
                job.items.pop(item_id, None)
            elif job.state.items[item_id].state != QUEUED:  # failed: no attempts left
                job.items.pop(item_id, None)
        out.append(StopWorker(slot.name) if drained else ProbeWorker(slot.name))

    def _on_WorkerProbed(self, event: WorkerProbed, out: list) -> None:
        slot = self.workers[event.worker]
        if event.ok:
            slot.move(WorkerPhase.IDLE)
            if event.model is not None:
                slot.model = event.model
            return
        slot.move(WorkerPhase.GONE)
        out.append(StopWorker(slot.name))
        orphans = self.queue.worker_gone(slot.tier)
        if orphans:
            self._replan(orphans)

    def _on_WorkerSwitched(self, event: WorkerSwitched, out: list) -> None:
        slot = self.workers[event.worker]
        if slot.phase is not WorkerPhase.SWITCHING:  # lost meanwhile: the probe tells
            return
        slot.move(WorkerPhase.IDLE)
        if event.ok:
            slot.model, slot.items_since_switch = event.model, 0
            self.load_seconds[event.model] = event.seconds
        else:
            slot.refused_models.add(event.model)
            slot.model = event.holds
        self._fail_unloadable(out)

    def _fail_unloadable(self, out: list) -> None:
        """Items of a model that no live worker holds and every live worker failed to load: failed
        (nobody will render them), with the load error said."""
        live = [s for s in self.workers.values() if s.live]
        if not live or self.starting():
            return
        held = {s.model for s in live}
        for job in list(self.jobs.values()):
            doomed = [item_id for item_id, item in job.items.items()
                      if item.model and item.model not in held and all(item.model in s.refused_models for s in live)
                      and job.state.items[item_id].state == QUEUED]
            if doomed:
                self.queue.remove_items({(job.id, item_id) for item_id in doomed})
                for item_id in doomed:
                    model = job.items.pop(item_id).model
                    job.state.fail(item_id, FailureReason.MODEL_UNAVAILABLE,
                                   f"no render worker could load model {model!r}; see the coordinator's log")

    def _on_WorkerStarting(self, event: WorkerStarting, out: list) -> None:
        if event.worker in self.workers and self.workers[event.worker].phase is not WorkerPhase.GONE:
            raise IllegalTransition(f"worker {event.worker} is already known")
        self.workers[event.worker] = WorkerSlot(event.worker, event.tier, WorkerPhase.STARTING)
        self._ensure_tier(event.tier)

    def _on_WorkerJoined(self, event: WorkerJoined, out: list) -> None:
        slot = self.workers[event.worker]
        first = self.live_counts().get(event.tier, 0) == 0
        slot.tier = event.tier
        slot.move(WorkerPhase.IDLE)
        if event.model is not None:
            slot.model = event.model
        self._ensure_tier(event.tier)
        self.queue.worker_joined(event.tier)
        if first:  # a tier came (back): what was degraded for its absence is planned again
            self._replan_degraded()

    def _on_WorkerStartFailed(self, event: WorkerStartFailed, out: list) -> None:
        slot = self.workers[event.worker]
        slot.move(WorkerPhase.GONE)
        if not self.expected_counts().get(slot.tier):  # nobody of that tier is coming: plan its queue elsewhere
            orphans = self.queue.drain_tier(slot.tier)
            if orphans:
                self._replan(orphans)

    def _on_WorkerRetired(self, event: WorkerRetired, out: list) -> None:
        slot = self.workers[event.worker]
        if slot.phase is not WorkerPhase.IDLE or slot.uploading:  # it took work meanwhile: it stays
            return
        slot.move(WorkerPhase.GONE)
        out.append(StopWorker(slot.name))
        orphans = self.queue.worker_gone(slot.tier)
        if orphans:
            self._replan(orphans)

    def _on_CapacityAwaited(self, event: CapacityAwaited, out: list) -> None:
        self.awaited = {tier: count for tier, count in event.tiers.items() if count > 0}
        for tier in self.awaited:
            self._ensure_tier(tier)

    def _on_TierUnprovided(self, event: TierUnprovided, out: list) -> None:
        self.awaited.pop(event.tier, None)
        if not self.expected_counts().get(event.tier):
            orphans = self.queue.drain_tier(event.tier)
            for job_id in sorted({job_id for job_id, _ in orphans}):  # said in the job's record
                tiers = self.jobs[job_id].state.unprovidable_tiers
                if event.tier not in tiers:
                    tiers.append(event.tier)
            if orphans:
                self._replan(orphans)

    def _on_WorkerDraining(self, event: WorkerDraining, out: list) -> None:
        slot = self.workers.get(event.worker)
        if slot is not None and slot.phase in (WorkerPhase.IDLE, WorkerPhase.RENDERING):
            self._start_draining(slot)  # stopped by `_stop_drained` once it holds nothing

    def _on_DrainRequested(self, event: DrainRequested, out: list) -> None:
        self.draining = True

    def _on_HandBackHeld(self, event: HandBackHeld, out: list) -> None:
        """Items still rendering or uploading when a drain ends: they never committed, so a
        resumed job renders them (a late commit is found then)."""
        held = self.held()
        for job_id, item_id in held:
            if job_id in self.jobs:
                self.jobs[job_id].state.hand_back(item_id)
        out.append(HandedBack(tuple(sorted(held))))

    def _on_Tick(self, event: Tick, out: list) -> None:
        self._fill(out)
        if self.in_flight() or not len(self.queue) or self.draining or self.starting():
            return
        if any(self.queue.queued_by_tier().get(tier) for tier in self.awaited):  # nodes are on their way
            return
        for job in list(self.jobs.values()):  # work left, nobody able to take it
            job.state.fail_remaining(FailureReason.WORKER_LOST, "no render worker left that can take these items")
            self.queue.remove_job(job.id)

    # --- decisions ---------------------------------------------------------------------------

    def _rank(self, tier: str) -> int:
        return self.queue.tiers.index(tier) if tier in self.queue.tiers else -1

    def _bigger_tier_alive(self, tier: str) -> bool:
        bigger = set(self.queue.tiers[self._rank(tier) + 1 :])  # one set test per worker, not a list search
        return bool(bigger) and any(s.tier in bigger and s.phase not in (WorkerPhase.GONE, WorkerPhase.DRAINING)
                                    for s in self.workers.values())

    def _fill(self, out: list) -> None:
        # Smallest tiers choose first, so big workers only steal what small ones cannot take now.
        if self.draining:
            return
        idle = [s for s in self.workers.values() if s.phase is WorkerPhase.IDLE]
        empty: set[tuple[str, str | None]] = set()  # (tier, model) that found nothing this pass
        rank = {tier: index for index, tier in enumerate(self.queue.tiers)}
        stuck: list[WorkerSlot] = []  # idle, with nothing queued for the model they hold
        for slot in sorted(idle, key=lambda s: rank.get(s.tier, -1)):
            if (slot.tier, slot.model) in empty:
                stuck.append(slot)
                continue
            taken = self.queue.take(slot.tier, slot.model)
            if taken is None:
                empty.add((slot.tier, slot.model))
                stuck.append(slot)
            else:
                self._send(slot, taken[0], taken[1], out)
        if stuck:
            self._switch(stuck, out)

    def _switch(self, stuck: list[WorkerSlot], out: list) -> None:
        """Idle workers whose model has nothing queued: switch those that shorten a waiting
        model's finish (farm.core.switching), one decision at a time so holders add up."""
        waiting_by_tier: dict[str, dict[str, tuple[int, float]]] = {}  # one look per tier in a pass
        for slot in stuck:
            if slot.model is None:
                continue  # it takes any model's items: nothing to switch
            if slot.tier not in waiting_by_tier:
                waiting_by_tier[slot.tier] = self.queue.takeable_by_model(slot.tier)
            waiting = waiting_by_tier[slot.tier]
            queues = [QueueView(model, items, work, self.load_seconds.get(model, self.default_load_seconds))
                      for model, (items, work) in waiting.items() if model not in slot.refused_models]
            if not queues:
                continue
            views = [WorkerView(s.name, s.model, idle=s is slot, items_since_switch=s.items_since_switch)
                     for s in self.workers.values() if s.live]
            decision = next((d for d in decide_switches(views, queues, self.switch_policy) if d.worker == slot.name), None)
            if decision is None:
                continue
            slot.move(WorkerPhase.SWITCHING)
            out.append(SwitchModel(slot.name, decision.to_model, slot.model, decision.reason))
            slot.model = decision.to_model  # counted as a holder by the decisions that follow

    def _watch(self, out: list) -> None:
        for slot in self.workers.values():
            if slot.uploading and not slot.watching and slot.live:
                slot.watching = True
                out.append(WatchCommits(slot.name))

    def _send(self, slot: WorkerSlot, job_id: str, item_id: str, out: list, *, new_attempt: bool = True,
              allow_bigger: bool = True) -> None:
        job = self.jobs[job_id]
        item = job.items[item_id]
        plan = item.plan
        task = job.state.task_for(
            item_id,
            job_id=job_id,
            settings=item.settings if item.settings is not None else plan.settings,
            planned_tier=plan.tier,
            degradations=item.degradations if item.degradations is not None else plan.degradations,
            ooms=item.ooms,
            bigger_tier_available=allow_bigger and self._bigger_tier_alive(slot.tier),
            estimate_gib=round(plan.estimate.total_gib, 2) if plan.estimate else None,
            replace_etag=item.replace_etag,
        )
        job.state.mark_running(item_id, slot.name, slot.tier, new_attempt=new_attempt)
        slot.move(WorkerPhase.RENDERING)
        slot.job_id, slot.item_id = job_id, item_id
        out.append(SendTask(slot.name, task))

    def _record(self, outcome: ItemOutcome, out: list) -> None:
        job = self.jobs.get(outcome.job_id)
        if job is None:  # a job finished or cancelled meanwhile; its result is committed anyway
            return
        if job.state.items[outcome.item_id].state != RUNNING:  # handed back or failed meanwhile: stale
            return
        if outcome.status == CANCELLED and not job.cancel_wanted(outcome.item_id):
            # A stop nobody asked for (a stale request on the worker): rendered again, no attempt counted.
            job.state.hand_back(outcome.item_id, uncount=True)
            if job.released:
                job.items.pop(outcome.item_id, None)
            elif not self.draining:  # the farm stopping: kept queued for a resumed job
                self._requeue(job.id, outcome.item_id)
            return
        job.state.record(outcome)  # cancelled, or committed before the cancel reached it: never both
        job.items.pop(outcome.item_id, None)
        job.cancelling.discard(outcome.item_id)
        out.append(ItemFinished(job.id, outcome))

    def _escalate(self, slot: WorkerSlot, job: DispatchJob, escalation: Escalation, out: list) -> None:
        """Out of memory with a bigger tier in the cluster: move there if one is idle now, else
        back to the same worker with the bigger tier refused (its ladder goes on from there,
        skipping what already ran out of memory on its tier)."""
        item = job.items[escalation.item_id]
        item.settings, item.degradations, item.ooms = escalation.settings, escalation.degradations, escalation.ooms
        rank = self._rank(slot.tier)
        bigger = [s for s in self.workers.values() if s.phase is WorkerPhase.IDLE and self._rank(s.tier) > rank]
        if not bigger and slot.phase is WorkerPhase.DRAINING:  # not back to a worker that takes nothing new
            job.state.hand_back(escalation.item_id, uncount=True)  # the attempt goes on elsewhere
            self._requeue(job.id, escalation.item_id)
            return
        if not bigger:
            self._send(slot, job.id, escalation.item_id, out, new_attempt=False, allow_bigger=False)
            return
        target = min(bigger, key=lambda s: self._rank(s.tier))
        moved = Degradation(BIGGER_TIER, slot.tier, target.tier, escalation.message)
        # Planned afresh for the bigger card: not the savers the small one needed, nor what already
        # ran out of memory on a card of this tier.
        settings, steps = self._fit(job, escalation.item_id, target.tier, item.ooms)
        item.settings, item.degradations = settings, (*item.degradations, moved, *steps)
        self._send(target, job.id, escalation.item_id, out, new_attempt=False)

    def _fit(self, job: DispatchJob, item_id: str, tier: str, ooms: tuple[OomRecord, ...]):
        spec = job.state.spec
        spec_item = job.state.spec_item(item_id)
        planner = Planner(self.table, self.shape, self.profile_for(spec.profile_key(spec_item)))
        return planner.fit_to_tier(spec_item, tier, order=spec.degrade_order, blocked=blocked_on(tier, ooms))

    def _ensure_tier(self, tier: str) -> None:
        if tier not in self.queue.tiers:
            known = [t for t in (*self.queue.tiers, tier) if t != CPU_TIER]
            self.queue.set_tiers(([CPU_TIER] if CPU_TIER in (*self.queue.tiers, tier) else []) + self.table.ordered(known))

    def _replan_degraded(self) -> None:
        """Queued items whose plan degraded them (no tier big enough was there) are planned
        again on the workers there are now, in one pass."""
        degraded = [(job.id, item_id) for job in self.jobs.values() for item_id, item in job.items.items()
                    if item.plan.degradations and item.settings is None]
        queued = self.queue.remove_items(set(degraded))
        if queued:
            self._replan(queued)

    def _replan(self, orphans: list[tuple[str, str]]) -> None:
        """The last worker of a tier is gone: plan its queued items on the tiers that are left
        (and those whose workers are starting or were asked of the autoscaler)."""
        counts = self.plan_counts()
        planners: dict[str, Planner] = {}  # one per model: its plan cache serves identical items
        for job_id, item_id in orphans:
            job = self.jobs[job_id]
            if not counts:
                job.state.fail(item_id, FailureReason.WORKER_LOST, "every render worker is gone")
                job.items.pop(item_id, None)
                continue
            spec = job.state.spec
            spec_item = job.state.spec_item(item_id)
            key = spec.profile_key(spec_item)
            if key not in planners:
                planners[key] = Planner(self.table, ClusterShape(counts), self.profile_for(key))
            item_plan = planners[key].plan_item(spec_item, order=spec.degrade_order, unfit=spec.unfit)
            if item_plan.rejected:
                job.state.fail(item_id, FailureReason.NO_FITTING_TIER, item_plan.rejected)
                job.items.pop(item_id, None)
                continue
            job.items[item_id] = DispatchItem(item_plan, replace_etag=job.items[item_id].replace_etag,
                                              model=job.items[item_id].model)
            job.state.mark_planned(item_id, item_plan.tier)
            self.queue.push(job_id, item_id, item_plan.tier, work=item_plan.seconds or 0.0, model=job.items[item_id].model)

    # --- finishing jobs ----------------------------------------------------------------------

    def _holds(self, job_id: str) -> bool:
        if self.queue.has_job(job_id) and self.queue.queued(job_id):
            return True
        return any(j == job_id for j, _ in self.held())

    def _finish_finished_jobs(self, out: list) -> None:
        for job in list(self.jobs.values()):
            if not self._holds(job.id):
                del self.jobs[job.id]
                self.queue.remove_job(job.id)
                out.append(JobFinished(job.id))
