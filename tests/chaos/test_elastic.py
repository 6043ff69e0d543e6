"""A cluster that grows mid-job: a GPU node added while a job runs gets a render worker within
seconds (the engine's fleet watches the cluster's `farm_tier_<tier>` resources), which takes
queued work; its node id appears in the sidecars of what it rendered. Nothing is lost or
committed twice."""

from __future__ import annotations

import json

import pytest
from chaoskit import BackgroundJob, CommitWatcher, chaos_items, write_images
from helpers import write_manifest

from farm.runtime.executor import RunOptions
from farm.storage import open_store
from farm.storage.manifest_file import load_manifest

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


def test_a_node_added_mid_job_takes_work(tmp_path, gpu_cluster, monkeypatch):
    monkeypatch.setenv("FARM_CLUSTER_POLL_S", "0.5")  # read by run_job when it starts
    cluster = gpu_cluster("12g")
    spec = load_manifest(write_manifest(tmp_path, chaos_items(10, write_images(tmp_path)), name="grow",
                                        output=str(tmp_path / "out")))
    store = open_store(spec.output)
    with CommitWatcher(store, spec.name) as watcher:
        job = BackgroundJob(spec, RunOptions(address=cluster.address, record_interval_s=0.5))
        watcher.wait_for_commits(1)
        cluster.add_node(num_cpus=1, num_gpus=1, resources={"farm_tier_24g": 1},
                         env_vars={"FARM_GPU_VRAM_GB": "24"}, node_ip_address="127.0.0.1")
        state = job.result()
    assert state.final_state == "succeeded", state.failures()
    sidecars = [json.loads((tmp_path / "out" / "grow" / f"{item.id}.json").read_text()) for item in spec.items]
    by_tier: dict[str, set[str]] = {}
    for sidecar in sidecars:
        by_tier.setdefault(sidecar["tier"]["ran_on"], set()).add(sidecar["device"]["node_id"])
    assert set(by_tier) == {"12g", "24g"}, "the node that joined took work"
    assert len(by_tier["12g"]) == len(by_tier["24g"]) == 1 and by_tier["12g"] != by_tier["24g"]
    assert {s["device"]["worker"] for s in sidecars if s["tier"]["ran_on"] == "24g"} == {"24g-0"}
    assert all(len(history) == 1 for history in watcher.etags.values()), "each item committed exactly once"
