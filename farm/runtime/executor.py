"""Run one job from the command line (`farm run`, `farm render`, `farm resume`): check storage,
start a Ray cluster (or join one) and its workers, skip what is committed, plan the rest, and
drive the engine (`farm.runtime.engine`) until the job is done, then write the takes' contact
sheet (`farm.post.contact`). What this shares with the Serve coordinator is in `farm.runtime.jobs`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from farm.core.job import JobState
from farm.core.manifest import JobSpec
from farm.core.tiers import TierTable, load_tier_table
from farm.post.contact import write_contact_sheet_logged
from farm.runtime.cluster import RayCluster, embedded_cpus, local_gpu_resources
from farm.runtime.engine import ActiveJob, Engine, NullReporter, start_workers
from farm.runtime.fleet import RayFleet
from farm.runtime.jobs import JobRecorder, ProgressReporter, clear_staging, prepare_job, write_job_files
from farm.runtime.mailbox import RayMailbox
from farm.runtime.stopping import StopRequest
from farm.settings import FarmSettings, load_settings
from farm.storage import open_store
from farm.storage.base import job_record_key
from farm.storage.picks import recorded_picks


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
    if state.has_takes and had_record:  # a run again (`farm resume`) keeps what `farm pick` chose
        state.picks = recorded_picks(store, spec)
    record_interval_s = settings.engine.record_interval_s if options.record_interval_s is None else options.record_interval_s
    recorder = JobRecorder(state, store, record_interval_s)
    local = local_gpu_resources(table, settings.workers) if not (options.address or os.environ.get("RAY_ADDRESS")) else {}
    if not (options.address or os.environ.get("RAY_ADDRESS")):
        local["num_cpus"] = embedded_cpus(settings, int(local.get("num_gpus", 0)), options.workers)
    try:
        with RayCluster(options.address, connect_timeout_s=settings.ray_connect_timeout_s, **local) as cluster:
            if options.stop is not None:
                options.stop.install()  # again: ray.init replaced the SIGTERM handler
            mailbox = RayMailbox()
            fleet = RayFleet(spec.model, settings, mailbox=mailbox, faults=options.faults)
            workers = start_workers(
                spec.model, cluster.resources, table, settings=settings, cpu_workers=options.workers,
                cpu_threads=options.cpu_threads, faults=options.faults, mailbox=mailbox, unusable=fleet.start_failed,
            )
            fleet.started([w.name for w in workers])
            engine = Engine(workers, table, options.metrics, settings, mailbox=mailbox, fleet=fleet)
            try:
                if options.metrics is not None:
                    options.metrics.tier_budgets({t.name: t.budget_bytes for t in table.tiers})
                    options.metrics.job_states({"running": 1})
                job = ActiveJob(id=spec.name, state=state, recorder=recorder, reporter=options.reporter)
                plan, decision = prepare_job(engine, job, store, force=options.force)
                options.reporter.started(state, [w.info for w in workers])
                if plan.items or spec.rejected or not had_record:
                    recorder.write(force=True)
                engine.admit(job, plan, decision.replace, decision.post)
                stop = options.stop.event if options.stop is not None else None
                grace_s = settings.engine.stop_grace_s if options.stop_grace_s is None else options.stop_grace_s
                state.interrupted = not engine.run_until_done(stop, grace_s)
                engine.publish()
            finally:
                engine.stop_all()  # those the fleet started on GPUs that joined too
                mailbox.close()
        clear_staging(store, spec.name)
        state.finish()
        if options.metrics is not None:
            options.metrics.job_states({state.final_state: 1})
    finally:
        # A re-run that found everything committed changes no object, job record included.
        unchanged = had_record and not state.worked and not spec.rejected
        recorder.close(final=not unchanged)
    if state.has_takes:  # after the final record; rewritten only where it changed
        write_contact_sheet_logged(store, spec, picks=state.picks,
                                   states={item_id: status.state for item_id, status in state.items.items()})
    options.reporter.finished(state)
    return state
