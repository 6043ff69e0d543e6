"""What every way of running a job shares (`farm run` here, the Serve coordinator there): the
progress-reporter protocol, the job record writer, the job files in the output, clearing staged
uploads, and turning a spec into an admitted job (skip what is committed, plan the rest).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace
from typing import Protocol

from farm.core.contracts import ItemOutcome
from farm.core.errors import StorageError
from farm.core.job import JobState
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
    """Keeps `job.json` in the output store current without ever blocking the dispatch loop.

    `write()` hands the latest snapshot to a writer thread (at most one write every
    `interval_s`; a newer snapshot replaces an unwritten one). A storage outage delays the
    record, not the job; `close()` writes the final record, waiting for storage if needed.
    """

    def __init__(self, state: JobState, store, interval_s: float):
        self.state = state
        self.store = store
        self.key = job_record_key(state.spec.name)
        self.interval_s = interval_s
        self._last = 0.0
        self._snapshot: dict | None = None
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="farm-job-record", daemon=True)
        self._thread.start()

    def write(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        snapshot = self.state.to_record()  # a consistent copy; encoded on the writer thread
        with self._wake:
            self._snapshot = snapshot
            self._wake.notify()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while self._snapshot is None and not self._closed:
                    self._wake.wait()
                snapshot, self._snapshot = self._snapshot, None
                closed = self._closed
            if snapshot is not None:
                # Compact JSON: CPython's C encoder (an `indent` falls back to pure Python, which
                # took ~50 ms per snapshot of a 5,000-item job) and it holds the GIL throughout,
                # so the dispatch thread cannot change the snapshot mid-encoding.
                body = json.dumps(snapshot).encode()
                try:
                    self.store.put_bytes(self.key, body, "application/json")
                except StorageError as error:
                    log.warning("job record not written: %s", error)
            if closed and snapshot is None:
                return

    def close(self, *, final: bool = True) -> None:
        if final:
            self.write(force=True)
        with self._wake:
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
