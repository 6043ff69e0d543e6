"""What every way of running a job shares (`farm run` here, the Serve coordinator there): the
progress-reporter protocol, the job record writer, the job files in the output, clearing staged
uploads, and turning a spec into an admitted job (skip what is committed, plan the rest).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from dataclasses import replace
from typing import Protocol

from farm.core.contracts import ItemOutcome
from farm.core.errors import StorageError
from farm.core.job import ItemStatus, JobState
from farm.core.manifest import JobSpec
from farm.core.planner import JobPlan, plan_job
from farm.runtime.engine import ActiveJob, Engine
from farm.storage.base import STAGING, job_record_key, job_spec_key
from farm.storage.resume import ResumeDecision, scan_committed

log = logging.getLogger(__name__)


class ProgressReporter(Protocol):
    def started(self, state: JobState, workers: list[dict]) -> None: ...

    def item_finished(self, state: JobState, item_id: str, outcome: ItemOutcome) -> None: ...

    def finished(self, state: JobState) -> None: ...


class JobRecorder:
    """Keeps `job.json` in the output store current without ever blocking the dispatch loop,
    and at a cost that follows what changed, not the job's size.

    `write()` (the dispatch thread, under the engine's lock; at most one every `interval_s`)
    takes the job's header (counts, rates: O(1)) and the `fields()` of only the items that
    changed since the last write (`JobState.take_changed`), and hands them to a writer thread.
    The writer keeps every item's encoded JSON (`"ID": {...}`) and re-encodes only the changed
    ones, then joins the cached parts into the file: the bytes are exactly
    `json.dumps(state.to_record())` (at 100,000 items a whole rebuild took ~0.3 s on the dispatch
    thread plus ~0.1 s of encoding holding the GIL; the join is ~10 ms). Snapshots not yet
    written merge (a newer item's fields win), so no change is lost when writes pile up.

    A storage outage delays the record, not the job; `close()` writes the final record and
    waits for it, waiting for storage if needed. `stats()`: what the writes cost.
    """

    RECENT = 256  # per-write timings kept for `stats()`

    def __init__(self, state: JobState, store, interval_s: float):
        self.state = state
        self.store = store
        self.key = job_record_key(state.spec.name)
        self.interval_s = interval_s
        self._last = 0.0
        self._header: dict | None = None  # the pending snapshot: header and changed items
        self._changed: dict[str, tuple] = {}
        self._wake = threading.Condition()
        self._closed = False
        # The writer thread's own: every item's encoded part (`"ID": {...}`), in the record's
        # (index) order.
        self._position = state.item_positions()
        self._parts: list[bytes] = [b""] * len(self._position)
        self._lock_stats = threading.Lock()
        self._stats = {"snapshots": 0, "writes": 0, "snapshot_s": 0.0, "encoded_items": 0, "encode_s": 0.0,
                       "store_s": 0.0, "bytes": 0}
        self._recent: dict[str, collections.deque] = {
            name: collections.deque(maxlen=self.RECENT) for name in ("snapshot_s", "encode_s", "store_s")
        }
        self._thread = threading.Thread(target=self._loop, name="farm-job-record", daemon=True)
        self._thread.start()

    def write(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        started = time.perf_counter()
        with self._wake:  # taken and merged in one go: of two writers (a drain), the newer fields win
            self._header = self.state.record_header()  # O(1)
            self._changed.update(self.state.take_changed())  # O(items changed)
            self._wake.notify()
        self._count("snapshot_s", time.perf_counter() - started)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while self._header is None and not self._closed:
                    self._wake.wait()
                header, changed = self._header, self._changed
                self._header, self._changed = None, {}
                closed = self._closed
            if header is not None:
                started = time.perf_counter()
                body = self._encode(header, changed)
                encoded = time.perf_counter()
                try:
                    self.store.put_bytes(self.key, body, "application/json")
                except StorageError as error:
                    log.warning("job record not written: %s", error)
                stored = time.perf_counter()
                self._count("encode_s", encoded - started, items=len(changed), size=len(body))
                self._count("store_s", stored - encoded)
            if closed and header is None:
                return

    def _encode(self, header: dict, changed: dict[str, tuple]) -> bytes:
        """The record's bytes: `json.dumps(record)` of the header with `items` last, the items
        from their cached parts (compact JSON is CPython's C encoder, item by item, so no single
        call holds the GIL for long)."""
        record_of, dumps, position, parts = ItemStatus.record_of, json.dumps, self._position, self._parts
        for item_id, fields in changed.items():
            parts[position[item_id]] = f"{dumps(item_id)}: {dumps(record_of(fields))}".encode()
        head = dumps(header).encode()
        return b"".join((head[:-1], b', "items": {', b", ".join(parts), b"}}"))

    def _count(self, name: str, seconds: float, *, items: int = 0, size: int = 0) -> None:
        with self._lock_stats:
            self._stats[name] += seconds
            self._recent[name].append(seconds)
            if name == "snapshot_s":
                self._stats["snapshots"] += 1
            elif name == "encode_s":
                self._stats["writes"] += 1
                self._stats["encoded_items"] += items
                self._stats["bytes"] = size

    def stats(self) -> dict:
        """Totals since the start (`snapshots` taken, `writes` stored, `encoded_items`, seconds
        per part, the last record's `bytes`) and medians of the last writes (`median_ms`):
        `snapshot_s` on the dispatch thread, `encode_s` and `store_s` on the writer thread."""
        with self._lock_stats:
            totals = dict(self._stats)
            recent = {name: sorted(values) for name, values in self._recent.items()}
        totals["median_ms"] = {name: round(1e3 * v[len(v) // 2], 3) if v else None for name, v in recent.items()}
        return totals

    def close(self, *, final: bool = True, discard: bool = False) -> None:
        """Stop the writer: `final` writes the record once more and waits for it; `discard`
        drops a snapshot not yet written (the job went to another coordinator, whose record
        this one must not overwrite)."""
        if final:
            self.write(force=True)
        with self._wake:
            if discard:
                self._header, self._changed = None, {}
            self._closed = True
            self._wake.notify()
        self._thread.join()

    @property
    def location(self) -> str:
        return self.store.location(self.key)


def write_job_files(store, spec: JobSpec, manifest: tuple[str, bytes] | None) -> None:
    """Store the validated job (`spec.json`, for `farm resume`) and the manifest as submitted,
    only when they differ from what is there, so an identical re-run changes no object."""
    files = [(job_spec_key(spec.name), json.dumps(spec.to_dict(), indent=1).encode())]
    if manifest is not None:
        name, data = manifest
        suffix = name.rsplit(".", 1)[-1].lower() if "." in name else "txt"
        files.append((f"{spec.name}/manifest.{suffix}", data))
    for key, data in files:
        if store.get_bytes(key) != data:
            store.put_bytes(key, data, "application/json" if key.endswith(".json") else "application/octet-stream")


def clear_staging(store, job_name: str) -> None:
    """Remove uploads that never became a committed result (a loser of a race, a killed worker).
    Runs after the workers stopped; a crash before this point leaves them for the next run."""
    for info in list(store.list(f"{job_name}/{STAGING}/")):
        try:
            store.delete(info.key)
        except StorageError as error:
            log.warning("could not remove %s: %s", info.key, error)


def prepare_job(
    engine: Engine, job: ActiveJob, store, *, force: bool = False
) -> tuple[JobPlan, ResumeDecision]:
    """Skip what earlier runs committed, plan the rest on the engine's workers, and admit it."""
    spec = job.state.spec
    decision = scan_committed(store, spec, model_config_sha256=engine.model_config_sha256, force=force)
    for item_id, why in decision.skip.items():
        job.state.mark_skipped(item_id, why)
    if engine.metrics is not None and decision.skip:
        engine.metrics.items.labels("skipped", "none", spec.model).inc(len(decision.skip))
    todo = replace(spec, items=[i for i in spec.items if i.id not in decision.skip], rejected=[])
    plan = plan_job(todo, engine.shape, engine.table, calibration=engine.settings.vram_calibration)
    job.state.workers = engine.worker_infos()
    job.state.plan = {k: v for k, v in plan.to_dict().items() if k != "items"}
    return plan, decision
