"""The farm's error tree.

Every message says what was wrong, with the value, and what to do. `retryable` splits what a
retry can fix (transient storage errors, a lost worker) from what it cannot (invalid manifest,
unreadable image, missing weights). Item-level errors carry a short `reason` code that ends up
in job records and metric labels, so it must come from a small fixed set.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass

from farm.core.enums import StrEnum

# Users' values are echoed in messages, job records and HTTP answers, cut to an excerpt: a 1 MB
# prompt or a 60 MB manifest line must not come back whole.
EXCERPT_CHARS = 80
VALUE_CHARS = 200  # a string `value` in `ManifestIssue.to_dict()`
MAX_MESSAGE_CHARS = 500
MAX_FIELD_CHARS = 200
MAX_ITEM_ID_CHARS = 100


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

    def __post_init__(self) -> None:
        # A safety net: whatever a caller interpolated, the issue stays short and encodable.
        object.__setattr__(self, "message", clip(self.message, MAX_MESSAGE_CHARS))
        if isinstance(self.field, str):
            object.__setattr__(self, "field", clip(self.field, MAX_FIELD_CHARS))
        if isinstance(self.item_id, str):
            object.__setattr__(self, "item_id", clip(self.item_id, MAX_ITEM_ID_CHARS))

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
            "value": jsonable_excerpt(self.value),
            "message": self.message,
        }


def jsonable_excerpt(value: object) -> object:
    """`value` as strict JSON (no NaN, no lone surrogates), cut to an excerpt."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else excerpt(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else excerpt(value)
    if isinstance(value, str):
        return clip(value, VALUE_CHARS)
    return excerpt(value, VALUE_CHARS)


def clip(text: str, limit: int) -> str:
    """`text` in at most `limit` characters, "... (N characters)" ending it when cut, with lone
    surrogates written as escapes (so that it always encodes as UTF-8)."""
    if len(text) > limit:
        suffix = f"... ({len(text)} characters)"
        text = text[: max(limit - len(suffix), 0)] + suffix
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")[:limit]
    return text


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """A short, printable rendering of a user-supplied value for a message.

    Strings are quoted like `repr` (control characters and lone surrogates escaped, so the result
    always encodes as UTF-8); numbers, booleans and null as in JSON (`NaN`, `Infinity`, `true`);
    lists and mappings show their first elements. A cut excerpt ends with "..." and the
    original length. The work is bounded too: a 60 MB value is never copied or rendered whole.
    """
    if isinstance(value, str):
        return _excerpt_str(value, limit)
    text = _Excerpt(limit).repr(value)
    if isinstance(value, (list, tuple, dict, set, frozenset)) and len(text) > limit:
        text = f"{text[:limit]}... ({len(value)} items)"
    return text


def _excerpt_str(value: str, limit: int) -> str:
    head = value[:limit]
    shown = repr(head)
    while len(shown) > 2 * limit + 2 and len(head) > 1:  # escapes can make repr 10x longer
        head = head[: len(head) // 2]
        shown = repr(head)
    return shown if len(head) == len(value) else f"{shown}... ({len(value)} characters)"


class _Excerpt(reprlib.Repr):
    """reprlib's bounded rendering (few elements, few levels), with JSON's scalar spellings."""

    def __init__(self, limit: int):
        super().__init__()
        self.maxlevel = 3
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 6
        self.maxstring = self.maxother = self.maxlong = limit

    def repr_str(self, x: str, level: int) -> str:
        return _excerpt_str(x, self.maxstring)

    def repr_bool(self, x: bool, level: int) -> str:
        return "true" if x else "false"

    def repr_NoneType(self, x: None, level: int) -> str:  # noqa: N802 - reprlib's naming
        return "null"

    def repr_float(self, x: float, level: int) -> str:
        if math.isnan(x):
            return "NaN"
        if math.isinf(x):
            return "Infinity" if x > 0 else "-Infinity"
        return repr(x)

    def repr_int(self, x: int, level: int) -> str:
        try:
            text = repr(x)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            return f"<an integer of {x.bit_length()} bits>"
        return text if len(text) <= self.maxlong else text[: self.maxlong] + f"... ({len(text)} digits)"

    def repr_bytes(self, x: bytes, level: int) -> str:
        shown = repr(x[: self.maxstring])
        return shown if len(x) <= self.maxstring else f"{shown}... ({len(x)} bytes)"


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


class ImageFileError(ImageError):
    """A local image file that cannot be opened safely (missing, not a regular file, reached through
    a symbolic link, outside the allowed folder). `problem` says why in a few words, for messages
    that name the path themselves (a manifest issue)."""

    def __init__(self, message: str, reason: str = "image_not_found", problem: str = ""):
        super().__init__(message, reason)
        self.problem = problem

    def __reduce__(self):  # pickled whole (Ray sends errors between processes)
        return type(self), (str(self), self.reason, self.problem)


class ModelUnavailableError(FarmError):
    """The model's weights cannot be found or loaded; nothing can render until this is fixed."""


class ClusterUnavailableError(FarmError):
    """The Ray cluster cannot be reached or joined (nothing listens, a wrong token, another Ray
    version), or the embedded one could not start; the message names the address."""


class JobConflictError(FarmError):
    """A job with the same name and output is still running."""


class TakeError(FarmError):
    """A take that cannot be listed or picked: `status` 404 (no such item) or 422 (not a take of
    it, out of range, or one with no video); `field` and `value` say what was wrong."""

    def __init__(self, message: str, status: int = 422, field: str | None = None, value: object = None):
        super().__init__(message)
        self.status, self.field, self.value = status, field, value

    def __reduce__(self):  # pickled whole (Ray sends errors between processes)
        return type(self), (str(self), self.status, self.field, self.value)

    def to_dict(self) -> dict:
        return {"field": self.field, "value": jsonable_excerpt(self.value), "message": str(self)}


class ItemCancelError(FarmError):
    """An item that cannot be cancelled: `status` 404 (the job has no such item) or 409 (it has
    ended, or rendered and is committing: its result stands; or another coordinator runs the job)."""

    def __init__(self, message: str, status: int = 409, item: str | None = None, state: str | None = None):
        super().__init__(message)
        self.status, self.item, self.state = status, item, state

    def __reduce__(self):  # pickled whole (Ray sends errors between processes)
        return type(self), (str(self), self.status, self.item, self.state)

    def to_dict(self) -> dict:
        return {"field": "item", "value": jsonable_excerpt(self.item), "message": str(self),
                **({"state": self.state} if self.state else {})}


class QueueFullError(FarmError):
    """The farm has as many queued jobs as the operator allows."""


class StorageError(FarmError):
    """Writing or reading results failed, and retrying will not help (credentials, bucket, disk)."""


class TransientStorageError(StorageError):
    """A timeout, a 5xx, throttling or a refused connection: worth retrying for a while."""

    retryable = True


class CommitConflict(StorageError):
    """A conditional write lost: another render of the same item committed first."""


class FailureReason(StrEnum):
    """Why an item failed. Kept small: they become metric labels (`farm_items_total{reason}`)."""

    IMAGE_NOT_FOUND = "image_not_found"
    IMAGE_INVALID = "image_invalid"
    IMAGE_TOO_LARGE = "image_too_large"
    IMAGE_REFUSED = "image_refused"
    INVALID_ITEM = "invalid_item"
    OOM = "oom"
    NAN_OUTPUT = "nan_output"
    NO_FITTING_TIER = "no_fitting_tier"
    RENDER_ERROR = "render_error"
    STORAGE_ERROR = "storage_error"
    WORKER_LOST = "worker_lost"
    MODEL_UNAVAILABLE = "model_unavailable"


FAILURE_REASONS = tuple(reason.value for reason in FailureReason)
