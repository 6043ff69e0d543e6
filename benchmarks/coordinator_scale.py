"""Benchmark: how fast the HTTP API accepts big manifests, and what 100,000 queued items cost
the coordinator (issue 5).

Starts the real service in this process (embedded Ray on 127.0.0.1, the coordinator actor with
the tiny model, Ray Serve on a free port, local output), then over HTTP:
  - the time to a 202 for a 10,000-item manifest, against a 1-item manifest (median of runs);
  - the coordinator actor's resident memory before and after a 100,000-item job is admitted
    (each job is cancelled at once, so nothing renders).

    python benchmarks/coordinator_scale.py [--repeats 3] [--big 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def manifest(name: str, count: int) -> bytes:
    items = [{"id": f"i{n:06d}", "image": "still.png", "prompt": f"motion {n}"} for n in range(count)]
    return json.dumps({"version": 1, "name": name, "items": items}).encode()


def timed_submit(url: str, body: bytes) -> tuple[float, str]:
    started = time.perf_counter()
    response = requests.post(f"{url}/v1/jobs", data=body, headers={"Content-Type": "application/json"}, timeout=600)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response.json()["id"]


def wait_admitted(url: str, job_id: str) -> None:
    while requests.get(f"{url}/v1/jobs/{job_id}", timeout=60).json().get("counts") is None:
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    from PIL import Image

    Image.new("RGB", (320, 240), (40, 120, 200)).save(work / "still.png")
    os.environ.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        FARM_MODEL="tiny",
        FARM_STATE_URI=str(work / "state"),
        FARM_DEFAULT_OUTPUT=str(work / "out"),
        FARM_API_LOCAL_BASE=str(work),
        FARM_API_MAX_ITEMS=str(max(args.big, 10_000)),
        FARM_API_MAX_BODY_BYTES=str(512 * 1024 * 1024),
    )
    import ray
    from ray import serve

    from farm.runtime.cluster import RayCluster
    from farm.runtime.coordinator import coordinator_handle
    from farm.serve.app import build_app

    with RayCluster(num_cpus=2):
        coordinator = coordinator_handle({"model": "tiny"})
        ray.get(coordinator.health.remote(), timeout=600)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(), name="farm", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        small, big = [], []
        for run in range(args.repeats):
            seconds, job = timed_submit(url, manifest(f"one-{run}", 1))
            small.append(seconds)
            requests.delete(f"{url}/v1/jobs/{job}", timeout=60)
            seconds, job = timed_submit(url, manifest(f"ten-k-{run}", 10_000))
            big.append(seconds)
            requests.delete(f"{url}/v1/jobs/{job}", timeout=60)
        print(f"accept 1 item:       {statistics.median(small):6.3f} s (median of {args.repeats})")
        print(f"accept 10,000 items: {statistics.median(big):6.3f} s  ({statistics.median(big) / statistics.median(small):.1f}x one item)")

        time.sleep(3)  # let the cancelled jobs drain
        before = ray.get(coordinator.memory_bytes.remote())
        seconds, job = timed_submit(url, manifest("hundred-k", args.big))
        wait_admitted(url, job)
        after = ray.get(coordinator.memory_bytes.remote())
        status = requests.get(f"{url}/v1/jobs/{job}", timeout=60).json()
        print(f"accept {args.big:,} items: {seconds:6.3f} s; queued now: {status['counts'].get('queued')}")
        print(
            f"coordinator RSS: {before / 2**20:.0f} MiB before, {after / 2**20:.0f} MiB with {args.big:,} items queued "
            f"(+{(after - before) / 2**20:.0f} MiB, {(after - before) / args.big:.0f} bytes per item)"
        )
        requests.delete(f"{url}/v1/jobs/{job}", timeout=60)
        serve.shutdown()
        ray.kill(coordinator, no_restart=True)
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
