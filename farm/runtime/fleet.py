"""Render workers that follow the cluster: start workers on GPUs that joined, stop idle ones.

`RayFleet` is what the engine asks, every `cluster_poll_s`: how many GPU slots each tier has in
the cluster now (`ray.cluster_resources()`: the `farm_tier_<tier>` resources of the nodes that
are alive), and to start a worker for a tier. What to start and what to stop is decided by
`farm.core.fleet.fleet_changes` from those slots, the workers the dispatcher knows and the
queue; the engine carries it out (a started worker joins the dispatcher once its model has
loaded; a retired one is stopped, which releases its GPU). Workers on nodes that leave die with
them and are handled as any lost worker (their items are queued again).

A worker that cannot start (its model does not fit, its node cannot import farm) takes its GPU
slot out of the count for `FAILED_START_HOLD_S`, so a bad GPU is not retried every poll.

Nodes being drained (`draining()`: Ray's node drain, or a SIGTERM to the node) are going: their
slots are not counted, so no worker is started there; the engine drains the workers on them
(`farm.core.dispatch.WorkerDraining`).
"""

from __future__ import annotations

import re
import time

from farm.core.tiers import tiers_in_resources
from farm.runtime.engine import Worker, spawn_worker
from farm.settings import FarmSettings


FAILED_START_HOLD_S = 300.0


class RayFleet:
    """Starts render actors for the engine as GPUs appear (see the module text)."""

    def __init__(self, model: str, settings: FarmSettings, *, mailbox=None, faults: str | None = None):
        from farm.models.loading import absolute_model_ref

        self.model = absolute_model_ref(model)
        self.settings = settings
        self.mailbox = mailbox
        self.faults = faults if faults is not None else settings.workers.faults
        self._next: dict[str, int] = {}
        self._failed: list[tuple[str, float]] = []  # (tier, when) of starts that failed
        self._gpus = True  # whether the cluster's tier nodes have GPUs (simulated ones may not): from `slots`

    def started(self, names: list[str]) -> None:
        """Workers started before the fleet took over: names stay unique (TIER-N after theirs)."""
        for name in names:
            match = re.fullmatch(r"(.+)-(\d+)", name)
            if match:
                tier, index = match.group(1), int(match.group(2))
                self._next[tier] = max(self._next.get(tier, 0), index + 1)

    def slots(self) -> dict[str, int]:
        """GPU slots per tier on the nodes that are alive now."""
        import ray

        resources = ray.cluster_resources()
        self._gpus = resources.get("GPU", 0) > 0
        slots = tiers_in_resources(resources)
        self._without_draining(slots)
        now = time.monotonic()
        self._failed = [(tier, when) for tier, when in self._failed if now - when < FAILED_START_HOLD_S]
        for tier, _ in self._failed:
            if tier in slots:
                slots[tier] = max(slots[tier] - 1, 0)
        return slots

    def draining(self) -> dict[str, float | None]:
        """Nodes being drained: {node id: deadline (epoch seconds; None: no deadline)}."""
        from farm.runtime.cluster import draining_nodes

        return draining_nodes()

    def _without_draining(self, slots: dict[str, int]) -> None:
        """Take the tier slots of nodes being drained out of `slots` (they still count in the
        cluster's resources until they are gone)."""
        import ray

        draining = self.draining()
        if not draining:
            return
        for node in ray.nodes():
            if node.get("Alive") and node.get("NodeID") in draining:
                for tier, count in tiers_in_resources(node.get("Resources") or {}).items():
                    if tier in slots:
                        slots[tier] = max(slots[tier] - count, 0)

    def start_failed(self, tier: str) -> None:
        self._failed.append((tier, time.monotonic()))

    def start(self, tier: str) -> Worker:
        index = self._next.get(tier, 0)
        self._next[tier] = index + 1
        return spawn_worker(self.model, f"{tier}-{index}", tier, gpu=self._gpus, settings=self.settings,
                            faults=self.faults, mailbox=self.mailbox)
