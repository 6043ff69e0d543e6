"""How many render workers each tier should have, as the cluster grows and shrinks: pure logic.

The runtime reports what the cluster offers (GPU slots per tier: nodes that joined bring theirs,
nodes that left take theirs away), the workers it has (live, and starting: loading their model)
and the work that waits per tier; `fleet_changes` says which workers to start and which idle
ones to stop. No Ray and no clock here: `now` and each worker's idle-since time come in.

- A tier with free GPU slots gets workers while work waits that its workers could take (its
  own queue or, by stealing, a smaller tier's), or while it has fewer than its minimum.
- At most `max_loads` workers load a model at once (a big cluster reading terabytes of
  weights from one volume at the same moment helps nobody).
- A worker idle for `idle_timeout_s` (0: never) stops and frees its GPU (so the autoscaler can
  remove the node), unless its tier would drop below its minimum or work it could take waits.

`autoscale_demand` turns the same view into what to ask Ray's autoscaler for: the GPUs each tier
should have, so work that waits brings nodes and a drained queue lets them go.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from farm.core.tiers import RESOURCE_PREFIX


@dataclass(frozen=True)
class FleetWorker:
    """A live worker as the fleet policy sees it."""

    name: str
    tier: str
    idle_since: float | None  # None: busy (rendering, uploading or being probed)


@dataclass(frozen=True)
class FleetChanges:
    """Workers to start (count per tier) and live workers to stop (by name)."""

    start: dict[str, int] = field(default_factory=dict)
    stop: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.start or self.stop)


def takeable(tier: str, order: list[str], queued: dict[str, int]) -> int:
    """Items a worker of `tier` may take: its own tier's and, by stealing, smaller tiers'."""
    if tier not in order:
        return queued.get(tier, 0)
    return sum(queued.get(t, 0) for t in order[: order.index(tier) + 1])


def fleet_changes(
    *,
    slots: dict[str, int],
    workers: list[FleetWorker],
    starting: dict[str, int],
    queued: dict[str, int],
    order: list[str],
    now: float,
    idle_timeout_s: float,
    min_per_tier: dict[str, int] | None = None,
    max_loads: int = 4,
) -> FleetChanges:
    """What to change; `order` lists the tiers smallest first (stealing goes up this order)."""
    minimum = min_per_tier or {}
    live: dict[str, int] = {}
    for worker in workers:
        live[worker.tier] = live.get(worker.tier, 0) + 1
    loads_left = max(max_loads - sum(starting.values()), 0)
    start: dict[str, int] = {}
    # Smallest tiers first: work goes to the cheapest card it fits; what a tier cannot absorb
    # (no free slot there) flows up to bigger tiers, which may steal it.
    carried = 0
    for tier in order:
        have = live.get(tier, 0) + starting.get(tier, 0)
        free = max(slots.get(tier, 0) - have, 0)
        idle_here = sum(1 for w in workers if w.tier == tier and w.idle_since is not None)
        demand = queued.get(tier, 0) + carried - idle_here - starting.get(tier, 0)
        count = min(max(demand, minimum.get(tier, 0) - have, 0), free, loads_left)
        if count > 0:
            start[tier] = count
            loads_left -= count
        carried = max(demand - count, 0)
    stop: list[str] = []
    if idle_timeout_s > 0:
        left = dict(live)
        for worker in sorted(workers, key=lambda w: (w.idle_since is None, w.idle_since or 0.0)):
            if worker.idle_since is None or now - worker.idle_since < idle_timeout_s:
                continue
            if left[worker.tier] <= minimum.get(worker.tier, 0) or takeable(worker.tier, order, queued):
                continue
            left[worker.tier] -= 1
            stop.append(worker.name)
    return FleetChanges(start, tuple(stop))


def autoscale_demand(
    *,
    queued: dict[str, int],
    workers: dict[str, int],
    idle: dict[str, int],
    caps: dict[str, int],
    minimum: dict[str, int] | None = None,
) -> dict[str, int]:
    """GPUs per tier to ask the autoscaler for (a standing request, not an increment): the
    workers a tier has (live and starting) plus one for each queued item of its own that its
    idle workers cannot take at once, at least its minimum, at most its cap. Only tiers named
    in `caps` are asked for; work is not carried to bigger tiers here (a bigger card for a
    small item costs more: the cheap tier's own nodes are what it waits for). A tier asking for
    nothing is left out, so an empty answer clears the request."""
    minimum = minimum or {}
    demand: dict[str, int] = {}
    for tier, cap in caps.items():
        have = workers.get(tier, 0)
        extra = max(queued.get(tier, 0) - idle.get(tier, 0), 0)
        wanted = min(max(have + extra, minimum.get(tier, 0)), cap)
        if wanted > 0:
            demand[tier] = wanted
    return demand


def resource_bundles(demand: dict[str, int]) -> list[dict[str, float]]:
    """The autoscaler request for `demand`: one bundle per GPU, carrying the tier's resource
    (what a render worker of that tier is started with)."""
    return [{"GPU": 1.0, RESOURCE_PREFIX + tier: 1.0} for tier in sorted(demand) for _ in range(demand[tier])]
