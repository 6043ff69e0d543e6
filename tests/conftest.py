"""Shared fixtures. Ray is started once per session, bound to 127.0.0.1, and stopped at the end;
the tiny model is built once per session into a private cache folder."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

# Before anything imports ray: loopback-only cluster, no usage reporting, offline Hugging Face.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

sys.path.insert(0, str(Path(__file__).parent))

import boto3
import requests
from helpers import MotoServer, encode, free_port, pattern


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


@pytest.fixture
def injected(tiny_adapter):
    """Fault rules on the shared adapter for one test (taken off afterwards); `attach(spec)`
    returns a count of the UNet's forward calls made since the fixture started."""
    from farm.models.faults import OomInjector, parse_faults

    calls = {"unet": 0}

    def count(module, args):
        calls["unet"] += 1

    counting = tiny_adapter.pipeline.unet.register_forward_pre_hook(count)
    injectors = []

    def attach(spec: str):
        injector = OomInjector(parse_faults(spec))
        injector.attach(tiny_adapter.pipeline)
        tiny_adapter.injector = injector
        injectors.append(injector)
        return calls

    yield attach
    counting.remove()
    for injector in injectors:
        injector.detach()
    tiny_adapter.injector = None


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


# --- the HTTP service, for tests/integration/test_serve.py and tests/chaos -------------------

TOKEN = "test-token-0123456789"
BUCKET = "renders"


class Service:
    def __init__(self, url: str, s3_endpoint: str, cluster_address: str, local: Path):
        self.url = url
        self.s3_endpoint = s3_endpoint
        self.address = cluster_address
        self.local = local  # an allowed local output (holding the state folder) and the local image base
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {TOKEN}"

    def s3(self):
        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1")

    def submit(self, document: dict, **kwargs) -> requests.Response:
        return self.session.post(f"{self.url}/v1/jobs", json=document, timeout=60, **kwargs)

    def status(self, job_id: str) -> dict:
        for _ in range(120):  # 503 while a restarted coordinator comes back
            response = self.session.get(f"{self.url}/v1/jobs/{job_id}", timeout=30)
            if response.status_code == 200:
                return response.json()
            time.sleep(1)
        raise AssertionError(response.text)

    def wait(self, job_id: str, timeout: float = 300) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.status(job_id)
            if status["state"] in ("succeeded", "partial", "failed", "cancelled"):
                return status
            time.sleep(1)
        raise AssertionError(f"job {job_id} did not finish: {status}")

    def sidecars(self, prefix: str) -> dict:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return {
            e["Key"]: e["ETag"] for page in pages for e in page.get("Contents", [])
            if e["Key"].endswith(".json") and e["Key"].rsplit("/", 1)[-1] not in ("job.json", "spec.json", "manifest.json")
        }


@pytest.fixture(scope="module")
def service(request, farm_cache, tiny_model_dir, tmp_path_factory):
    """moto S3, an embedded Ray cluster, the coordinator and the Serve app on 127.0.0.1 (a test
    module's `SERVICE_ENV` adds settings)."""
    import logging

    import ray
    from ray import serve

    from farm.runtime.cluster import RayCluster
    from farm.runtime.coordinator import coordinator_handle
    from farm.serve.app import build_app

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    moto, http_port = MotoServer(), free_port()
    moto.start()
    s3_endpoint = moto.endpoint
    local = tmp_path_factory.mktemp("service-local")
    (local / "images").mkdir()
    (local / "images" / "still.png").write_bytes(encode(pattern(320, 240), "PNG"))
    # A file in the registry that is not a job record (as a job writing into the state folder
    # would leave): the service must start anyway and report it.
    (local / "state" / "jobs").mkdir(parents=True)
    (local / "state" / "jobs" / "spec.json").write_text('{"spec_version": 1, "name": "jobs", "items": []}')
    env = {
        "FARM_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FARM_API_TOKEN": TOKEN,
        "FARM_MODEL": "tiny",
        "FARM_STATE_URI": str(local / "state"),
        "FARM_DEFAULT_OUTPUT": f"s3://{BUCKET}/api",
        "FARM_API_ALLOWED_OUTPUTS": f"s3://{BUCKET}/api,{local}",
        "FARM_API_LOCAL_BASE": str(local / "images"),
        "FARM_API_MAX_STREAMS_PER_CLIENT": "110",
        "FARM_API_MAX_STREAMS": "300",
        "FARM_API_MAX_BODY_BYTES": str(8 * 1024 * 1024),
        # Webhooks to the test's own server on 127.0.0.1 (development-only loopback permission).
        "FARM_URL_ALLOWED_HOSTS": "127.0.0.1",
        "FARM_URL_ALLOW_LOOPBACK": "true",
        "FARM_URL_ALLOW_HTTP": "true",
        **getattr(request.module, "SERVICE_ENV", {}),
    }
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # the Ray cluster started below hands these to every actor
    try:  # restored even when the service does not start, so no later test sees these settings
        client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        client.create_bucket(Bucket="inputs")
        for n in range(3):
            client.put_object(Bucket="inputs", Key=f"img{n}.png", Body=encode(pattern(300 + 40 * n, 240), "PNG"))
        if ray.is_initialized():
            ray.shutdown()
        with RayCluster(num_cpus=2):
            coordinator = coordinator_handle({"model": "tiny"})
            try:
                ray.get(coordinator.health.remote(), timeout=300)
                serve.start(http_options={"host": "127.0.0.1", "port": http_port})
                serve.run(build_app(), name="farm", route_prefix="/", blocking=False)
                url = f"http://127.0.0.1:{http_port}"
                for _ in range(60):
                    try:
                        if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                            break
                    except requests.RequestException:
                        pass
                    time.sleep(1)
                yield Service(url, s3_endpoint, ray.get_runtime_context().gcs_address, local)
            finally:
                serve.shutdown()
                ray.kill(coordinator, no_restart=True)
    finally:
        moto.stop()
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def chaos_report():
    """tests/chaos: record a scenario's audit (asserts 0 lost, 0 duplicated) for the summary table."""
    import chaoskit  # tests/chaos is on sys.path once one of its modules is imported

    return chaoskit.record


def pytest_terminal_summary(terminalreporter):
    """The fault-injection table, when tests/chaos ran (see tests/chaos/chaoskit.py)."""
    chaoskit = sys.modules.get("chaoskit")
    if chaoskit is not None:
        chaoskit.print_report(terminalreporter)
