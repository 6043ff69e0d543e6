"""The farm's metrics registry: counters exist at 0 before the first event (so `increase()` sees
the first error after a start), gauges of a worker the engine dropped are gone, tiers that lost
their workers read 0, and farm_build_info names the versions without importing torch or Ray."""

import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

import farm
from farm.core import dispatch
from farm.core.contracts import ItemOutcome
from farm.core.errors import FAILURE_REASONS, FailureReason
from farm.core.job import FINAL_ITEM_STATES, JobState
from farm.core.ladder import STEPS
from farm.core.manifest import parse_manifest
from farm.core.params import RESOLUTIONS
from farm.core.planner import plan_job
from farm.core.tiers import TierTable
from farm.metrics import FarmMetrics
from farm.runtime.engine import ActiveJob, Engine, Worker
from farm.runtime.handles import LocalCallPool

ROOT = Path(__file__).resolve().parents[2]
TABLE = TierTable()
TIERS = TABLE.names()


def samples(metrics: FarmMetrics) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, read back from the exposition text."""
    out = {}
    for family in text_string_to_metric_families(metrics.text().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: FarmMetrics, name: str, **labels) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def test_prepare_creates_every_known_counter_child_at_zero():
    metrics = FarmMetrics()
    metrics.prepare(TIERS, ["m"])
    for tier in [*TIERS, "cpu", "none"]:
        for reason in FAILURE_REASONS:
            assert value(metrics, "farm_item_failures_total", reason=reason, tier=tier) == 0, (reason, tier)
        for outcome in FINAL_ITEM_STATES:
            assert value(metrics, "farm_items_total", outcome=outcome, tier=tier, model="m") == 0
    for tier in TIERS:
        assert value(metrics, "farm_items_handed_back_total", reason="node_draining", tier=tier) == 0
        assert value(metrics, "farm_frames_rendered_total", tier=tier, model="m") == 0
        for resolution in RESOLUTIONS:
            assert value(metrics, "farm_oom_total", tier=tier, resolution=str(resolution)) == 0
    for step in STEPS:
        assert value(metrics, "farm_degradations_total", step=step) == 0
    assert len(samples(metrics)) < 300  # tiers x reasons, not more


def test_the_first_storage_error_increments_the_child_that_existed_at_zero():
    metrics = FarmMetrics()
    metrics.prepare(TIERS, ["m"])
    before = samples(metrics)
    metrics.outcome(ItemOutcome.failure("a", FailureReason.STORAGE_ERROR, "bucket refuses writes", tier="24g"), "m")
    after = samples(metrics)
    assert value(metrics, "farm_item_failures_total", reason="storage_error", tier="24g") == 1
    assert value(metrics, "farm_items_total", outcome="failed", tier="24g", model="m") == 1
    assert set(after) == set(before)  # no series was born at 1


def test_the_engine_prepares_the_counters_at_its_start_and_a_jobs_model_at_admission(tmp_path):
    metrics = FarmMetrics()
    engine = Engine([], TABLE, metrics, pool=LocalCallPool())
    assert value(metrics, "farm_item_failures_total", reason="storage_error", tier="24g") == 0
    assert value(metrics, "farm_item_failures_total", reason="no_fitting_tier", tier="none") == 0
    assert not [key for key in samples(metrics) if key[0] == "farm_items_total"]  # no model known yet

    manifest = {"version": 1, "name": "j", "model": "tiny", "items": [{"id": "a", "image": "s3://in/a.png", "prompt": "p"}]}
    spec = parse_manifest(json.dumps(manifest), "json", base_dir=tmp_path)
    state = JobState(spec)
    state.start()
    engine.admit(ActiveJob(id="j", state=state), plan_job(spec, engine.shape, TABLE))
    for tier in [*TIERS, "none"]:
        for outcome in FINAL_ITEM_STATES:
            assert value(metrics, "farm_items_total", outcome=outcome, tier=tier, model="tiny") == 0


class Handle:
    killed = False

    def kill(self):
        self.killed = True


def test_memory_gauges_of_a_worker_the_engine_stops_are_removed():
    metrics = FarmMetrics()
    handles = {name: Handle() for name in ("24g-0", "24g-1")}
    workers = [Worker(name, handle, "24g", {"tier": "24g", "model": {"config_sha256": "x"}}) for name, handle in handles.items()]
    engine = Engine(workers, TABLE, metrics, pool=LocalCallPool())
    for name in handles:
        metrics.worker_memory(name, "24g", 3 * 2**30, 24 * 2**30)
    engine.publish()
    assert value(metrics, "farm_workers", tier="24g", state="idle") == 2

    engine._carry_out(engine.state.handle(dispatch.WorkerRetired("24g-0")))  # idle too long: stopped

    assert handles["24g-0"].killed
    text = metrics.text().decode()
    assert 'worker="24g-0"' not in text
    assert value(metrics, "farm_gpu_memory_used_bytes", worker="24g-1", tier="24g") == 3 * 2**30
    assert value(metrics, "farm_gpu_memory_total_bytes", worker="24g-1", tier="24g") == 24 * 2**30
    engine.publish()
    assert value(metrics, "farm_workers", tier="24g", state="idle") == 1


def test_worker_gone_removes_every_tier_it_was_reported_under_and_ignores_strangers():
    metrics = FarmMetrics()
    metrics.worker_memory("w", "12g", 1, None)  # total not known yet
    metrics.worker_memory("w", "cpu", 1, 2)
    metrics.worker_gone("w")
    metrics.worker_gone("never-seen")
    assert "farm_gpu_memory_used_bytes{" not in metrics.text().decode()
    assert "farm_gpu_memory_total_bytes{" not in metrics.text().decode()


def test_a_tier_whose_workers_and_queue_went_reads_zero_not_its_last_value():
    metrics = FarmMetrics()
    metrics.engine_state(queued={"24g": 5}, in_flight={"24g": 1}, workers={("24g", "busy"): 1})
    metrics.engine_state(queued={}, in_flight={}, workers={})
    assert value(metrics, "farm_queue_items", tier="24g") == 0
    assert value(metrics, "farm_items_in_flight", tier="24g") == 0
    assert value(metrics, "farm_workers", tier="24g", state="busy") == 0


def test_build_info_names_the_versions_and_is_one():
    metrics = FarmMetrics()
    build = [(labels, v) for (name, labels), v in samples(metrics).items() if name == "farm_build_info"]
    assert len(build) == 1
    labels, one = dict(build[0][0]), build[0][1]
    assert one == 1
    assert labels == {
        "version": farm.__version__, "python": platform.python_version(),
        "ray": metadata.version("ray"), "torch": metadata.version("torch"), "diffusers": metadata.version("diffusers"),
    }


def test_the_metrics_module_imports_neither_torch_nor_ray_nor_diffusers():
    code = (
        "import sys; from farm.metrics import FarmMetrics; FarmMetrics().text(); "
        "print(sorted(m for m in ('torch', 'ray', 'diffusers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_lease_series_exist_at_zero_and_count_losses_by_kind():
    from farm.core.lease import LOSS_KINDS

    metrics = FarmMetrics()
    assert all(value(metrics, "farm_job_lease_losses_total", kind=kind) == 0 for kind in LOSS_KINDS)
    metrics.lease_lost("not renewed within 50 s (storage unreachable or slow)")
    metrics.lease_lost("host-b/42/abcd took its lease over")
    metrics.lease_lost("its lease record was removed")
    assert [value(metrics, "farm_job_lease_losses_total", kind=kind) for kind in LOSS_KINDS] == [1, 1, 1]
    metrics.leases({"held": 2, "watched": 3})
    assert value(metrics, "farm_job_leases", state="held") == 2
    assert value(metrics, "farm_job_leases", state="watched") == 3
