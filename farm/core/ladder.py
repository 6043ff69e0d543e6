"""The degrade ladder: what to change, in which order, when a render does not fit in memory.

Steps, in the default order:
  memory_savers  turn on the next level of savers that keep quality (VAE slicing and tiling,
                 then feed-forward chunking, then model CPU offload)
  bigger_tier    move the item to a bigger GPU that is idle right now (the coordinator decides)
  resolution     one step down: 1024 -> 768 -> 512 -> 256
  frames         one step down: 32 -> 24 -> 16 -> 8

The order is configurable (the seeds disagree on frames-first versus resolution-first). An item's
`degrade` mode limits the ladder: `allowed` (every step), `memory_savers` (savers only, quality
is kept) or `never`. Like SkyPilot's failover loop, the caller classifies the failure, asks for
the next option, and tries again; each step taken is recorded with from, to and why.

The ladder remembers what failed: every out-of-memory attempt is an `OomRecord` (tier, settings,
phase), and `climb` never lands on settings that already ran out of memory on a card of the
tier it plans for. `climb` is the one function that walks the ladder: the planner (fit to the
largest tier at plan time, fit afresh to a bigger card on escalation), the renderer (after an
OOM on its card) and through the planner the dispatch state machine all call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

from farm.core.params import frame_size
from farm.core.vram import SAVER_LEVELS, VAE_SLICING, VAE_TILING

MEMORY_SAVERS, BIGGER_TIER, RESOLUTION, FRAMES = "memory_savers", "bigger_tier", "resolution", "frames"
# The rungs the ladder lowers resolution through (a 720p item steps down to 512p, then 256p).
LADDER_RESOLUTIONS = (256, 512, 768, 1024)
STEPS = (MEMORY_SAVERS, BIGGER_TIER, RESOLUTION, FRAMES)
DEFAULT_ORDER = STEPS
FRAME_STEPS = (32, 24, 16, 8)


@dataclass(frozen=True)
class RenderSettings:
    """The memory-relevant settings a render actually runs with."""

    resolution: int
    aspect: str
    frames: int
    saver_level: int = 0
    # The frame counts the ladder steps down through, and the saver levels it climbs: the
    # family's (farm.core.families); I2VGen-XL's by default.
    frame_steps: tuple[int, ...] = field(default=FRAME_STEPS, compare=False)
    saver_levels: tuple[tuple[str, ...], ...] = field(default=SAVER_LEVELS, compare=False)

    @property
    def size(self) -> tuple[int, int]:
        return frame_size(self.resolution, self.aspect)

    @property
    def savers(self) -> tuple[str, ...]:
        return self.saver_levels[self.saver_level]

    def to_dict(self) -> dict[str, Any]:
        return {
            "resolution": self.resolution,
            "aspect": self.aspect,
            "frames": self.frames,
            "saver_level": self.saver_level,
        }

    def describe(self) -> str:
        width, height = self.size
        savers = "+".join(self.savers) or "no savers"
        return f"{width}x{height}x{self.frames} ({savers})"


@dataclass(frozen=True)
class Degradation:
    """One ladder step taken: what changed and why."""

    step: str
    before: Any
    after: Any
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "from": self.before, "to": self.after, "why": self.why}


@dataclass(frozen=True)
class OomRecord:
    """One attempt that ran out of memory: where (tier, phase), with what settings, and what
    was still allocated once it was released. Its dict form is a sidecar's `ooms` entry."""

    phase: str  # "denoise" or "decode"
    tier: str
    settings: RenderSettings
    message: str
    allocated_after_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        width, height = self.settings.size
        return {
            "phase": self.phase,
            "tier": self.tier,
            "resolution": self.settings.resolution,
            "aspect": self.settings.aspect,
            "size": f"{width}x{height}",
            "frames": self.settings.frames,
            "savers": list(self.settings.savers),
            "message": self.message,
            "allocated_after_bytes": self.allocated_after_bytes,
        }


def blocked_on(tier: str, ooms: Iterable[OomRecord]) -> frozenset[RenderSettings]:
    """The settings that already ran out of memory on a card of `tier`."""
    return frozenset(oom.settings for oom in ooms if oom.tier == tier)


@dataclass(frozen=True)
class Climb:
    """Where `climb` got to: the settings to run with and the steps taken to get there, or that
    the item should move to a bigger GPU (`escalate`), or that nothing cheaper is left
    (`exhausted`; `settings` are then the last ones tried)."""

    settings: RenderSettings
    degradations: tuple[Degradation, ...] = ()
    escalate: bool = False
    exhausted: bool = False


def climb(
    start: RenderSettings,
    *,
    mode: str,
    order=DEFAULT_ORDER,
    blocked: Iterable[RenderSettings] = (),
    fits: Callable[[RenderSettings], bool] | None = None,
    bigger_tier_available: bool = False,
    why: Callable[[RenderSettings, bool], str] = lambda settings, was_blocked: "",
    merge_savers: bool = False,
) -> Climb:
    """Walk the ladder from `start` until the settings are not `blocked` (they ran out of memory
    on this tier before) and `fits` them (the estimate is within the tier's budget; None: only
    the blocked set counts). `why(settings, was_blocked)` words each step's reason;
    `merge_savers` folds consecutive saver levels into one record (plans read better so).
    A `bigger_tier` step ends the climb with `escalate` (the item moves, it does not shrink)."""
    blocked = frozenset(blocked)
    settings, steps = start, []
    while settings in blocked or (fits is not None and not fits(settings)):
        option = next_step(settings, mode=mode, order=order, bigger_tier_available=bigger_tier_available)
        if option is None:
            return Climb(settings, tuple(steps), exhausted=True)
        step, changed = option
        if step == BIGGER_TIER:
            return Climb(settings, tuple(steps), escalate=True)
        before, after = describe_change(step, settings, changed)
        if merge_savers and steps and steps[-1].step == step == MEMORY_SAVERS:
            before = steps.pop().before
        steps.append(Degradation(step, before, after, why(settings, settings in blocked)))
        settings = changed
    return Climb(settings, tuple(steps))


def validate_order(order) -> tuple[str, ...]:
    order = tuple(order)
    unknown = [step for step in order if step not in STEPS]
    if unknown or len(set(order)) != len(order):
        raise ValueError(
            f"degrade order {list(order)!r}: use each of {', '.join(STEPS)} at most once"
        )
    return order


def allowed_steps(mode: str) -> tuple[str, ...]:
    if mode == "allowed":
        return STEPS
    if mode == "memory_savers":
        return (MEMORY_SAVERS,)
    return ()


def next_step(
    settings: RenderSettings,
    *,
    mode: str,
    order=DEFAULT_ORDER,
    bigger_tier_available: bool = False,
) -> tuple[str, RenderSettings] | None:
    """The next option after `settings` failed, or None when the ladder is exhausted.

    For `bigger_tier` the settings are unchanged: the item moves, it does not shrink.
    """
    permitted = allowed_steps(mode)
    for step in order:
        if step not in permitted:
            continue
        if step == MEMORY_SAVERS and settings.saver_level < len(settings.saver_levels) - 1:
            return step, replace(settings, saver_level=settings.saver_level + 1)
        if step == BIGGER_TIER and bigger_tier_available:
            return step, settings
        if step == RESOLUTION:
            lower = [r for r in LADDER_RESOLUTIONS if r < settings.resolution]
            if lower:
                return step, replace(settings, resolution=lower[-1])
        if step == FRAMES:
            lower = [f for f in settings.frame_steps if f < settings.frames]
            if lower:
                return step, replace(settings, frames=lower[0])
    return None


DECODE_SAVERS = (VAE_SLICING, VAE_TILING)


def next_decode_step(settings: RenderSettings, *, mode: str) -> tuple[str, RenderSettings] | None:
    """After an OOM in the decode: the decode savers, on the same latents, if not yet on.

    None means the decode cannot get cheaper on its own; the caller then climbs the whole
    ladder (which re-renders).
    """
    level = decode_saver_level(settings.saver_levels)
    if MEMORY_SAVERS not in allowed_steps(mode) or level is None or settings.saver_level >= level:
        return None
    return MEMORY_SAVERS, replace(settings, saver_level=level)


def decode_saver_level(levels) -> int | None:
    """The first saver level that slices the VAE decode (None: the family's VAE has no such saver)."""
    return next((n for n, savers in enumerate(levels) if VAE_SLICING in savers), None)


def describe_change(step: str, before: RenderSettings, after: RenderSettings) -> tuple[Any, Any]:
    """The (from, to) values a degradation record shows for `step`."""
    if step == MEMORY_SAVERS:
        return list(before.savers), list(after.savers)
    if step == RESOLUTION:
        return before.resolution, after.resolution
    if step == FRAMES:
        return before.frames, after.frames
    return None, None
