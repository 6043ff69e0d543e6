"""Graceful drain: whether a worker whose node is being drained finishes its item or hands it back.

A node is drained ahead of its end: Ray's node drain (an autoscaler scaling down, a spot
preemption notice) or a SIGTERM to the node (a Kubernetes pod being deleted: the raylet then
drains itself for `RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S`). Either way the node is marked
draining with a deadline, after which it is killed. A worker that learns of it during a render
(`farm.renderer`, at each denoise step, probing at most every `FARM_DRAIN_CHECK_S`) asks
`decide`: finish when the rest of the render (the denoise steps left at the pace so far, then
decode, encode and commit) fits before the deadline with `margin_s` to spare; otherwise hand
the item back now, so that another worker starts it at once instead of after the node died
and a restart timeout ran out. A render that has not started its first step has nothing to
lose: it is handed back. No deadline (Ray says 0): the node goes once it is idle, so the item
finishes.

Pure arithmetic: times come in as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

# The decode, encode and commit of an item, as a fraction of its whole denoise, while the worker
# has not measured them yet (the tiny and the full model both spend most of a render denoising).
AFTER_DENOISE_FRACTION = 0.25
NODE_DRAINING = "node_draining"  # the reason a worker hands an item back (metrics label)


@dataclass(frozen=True)
class NodeDrain:
    """A node being drained: when it goes (epoch seconds; None: no deadline, it goes once idle)."""

    deadline_s: float | None = None

    @classmethod
    def from_ray(cls, deadline_ms: int | float) -> NodeDrain:
        """From Ray's `get_draining_nodes()` value: the deadline in epoch ms, 0 for none."""
        return cls(deadline_ms / 1000.0 if deadline_ms else None)

    def seconds_left(self, now_s: float) -> float | None:
        return None if self.deadline_s is None else self.deadline_s - now_s


@dataclass(frozen=True)
class DrainVerdict:
    finish: bool
    remaining_s: float | None  # the render's estimated rest (None: not estimated)
    why: str


def decide(
    *,
    elapsed_s: float,
    steps_done: int,
    steps_total: int,
    seconds_left: float | None,
    after_denoise_s: float | None = None,
    margin_s: float = 5.0,
) -> DrainVerdict:
    """Finish the item, or hand it back? `elapsed_s`: time the first `steps_done` of the
    `steps_total` denoise steps took; `after_denoise_s`: decode + encode + commit as measured
    on this worker (None: a fraction of the denoise); `seconds_left`: until the node's deadline
    (None: no deadline)."""
    if seconds_left is None:
        return DrainVerdict(True, None, "the drain has no deadline: the node waits for the item")
    if steps_done <= 0:
        return DrainVerdict(False, None, "no denoise step done yet: nothing to lose")
    per_step = max(elapsed_s, 0.0) / steps_done
    denoise_left = per_step * max(steps_total - steps_done, 0)
    after = after_denoise_s if after_denoise_s is not None else AFTER_DENOISE_FRACTION * per_step * steps_total
    remaining = denoise_left + after
    budget = seconds_left - margin_s
    if remaining <= budget:
        return DrainVerdict(True, remaining, f"about {remaining:.1f} s left to render and commit, "
                            f"{seconds_left:.1f} s to the node's deadline")
    return DrainVerdict(False, remaining, f"about {remaining:.1f} s left to render and commit, but the node goes in "
                        f"{seconds_left:.1f} s (keeping {margin_s:.0f} s to spare)")


class DrainHandBack(Exception):
    """Raised from a denoise step to stop a render whose node goes before it could finish
    (caught by the renderer, which hands the item back; never an item failure)."""

    def __init__(self, message: str, steps_done: int = 0):
        super().__init__(message)
        self.steps_done = steps_done
