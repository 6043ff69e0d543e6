"""The states of an item and of a job, and the item state changes a job's lifecycle allows.

Item states: `queued` -> `running` -> `succeeded` | `failed` (a lost worker puts a running item
back to `queued` while it has attempts left); `skipped` for items committed by an earlier run;
`cancelled` for items of a cancelled job, or cancelled one by one, that had not committed (queued
ones at once, running ones once their render stopped). A job ends `succeeded` (every item),
`partial` (some), `failed` (none) or `cancelled`; it is `cancelling` while a cancelled job's
running items stop, `interrupted` when a signal stopped it first. One definition used by the
coordinator, the API, the metrics, job.json and the tests.
"""

from __future__ import annotations

from farm.core.enums import StrEnum


class ItemState(StrEnum):
    """Where one item of a job is (the job record's `items.ID.state`)."""

    QUEUED = "queued"
    RUNNING = "running"  # sent to a worker, rendering or uploading
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # committed by an earlier run (or by a racing render)
    CANCELLED = "cancelled"


class JobStatus(StrEnum):
    """A job's state: the coordinator's registry, the API, the metrics and job.json use these."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # every item
    PARTIAL = "partial"  # some items
    FAILED = "failed"  # none
    CANCELLED = "cancelled"
    CANCELLING = "cancelling"  # cancelled; its running items are being stopped (or their deliverables finish)
    INTERRUPTED = "interrupted"  # stopped by a signal before the end (`farm resume` finishes it)


QUEUED, RUNNING, SUCCEEDED, FAILED, SKIPPED, CANCELLED = (
    ItemState.QUEUED, ItemState.RUNNING, ItemState.SUCCEEDED, ItemState.FAILED, ItemState.SKIPPED, ItemState.CANCELLED
)
ITEM_STATES = tuple(ItemState)
FINAL_ITEM_STATES = (SUCCEEDED, FAILED, SKIPPED, CANCELLED)
JOB_STATES = tuple(JobStatus)
FINAL_JOB_STATES = (JobStatus.SUCCEEDED, JobStatus.PARTIAL, JobStatus.FAILED, JobStatus.CANCELLED)

# The item state changes JobState makes; anything else is a bug and raises IllegalItemTransition.
ITEM_TRANSITIONS = {
    QUEUED: {RUNNING, FAILED, CANCELLED, SKIPPED},
    RUNNING: {RUNNING, QUEUED, SUCCEEDED, FAILED, SKIPPED, CANCELLED},  # cancelled: its render was stopped
    SUCCEEDED: set(),
    FAILED: set(),
    SKIPPED: set(),
    CANCELLED: set(),
}


class IllegalItemTransition(RuntimeError):
    """An item state change that the job's lifecycle does not allow."""
