"""Several jobs sharing one farm: which job an idle worker serves next.

Jobs are served by priority (a higher integer first), FIFO by submission within a priority,
but not one job after the other: within the highest priority that has work a worker can take,
jobs take turns (round-robin), so a small job submitted after a big one is not stuck behind it.
Inside a job, the tier rules of `TierScheduler` apply (own tier first, then steal from smaller;
the longest estimated item first).

A job whose items name several models keeps one sub-queue per model (same priority, same turn
in the rotation): a worker takes only items of the model it holds (`take(tier, model)`), and
`takeable_by_model` tells the model-switch policy what waits for each model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count

from farm.core.scheduler import TierScheduler


@dataclass
class _QueuedJob:
    job_id: str
    priority: int
    sequence: int
    scheduler: TierScheduler = field(repr=False)
    model: str = ""  # "" : the items of every model (a farm of one model)


class JobQueue:
    """The queued items of every admitted job: by priority, jobs in turn, then by tier."""

    def __init__(self, tiers_smallest_first: list[str], workers_per_tier: dict[str, int]):
        self.tiers = list(tiers_smallest_first)
        self.workers = dict(workers_per_tier)
        self.jobs: dict[tuple[str, str], _QueuedJob] = {}  # (job, model) -> its queue
        self._sequence = count()
        self._last_served: dict[int, int] = {}  # priority -> sequence of the job served last
        self._added: dict[str, tuple[int, int]] = {}  # job -> (priority, sequence)

    def add_job(self, job_id: str, priority: int = 0) -> None:
        self._added[job_id] = (priority, next(self._sequence))
        self._queue_of(job_id, "")

    def _queue_of(self, job_id: str, model: str) -> _QueuedJob:
        key = (job_id, model)
        if key not in self.jobs:
            priority, sequence = self._added[job_id]
            self.jobs[key] = _QueuedJob(job_id, priority, sequence, TierScheduler(self.tiers, self.workers), model)
        return self.jobs[key]

    def _of_job(self, job_id: str) -> list[_QueuedJob]:
        return [queued for (owner, _), queued in self.jobs.items() if owner == job_id]

    def has_job(self, job_id: str) -> bool:
        return job_id in self._added

    def remove_job(self, job_id: str) -> list[str]:
        """Drop a job (finished or cancelled); returns its items that were still queued."""
        self._added.pop(job_id, None)
        items = []
        for queued in self._of_job(job_id):
            del self.jobs[(job_id, queued.model)]
            items += [item for queue in queued.scheduler.queues.values() for item in queue]
        return items

    def push(self, job_id: str, item_id: str, tier: str, *, work: float = 0.0, front: bool = False,
             model: str = "") -> None:
        """Queue an item; within its tier the largest estimated `work` goes first (`front`: first of all).
        `model`: the model that renders it, where the farm holds several ("": any worker takes it)."""
        self._queue_of(job_id, model).scheduler.push(item_id, tier, work=work, front=front)

    def take(self, tier: str, model: str | None = None) -> tuple[str, str, str] | None:
        """(job_id, item_id, planned tier) for an idle worker of `tier` holding `model` (None:
        any model), or None. Items queued without a model ("") are every worker's."""
        if tier not in self.tiers:
            return None
        rank = self.tiers.index(tier)
        takeable = [job for job in self.jobs.values()
                    if (model is None or job.model in ("", model))
                    and any(job.scheduler.queues[t] for t in self.tiers[: rank + 1])]
        if not takeable:
            return None
        top = max(job.priority for job in takeable)
        group = sorted((job for job in takeable if job.priority == top), key=lambda job: job.sequence)
        last = self._last_served.get(top, -1)
        chosen = next((job for job in group if job.sequence > last), group[0])
        self._last_served[top] = chosen.sequence
        item_id, planned = chosen.scheduler.take(tier)
        return chosen.job_id, item_id, planned

    def takeable_by_model(self, tier: str) -> dict[str, tuple[int, float]]:
        """model -> (items, estimated seconds) a worker of `tier` could take once it holds that model."""
        totals: dict[str, tuple[int, float]] = {}
        for job in self.jobs.values():
            if not job.model:
                continue
            items, work = job.scheduler.takeable(tier)
            if items:
                before = totals.get(job.model, (0, 0.0))
                totals[job.model] = (before[0] + items, before[1] + work)
        return totals

    def set_tiers(self, tiers_smallest_first: list[str]) -> None:
        """The tiers there are changed (a worker of a new tier is starting): queues for them."""
        self.tiers = list(tiers_smallest_first)
        for job in self.jobs.values():
            job.scheduler.set_tiers(self.tiers)

    def worker_joined(self, tier: str) -> None:
        self.workers[tier] = self.workers.get(tier, 0) + 1
        for job in self.jobs.values():
            job.scheduler.workers[tier] = self.workers[tier]

    def remove_items(self, pairs: set[tuple[str, str]]) -> list[tuple[str, str]]:
        """Take these (job, item) pairs out of the queues; returns those that were queued."""
        removed = []
        for job in self.jobs.values():
            ids = {item for job_id, item in pairs if job_id == job.job_id}
            if ids:
                removed += [(job.job_id, item) for item in job.scheduler.remove(ids)]
        return removed

    def drain_tier(self, tier: str) -> list[tuple[str, str]]:
        """Empty one tier's queues (nobody of that tier will come): the (job, item) pairs they held."""
        orphans = []
        for job in self.jobs.values():
            queue = job.scheduler.queues.get(tier)
            if queue:
                orphans += [(job.job_id, item) for item in queue]
                queue.clear()
        return orphans

    def worker_gone(self, tier: str) -> list[tuple[str, str]]:
        """A worker of `tier` is gone; if it was the last one, the (job, item) pairs it orphans."""
        self.workers[tier] = max(self.workers.get(tier, 0) - 1, 0)
        orphans = []
        for job in self.jobs.values():
            job.scheduler.workers[tier] = self.workers[tier]
            if self.workers[tier] == 0:
                orphans += [(job.job_id, item) for item in job.scheduler.queues[tier]]
                job.scheduler.queues[tier].clear()
        return orphans

    def has_bigger_tier(self, tier: str) -> bool:
        return tier in self.tiers and self.tiers.index(tier) < len(self.tiers) - 1

    def queued(self, job_id: str | None = None) -> int:
        jobs = self._of_job(job_id) if job_id is not None else list(self.jobs.values())
        return sum(len(job.scheduler) for job in jobs)

    def queued_by_tier(self) -> dict[str, int]:
        totals = {tier: 0 for tier in self.tiers}
        for job in self.jobs.values():
            for tier, size in job.scheduler.queued().items():
                totals[tier] += size
        return totals

    def __len__(self) -> int:
        return self.queued()
