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

`request(demand)` hands what the engine wants (GPUs per tier, `farm.core.fleet.autoscale_demand`)
to Ray's autoscaler as one standing `request_resources` of bundles `{GPU: 1, farm_tier_<tier>: 1}`
(an empty demand clears it). With a `namespace` (the service's coordinator), workers are named
detached actors there; `adoptable_workers` finds the ones a coordinator before this one left.

Nodes being drained (`draining()`: Ray's node drain, or a SIGTERM to the node) are going: their
slots are not counted, so no worker is started there; the engine drains the workers on them
(`farm.core.dispatch.WorkerDraining`).
"""

from __future__ import annotations

import re
import time

from farm.core.tiers import CPU_TIER, tiers_in_resources
from farm.runtime.engine import Worker, spawn_worker
from farm.runtime.handles import RayWorkerHandle
from farm.settings import FarmSettings

FAILED_START_HOLD_S = 300.0


class RayFleet:
    """Starts render actors for the engine as GPUs appear (see the module text)."""

    def __init__(self, model: str, settings: FarmSettings, *, mailbox=None, faults: str | None = None,
                 namespace: str | None = None):
        from farm.models.loading import absolute_model_ref

        self.model = absolute_model_ref(model)
        self.settings = settings
        self.mailbox = mailbox
        self.namespace = namespace  # workers are named detached actors there (None: owned by this process)
        self._requested: list[dict[str, float]] | None = None
        self.faults = faults if faults is not None else settings.workers.faults
        self._next: dict[str, int] = {}
        self._failed: list[tuple[str, float]] = []  # (tier, when) of starts that failed
        self._gpus = True  # whether the cluster's tier nodes have GPUs (simulated ones may not): from `slots`
        self._draining: dict[str, float | None] = {}  # nodes being drained: from `slots`

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

    def untiered_gpus(self) -> int:
        """GPUs of a cluster whose nodes carry no `farm_tier_<tier>` resource (0 when any does)."""
        import ray

        resources = ray.cluster_resources()
        return 0 if tiers_in_resources(resources) else int(resources.get("GPU", 0))

    def draining(self) -> dict[str, float | None]:
        """Nodes being drained, as the last `slots()` found them (the engine asks both once a
        poll): {node id: deadline (epoch seconds; None: no deadline)}."""
        return dict(self._draining)

    def _without_draining(self, slots: dict[str, int]) -> None:
        """Take the tier slots of nodes being drained out of `slots` (they still count in the
        cluster's resources until they are gone)."""
        import ray

        from farm.runtime.cluster import draining_nodes

        self._draining = draining = draining_nodes()
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
                            faults=self.faults, mailbox=self.mailbox, namespace=self.namespace)

    def request(self, demand: dict[str, int]) -> None:
        """Ask Ray's autoscaler for these GPUs per tier (replacing the last ask; {} clears it)."""
        from ray.autoscaler.sdk import request_resources

        from farm.core.fleet import resource_bundles

        bundles = resource_bundles(demand)
        if bundles != self._requested:
            request_resources(bundles=bundles)
            self._requested = bundles

    def adoptable_workers(self) -> list[Worker]:
        """Render workers a coordinator of this namespace started before and that are still alive."""
        import ray

        from farm.runtime.workers import WORKER_NAME_PREFIX, service_worker_names

        if self.namespace is None:
            return []
        found = []
        for name in service_worker_names(self.namespace):
            try:
                actor = ray.get_actor(WORKER_NAME_PREFIX + name, namespace=self.namespace)
            except ValueError:  # gone since it was listed
                continue
            found.append(Worker(name, RayWorkerHandle(actor), slot_tier_of(name)))
        self.started([w.name for w in found])
        return found


def slot_tier_of(name: str) -> str:
    """The tier a worker was started for, from its name (`24g-3`, `cpu-0`, `gpu-1`)."""
    prefix = name.rsplit("-", 1)[0]
    return CPU_TIER if prefix == "cpu" else prefix
