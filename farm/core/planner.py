"""Plan a job on a cluster shape: per item its VRAM estimate, tier and planned degradations;
per tier its load; and the job's makespan from a simulation of the farm's own dispatch.

Routing: each item goes to the smallest tier present whose budget fits its estimate at the
requested settings. An item that fits no tier present is, by the job's `unfit` policy, either
planned down the degrade ladder (within its `degrade` mode) until it fits the largest tier,
with every step recorded, or rejected here with a message saying what would make it fit.
A CPU-only cluster (tier `cpu`) has no memory budget: everything runs as requested.

Like vLLM, measuring and deciding are separate: workers report their memory, this module
decides from those numbers, the runtime applies the plan. No Ray, no torch.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace
from typing import Iterable

from farm.core.ladder import BIGGER_TIER, FRAME_STEPS, Degradation, RenderSettings, climb
from farm.core.manifest import JobItem, JobSpec
from farm.core.scheduler import TierScheduler
from farm.core.tiers import CPU_TIER, GIB, ClusterShape, TierTable
from farm.core.families import FAMILIES
from farm.core.vram import SAVER_LEVELS, ModelProfile, VramEstimate, estimate_vram, profile_for_model, render_flop

REFERENCE_TIER = "24g"  # `fixed_seconds` of a profile are measured on this tier's card
# Slow-down of each memory-saver level (decode tiling, feed-forward chunking, CPU offload).
SAVER_SLOWDOWN = (1.0, 1.03, 1.12, 1.45)


@dataclass(frozen=True)
class ItemPlan:
    item_id: str
    tier: str | None  # None: rejected at plan time
    settings: RenderSettings
    estimate: VramEstimate | None
    budget_bytes: int | None
    degradations: tuple[Degradation, ...] = ()
    seconds: float | None = None
    rejected: str | None = None
    family: str = ""  # the profile it was planned with

    @property
    def fits(self) -> bool:
        return self.budget_bytes is None or (self.estimate is not None and self.estimate.total_bytes <= self.budget_bytes)

    def to_dict(self) -> dict:
        data = {
            "item_id": self.item_id,
            "family": self.family,
            "tier": self.tier,
            "settings": self.settings.to_dict(),
            "estimate_gib": round(self.estimate.total_gib, 2) if self.estimate else None,
            "budget_gib": round(self.budget_bytes / GIB, 2) if self.budget_bytes is not None else None,
            "fits": self.fits,
            "degradations": [d.to_dict() for d in self.degradations],
            "seconds": round(self.seconds, 1) if self.seconds is not None else None,
        }
        if self.rejected:
            data["rejected"] = self.rejected
        return data


@dataclass
class TierLoad:
    workers: int
    items: int = 0
    busy_seconds: float = 0.0

    def to_dict(self) -> dict:
        per_worker = self.busy_seconds / self.workers if self.workers else None
        return {
            "workers": self.workers,
            "items": self.items,
            "busy_seconds": round(self.busy_seconds, 1),
            "busy_seconds_per_worker": round(per_worker, 1) if per_worker is not None else None,
        }


@dataclass
class JobPlan:
    items: list[ItemPlan]
    shape: ClusterShape
    tiers: dict[str, TierLoad] = field(default_factory=dict)
    makespan_seconds: float | None = None
    ideal_seconds: float | None = None

    @property
    def by_id(self) -> dict[str, ItemPlan]:
        return {plan.item_id: plan for plan in self.items}

    def to_dict(self) -> dict:
        return {
            "cluster": self.shape.workers,
            "tiers": {name: load.to_dict() for name, load in self.tiers.items()},
            "makespan_seconds": round(self.makespan_seconds, 1) if self.makespan_seconds is not None else None,
            "ideal_seconds": round(self.ideal_seconds, 1) if self.ideal_seconds is not None else None,
            "rejected": sum(1 for p in self.items if p.rejected),
            "degraded": sum(1 for p in self.items if p.degradations),
            "items": [p.to_dict() for p in self.items],
        }


class Planner:
    def __init__(self, table: TierTable, shape: ClusterShape, profile: ModelProfile, *, dtype_bytes: int = 2):
        self.table = table
        self.shape = shape
        self.profile = profile
        family = FAMILIES.get(profile.family or profile.name)
        self.frame_steps = family.frame_ladder if family is not None else FRAME_STEPS
        self.saver_levels = family.saver_levels if family is not None else SAVER_LEVELS
        self.dtype_bytes = dtype_bytes
        self.cpu_only = set(shape.present) <= {CPU_TIER}
        self.present = [] if self.cpu_only else table.ordered(t for t in shape.present if t != CPU_TIER)
        self._cache: dict[tuple, ItemPlan] = {}

    def estimate(self, settings: RenderSettings, guidance: bool) -> VramEstimate:
        width, height = settings.size
        return estimate_vram(
            self.profile, width, height, settings.frames, dtype_bytes=self.dtype_bytes, savers=settings.savers, guidance=guidance
        )

    def work(self, settings: RenderSettings, steps: int, guidance: bool) -> float:
        """An item's work in FLOP: the UNet's, plus the rest (text/image encoders, VAE, encoding,
        I/O) counted as `fixed_seconds` on the reference (24g) card."""
        width, height = settings.size
        flop = render_flop(self.profile, width, height, settings.frames, steps, guidance=guidance)
        return flop * SAVER_SLOWDOWN[settings.saver_level] + self.profile.fixed_seconds * self.reference_flops

    @property
    def reference_flops(self) -> float:
        return self.table[REFERENCE_TIER].effective_flops if REFERENCE_TIER in self.table else 1e12

    def seconds(self, tier: str, settings: RenderSettings, steps: int, guidance: bool) -> float | None:
        if tier == CPU_TIER:
            return None
        return self.work(settings, steps, guidance) / self.table[tier].effective_flops

    def plan_item(self, item: JobItem, *, order, unfit: str) -> ItemPlan:
        params = item.params
        key = (params.resolution, params.aspect, params.frames, params.steps, params.guidance_scale > 1, params.degrade)
        cached = self._cache.get(key)
        if cached is not None:
            return ItemPlan(item.id, cached.tier, cached.settings, cached.estimate, cached.budget_bytes,
                            cached.degradations, cached.seconds, cached.rejected)
        plan = self._plan(item.id, params, order=order, unfit=unfit)
        self._cache[key] = plan
        return plan

    def fit_to_tier(
        self, item: JobItem, tier: str, *, order, blocked: Iterable[RenderSettings] = ()
    ) -> tuple[RenderSettings, tuple[Degradation, ...]]:
        """Settings for `item` on a card of `tier`, planned afresh from its requested parameters
        (an item moved to a bigger card does not keep the savers the smaller one needed): the
        first rung of its ladder whose estimate fits the tier's budget and that has not already
        run out of memory there (`blocked`: settings that failed on this tier)."""
        params = item.params
        guidance = params.guidance_scale > 1
        budget = self.table[tier].budget_bytes if tier in self.table else None

        def why(settings: RenderSettings, was_blocked: bool) -> str:
            if was_blocked:
                return f"planned for {tier}: {settings.describe()} ran out of memory there before"
            return (f"planned for {tier}: about {self.estimate(settings, guidance).total_gib:.1f} GiB at "
                    f"{settings.describe()} exceeds its {budget / GIB:.1f} GiB budget")

        result = climb(
            RenderSettings(params.resolution, params.aspect, params.frames, frame_steps=self.frame_steps,
                           saver_levels=self.saver_levels),
            mode=params.degrade,
            order=[s for s in order if s != BIGGER_TIER],
            blocked=blocked,
            fits=None if budget is None else (lambda s: self.estimate(s, guidance).total_bytes <= budget),
            why=why,
            merge_savers=True,
        )
        return result.settings, result.degradations

    def _plan(self, item_id: str, params, *, order, unfit: str) -> ItemPlan:
        guidance = params.guidance_scale > 1
        settings = RenderSettings(params.resolution, params.aspect, params.frames, frame_steps=self.frame_steps,
                           saver_levels=self.saver_levels)
        if self.cpu_only:
            return ItemPlan(item_id, CPU_TIER, settings, None, None)
        estimate = self.estimate(settings, guidance)
        for tier in self.present:
            if estimate.total_bytes <= self.table[tier].budget_bytes:
                budget = self.table[tier].budget_bytes
                return ItemPlan(item_id, tier, settings, estimate, budget, seconds=self.seconds(tier, settings, params.steps, guidance))
        largest = self.present[-1]
        budget = self.table[largest].budget_bytes
        if unfit == "reject":
            message = (
                f"needs about {estimate.total_gib:.1f} GiB at {settings.describe()}, more than the "
                f"{budget / GIB:.1f} GiB budget of the largest GPU tier present ({largest}); add a bigger GPU, "
                "lower resolution or frames, or let the farm degrade it (unfit: degrade)"
            )
            return ItemPlan(item_id, None, settings, estimate, budget, rejected=message)
        why = (
            lambda s, _blocked: f"planned: about {self.estimate(s, guidance).total_gib:.1f} GiB at {s.describe()} "
            f"exceeds the {budget / GIB:.1f} GiB budget of the largest tier present ({largest})"
        )
        result = climb(
            settings,
            mode=params.degrade,
            order=[s for s in order if s != BIGGER_TIER],
            fits=lambda s: self.estimate(s, guidance).total_bytes <= budget,
            why=why,
            merge_savers=True,
        )
        settings, degradations = result.settings, result.degradations
        estimate = self.estimate(settings, guidance)
        return ItemPlan(
            item_id, largest, settings, estimate, budget, tuple(degradations), self.seconds(largest, settings, params.steps, guidance)
        )


def plan_job(
    spec: JobSpec, shape: ClusterShape, table: TierTable, *, dtype_bytes: int = 2, calibration: str | None = None
) -> JobPlan:
    """Plan every valid item of `spec` on `shape`; simulate the dispatch for the makespan.
    `calibration`: a `farm calibrate` file (FARM_VRAM_CALIBRATION) for the estimator's constants."""
    planners: dict[str, Planner] = {}  # one per model family: each plans with its own profile

    def planner_for(key: str) -> Planner:
        if key not in planners:
            planners[key] = Planner(table, shape, profile_for_model(key, calibration=calibration), dtype_bytes=dtype_bytes)
        return planners[key]

    items = []
    for item in spec.items:
        key = spec.profile_key(item)
        item_plan = planner_for(key).plan_item(item, order=spec.degrade_order, unfit=spec.unfit)
        items.append(replace(item_plan, family=planners[key].profile.name))
    planner = planner_for(spec.model)
    plan = JobPlan(items=items, shape=shape)
    steps = {item.id: item.params for item in spec.items}
    plan.tiers = {name: TierLoad(workers=count) for name, count in shape.workers.items() if count > 0}
    for item_plan in items:
        if item_plan.tier is not None:
            load = plan.tiers.setdefault(item_plan.tier, TierLoad(workers=0))
            load.items += 1
            load.busy_seconds += item_plan.seconds or 0.0
    if not planner.cpu_only:
        plan.makespan_seconds, plan.ideal_seconds = simulate(planner, items, steps)
    return plan


def simulate(planner: Planner, items: list[ItemPlan], params_by_id: dict) -> tuple[float, float]:
    """Run the farm's dispatch (per-tier queues, pull, stealing) on estimated times.

    Returns (makespan, ideal): ideal is total work over total capacity (FLOP / FLOP/s), a lower
    bound no schedule can beat.
    """
    shape = planner.shape
    order = planner.present
    scheduler = TierScheduler(order, shape.workers)
    plans = {plan.item_id: plan for plan in items if plan.tier is not None}
    for plan in plans.values():
        scheduler.push(plan.item_id, plan.tier, work=plan.seconds or 0.0)  # longest first, as the dispatcher
    workers = [(0.0, index, tier) for index, (tier, count) in enumerate(
        (t, c) for t in order for c in range(shape.workers.get(t, 0))
    )]
    heap = list(workers)
    heapq.heapify(heap)
    makespan = 0.0
    while heap and len(scheduler):
        now, index, tier = heapq.heappop(heap)
        taken = scheduler.take(tier)
        if taken is None:
            continue  # nothing this worker may take; it retires
        item_id, _ = taken
        plan = plans[item_id]
        params = params_by_id[item_id]
        duration = planner.seconds(tier, plan.settings, params.steps, params.guidance_scale > 1) or 0.0
        finish = now + duration
        makespan = max(makespan, finish)
        heapq.heappush(heap, (finish, index, tier))
    capacity = sum(planner.table[t].effective_flops * shape.workers.get(t, 0) for t in order)
    total = sum(
        planner.work(plan.settings, params_by_id[plan.item_id].steps, params_by_id[plan.item_id].guidance_scale > 1)
        for plan in plans.values()
    )
    return makespan, (total / capacity if capacity else 0.0)
