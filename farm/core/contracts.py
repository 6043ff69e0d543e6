"""What crosses Ray between the coordinator and a render worker, typed.

A `RenderTask` goes out (one item: where to read and write, the validated parameters, the
settings to try first, what the ladder changed so far); a `WorkerReply` comes back with the
items that ended (`ItemOutcome`: succeeded, skipped or failed, with a `FailureReason`, or
cancelled: its render was stopped by a cancel, nothing committed), an
`Escalation` when the worker's ladder wants a bigger GPU (nothing was committed), a
`ReturnedItem` when the worker's node is being drained (nothing was committed), and the uploads
still pending. The same reply is what a worker puts in the commit mailbox the moment a
background commit lands. Plain dataclasses: Ray pickles them, and the in-process workers of the
tests pass them as they are.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from farm.core.errors import FailureReason
from farm.core.ladder import DEFAULT_ORDER, Degradation, OomRecord, RenderSettings
from farm.core.manifest import JobItem, JobSpec
from farm.core.params import RenderParams
from farm.core.states import CANCELLED, FAILED, SKIPPED, SUCCEEDED, ItemState

OUTCOME_STATES = (SUCCEEDED, SKIPPED, FAILED, CANCELLED)


def inputs_digest(*, image_sha256: str, prompt: str, params: dict[str, Any], seed: int, model: str, model_config_sha256: str) -> str:
    """The hash of an item's effective inputs (image bytes, prompt, parameters, model) that a
    sidecar carries: a later run skips the item when it computes the same value."""
    document = {
        "image_sha256": image_sha256,
        "prompt": prompt,
        "params": {**params, "seed": seed},
        "model": {"id": model, "config_sha256": model_config_sha256},
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class RenderTask:
    """Everything a worker needs to render and commit one item (small: no image or video bytes).

    `settings` are what to try first (the plan's, after any planned degradations); `degradations`
    lists the steps already taken and `ooms` the attempts that ran out of memory (on this worker's
    tier they are not tried again); `bigger_tier_available` lets the worker's ladder ask to move.
    """

    job_name: str
    output: str
    model: str
    item_id: str
    item_index: int
    image: str
    prompt: str
    params: RenderParams
    requested: dict[str, Any]  # the manifest's own words, as the sidecar records them
    seed: int
    settings: RenderSettings
    job_id: str = ""
    planned_tier: str = "cpu"
    degradations: tuple[Degradation, ...] = ()
    ooms: tuple[OomRecord, ...] = ()
    degrade_order: tuple[str, ...] = DEFAULT_ORDER
    bigger_tier_available: bool = False
    estimate_gib: float | None = None
    replace_etag: str | None = None  # the committed sidecar this render may replace (changed inputs, --force)
    attempt: int = 1
    image_root: str | None = None  # a local image must lie inside this folder when the worker opens it

    @classmethod
    def for_item(cls, spec: JobSpec, item: JobItem, attempt: int = 1, **plan: Any) -> RenderTask:
        params = item.params
        plan.setdefault("settings", RenderSettings(params.resolution, params.aspect, params.frames))
        return cls(
            job_name=spec.name,
            output=spec.output,
            model=spec.model_of(item),
            item_id=item.id,
            item_index=item.index,
            image=item.image,
            prompt=item.prompt,
            params=params,
            requested=item.requested,
            seed=item.seed,
            degrade_order=tuple(spec.degrade_order),
            attempt=attempt,
            image_root=spec.image_root,
            **plan,
        )


@dataclass
class ItemOutcome:
    """How one item ended on a worker: small, so it travels through Ray cheaply. Its lists are
    in their record form (as the sidecar and job.json show them)."""

    item_id: str
    status: ItemState  # SUCCEEDED, SKIPPED (another render committed it), FAILED or CANCELLED (stopped, nothing committed)
    job_id: str = ""
    reason: FailureReason | None = None  # required when FAILED
    message: str | None = None
    seconds: float = 0.0
    worker: str | None = None
    warnings: list[str] = field(default_factory=list)
    degradations: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    tier: str | None = None
    settings: dict[str, Any] | None = None
    ooms: list[dict[str, Any]] = field(default_factory=list)
    frames: int | None = None
    upload_bytes: int | None = None
    memory_kind: str | None = None
    steps_done: int | None = None  # CANCELLED: the denoise steps done when it stopped (0: before the first)

    def __post_init__(self) -> None:
        self.status = ItemState(self.status)
        if self.status not in OUTCOME_STATES:
            raise ValueError(f"an item outcome is one of {', '.join(OUTCOME_STATES)}, not {self.status}")
        if self.reason is not None:
            self.reason = FailureReason(self.reason)
        elif self.status == FAILED:
            raise ValueError(f"item {self.item_id}: a failed outcome needs a FailureReason")

    @classmethod
    def failure(cls, item_id: str, reason: FailureReason | str, message: str, **extra: Any) -> ItemOutcome:
        """A failed item; `reason` must be a FailureReason (a bare string is checked against them)."""
        return cls(item_id=item_id, status=FAILED, reason=FailureReason(reason), message=message, **extra)

    @classmethod
    def cancelled(cls, item_id: str, message: str, steps_done: int = 0, **extra: Any) -> ItemOutcome:
        """An item whose render a cancel stopped (`steps_done` denoise steps in); nothing was committed."""
        return cls(item_id=item_id, status=CANCELLED, message=message, steps_done=steps_done, **extra)


@dataclass
class Escalation:
    """The worker's ladder wants a bigger GPU for this item (out of memory, and a live worker of
    a bigger tier exists): nothing was committed; the item goes back to the dispatcher."""

    item_id: str
    job_id: str
    message: str
    settings: RenderSettings  # what ran out of memory last
    degradations: tuple[Degradation, ...] = ()
    ooms: tuple[OomRecord, ...] = ()
    worker: str | None = None
    tier: str | None = None
    seconds: float = 0.0


@dataclass
class ReturnedItem:
    """The worker gives an item back unfinished (its node is being drained and the render could
    not end before the node's deadline, or had not started): nothing was committed; the item is
    queued again at once for another worker, without counting an attempt. Not an outcome."""

    item_id: str
    job_id: str
    reason: str  # farm.core.drain.NODE_DRAINING
    message: str
    steps_done: int = 0  # denoise steps done when it stopped (wasted work)
    worker: str | None = None
    tier: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class WorkerReply:
    """A worker's answer to a render call, or its report of background commits (mailbox).

    `sequence` orders one worker's replies and reports: a newer one's `pending` (the
    (job id, item id) pairs still uploading) replaces an older one's."""

    worker: str
    sequence: int
    outcomes: tuple[ItemOutcome, ...] = ()
    escalation: Escalation | None = None
    pending: tuple[tuple[str, str], ...] = ()
    memory: dict[str, Any] | None = None  # device memory in use and in total (render replies)
    returned: ReturnedItem | None = None  # the task handed back unfinished (its node is draining)
