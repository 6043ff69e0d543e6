"""Per-tier queues with work stealing: which item an idle worker of a tier takes next.

A worker takes from its own tier's queue first. When that is empty it may take an item planned
for a *smaller* tier (never a bigger one: the item would not fit), choosing the smaller queue
with the most waiting items per worker, so no GPU idles while work waits. The same class drives
the live executor and the planner's makespan simulation.
"""

from __future__ import annotations

from collections import deque


class TierScheduler:
    def __init__(self, tiers_smallest_first: list[str], workers_per_tier: dict[str, int]):
        self.order = list(tiers_smallest_first)
        self.rank = {name: index for index, name in enumerate(self.order)}
        self.workers = dict(workers_per_tier)
        self.queues: dict[str, deque[str]] = {name: deque() for name in self.order}

    def push(self, item_id: str, tier: str, *, front: bool = False) -> None:
        queue = self.queues[tier]
        queue.appendleft(item_id) if front else queue.append(item_id)

    def take(self, tier: str) -> tuple[str, str] | None:
        """(item_id, the tier it was planned for) for an idle worker of `tier`, or None."""
        own = self.queues.get(tier)
        if own:
            return own.popleft(), tier
        smaller = [name for name in self.order[: self.rank[tier]] if self.queues[name]]
        if not smaller:
            return None
        # The most backlogged smaller tier; ties go to the largest (closest fit).
        victim = max(smaller, key=lambda name: (len(self.queues[name]) / max(self.workers.get(name, 0), 0.5), self.rank[name]))
        return self.queues[victim].popleft(), victim

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
