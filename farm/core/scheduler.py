"""Per-tier queues with work stealing: which item an idle worker of a tier takes next.

A worker takes from its own tier's queue first. When that is empty it may take an item planned
for a *smaller* tier (never a bigger one: the item would not fit), choosing the smaller queue
with the most waiting items per worker, so no GPU idles while work waits. The same class drives
the live dispatch and the planner's makespan simulation.

Within a queue the longest item goes first (by the planner's estimated work; ties in the order
they were queued): longest-processing-time-first keeps the end of a job from waiting on one
long render that started last. An item pushed to the front (a retry after a lost worker) goes
before all of them.
"""

from __future__ import annotations

import heapq
from itertools import count


class TierQueue:
    """One tier's queue: longest estimated work first, FIFO among equals, retries at the front."""

    def __init__(self):
        self._heap: list[tuple[float, int, float, str]] = []  # (sort key, order, work, item)
        self._sequence = count()
        self.work = 0.0  # estimated seconds of everything queued here

    def push(self, item_id: str, work: float = 0.0, *, front: bool = False) -> None:
        order = next(self._sequence)
        # Front pushes sort before any work, the latest first (as appendleft did).
        key = (float("-inf"), -order) if front else (-work, order)
        heapq.heappush(self._heap, (*key, work, item_id))
        self.work += work

    def pop(self) -> str:
        entry = heapq.heappop(self._heap)
        self.work = max(self.work - entry[2], 0.0) if self._heap else 0.0
        return entry[-1]

    def clear(self) -> None:
        self._heap.clear()
        self.work = 0.0

    def remove(self, item_ids: set[str]) -> list[str]:
        """Take these items out (one pass over the queue); returns those that were in it."""
        kept = [entry for entry in self._heap if entry[-1] not in item_ids]
        removed = [entry[-1] for entry in self._heap if entry[-1] in item_ids]
        if removed:
            heapq.heapify(kept)
            self._heap = kept
            self.work = sum(entry[2] for entry in kept)
        return removed

    def __iter__(self):
        """The items in the order they would be taken."""
        return (entry[-1] for entry in sorted(self._heap))

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)


class TierScheduler:
    """The queues of one job, one per tier, and the stealing rule between them."""

    def __init__(self, tiers_smallest_first: list[str], workers_per_tier: dict[str, int]):
        self.order = list(tiers_smallest_first)
        self.rank = {name: index for index, name in enumerate(self.order)}
        self.workers = dict(workers_per_tier)
        self.queues: dict[str, TierQueue] = {name: TierQueue() for name in self.order}

    def set_tiers(self, tiers_smallest_first: list[str]) -> None:
        self.order = list(tiers_smallest_first)
        self.rank = {name: index for index, name in enumerate(self.order)}
        for name in self.order:
            self.queues.setdefault(name, TierQueue())

    def remove(self, item_ids: set[str]) -> list[str]:
        return [item for queue in self.queues.values() for item in queue.remove(item_ids)]

    def push(self, item_id: str, tier: str, *, work: float = 0.0, front: bool = False) -> None:
        self.queues[tier].push(item_id, work, front=front)

    def take(self, tier: str) -> tuple[str, str] | None:
        """(item_id, the tier it was planned for) for an idle worker of `tier`, or None."""
        own = self.queues.get(tier)
        if own:
            return own.pop(), tier
        smaller = [name for name in self.order[: self.rank[tier]] if self.queues[name]]
        if not smaller:
            return None
        # The most backlogged smaller tier; ties go to the largest (closest fit).
        victim = max(smaller, key=lambda name: (len(self.queues[name]) / max(self.workers.get(name, 0), 0.5), self.rank[name]))
        return self.queues[victim].pop(), victim

    def worker_gone(self, tier: str) -> list[str]:
        """A worker of `tier` is gone; if it was the last one, return its orphaned queue."""
        self.workers[tier] = max(self.workers.get(tier, 0) - 1, 0)
        if self.workers[tier] > 0:
            return []
        orphans = list(self.queues[tier])
        self.queues[tier].clear()
        return orphans

    def bigger_tiers(self, tier: str) -> list[str]:
        return self.order[self.rank[tier] + 1 :]

    def __len__(self) -> int:
        return sum(len(queue) for queue in self.queues.values())

    def queued(self) -> dict[str, int]:
        return {name: len(queue) for name, queue in self.queues.items()}

    def takeable(self, tier: str) -> tuple[int, float]:
        """(items, estimated seconds) a worker of `tier` could take: its own tier's and smaller ones'."""
        names = self.order[: self.rank[tier] + 1] if tier in self.rank else []
        return sum(len(self.queues[n]) for n in names), sum(self.queues[n].work for n in names)
