"""Run one job from the command line: check storage, start workers, skip what is committed,
plan the rest, and drive the engine (`farm.runtime.engine`) until the job is done.

Also the pieces every way of running a job shares (the Serve coordinator uses them too):
the job record writer, the job files in the output, and turning a spec into an admitted job.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Protocol

from farm.core.errors import StorageError
from farm.core.job import ItemOutcome, JobState
from farm.core.manifest import JobSpec
from farm.core.planner import JobPlan, plan_job
from farm.core.tiers import TierTable, load_tier_table
from farm.runtime.cluster import RayCluster, local_gpu_resources
from farm.runtime.engine import ActiveJob, Engine, NullReporter, start_workers, stop_workers
from farm.runtime.mailbox import RayMailbox
from farm.runtime.stopping import StopRequest
from farm.settings import FarmSettings, load_settings
from farm.storage import open_store
from farm.storage.base import STAGING, job_record_key, job_spec_key
from farm.storage.resume import ResumeDecision, scan_committed

log = logging.getLogger(__name__)


class ProgressReporter(Protocol):
    def started(self, state: JobState, workers: list[dict]) -> None: ...

    def item_finished(self, state: JobState, item_id: str, outcome: ItemOutcome) -> None: ...

    def finished(self, state: JobState) -> None: ...


@dataclass
class RunOptions:
    """How to run one job locally. Unset fields come from `settings` (farm.settings; read from
    the environment by `run_job` when none is given)."""

    address: str | None = None
    settings: FarmSettings | None = None
    workers: int | None = None  # CPU workers when the cluster has no GPU (FARM_CPU_WORKERS)
    cpu_threads: int | None = None  # default: all cores of the worker's node (CPU workers)
    record_interval_s: float | None = None  # FARM_RECORD_INTERVAL_S
    faults: str | None = None  # fault injection rules for the workers (tests, chaos runs)
    tiers: TierTable | None = None  # default: FARM_TIERS_FILE's, else the built-in table
    force: bool = False  # render items even when an identical result is committed
    manifest: tuple[str, bytes] | None = None  # (file name, bytes) of the manifest as submitted
    metrics: object | None = None  # a farm.metrics.FarmMetrics to update while the job runs
    reporter: ProgressReporter = field(default_factory=NullReporter)
    stop: StopRequest | None = None  # set by SIGTERM/Ctrl-C: finish running items, start no more
    stop_grace_s: float | None = None  # FARM_STOP_GRACE_S


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


def run_job(spec: JobSpec, options: RunOptions | None = None) -> JobState:
    """Render every item of `spec` not already committed; returns the final job state.

    Raises FarmError when the job cannot start (output storage or model unavailable) before
    any GPU time is spent.
    """
    options = options or RunOptions()
    settings = options.settings or load_settings()
    if "://" not in spec.output and not os.path.isabs(spec.output):
        # Workers resolve paths in their own working folder, not this process's.
        spec = replace(spec, output=os.path.abspath(spec.output))
    table = options.tiers or load_tier_table(settings.tiers_file)
    store = open_store(spec.output)
    store.check_access(spec.name)
    write_job_files(store, spec, options.manifest)
    state = JobState(spec)
    had_record = store.head(job_record_key(spec.name)) is not None
    record_interval_s = settings.engine.record_interval_s if options.record_interval_s is None else options.record_interval_s
    recorder = JobRecorder(state, store, record_interval_s)
    local = local_gpu_resources(table, settings.workers) if not (options.address or os.environ.get("RAY_ADDRESS")) else {}
    try:
        with RayCluster(options.address, **local) as cluster:
            if options.stop is not None:
                options.stop.install()  # again: ray.init replaced the SIGTERM handler
            mailbox = RayMailbox()
            workers = start_workers(
                spec.model, cluster.resources, table, settings=settings,
                cpu_workers=options.workers, cpu_threads=options.cpu_threads, faults=options.faults, mailbox=mailbox,
            )
            try:
                engine = Engine(workers, table, options.metrics, settings, mailbox=mailbox)
                if options.metrics is not None:
                    options.metrics.tier_budgets({t.name: t.budget_bytes for t in table.tiers})
                    options.metrics.job_states({"running": 1})
                job = ActiveJob(id=spec.name, state=state, recorder=recorder, reporter=options.reporter)
                plan, decision = prepare_job(engine, job, store, force=options.force)
                options.reporter.started(state, [w.info for w in workers])
                if plan.items or spec.rejected or not had_record:
                    recorder.write(force=True)
                engine.admit(job, plan, decision.replace)
                stop = options.stop.event if options.stop is not None else None
                grace_s = settings.engine.stop_grace_s if options.stop_grace_s is None else options.stop_grace_s
                state.interrupted = not engine.run_until_done(stop, grace_s)
                engine.publish()
            finally:
                stop_workers(workers)
                mailbox.close()
        clear_staging(store, spec.name)
        state.finish()
        if options.metrics is not None:
            options.metrics.job_states({state.final_state: 1})
    finally:
        # A re-run that found everything committed changes no object, job record included.
        unchanged = had_record and not state.worked and not spec.rejected
        recorder.close(final=not unchanged)
    options.reporter.finished(state)
    return state
