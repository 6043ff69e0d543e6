"""A job's lifecycle as plain data: per-item state, the counts derived from it, and the job record.

No I/O and no Ray here: the dispatch state machine feeds outcomes in and the runtime writes
`to_record()` out. The states and their allowed changes are in `farm.core.states`; what travels
to and from the workers (tasks, outcomes, replies) in `farm.core.contracts`.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from dataclasses import dataclass, field
from heapq import nsmallest
from operator import attrgetter
from typing import Any

from farm import __version__
from farm.core.contracts import Escalation, ItemOutcome, RenderTask, WorkerReply, inputs_digest
from farm.core.errors import FailureReason
from farm.core.manifest import JobSpec
from farm.core.states import (
    CANCELLED,
    FAILED,
    FINAL_ITEM_STATES,
    FINAL_JOB_STATES,
    ITEM_STATES,
    ITEM_TRANSITIONS,
    JOB_STATES,
    QUEUED,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    IllegalItemTransition,
    ItemState,
    JobStatus,
)

MAX_ATTEMPTS = 3
MIN_RATE_WINDOW_S = 5.0
POST_FAILURES_KEPT = 20

__all__ = [  # the states and the contracts are re-exported: `from farm.core.job import ...` keeps working
    "CANCELLED", "FAILED", "FINAL_ITEM_STATES", "FINAL_JOB_STATES", "ITEM_STATES", "ITEM_TRANSITIONS", "JOB_STATES",
    "QUEUED", "RUNNING", "SKIPPED", "SUCCEEDED", "Escalation", "IllegalItemTransition", "ItemOutcome", "ItemState",
    "ItemStatus", "JobState", "JobStatus", "RenderTask", "WorkerReply", "inputs_digest",
]


@dataclass
class PostProgress:
    """The CPU stage's share of a job: deliverables waiting, being made, and what came of them
    (`made`, `skipped`: committed before, `failed`, `superseded`: the item was rendered again
    meanwhile), and the seconds spent; the last failures with their reasons."""

    queued: int = 0  # items whose deliverables wait for a CPU worker
    running: int = 0
    made: int = 0
    skipped: int = 0
    failed: int = 0
    superseded: int = 0
    seconds: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pending(self) -> int:
        return self.queued + self.running

    def add(self, outcome: str, seconds: float = 0.0, failure: dict[str, Any] | None = None) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)
        self.seconds += seconds
        if failure is not None:
            self.failures = [*self.failures, failure][-POST_FAILURES_KEPT:]

    def to_dict(self) -> dict[str, Any]:
        return {"queued": self.queued, "running": self.running, "made": self.made, "skipped": self.skipped,
                "failed": self.failed, "superseded": self.superseded, "seconds": round(self.seconds, 3),
                "failures": list(self.failures)}


@dataclass
class ItemStatus:
    """One item as the job record shows it (`job.json`'s `items.ID`)."""

    index: int
    state: ItemState = QUEUED
    attempts: int = 0
    reason: str | None = None
    message: str | None = None
    worker: str | None = None
    seconds: float | None = None
    planned_tier: str | None = None
    tier: str | None = None
    warnings: list[str] = field(default_factory=list)
    degradations: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return self.record_of(self.fields())

    def fields(self) -> tuple:
        """What the record shows of this item, as a tuple: a cheap snapshot (`record_of` builds
        the record from it later, on another thread if need be). The lists are not copied: an
        item's `warnings` and `degradations` are replaced, never changed in place."""
        return _fields_of(self)

    @staticmethod
    def record_of(fields: tuple) -> dict[str, Any]:
        """The item's record (`job.json`'s `items.ID`) from its `fields()`."""
        index, state, attempts, *optional, warnings, degradations = fields
        data = {"index": index, "state": state, "attempts": attempts}
        for name, value in zip(_OPTIONAL_FIELDS, optional):
            if value is not None:
                data[name] = round(value, 3) if isinstance(value, float) else value
        if warnings:
            data["warnings"] = warnings
        if degradations:
            data["degradations"] = degradations
        return data


_OPTIONAL_FIELDS = ("reason", "message", "worker", "planned_tier", "tier", "seconds")  # the order of `fields()`
_fields_of = attrgetter("index", "state", "attempts", *_OPTIONAL_FIELDS, "warnings", "degradations")


class JobState:
    """Per-item state of one job and the counts derived from it."""

    def __init__(self, spec: JobSpec, *, clock=time.time):
        self.spec = spec
        self._clock = clock
        self.created_at = clock()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.cancelled = False
        self.interrupted = False  # stopped by a signal before the end (`farm resume` finishes it)
        self.unprovidable_tiers: list[str] = []  # planned for a tier the autoscaler never brought (then planned elsewhere)
        self.items: dict[str, ItemStatus] = {}
        self._items_by_id = {item.id: item for item in spec.items}
        for item in spec.items:
            self.items[item.id] = ItemStatus(index=item.index)
        for rejected in spec.rejected:
            key = rejected.id or f"items[{rejected.index}]"
            self.items[key] = ItemStatus(
                index=rejected.index, state=FAILED, reason=FailureReason.INVALID_ITEM, message=rejected.message
            )
        self.workers: dict[str, dict[str, Any]] = {}
        self.plan: dict[str, Any] | None = None
        self.post = PostProgress()  # deliverables, made on CPU workers after each commit
        self.picks: dict[str, str] = {}  # an image's takes' shared id -> the take chosen (`farm pick`)
        self.has_deliverables = any(item.deliverables for item in spec.items)
        self.has_takes = any(item.take is not None for item in spec.items)
        # Kept as items change state, so a status answer does not depend on the item count.
        self._counts = {state: 0 for state in ITEM_STATES}
        for status in self.items.values():
            self._counts[status.state] += 1
        self._degraded = 0  # succeeded items with degradations
        # The items in index order (the record's order and the item list's), fixed from here on:
        # a page of the item list starts at its cursor by bisection instead of sorting every item.
        self._order = [item_id for item_id, _ in sorted(self.items.items(), key=lambda pair: pair[1].index)]
        self._indices = [self.items[item_id].index for item_id in self._order]
        self._position = {item_id: position for position, item_id in enumerate(self._order)}
        # Positions (in that order) of the items in each state: a page of a sparse state (the
        # failures of a big job) is found among them, without reading every item.
        self._in_state: dict[str, set[int]] = {state: set() for state in ITEM_STATES}
        for position, item_id in enumerate(self._order):
            self._in_state[self.items[item_id].state].add(position)
        # Items whose record changed since the job recorder last took them (`take_changed`): the
        # record is rewritten from cached per-item parts, re-encoding only these. All at first.
        self._changed: set[str] = set(self.items)

    # --- transitions ------------------------------------------------------------------------

    def start(self) -> None:
        self.started_at = self.started_at or self._clock()

    @property
    def worked(self) -> bool:
        """Whether this run rendered, made or failed anything (rather than finding it all committed)."""
        post = self.post
        return self._counts[SKIPPED] != len(self.items) or bool(post.made or post.failed or post.superseded)

    def spec_item(self, item_id: str):
        """The validated manifest item (a dict lookup: re-planning many items stays one pass)."""
        return self._items_by_id[item_id]

    def task_for(self, item_id: str, **plan: Any) -> RenderTask:
        status = self.items[item_id]
        return RenderTask.for_item(self.spec, self._items_by_id[item_id], attempt=status.attempts + 1, **plan)

    def queued_ids(self) -> list[str]:
        return [item.id for item in self.spec.items if self.items[item.id].state == QUEUED]

    def _move(self, item_id: str, state: ItemState) -> ItemStatus:
        status = self.items[item_id]
        if state not in ITEM_TRANSITIONS[status.state]:
            raise IllegalItemTransition(f"item {item_id!r} of job {self.spec.name!r}: {status.state} -> {state}")
        self._counts[status.state] -= 1
        self._counts[state] += 1
        position = self._position[item_id]
        self._in_state[status.state].discard(position)
        self._in_state[state].add(position)
        status.state = state
        self._changed.add(item_id)  # the callers change its other fields right after, on this thread
        return status

    def mark_running(self, item_id: str, worker: str, tier: str | None = None, *, new_attempt: bool = True) -> None:
        """`new_attempt=False` when an item only moves (out of memory, to a bigger GPU)."""
        status = self._move(item_id, RUNNING)
        status.worker, status.tier = worker, tier
        status.attempts += new_attempt

    def mark_planned(self, item_id: str, tier: str | None) -> None:
        status = self.items[item_id]
        if status.planned_tier != tier:
            status.planned_tier = tier
            self._changed.add(item_id)

    def fail(self, item_id: str, reason: FailureReason | str, message: str) -> None:
        reason = FailureReason(reason)
        status = self._move(item_id, FAILED)
        status.reason, status.message = reason, message

    def mark_cancelled(self, item_id: str, message: str = "the job was cancelled before this item started") -> None:
        """A queued item that will not run (its job, or the item itself, was cancelled)."""
        if self.items[item_id].state == QUEUED:
            self._move(item_id, CANCELLED).message = message

    def mark_skipped(self, item_id: str, message: str) -> None:
        self._move(item_id, SKIPPED).message = message

    def record(self, outcome: ItemOutcome) -> None:
        """A worker's final outcome of a running item (cancelled: its render was stopped)."""
        status = self._move(outcome.item_id,
                            outcome.status if outcome.status in (SUCCEEDED, SKIPPED, CANCELLED) else FAILED)
        status.reason, status.message = outcome.reason, outcome.message
        status.seconds, status.worker = outcome.seconds, outcome.worker or status.worker
        status.tier = outcome.tier or status.tier
        status.warnings, status.degradations = list(outcome.warnings), list(outcome.degradations)
        self._degraded += bool(status.degradations) and status.state == SUCCEEDED

    def worker_lost(self, item_id: str, message: str) -> bool:
        """A worker died mid-render. Requeue the item if it has attempts left; True if requeued."""
        status = self.items[item_id]
        if status.attempts < MAX_ATTEMPTS:
            self._move(item_id, QUEUED).worker = None
            return True
        self._move(item_id, FAILED)
        status.reason, status.message = FailureReason.WORKER_LOST, message
        return False

    def hand_back(self, item_id: str, *, uncount: bool = False) -> None:
        """A running item that was stopped before it committed: queued again, nothing counted
        (`uncount`: the attempt it was sent as is taken back too, as a worker on a draining node
        returned it unfinished)."""
        if self.items[item_id].state == RUNNING:
            status = self._move(item_id, QUEUED)
            status.worker = None
            if uncount:
                status.attempts = max(status.attempts - 1, 0)

    def fail_remaining(self, reason: FailureReason | str, message: str) -> None:
        if not (self._counts[QUEUED] or self._counts[RUNNING]):
            return
        for item_id, status in self.items.items():
            if status.state in (QUEUED, RUNNING):
                self.fail(item_id, reason, message)

    def finish(self) -> None:
        self.finished_at = self._clock()

    # --- derived ---------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Items per state, `total` and `degraded` (kept incrementally: O(1))."""
        return {**self._counts, "total": len(self.items), "degraded": self._degraded}

    @property
    def done(self) -> bool:
        return not (self._counts[QUEUED] or self._counts[RUNNING])

    @property
    def final_state(self) -> JobStatus:
        return self.state_for(self.counts())

    def state_for(self, counts: dict[str, int]) -> JobStatus:
        """The job's state given its `counts()` (callers that have them need not count again)."""
        if counts[QUEUED] or counts[RUNNING] or (self.post.pending and not self.finished_at):
            # A cancelled job is still stopping its running items; a rendered one making its deliverables.
            if self.interrupted:
                return JobStatus.INTERRUPTED
            if self.cancelled:
                return JobStatus.CANCELLING
            return JobStatus.RUNNING if self.started_at else JobStatus.QUEUED
        if self.cancelled:
            return JobStatus.CANCELLED
        kept = counts[SUCCEEDED] + counts[SKIPPED]
        if counts[FAILED] == 0 and counts[CANCELLED] == 0:
            return JobStatus.SUCCEEDED
        if kept == 0:  # items cancelled one by one, and nothing else: as if the job was
            return JobStatus.FAILED if counts[FAILED] else JobStatus.CANCELLED
        return JobStatus.PARTIAL  # some items, the others failed or cancelled one by one

    def throughput(self, counts: dict[str, int] | None = None) -> tuple[float | None, float | None]:
        """(rendered items per minute, seconds left), or None while unknown.

        Only rendered items count: an item that fails at once (a missing image) or was committed
        by an earlier run says nothing about render speed, and counting it gave rates like
        25,000/min. Unknown until the first item has rendered; the window is at least
        `MIN_RATE_WINDOW_S`, so a first item finishing right after the start is no spike.
        """
        counts = counts or self.counts()
        if not self.started_at or not counts[SUCCEEDED]:
            return None, None
        elapsed = max((self.finished_at or self._clock()) - self.started_at, MIN_RATE_WINDOW_S)
        rate = counts[SUCCEEDED] / elapsed
        left = counts[QUEUED] + counts[RUNNING]
        return round(rate * 60, 3), (round(left / rate, 1) if left and not self.finished_at else None)

    def failures(self) -> list[tuple[str, ItemStatus]]:
        failed = [(item_id, s) for item_id, s in self.items.items() if s.state == FAILED]
        return sorted(failed, key=lambda pair: pair[1].index)

    def item_order(self) -> list[str]:
        """Every item id in index order (the record's order). Do not change the list."""
        return self._order

    def item_positions(self) -> dict[str, int]:
        """Each item's position in `item_order()`. Do not change the mapping."""
        return self._position

    def take_changed(self) -> dict[str, tuple]:
        """The `ItemStatus.fields()` of every item whose record changed since the last call (all
        of them at the first), and forget them: for the one job recorder of this state."""
        changed, self._changed = self._changed, set()
        items = self.items
        return {item_id: _fields_of(items[item_id]) for item_id in changed}

    def page(self, state: str | None = None, after: int | None = None, limit: int = 100) -> tuple[list[dict], bool]:
        """Up to `limit` items (`{"id": ..., **record}`) with an index above `after`, in index
        order, of `state` only if given; and whether more follow. Never sorts the job: it starts
        at `after` by bisection and reads on until the page is full (plus one, to know whether
        more follow); for a state with few items (the failures of a big job) it takes the first
        of that state's positions instead, O(items in that state)."""
        order, items = self._order, self.items
        start = bisect_right(self._indices, after) if after is not None else 0
        if state is not None and 4 * len(self._in_state.get(state, ())) < len(order) - start:
            positions = self._in_state.get(state, set())
            found = nsmallest(limit + 1, (p for p in positions if p >= start))
            rows = [{"id": order[p], **items[order[p]].to_dict()} for p in found[:limit]]
            return rows, len(found) > limit
        rows: list[dict] = []
        for position in range(start, len(order)):
            status = items[order[position]]
            if state is not None and status.state != state:
                continue
            if len(rows) == limit:
                return rows, True
            rows.append({"id": order[position], **status.to_dict()})
        return rows, False

    def restore(self, item_id: str, state: ItemState, *, reason: str | None = None, message: str | None = None,
                degradations: list | None = None) -> None:
        """Set an item's final state as an earlier run's job record says (a finished job read
        back for its item list), counts included."""
        status = self.items[item_id]
        self._counts[status.state] -= 1
        self._counts[state] += 1
        position = self._position[item_id]
        self._in_state[status.state].discard(position)
        self._in_state[state].add(position)
        status.state, status.reason, status.message = state, reason, message
        status.degradations = list(degradations or [])
        self._changed.add(item_id)

    def record_header(self) -> dict[str, Any]:
        """The job record without its `items` (which come last in `to_record()`)."""
        now = self._clock()
        end = self.finished_at or now
        elapsed = end - self.started_at if self.started_at else 0.0
        counts = self.counts()
        rate, eta = self.throughput(counts)
        return {
            "farm_version": __version__,
            "name": self.spec.name,
            "state": self.state_for(counts),
            "model": self.spec.model,
            "output": self.spec.output,
            "source": self.spec.source,
            "counts": counts,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "updated_at": _iso(now),
            "elapsed_seconds": round(elapsed, 3),
            "items_per_minute": rate,
            "eta_seconds": eta,
            "workers": self.workers,
            "plan": self.plan,
            **({"unprovidable_tiers": list(self.unprovidable_tiers)} if self.unprovidable_tiers else {}),
            **({"post": self.post.to_dict()} if self.has_deliverables else {}),
            **({"deliverables_for": self.spec.deliverables_for, "picks": dict(self.picks)}
               if self.has_takes else {}),
        }

    def to_record(self) -> dict[str, Any]:
        """The job record (`job.json`), built whole: O(items). The job recorder writes the same
        record incrementally (`farm.runtime.jobs.JobRecorder`); this is its reference."""
        return {**self.record_header(), "items": {item_id: self.items[item_id].to_dict() for item_id in self._order}}


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
