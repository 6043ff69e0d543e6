"""When a render worker should change the model it holds: the policy, as pure code.

A worker holds one model at a time (a model is gigabytes of weights; loading one takes seconds
to minutes). The dispatcher gives a worker the items of the model it holds first; this module
decides what an idle worker does when its model has nothing queued while another model's items
wait: switch (unload, load the other) or stay.

A switch happens only when it shortens the estimated makespan of the waiting model's queue:

    stay:   finish(m) = work(m) / holders(m)                      (never, with no holder)
    switch: finish'(m) = load(m) + work(m) / (holders(m) + 1)

and only by more than `min_gain_s` (so two nearly equal queues do not trade workers back and
forth). A worker whose own model still has work queued never switches, and a worker that has
just switched stays at least until it has rendered `min_items_after_switch` items of the new
model (no ping-pong between two queues that refill). Among several waiting models the one
whose finish improves most is taken; ties go to the model with more work.

Inputs are plain numbers (estimated seconds per queue, the workers' models and states); the
runtime turns the decision into an unload and a load, counts and times it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerView:
    """What the policy knows of one worker."""

    name: str
    model: str | None  # the model it holds (None: none loaded)
    idle: bool
    items_since_switch: int = 1_000_000  # items rendered since its last switch (large: never switched)


@dataclass(frozen=True)
class QueueView:
    """The queued work of one model, as seconds of render time estimated by the planner."""

    model: str
    items: int
    work_seconds: float
    load_seconds: float  # estimated time to load this model on a worker


@dataclass(frozen=True)
class SwitchDecision:
    worker: str
    from_model: str | None
    to_model: str
    finish_before_s: float  # the waiting model's estimated finish without the switch (inf: none)
    finish_after_s: float
    reason: str = ""


@dataclass(frozen=True)
class SwitchPolicy:
    min_gain_s: float = 5.0  # a switch must shorten the waiting queue's finish by more than this
    min_items_after_switch: int = 1  # items a worker renders before it may switch again


def finish_seconds(queue: QueueView, holders: int) -> float:
    """When the queue would be done with `holders` workers on it (inf with none)."""
    if queue.items == 0:
        return 0.0
    return math.inf if holders <= 0 else queue.work_seconds / holders


def decide_switches(workers: list[WorkerView], queues: list[QueueView],
                    policy: SwitchPolicy = SwitchPolicy()) -> list[SwitchDecision]:
    """The switches worth making now, at most one per idle worker (see the module docstring)."""
    by_model = {q.model: q for q in queues}
    holders: dict[str, int] = {}
    for worker in workers:
        if worker.model is not None:
            holders[worker.model] = holders.get(worker.model, 0) + 1
    decisions: list[SwitchDecision] = []
    for worker in sorted(workers, key=lambda w: w.name):
        if not worker.idle:
            continue
        own = by_model.get(worker.model) if worker.model is not None else None
        if own is not None and own.items > 0:
            continue  # its own model still has work: it takes that
        if worker.model is not None and worker.items_since_switch < policy.min_items_after_switch:
            continue  # it just switched: no ping-pong
        best: SwitchDecision | None = None
        for queue in queues:
            if queue.items == 0 or queue.model == worker.model:
                continue
            current = holders.get(queue.model, 0)
            before = finish_seconds(queue, current)
            after = queue.load_seconds + queue.work_seconds / (current + 1)
            if not before - after > policy.min_gain_s:
                continue
            gain = before - after
            if best is None or gain > best.finish_before_s - best.finish_after_s or (
                    gain == best.finish_before_s - best.finish_after_s
                    and queue.work_seconds > by_model[best.to_model].work_seconds):
                reason = ("no worker holds it" if current == 0 else
                          f"finish {before:.0f} s -> {after:.0f} s with one more worker (load {queue.load_seconds:.0f} s)")
                best = SwitchDecision(worker.name, worker.model, queue.model, before, after, reason)
        if best is not None:
            decisions.append(best)
            if worker.model is not None:
                holders[worker.model] -= 1
            holders[best.to_model] = holders.get(best.to_model, 0) + 1
    return decisions

