"""Prometheus metrics of the farm (prometheus-client), counted in one place: the engine's process.

Every figure comes from what the engine itself sees: item outcomes (each processed exactly once,
so a restarted worker can never count an item twice), its queues, its workers' replies (which
carry each worker's memory), and its jobs. Workers keep no counters of their own. Labels have
few values (tier, model, outcome, reason, resolution, step, state, worker); never a job or item
id. Meaning, labels and units of every series: docs/metrics.md.

Counters are created at 0 for every label value the farm knows before anything happens
(`prepare`: each tier of the table, each failure reason, outcome, resolution, degrade step):
`*_created` series are off, so a series that first appears at 1 reads as no increase to
`increase()` and `rate()`, and an alert on it would miss the first error after a start. Gauges
of a worker the engine dropped are removed (`worker_gone`), and tiers that had workers, queued
or in-flight items read 0 once they have none, rather than keeping their last value.
"""

from __future__ import annotations

import platform
import threading
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import start_http_server

import farm
from farm.core.drain import NODE_DRAINING
from farm.core.errors import FAILURE_REASONS, FailureReason
from farm.core.job import FAILED, FINAL_ITEM_STATES, JOB_STATES, SUCCEEDED
from farm.core.lease import LOSS_KINDS, loss_kind
from farm.core.ladder import STEPS
from farm.core.params import RESOLUTIONS
from farm.core.tiers import CPU_TIER

disable_created_metrics()  # no `*_created` series: they only add cardinality here

GIB = 1024**3
RENDER_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
MEMORY_BUCKETS = tuple(gib * GIB for gib in (1, 2, 4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80))
UPLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
DELIVERABLE_OUTCOMES = ("made", "skipped", "failed", "superseded")
POST_FAILURE_REASONS = ("not_rendered", "source_damaged", "ffmpeg_error", "too_large", "storage_error", "post_error")
POST_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120, 300, 600)
MODEL_LOAD_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
WORKER_STATES = ("idle", "busy", "lost", "starting", "draining")
NO_TIER = "none"  # the tier label of items that never reached a worker (skipped, cancelled, refused)
BUILD_PACKAGES = ("ray", "torch", "diffusers")  # versions in farm_build_info, read without importing them


def package_version(name: str) -> str:
    """An installed distribution's version from its metadata (no import); "none" when absent."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "none"


def build_labels() -> dict[str, str]:
    return {"version": farm.__version__, "python": platform.python_version(),
            **{name: package_version(name) for name in BUILD_PACKAGES}}


class FarmMetrics:
    """The farm's series, in a registry of their own (so tests and processes do not collide)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.items = Counter("farm_items", "Items that reached a final state", ["outcome", "tier", "model"], registry=r)
        self.failures = Counter("farm_item_failures", "Failed items by reason", ["reason", "tier"], registry=r)
        self.handed_back = Counter(
            "farm_items_handed_back", "Items a worker handed back unfinished and that were queued again at once",
            ["reason", "tier"], registry=r,
        )
        self.frames = Counter("farm_frames_rendered", "Video frames rendered", ["tier", "model"], registry=r)
        self.render_seconds = Histogram(
            "farm_render_seconds", "Wall time of one rendered item (read to committed)",
            ["tier", "model", "resolution"], buckets=RENDER_BUCKETS, registry=r,
        )
        self.queue = Gauge("farm_queue_items", "Items waiting, by the tier they are planned for", ["tier"], registry=r)
        self.in_flight = Gauge("farm_items_in_flight", "Items being rendered or uploaded", ["tier"], registry=r)
        self.memory_peak = Histogram(
            "farm_gpu_memory_peak_bytes", "Peak device memory of one render", ["tier"], buckets=MEMORY_BUCKETS, registry=r,
        )
        self.memory_used = Gauge("farm_gpu_memory_used_bytes", "Device memory in use by a worker", ["worker", "tier"], registry=r)
        self.memory_total = Gauge("farm_gpu_memory_total_bytes", "Device memory of a worker's card", ["worker", "tier"], registry=r)
        self.memory_budget = Gauge("farm_tier_budget_bytes", "Usable memory budget of a tier", ["tier"], registry=r)
        self.ooms = Counter("farm_oom", "Out-of-memory errors during renders", ["tier", "resolution"], registry=r)
        self.degradations = Counter("farm_degradations", "Degrade-ladder steps taken", ["step"], registry=r)
        self.upload_bytes = Counter("farm_storage_upload_bytes", "Bytes of results uploaded", registry=r)
        self.upload_seconds = Histogram(
            "farm_storage_upload_seconds", "Time to upload and commit one item's results", buckets=UPLOAD_BUCKETS, registry=r,
        )
        self.model_switches = Counter(
            "farm_model_switches", "Render workers switching models (one model unloaded, another loaded): outcome "
            "switched, or failed (the worker loaded its old model again)", ["model", "outcome"], registry=r,
        )
        self.model_load_seconds = Histogram(
            "farm_model_load_seconds", "Time a render worker took to switch to a model (unload, then load)",
            ["model"], buckets=MODEL_LOAD_BUCKETS, registry=r,
        )
        self.workers = Gauge("farm_workers", "Render workers by tier and state", ["tier", "state"], registry=r)
        self.jobs = Gauge("farm_jobs", "Jobs by state", ["state"], registry=r)
        self.autoscale_requested = Gauge(
            "farm_autoscale_requested_gpus", "GPUs per tier the farm asks Ray's autoscaler for", ["tier"], registry=r,
        )
        self.unprovidable = Gauge(
            "farm_tier_unprovidable", "1 while a tier asked of the autoscaler never came (its work is planned "
            "elsewhere)", ["tier"], registry=r,
        )
        self.skipped_records = Gauge(
            "farm_job_records_skipped", "Files in the job registry skipped as unreadable or not job records", registry=r,
        )
        self.job_leases = Gauge(
            "farm_job_leases", "Job leases of this coordinator: held (it runs the job) or watched (another does)",
            ["state"], registry=r,
        )
        self.lease_losses = Counter(
            "farm_job_lease_losses", "Job leases this coordinator lost while running the job", ["kind"], registry=r,
        )
        for kind in LOSS_KINDS:
            self.lease_losses.labels(kind)  # at 0 from the start: increase() sees the first loss
        # The CPU stage (deliverables): its queue, its time per deliverable, and what came of each.
        self.post_queue = Gauge("farm_post_queue_items", "Items whose deliverables wait for a CPU worker", registry=r)
        self.post_running = Gauge("farm_post_running_items", "Items whose deliverables are being made", registry=r)
        self.post_seconds = Histogram(
            "farm_post_seconds", "Wall time of making and committing one deliverable", ["deliverable"],
            buckets=POST_BUCKETS, registry=r,
        )
        self.deliverables = Counter(
            "farm_deliverables", "Deliverables by outcome (made, skipped: committed before, failed, superseded)",
            ["deliverable", "outcome"], registry=r,
        )
        self.post_failures = Counter(
            "farm_post_failures", "Deliverables that failed, by reason", ["deliverable", "reason"], registry=r,
        )
        self.build_info = Gauge(
            "farm_build_info", "Always 1: the versions of farm, Python, Ray, torch and diffusers in the engine's process",
            ["version", "python", *BUILD_PACKAGES], registry=r,
        )
        self.build_info.labels(**build_labels()).set(1)
        self._lock = threading.Lock()
        self._worker_tiers: dict[str, set[str]] = {}  # worker -> tiers its memory gauges carry
        self._gauge_tiers: set[str] = set()  # tiers with queue, in-flight or worker gauges

    # --- label values known in advance -----------------------------------------------------------

    def prepare(self, tiers, models=()) -> None:
        """Create every counter child the farm can increment for these tiers (plus `cpu`, and `none`
        for items that reached no worker) and models, at 0, so that the first event after a start
        is an increase from 0 (idempotent; the engine calls it at its start with the tier table and
        at each job's admission with the job's model). 17 series per tier (12 failure reasons, the
        hand-back reason, 4 resolutions of OOMs) and 5 per tier and model (4 outcomes, frames).
        Histograms are left to their first observation (14 buckets a child)."""
        gpu_tiers = [t for t in tiers if t not in (CPU_TIER, NO_TIER)]
        worker_tiers = [*gpu_tiers, CPU_TIER]
        for tier in [*worker_tiers, NO_TIER]:
            for reason in FAILURE_REASONS:
                self.failures.labels(reason, tier)
            for model in models:
                for outcome in FINAL_ITEM_STATES:
                    self.items.labels(outcome, tier, model)
        for tier in worker_tiers:
            self.handed_back.labels(NODE_DRAINING, tier)
            for model in models:
                self.frames.labels(tier, model)
        for tier in gpu_tiers:
            for resolution in RESOLUTIONS:
                self.ooms.labels(tier, str(resolution))
        for step in STEPS:
            self.degradations.labels(step)

    # --- from the engine ------------------------------------------------------------------------

    def model_switched(self, model: str, ok: bool, seconds: float) -> None:
        self.model_switches.labels(model, "switched" if ok else "failed").inc()
        if ok:
            self.model_load_seconds.labels(model).observe(seconds)

    def outcome(self, outcome, model: str) -> None:
        """One final item outcome (succeeded, failed, skipped, cancelled); called exactly once per item."""
        tier = outcome.tier or NO_TIER
        self.items.labels(outcome.status, tier, model).inc()
        if outcome.status == FAILED:
            self.failures.labels(FailureReason(outcome.reason).value, tier).inc()  # outcomes carry one
        for oom in outcome.ooms:
            self.ooms.labels(oom.get("tier") or tier, str(oom.get("resolution"))).inc()
        for step in outcome.degradations:
            self.degradations.labels(step.get("step", "unknown")).inc()
        if outcome.status != SUCCEEDED:
            return
        resolution = str((outcome.settings or {}).get("resolution", "unknown"))
        self.frames.labels(tier, model).inc(outcome.frames or 0)
        self.render_seconds.labels(tier, model, resolution).observe(outcome.seconds)
        if outcome.peak_memory_bytes:
            self.memory_peak.labels(tier).observe(outcome.peak_memory_bytes)
        if outcome.upload_bytes:
            self.upload_bytes.inc(outcome.upload_bytes)
        upload = (outcome.timings or {}).get("upload")
        if upload is not None:
            self.upload_seconds.observe(upload)

    def prepare_deliverables(self, names) -> None:
        """The deliverable counters of a job's deliverables at 0 (its admission), so the first
        outcome is an increase from 0 like every other counter's."""
        for name in names:
            for outcome in DELIVERABLE_OUTCOMES:
                self.deliverables.labels(name, outcome)
            for reason in POST_FAILURE_REASONS:
                self.post_failures.labels(name, reason)

    def post_state(self, queued: int, running: int) -> None:
        self.post_queue.set(queued)
        self.post_running.set(running)

    def posted(self, results) -> None:
        """One item's DeliverableResults (farm.post.item)."""
        for result in results:
            self.deliverables.labels(result.name, result.outcome).inc()
            if result.outcome == "failed":
                self.post_failures.labels(result.name, result.reason or "post_error").inc()
            elif result.outcome == "made":
                self.post_seconds.labels(result.name).observe(result.seconds)

    def engine_state(self, *, queued: dict[str, int], in_flight: dict[str, int], workers: dict[tuple[str, str], int]) -> None:
        """Queue, in-flight and worker counts per tier; a tier seen before and absent now reads 0
        (its last workers went, say), not the value it had."""
        with self._lock:
            self._gauge_tiers |= set(queued) | set(in_flight) | {tier for tier, _ in workers}
            tiers = sorted(self._gauge_tiers)
        for tier in tiers:
            self.queue.labels(tier).set(queued.get(tier, 0))
            self.in_flight.labels(tier).set(in_flight.get(tier, 0))
            for state in WORKER_STATES:
                self.workers.labels(tier, state).set(workers.get((tier, state), 0))

    def autoscaling(self, requested: dict[str, int], unprovidable: set[str], tiers: list[str]) -> None:
        for tier in tiers:
            self.autoscale_requested.labels(tier).set(requested.get(tier, 0))
            self.unprovidable.labels(tier).set(1 if tier in unprovidable else 0)

    def worker_memory(self, worker: str, tier: str, used: int | None, total: int | None) -> None:
        with self._lock:
            self._worker_tiers.setdefault(worker, set()).add(tier)
        if used is not None:
            self.memory_used.labels(worker, tier).set(used)
        if total is not None:
            self.memory_total.labels(worker, tier).set(total)

    def worker_gone(self, worker: str) -> None:
        """The engine dropped a worker (stopped, lost for good, retired, drained): its series go,
        rather than showing its last reply's memory for ever."""
        with self._lock:
            tiers = self._worker_tiers.pop(worker, set())
        for tier in tiers:
            self.memory_used.remove(worker, tier)
            self.memory_total.remove(worker, tier)

    def tier_budgets(self, budgets: dict[str, int]) -> None:
        for tier, budget in budgets.items():
            self.memory_budget.labels(tier).set(budget)

    def leases(self, counts: dict[str, int]) -> None:
        for state in ("held", "watched"):
            self.job_leases.labels(state).set(counts.get(state, 0))

    def lease_lost(self, reason: str) -> None:
        self.lease_losses.labels(loss_kind(reason)).inc()

    def job_states(self, counts: dict[str, int]) -> None:
        for state in JOB_STATES:
            self.jobs.labels(state).set(counts.get(state, 0))

    # --- exposure -------------------------------------------------------------------------------

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "127.0.0.1"):
        """Expose /metrics on host:port (a thread); returns the server (shut it down when done)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
