"""Graceful drain (issue 16): a node drained mid-item hands its item back at once.

A plain `ray.cluster_utils.Cluster` with two single-GPU 12g nodes; items long enough (60 denoise
steps, several seconds each) that the drain's deadline, 8 s away, is too short for the render
in progress. The node is drained through the GCS as the autoscaler or a preemption notice does
(`drain_node`, reason PREEMPTION; a SIGTERM to a raylet drains its node the same way). The
worker on it learns of the drain at its next step check (FARM_DRAIN_CHECK_S, 2 s by default),
stops the denoise and hands the item back: it is queued again at once, not after the node died
and FARM_WORKER_RESTART_TIMEOUT_S ran out, and the other node renders it. The drained node's
worker takes nothing new and is stopped (and the idle draining node then ends itself)."""

from __future__ import annotations

import json
import re
import time

import pytest
from chaoskit import BackgroundJob, CommitWatcher, audit, chaos_items, committed_etags, write_images
from helpers import write_manifest

from farm.metrics import FarmMetrics
from farm.runtime.executor import RunOptions
from farm.storage import open_store
from farm.storage.manifest_file import load_manifest

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

DEADLINE_S = 8.0


def drain(address: str, node_id: str, deadline_s: float) -> None:
    import ray
    from ray.core.generated import autoscaler_pb2

    client = ray._raylet.GcsClient(address=address)
    accepted, why = client.drain_node(
        node_id, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"), "farm chaos test: preempted",
        int((time.time() + deadline_s) * 1000),
    )
    assert accepted, why


def sidecars(folder) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in folder.glob("drain-*.json")}


def test_a_node_drained_mid_item_hands_its_item_back_at_once(tmp_path, gpu_cluster, chaos_report, monkeypatch, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="farm.runtime.engine")
    monkeypatch.setenv("FARM_CLUSTER_POLL_S", "0.5")  # read by run_job when it starts
    monkeypatch.setenv("FARM_WORKER_RESTART_TIMEOUT_S", "600")  # recovery must not come from a lost worker's timeout
    cluster = gpu_cluster("12g", "12g")
    items = [{**item, "steps": 60} for item in chaos_items(4, write_images(tmp_path), prefix="drain")]
    spec = load_manifest(write_manifest(tmp_path, items, name="drained", output=str(tmp_path / "out")))
    store, metrics = open_store(spec.output), FarmMetrics()
    out = tmp_path / "out" / "drained"
    drained_node = None
    try:
        with CommitWatcher(store, spec.name) as watcher:
            job = BackgroundJob(spec, RunOptions(address=cluster.address, record_interval_s=0.5, metrics=metrics))
            watcher.wait_for_commits(2)  # each worker committed one item and started its next
            node_of = {s["device"]["worker"]: s["device"]["node_id"] for s in sidecars(out).values()}
            running = {}
            deadline = time.monotonic() + 30
            while not running and time.monotonic() < deadline:
                record = json.loads((out / "job.json").read_text())
                running = {status["worker"]: item_id for item_id, status in record["items"].items()
                           if status["state"] == "running" and status.get("worker") in node_of}
                time.sleep(0.1)
            assert running, f"no item running on a worker with a known node: {record['items']}"
            worker, item_id = sorted(running.items())[0]
            drained_node = node_of[worker]
            before = committed_etags(watcher)
            drain(cluster.address, drained_node, DEADLINE_S)
            drained_at = time.monotonic()
            handed_back_at = None
            while handed_back_at is None and time.monotonic() < drained_at + 60:
                if metrics.registry.get_sample_value(
                        "farm_items_handed_back_total", {"reason": "node_draining", "tier": "12g"}):
                    handed_back_at = time.monotonic()
                time.sleep(0.05)
            state = job.result()
    finally:
        if drained_node is not None:  # gone by itself once its worker stopped; removed here either way
            for node in list(cluster.worker_nodes):
                if node.node_id == drained_node:
                    try:
                        cluster.remove_node(node, allow_graceful=False)
                    except Exception:  # noqa: BLE001 - already ended
                        pass
    assert handed_back_at is not None, "the drained worker never handed its item back"
    back_s = handed_back_at - drained_at
    assert back_s < 5.0, f"handed back {back_s:.1f} s after the drain (deadline {DEADLINE_S} s)"
    assert state.final_state == "succeeded", state.failures()
    handed = [r.getMessage() for r in caplog.records if "queued again at once" in r.getMessage()]
    # job.json lags and counts an uploading item as running: the item the worker was rendering
    # when the drain came is the one it names.
    assert len(handed) == 1 and f"worker {worker} handed it back" in handed[0] and "stopped after step" in handed[0], handed
    item_id = re.search(r"item (\S+) of job", handed[0]).group(1)
    assert item_id not in before, (item_id, before)
    record = state.to_record()
    written = sidecars(out)
    assert set(written) == {i.id for i in spec.items}
    assert written[item_id]["device"]["node_id"] != drained_node, "the handed-back item was rendered elsewhere"
    assert record["items"][item_id]["attempts"] == 1, "the returned run was not counted as an attempt"
    by_drained = [i for i, s in written.items() if s["device"]["worker"] == worker]
    assert by_drained and all(i in before for i in by_drained), f"{worker} took a new item after the drain: {by_drained}"
    assert all(len(history) == 1 for history in watcher.etags.values()), "each item committed exactly once"
    result = audit(
        "node drained mid-item (graceful drain)", store, spec.name, [i.id for i in spec.items], record["items"],
        watcher, fault_over_at=drained_at, committed_before_fault=before,
        notes=f"2 single-GPU 12g nodes; one drained (PREEMPTION, deadline {DEADLINE_S:.0f} s) mid-item; "
              f"handed back {back_s:.1f} s after the drain, rendered on the other node",
    )
    print(f"drained {worker} (node {drained_node[:12]}) rendering {item_id}; {handed[0]}")
    chaos_report(result)
