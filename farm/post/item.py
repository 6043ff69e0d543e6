"""One item's deliverables, made on a CPU worker: read the committed render, make what is
missing, commit each file (`farm.storage.deliverables`).

What is missing is decided against the item's sidecar: a deliverable whose entry has the same
digest and whose file is in place is `skipped` (an entry whose file is still in staging is
repaired first); any other is made from the committed MP4, which is fetched once per item and
checked against the sha256 the sidecar records, never rendered again. Every deliverable ends in
a `DeliverableResult`; nothing raised here stops the job or the other deliverables.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field

from farm.core.deliverables import Deliverable, DeliverableError, SourceClip
from farm.core.errors import StorageError
from farm.storage import open_store
from farm.storage.base import item_keys
from farm.storage.deliverables import commit_deliverable, entry_intact, read_sidecar, render_token, repair

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PostTask:
    """Make `deliverables` for one committed item of a job."""

    job_id: str | None
    job_name: str
    output: str
    item_id: str
    deliverables: tuple[Deliverable, ...]
    ffmpeg_threads: int | None = None


@dataclass
class DeliverableResult:
    name: str
    outcome: str  # made | skipped | failed | superseded
    seconds: float = 0.0
    bytes: int | None = None
    reason: str | None = None  # failed: not_rendered, source_damaged, ffmpeg_error, too_large, storage_error, post_error
    message: str | None = None
    key: str | None = None


@dataclass
class PostResult:
    job_id: str | None
    item_id: str
    results: list[DeliverableResult] = field(default_factory=list)
    seconds: float = 0.0
    fetch_seconds: float = 0.0

    @classmethod
    def failure(cls, task: PostTask, reason: str, message: str) -> PostResult:
        return cls(task.job_id, task.item_id,
                   [DeliverableResult(d.name, "failed", reason=reason, message=message) for d in task.deliverables])


class SourceProblem(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def post_item(task: PostTask) -> PostResult:
    """The whole of one item's post-processing (see the module text)."""
    started = time.perf_counter()
    try:
        result = _post_item(task)
    except StorageError as exc:
        result = PostResult.failure(task, "storage_error", str(exc))
    except Exception as exc:  # a bug: fail this item's deliverables, keep the worker
        log.error("post-processing %s failed:\n%s", task.item_id, traceback.format_exc())
        result = PostResult.failure(task, "post_error", f"{type(exc).__name__}: {exc}")
    result.seconds = round(time.perf_counter() - started, 4)
    return result


def _post_item(task: PostTask) -> PostResult:
    store = open_store(task.output)
    result = PostResult(task.job_id, task.item_id)
    found = read_sidecar(store, task.job_name, task.item_id)
    if found is None:
        return PostResult.failure(task, "not_rendered", "the item has no committed render to make deliverables from")
    sidecar, _ = found
    entries = sidecar.get("deliverables") or {}
    todo = []
    for deliverable in task.deliverables:
        entry = entries.get(deliverable.name)
        if entry_intact(store, entry, deliverable.digest) or (
            entry and entry.get("digest") == deliverable.digest and repair(store, entry)
        ):
            result.results.append(DeliverableResult(deliverable.name, "skipped", bytes=entry.get("bytes"),
                                                    key=entry.get("key")))
        else:
            todo.append(deliverable)
    if not todo:
        return result
    with tempfile.TemporaryDirectory(prefix="farm-post-") as scratch:
        fetch_started = time.perf_counter()
        try:
            source_path, source = _fetch_render(store, task, sidecar, scratch)
        except SourceProblem as exc:
            result.results += [DeliverableResult(d.name, "failed", reason=exc.reason, message=str(exc)) for d in todo]
            return result
        result.fetch_seconds = round(time.perf_counter() - fetch_started, 4)
        for deliverable in todo:
            result.results.append(_make_one(store, task, sidecar, deliverable, source_path, source, scratch))
    return result


def _fetch_render(store, task: PostTask, sidecar: dict, scratch: str) -> tuple[str, SourceClip]:
    outputs = sidecar.get("outputs") or {}
    data = store.get_bytes(item_keys(task.job_name, task.item_id)["video"])
    if data is None:
        raise SourceProblem("source_damaged", "the committed video is missing; resume the job to render it again")
    expected = (outputs.get("sha256") or {}).get("video")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise SourceProblem("source_damaged", "the committed video does not match its sidecar's sha256; "
                            "resume the job to render it again")
    path = os.path.join(scratch, "source.mp4")
    with open(path, "wb") as handle:
        handle.write(data)
    try:
        source = SourceClip(int(outputs["width"]), int(outputs["height"]), int(outputs["fps"]), int(outputs["frames"]))
    except (KeyError, TypeError, ValueError):
        raise SourceProblem("source_damaged", "the sidecar does not say the video's size, fps and frames") from None
    return path, source


def _make_one(store, task: PostTask, sidecar: dict, deliverable: Deliverable, source_path: str, source: SourceClip,
              scratch: str) -> DeliverableResult:
    from farm.media.deliverables import make_deliverable

    started = time.perf_counter()
    name = deliverable.name
    try:
        made = make_deliverable(deliverable, source, source_path, scratch, threads=task.ffmpeg_threads)
        entry = {
            "name": name,
            "extension": deliverable.extension,
            "spec": deliverable.to_dict(),
            "digest": deliverable.digest,
            "probed": made.probed.to_dict(),
            "encoder": made.encoder,
            **({"size_cap_attempt": made.attempt} if made.attempt else {}),
            "seconds": round(time.perf_counter() - started, 4),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        committed = commit_deliverable(store, task.job_name, task.item_id, made.path, entry,
                                       render=render_token(sidecar), token=uuid.uuid4().hex[:12])
        os.unlink(made.path)
    except DeliverableError as exc:
        reason = "too_large" if exc.field == "max_bytes" else "ffmpeg_error"
        return DeliverableResult(name, "failed", round(time.perf_counter() - started, 4), reason=reason, message=str(exc))
    except StorageError as exc:
        return DeliverableResult(name, "failed", round(time.perf_counter() - started, 4), reason="storage_error",
                                 message=str(exc))
    return DeliverableResult(name, committed.outcome, round(time.perf_counter() - started, 4),
                             bytes=entry["bytes"] if committed.outcome == "made" else None, key=committed.key)
