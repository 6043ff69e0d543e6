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


@pytest.fixture(scope="session")
def ray_cluster(farm_cache, tiny_model_dir):
    """A real local Ray cluster on 127.0.0.1 (2 CPUs), shut down at the end of the session."""
    from farm.runtime.cluster import RayCluster

    with RayCluster(num_cpus=2) as info:
        yield info


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for `farm` subprocesses: the session cache, no inherited Ray address."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(extra)
    return env
