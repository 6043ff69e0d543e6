"""The farm's error tree.

Every message says what was wrong, with the value, and what to do. `retryable` splits what a
retry can fix (transient storage errors, a lost worker) from what it cannot (invalid manifest,
unreadable image, missing weights). Item-level errors carry a short `reason` code that ends up
in job records and metric labels, so it must come from a small fixed set.
"""

from __future__ import annotations

from dataclasses import dataclass


class FarmError(Exception):
    """Base class: a failure the farm understands and can explain."""

    retryable = False


@dataclass(frozen=True)
class ManifestIssue:
    """One problem in a manifest: where (item index and id, field), what value, what to do."""

    message: str
    field: str | None = None
    item_index: int | None = None
    item_id: str | None = None
    value: object = None
    line: int | None = None

    @property
    def location(self) -> str:
        parts = []
        if self.item_index is not None:
            where = f"items[{self.item_index}]"
            extra = [f"line {self.line}"] if self.line is not None else []
            if self.item_id:
                extra.append(f"id {self.item_id!r}")
            if extra:
                where += f" ({', '.join(extra)})"
            parts.append(where)
        elif self.line is not None:
            parts.append(f"line {self.line}")
        if self.field:
            parts.append(f"field {self.field!r}")
        return ", ".join(parts) if parts else "manifest"

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"

    def to_dict(self) -> dict:
        return {
            "item_index": self.item_index,
            "item_id": self.item_id,
            "line": self.line,
            "field": self.field,
            "value": _jsonable(self.value),
            "message": self.message,
        }


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


class ManifestError(FarmError):
    """The manifest cannot run as written; `issues` lists every problem found, not just the first."""

    def __init__(self, issues: list[ManifestIssue], source: str | None = None):
        self.issues = list(issues)
        self.source = source
        head = f"invalid manifest {source}" if source else "invalid manifest"
        lines = [f"{head}: {len(self.issues)} error(s)"] + [f"  - {issue}" for issue in self.issues]
        super().__init__("\n".join(lines))


class ItemError(FarmError):
    """One item cannot be rendered; the job goes on without it."""

    reason = "render_error"

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ImageError(ItemError):
    """The input image is missing, unreadable, of an unsupported format, or too large."""

    reason = "image_invalid"


class ModelUnavailableError(FarmError):
    """The model's weights cannot be found or loaded; nothing can render until this is fixed."""


class JobConflictError(FarmError):
    """A job with the same name and output is still running."""


class QueueFullError(FarmError):
    """The farm has as many queued jobs as the operator allows."""


class StorageError(FarmError):
    """Writing or reading results failed, and retrying will not help (credentials, bucket, disk)."""


class TransientStorageError(StorageError):
    """A timeout, a 5xx, throttling or a refused connection: worth retrying for a while."""

    retryable = True


class CommitConflict(StorageError):
    """A conditional write lost: another render of the same item committed first."""


# Reasons an item can fail with. Kept small: they become metric labels.
FAILURE_REASONS = (
    "image_not_found",
    "image_invalid",
    "image_too_large",
    "image_refused",
    "invalid_item",
    "oom",
    "no_fitting_tier",
    "render_error",
    "storage_error",
    "worker_lost",
    "model_unavailable",
)
