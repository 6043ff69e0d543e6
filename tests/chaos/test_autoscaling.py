"""Demand drives Ray's autoscaler: a real autoscaler (Ray's fake multi-node provider, which starts
real local nodes on 127.0.0.1) with two GPU node types at min 0 and a head without GPUs. A job
whose items need the bigger tier makes the farm ask for that tier's resources; the autoscaler
starts such a node, a render worker starts on it and renders (its node id is in the sidecars);
once the queue is drained and the worker's idle timeout has passed, the worker stops, the
request is cleared and the autoscaler removes the node. Nothing is lost or committed twice.

The engine runs here as the coordinator runs it (Engine + RayFleet + mailbox, no HTTP), so the
job's end does not stop the workers: the idle timeout does."""

from __future__ import annotations

import json
import socket
import time

import psutil
import pytest
from chaoskit import CommitWatcher, write_images
from helpers import engine_job

from farm.core.tiers import TierTable

pytestmark = [pytest.mark.chaos, pytest.mark.integration]
TABLE = TierTable()
BASE_CONFIG = {  # Ray's fake_multinode example config (not shipped in the wheel), our node types below
    "cluster_name": "farm-autoscaling-test", "max_workers": 2, "head_node_type": "ray.head.default",
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.1, "docker": {}, "initialization_commands": [],
    "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
    "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
    "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
}


def gpu_node_type(tier: str) -> dict:
    return {"resources": {"CPU": 1, "GPU": 1, f"farm_tier_{tier}": 1}, "node_config": {}, "min_workers": 0,
            "max_workers": 1}


@pytest.fixture
def autoscaling_cluster(tmp_path, monkeypatch, farm_cache, tiny_model_dir):
    """A head (1 CPU, no GPU) with an autoscaler that may start one 12g and one 24g node."""
    import ray
    from ray.cluster_utils import Cluster

    # Read by the autoscaler's monitor and the nodes it starts (they inherit this environment):
    # the fake provider, a fast update loop, loopback addresses; the workers simulate their tier's card.
    for name, value in {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                        "FARM_SIMULATE_TIER_CARDS": "1"}.items():
        monkeypatch.setenv(name, value)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = json.loads(json.dumps(BASE_CONFIG))
    config["provider"]["gcs_address"] = f"127.0.0.1:{port}"
    config["available_node_types"] = {
        "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
        "gpu-12g": gpu_node_type("12g"), "gpu-24g": gpu_node_type("24g"),
    }
    path = tmp_path / "autoscaling.json"
    path.write_text(json.dumps(config))
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False,
        "autoscaling_config": str(path), "gcs_server_port": port,
    })
    ray.init(address=cluster.address, namespace="farm", log_to_driver=False)
    try:
        yield cluster
    finally:
        # The nodes the autoscaler started are processes of its monitor, which Cluster does not
        # track: end every process this test started that is still there, by pid.
        started = psutil.Process().children(recursive=True)
        ray.shutdown()
        cluster.shutdown()
        time.sleep(1)
        for process in started:
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    process.kill()
            except psutil.Error:
                pass


def tier_nodes(tier: str) -> list[str]:
    import ray

    return [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get(f"farm_tier_{tier}")]


def wait_for(condition, timeout: float, what: str, step=None):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if step is not None:
            step()
        else:
            time.sleep(0.5)


def test_queued_work_brings_a_node_of_its_tier_which_goes_once_idle(tmp_path, autoscaling_cluster, monkeypatch):
    from farm.runtime.engine import Engine
    from farm.runtime.fleet import RayFleet
    from farm.runtime.mailbox import RayMailbox
    from farm.settings import load_settings
    from farm.storage import open_store

    settings = load_settings({"FARM_MODEL": "tiny", "FARM_AUTOSCALE_MAX_WORKERS": "12g=1,24g=1",
                              "FARM_WORKER_IDLE_TIMEOUT_S": "2", "FARM_CLUSTER_POLL_S": "0.5"})
    mailbox = RayMailbox()
    fleet = RayFleet("tiny", settings, mailbox=mailbox)
    engine = Engine([], TABLE, settings=settings, mailbox=mailbox, fleet=fleet)
    write_images(tmp_path)
    # 512p, 24 frames: more than a 12g card's budget: the 24g tier's work.
    job, plan = engine_job(tmp_path, "scale-up", 2, engine, TABLE, resolution=512, frames=24)
    assert {p.tier for p in plan.items} == {"24g"} and not tier_nodes("24g")
    store = open_store(str(tmp_path / "out"))
    try:
        with CommitWatcher(store, "scale-up") as watcher:
            engine.admit(job, plan)
            asked = time.monotonic()
            assert engine.run_until_done() and job.state.final_state == "succeeded", job.state.failures()
        assert engine.requested == {"24g": 1} or engine.requested == {}
        nodes = tier_nodes("24g")
        assert len(nodes) == 1, "the autoscaler started a 24g node for the queued work"
        assert not tier_nodes("12g"), "and no node of a tier nothing waited for"
        sidecars = [json.loads((tmp_path / "out" / "scale-up" / f"i{n}.json").read_text()) for n in range(2)]
        assert {s["device"]["node_id"] for s in sidecars} == set(nodes), "rendered on the node that came"
        assert all(len(history) == 1 for history in watcher.etags.values()) and len(watcher.etags) == 2
        print(f"queued -> 2 items rendered on the new node in {time.monotonic() - asked:.1f} s")
        # Idle for FARM_WORKER_IDLE_TIMEOUT_S: the worker stops, the request is cleared, the node goes.
        wait_for(lambda: not engine.workers and engine.requested == {}, 60, "the idle worker to stop",
                 step=lambda: engine.step(0.2))
        wait_for(lambda: not tier_nodes("24g"), 90, "the autoscaler to remove the idle node")
    finally:
        engine.stop_all()
        mailbox.close()
