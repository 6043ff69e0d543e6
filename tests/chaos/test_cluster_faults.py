"""Faults in the Ray cluster during a job: a node removed, a render actor SIGKILLed mid-render,
and an OOM storm. Each job runs on a simulated multi-node GPU cluster (tests/conftest.py's
`gpu_cluster`) with the tiny model, while the test breaks something and watches the commits."""

from __future__ import annotations

import os
import signal
import statistics
import time

import pytest
from chaoskit import BackgroundJob, CommitWatcher, audit, chaos_items, committed_etags, write_images
from helpers import write_manifest
from processes import own_processes

from farm.runtime.executor import RunOptions, run_job
from farm.storage import open_store
from farm.storage.manifest_file import load_manifest

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


def render_actor_pids(method: str = "render") -> list[int]:
    """This test's render actors that are rendering now (Ray titles them
    `ray::RenderWorkerImpl.render`): only descendants of this process, never anyone else's."""
    return [process.pid for process in own_processes(f"ray::RenderWorkerImpl.{method}")]


def start(tmp_path, name: str, count: int, cluster, **options):
    spec = load_manifest(write_manifest(tmp_path, chaos_items(count, write_images(tmp_path)), name=name, output=str(tmp_path / "out")))
    store = open_store(spec.output)
    return spec, store, RunOptions(address=cluster.address, record_interval_s=0.5, **options)


def test_a_node_removed_mid_job(tmp_path, gpu_cluster, chaos_report, monkeypatch):
    # The lost worker's restart can never be placed (its node is gone): give up on it after 20 s
    # (run_job reads the settings when it starts, after this).
    monkeypatch.setenv("FARM_WORKER_RESTART_TIMEOUT_S", "20")
    cluster = gpu_cluster("12g", "12g", "24g")
    spec, store, options = start(tmp_path, "node-removed", 12, cluster)
    victim = next(node for node in cluster.worker_nodes)
    with CommitWatcher(store, spec.name) as watcher:
        job = BackgroundJob(spec, options)
        watcher.wait_for_commits(3)
        before = committed_etags(watcher)
        cluster.remove_node(victim, allow_graceful=False)
        removed_at = time.monotonic()
        state = job.result()
    assert state.final_state == "succeeded", state.failures()
    record = state.to_record()
    assert len({w for w in record["workers"]}) == 3
    chaos_report(audit(
        "simulated node removed mid-job", store, spec.name, [i.id for i in spec.items], record["items"], watcher,
        fault_over_at=removed_at, committed_before_fault=before,
        notes="3 single-GPU nodes (12g, 12g, 24g); one 12g node removed after 3 commits",
    ))


def test_a_render_actor_killed_mid_render(tmp_path, gpu_cluster, chaos_report):
    cluster = gpu_cluster("12g", "24g")
    spec, store, options = start(tmp_path, "actor-killed", 10, cluster)
    with CommitWatcher(store, spec.name) as watcher:
        job = BackgroundJob(spec, options)
        watcher.wait_for_commits(2)
        deadline = time.monotonic() + 120
        while not (pids := render_actor_pids()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pids, "no render actor was rendering"
        before = committed_etags(watcher)
        os.kill(pids[0], signal.SIGKILL)
        killed_at = time.monotonic()
        state = job.result()
    assert state.final_state == "succeeded", state.failures()
    retried = [i for i, s in state.to_record()["items"].items() if s["attempts"] > 1]
    assert retried, "the killed actor's item was rendered again"
    chaos_report(audit(
        "render actor SIGKILLed mid-render", store, spec.name, [i.id for i in spec.items], state.to_record()["items"],
        watcher, fault_over_at=killed_at, committed_before_fault=before,
        notes="Ray restarts the actor (max_restarts=2), it reloads the model; its item is re-queued",
    ))


def test_an_oom_storm_every_third_render(tmp_path, gpu_cluster, chaos_report):
    cluster = gpu_cluster("12g", "24g")
    spec, store, options = start(tmp_path, "oom-storm", 12, cluster, faults="oom:denoise:2:every=3")
    with CommitWatcher(store, spec.name) as watcher:
        state = run_job(spec, options)
    assert state.final_state == "succeeded", state.failures()
    items = state.to_record()["items"]
    degraded = {item_id: s for item_id, s in items.items() if s.get("degradations")}
    assert len(degraded) >= 3, "every third render ran out of memory and was degraded"
    clean = [s["seconds"] for item_id, s in items.items() if item_id not in degraded]
    extra = statistics.median(s["seconds"] for s in degraded.values()) - statistics.median(clean)
    result = audit(
        "OOM storm (every third render)", store, spec.name, [i.id for i in spec.items], items, watcher,
        fault_over_at=None,
        notes=f"{len(degraded)} items degraded and retried in place; time to recover = median extra render time",
    )
    result.recover_seconds = max(extra, 0.0)
    chaos_report(result)
