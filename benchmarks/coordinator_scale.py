"""Benchmark: how fast the HTTP API accepts big manifests, what 100,000 queued items cost the
coordinator (issue 5), and whether a running 100,000-item job stays cheap (issue 16).

Starts the real service in this process (embedded Ray on 127.0.0.1, the coordinator actor with
the tiny model, Ray Serve on a free port, local output), then over HTTP:
  - the time to a 202 for a 10,000-item manifest, against a 1-item manifest (median of runs);
  - the coordinator actor's resident memory before and after a 100,000-item job is admitted
    (each job is cancelled at once, so nothing renders);
  - a 100,000-item job that runs (`--run-seconds`; one CPU worker renders small clips with one
    torch thread, so most items stay queued while the job's record changes with every commit):
    status latency over HTTP and by a direct actor call, item-list pages (the first, one deep in
    the job, one filtered by state), the time per job-record write (the dispatch thread's
    snapshot; the writer thread's encoding and storing) and the share of the dispatch loop's time
    spent writing records (from `Coordinator.loop_stats()`);
  - in this process, without Ray: what one record write of a 100,000-item job costs with a
    handful of items changed (`JobRecorder.write` on the calling thread, then until stored).

`--only-running` skips the accept and memory measurements. The script reads farm from the
import path, so `PYTHONPATH=/path/to/another/checkout` measures that code (a farm without
`loop_stats()` reports the loop's share as n/a).

    python benchmarks/coordinator_scale.py [--repeats 3] [--big 100000] [--run-seconds 40] [--only-running]
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


FAST = {"resolution": 256, "frames": 8, "fps": 8, "steps": 10}  # small clips: the running job commits often


def manifest(name: str, count: int, defaults: dict | None = None) -> bytes:
    items = [{"id": f"i{n:06d}", "image": "still.png", "prompt": f"motion {n}"} for n in range(count)]
    return json.dumps({"version": 1, "name": name, "items": items, **({"defaults": defaults} if defaults else {})}).encode()


def timed_submit(url: str, body: bytes) -> tuple[float, str]:
    started = time.perf_counter()
    response = requests.post(f"{url}/v1/jobs", data=body, headers={"Content-Type": "application/json"}, timeout=600)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response.json()["id"]


def wait_admitted(url: str, job_id: str) -> None:
    while requests.get(f"{url}/v1/jobs/{job_id}", timeout=60).json().get("counts") is None:
        time.sleep(0.5)


def wait_final(url: str, job_id: str, limit_s: float = 900) -> None:
    deadline = time.monotonic() + limit_s
    while requests.get(f"{url}/v1/jobs/{job_id}", timeout=60).json()["state"] in ("queued", "running"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not end within {limit_s} s")
        time.sleep(1)


def quantiles_ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"median {1e3 * statistics.median(ordered):7.2f} ms, p95 {1e3 * p95:7.2f} ms, max {1e3 * ordered[-1]:7.2f} ms"


def timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def loop_stats(coordinator) -> dict | None:
    import ray

    try:
        return ray.get(coordinator.loop_stats.remote(), timeout=60)
    except AttributeError:  # a farm from before issue 16 item 6
        return None


def running_job(url: str, coordinator, count: int, run_seconds: float, requests_each: int) -> dict:
    """A `count`-item job that renders while status, pages and the loop's costs are measured."""
    import ray

    while ray.get(coordinator.health.remote(), timeout=60)["active_jobs"]:  # the worker is this job's alone
        time.sleep(1)
    body = manifest("big-running", count, defaults=FAST)
    seconds, job = timed_submit(url, body)
    wait_admitted(url, job)
    session = requests.Session()
    status = session.get(f"{url}/v1/jobs/{job}", timeout=60).json()
    while not (status["counts"].get("succeeded") or status["counts"].get("failed")):  # the first commit
        time.sleep(0.5)
        status = session.get(f"{url}/v1/jobs/{job}", timeout=60).json()
    time.sleep(3)  # past the admission's one-off writes
    before, started = loop_stats(coordinator), time.monotonic()
    http, direct, first, deep, filtered = [], [], [], [], []
    pause = run_seconds / requests_each
    for _ in range(requests_each):
        http.append(timed(lambda: session.get(f"{url}/v1/jobs/{job}", timeout=60).raise_for_status())[0])
        direct.append(timed(lambda: ray.get(coordinator.status.remote(job), timeout=60))[0])
        first.append(timed(lambda: session.get(f"{url}/v1/jobs/{job}/items", params={"limit": 100}, timeout=60))[0])
        deep.append(timed(lambda: session.get(f"{url}/v1/jobs/{job}/items",
                                              params={"limit": 100, "cursor": int(count * 0.9)}, timeout=60))[0])
        filtered.append(timed(lambda: session.get(f"{url}/v1/jobs/{job}/items",
                                                  params={"limit": 100, "state": "succeeded"}, timeout=60))[0])
        time.sleep(max(0.0, pause - (http[-1] + direct[-1] + first[-1] + deep[-1] + filtered[-1])))
    while time.monotonic() - started < run_seconds:
        time.sleep(0.5)
    after, window = loop_stats(coordinator), time.monotonic() - started
    status = session.get(f"{url}/v1/jobs/{job}", timeout=60).json()
    record = json.loads((Path(os.environ["FARM_DEFAULT_OUTPUT"]) / "big-running" / "job.json").read_bytes())
    result = {"accept_s": seconds, "window_s": window, "counts": status["counts"], "http": http, "direct": direct,
              "first": first, "deep": deep, "filtered": filtered, "record_items": len(record["items"])}
    if before is not None and after is not None:
        engine = {k: after["engine"][k] - before["engine"][k] for k in after["engine"]}
        recorder = after["records"].get(job) or {}
        old = before["records"].get(job) or {}
        result.update(engine=engine, recorder=recorder,
                      writes=recorder.get("writes", 0) - old.get("writes", 0),
                      encoded=recorder.get("encoded_items", 0) - old.get("encoded_items", 0))
    session.delete(f"{url}/v1/jobs/{job}", timeout=60)
    return result


def report_running(result: dict, count: int) -> None:
    print(f"running job of {count:,} items, measured over {result['window_s']:.0f} s "
          f"(counts at the end: {json.dumps({k: v for k, v in result['counts'].items() if v})})")
    print(f"  status over HTTP:          {quantiles_ms(result['http'])}  ({len(result['http'])} requests)")
    print(f"  status, direct actor call: {quantiles_ms(result['direct'])}")
    print(f"  items, first page:         {quantiles_ms(result['first'])}")
    print(f"  items, page at {int(count * 0.9):,}:     {quantiles_ms(result['deep'])}")
    print(f"  items, state=succeeded:    {quantiles_ms(result['filtered'])}")
    if "engine" not in result:
        print("  dispatch loop: n/a (this farm has no Coordinator.loop_stats)")
        return
    engine, recorder = result["engine"], result["recorder"]
    share = engine["record_s"] / engine["step_s"] if engine["step_s"] else 0.0
    medians = recorder.get("median_ms", {})
    print(f"  dispatch loop: {engine['steps']} steps, {engine['step_s']:.1f} s; in record writes {engine['record_s'] * 1e3:.1f} ms"
          f" = {share:.3%} of the loop")
    print(f"  record writes in the window: {result['writes']} ({result['encoded']} items re-encoded, "
          f"{recorder.get('bytes', 0) / 2**20:.1f} MiB each); median per write: dispatch-thread snapshot "
          f"{medians.get('snapshot_s')} ms, writer-thread encode {medians.get('encode_s')} ms, store {medians.get('store_s')} ms")


def record_write_cost(count: int, changed: int, repeats: int = 5) -> dict:
    """In this process: one job-record write of a `count`-item job after `changed` items
    changed (the first write, which encodes everything, excluded): seconds in `write()` on the
    calling thread, and seconds until the record was stored (the writer thread's part)."""
    import threading

    from farm.core.job import ItemOutcome, JobState
    from farm.core.manifest import parse_manifest
    from farm.runtime.jobs import JobRecorder

    class Store:
        def __init__(self):
            self.stored = threading.Event()

        def put_bytes(self, key, body, content_type):
            self.size = len(body)
            self.stored.set()

    items = [{"id": f"i{n:06d}", "image": "s3://in/still.png", "prompt": f"motion {n}"} for n in range(count)]
    spec = parse_manifest(json.dumps({"version": 1, "name": "cost", "items": items}), "json", base_dir=Path("."))
    state = JobState(spec)
    state.start()
    store = Store()
    recorder = JobRecorder(state, store, interval_s=3600)
    recorder.write(force=True)
    store.stored.wait(60)
    calls, totals = [], []
    ids = iter(item.id for item in spec.items)
    for _ in range(repeats):
        for _ in range(changed):
            item_id = next(ids)
            state.mark_running(item_id, "cpu-0")
            state.record(ItemOutcome(item_id, "succeeded", seconds=1.5, worker="cpu-0"))
        store.stored.clear()
        started = time.perf_counter()
        recorder.write(force=True)
        calls.append(time.perf_counter() - started)
        store.stored.wait(60)
        totals.append(time.perf_counter() - started)
    recorder.close(final=False)
    return {"call": statistics.median(calls), "stored": statistics.median(totals), "bytes": store.size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--run-seconds", type=float, default=40.0, help="how long the running big job is measured")
    parser.add_argument("--requests", type=int, default=50, help="status and page requests each, over that time")
    parser.add_argument("--only-running", action="store_true", help="skip the accept and memory measurements")
    args = parser.parse_args()
    cost = record_write_cost(args.big, changed=20)
    print(f"record write of a {args.big:,}-item job ({cost['bytes'] / 2**20:.1f} MiB), 20 items changed, in-process: "
          f"{1e3 * cost['call']:.2f} ms in write() on the calling thread, {1e3 * cost['stored']:.1f} ms until stored "
          f"(median of 5)")
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
        FARM_CPU_THREADS="1",  # the running job's one CPU worker leaves a core to the coordinator
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
        if not args.only_running:
            accept_and_memory(url, coordinator, args)
        report_running(running_job(url, coordinator, args.big, args.run_seconds, args.requests), args.big)
        serve.shutdown()
        ray.kill(coordinator, no_restart=True)
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")


def accept_and_memory(url: str, coordinator, args) -> None:
    """Accepting 1 and 10,000 items over HTTP, and the memory of 100,000 queued items (issue 5)."""
    import ray

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
    wait_final(url, job)  # its running items finish first: the worker is free for the next job


if __name__ == "__main__":
    main()
