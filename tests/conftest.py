"""Shared fixtures. Ray is started once per session, bound to 127.0.0.1, and stopped at the end;
the tiny model is built once per session into a private cache folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Before anything imports ray: loopback-only cluster, no usage reporting, offline Hugging Face.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def farm_cache(tmp_path_factory) -> Path:
    """A private farm cache for the session; exported so Ray workers and CLI runs share it."""
    path = tmp_path_factory.mktemp("farm-cache")
    os.environ["FARM_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(farm_cache) -> Path:
    from farm.models.tiny import ensure_tiny_model

    return ensure_tiny_model(farm_cache)


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model_dir):
    from farm.models.i2vgen import I2VGenXLAdapter

    return I2VGenXLAdapter.load("tiny", device="cpu")


@pytest.fixture(scope="module")
def ray_cluster(farm_cache, tiny_model_dir):
    """A real local Ray cluster on 127.0.0.1 (2 CPUs, no GPU), shut down after the module."""
    from farm.runtime.cluster import RayCluster

    with RayCluster(num_cpus=2) as info:
        yield info


@pytest.fixture(scope="module")
def gpu_cluster(farm_cache, tiny_model_dir):
    """Factory for a simulated multi-node GPU cluster on 127.0.0.1 (ray.cluster_utils.Cluster).

    Each node has one fake GPU (a Ray resource), advertises `farm_tier_<tier>` and tells its
    workers the card size through FARM_GPU_VRAM_GB. The cluster is shut down after the module.
    """
    import ray
    from ray.cluster_utils import Cluster

    started = []

    def make(*tiers: str, node_env: dict | None = None):
        if ray.is_initialized():
            ray.shutdown()
        for cluster in started:
            cluster.shutdown()
        started.clear()
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False},
        )
        for tier in tiers:
            env = {"FARM_GPU_VRAM_GB": tier.rstrip("g"), **(node_env or {}).get(tier, {})}
            cluster.add_node(
                num_cpus=1, num_gpus=1, resources={f"farm_tier_{tier}": 1}, env_vars=env, node_ip_address="127.0.0.1"
            )
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="farm", log_to_driver=False)
        started.append(cluster)
        return cluster

    yield make
    if ray.is_initialized():
        ray.shutdown()
    for cluster in started:
        cluster.shutdown()


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for `farm` subprocesses: the session cache, no inherited Ray address."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(extra)
    return env
