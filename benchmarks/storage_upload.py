"""Benchmark: upload throughput to an S3 endpoint, farm's S3 store against plain boto3.

An S3 test server (moto's `ThreadedMotoServer`, bound to 127.0.0.1 on a free port, in its own
process so it does not share this process's GIL; stopped at the end) receives the same
MP4-sized files (random bytes, 100 KB-2 MB) four ways, one file after another on one thread as a
farm worker's commit thread uploads them:
  - raw, plain:  `client.upload_file(video)` with a default boto3 client;
  - raw, farm:   `S3Store.put_file(video)` (transfer manager, `standard` retries, backoff window,
                 and a HEAD for the stored object's ETag and size);
  - item, plain: the three objects of an item (video, 20 KB thumbnail, 3 KB sidecar) with plain
                 `upload_file` / `put_object` to their final keys;
  - item, farm:  `farm.storage.commit.commit_item`, the real commit: video and thumbnail to
                 attempt-unique staging keys, the sidecar with `If-None-Match: *`, then each
                 staged object promoted (server-side copy, delete, HEAD).
Passes alternate; prints the median MB/s and requests per item of each, farm / plain, and
where the time of farm's commit goes.

    python benchmarks/storage_upload.py [--files 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import free_port, machine_line, paired_ratio

BUCKET = "bench"


def serve(port: str) -> None:
    """Child mode: run the moto server until stdin closes."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(port), verbose=False)
    server.start()
    print("ready", flush=True)
    sys.stdin.read()
    server.stop()


def start_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    if process.stdout.readline().strip() != "ready":
        process.kill()
        raise RuntimeError("the moto server did not start")
    return process, f"http://127.0.0.1:{port}"


def stop_server(process: subprocess.Popen) -> None:
    process.stdin.close()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class RequestCounter:
    """Counts the HTTP requests a boto3 client sends."""

    def __init__(self, client):
        self.count = 0
        client.meta.events.register("before-send.s3.*", self._sent)

    def _sent(self, **_):
        self.count += 1


class PhaseTimer:
    """Wraps a store's methods to add up the time spent in each (instance attributes only)."""

    def __init__(self, store, names: tuple[str, ...]):
        self.seconds = dict.fromkeys(names, 0.0)
        for name in names:
            setattr(store, name, self._wrap(name, getattr(store, name)))

    def _wrap(self, name, method):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started

        return timed


def make_files(folder: Path, count: int, min_kb: int, max_kb: int) -> list[dict]:
    rng = random.Random(11)
    thumbnail = folder / "thumb.jpg"
    thumbnail.write_bytes(os.urandom(20 * 1024))
    files = []
    for n in range(count):
        video = folder / f"video-{n:04d}.mp4"
        video.write_bytes(os.urandom(rng.randint(min_kb, max_kb) * 1024))  # incompressible, like H.264
        sidecar = {"item_id": f"item-{n:04d}", "status": "succeeded", "filler": "x" * 3000}
        files.append({"id": f"item-{n:04d}", "video": str(video), "thumbnail": str(thumbnail), "sidecar": sidecar})
    return files


def empty_bucket(client) -> None:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=BUCKET):
        keys = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})


def run_pass(kind: str, files: list[dict], plain, store, run: int) -> tuple[float, int, int]:
    """Upload every file one way; (seconds, payload bytes, requests sent)."""
    from farm.storage.commit import commit_item

    client = plain if kind.endswith("plain") else store.client
    counter = getattr(client, "_bench_counter", None) or RequestCounter(client)
    client._bench_counter = counter
    before = counter.count
    payload = 0
    started = time.perf_counter()
    for f in files:
        key = f"r{run}/{kind}/{f['id']}"
        video_bytes = os.path.getsize(f["video"])
        if kind == "raw-plain":
            plain.upload_file(f["video"], BUCKET, f"{key}.mp4")
            payload += video_bytes
        elif kind == "raw-farm":
            store.put_file(f"{key}.mp4", f["video"], "video/mp4")
            payload += video_bytes
        else:
            body = json.dumps(f["sidecar"], indent=2).encode()
            payload += video_bytes + os.path.getsize(f["thumbnail"]) + len(body)
            if kind == "item-plain":
                plain.upload_file(f["video"], BUCKET, f"{key}.mp4")
                plain.upload_file(f["thumbnail"], BUCKET, f"{key}.jpg")
                plain.put_object(Bucket=BUCKET, Key=f"{key}.json", Body=body)
            else:
                result = commit_item(
                    store, f"r{run}/{kind}", f["id"], {"video": f["video"], "thumbnail": f["thumbnail"]},
                    dict(f["sidecar"]), token=f"t{run}",
                )
                assert result.committed
    seconds = time.perf_counter() - started
    return seconds, payload, counter.count - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--min-kb", type=int, default=100)
    parser.add_argument("--max-kb", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    work = Path(tempfile.mkdtemp(prefix="farm-bench-s3-"))
    files = make_files(work, args.files, args.min_kb, args.max_kb)
    process, endpoint = start_server()
    try:
        os.environ.update(
            AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
            FARM_S3_ENDPOINT_URL=endpoint,
        )
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            os.environ.pop(name, None)
        import boto3

        from farm.storage.s3 import S3Store

        plain = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        plain.create_bucket(Bucket=BUCKET)
        store = S3Store(f"s3://{BUCKET}")
        phases = PhaseTimer(store, ("put_file", "put_bytes", "promote"))
        kinds = ["raw-plain", "raw-farm", "item-plain", "item-farm"]
        run_pass("raw-plain", files[:5], plain, store, -1)  # warm both clients' connections
        run_pass("raw-farm", files[:5], plain, store, -1)
        results = {kind: [] for kind in kinds}
        commit_phases = dict.fromkeys(phases.seconds, 0.0)  # mean seconds per item-farm pass
        for run in range(args.repeats):
            for kind in kinds if run % 2 == 0 else kinds[::-1]:
                empty_bucket(plain)
                before = dict(phases.seconds)
                results[kind].append(run_pass(kind, files, plain, store, run))
                if kind == "item-farm":
                    for name, seconds in phases.seconds.items():
                        commit_phases[name] += (seconds - before[name]) / args.repeats
                seconds, payload, _ = results[kind][-1]
                print(f"  run {run + 1} {kind}: {payload / seconds / 2**20:.1f} MB/s", file=sys.stderr)
        empty_bucket(plain)
    finally:
        stop_server(process)

    rates = {kind: [p / s / 2**20 for s, p, _ in rows] for kind, rows in results.items()}
    mbps = {kind: statistics.median(values) for kind, values in rates.items()}
    per_item = {kind: rows[0][2] / args.files for kind, rows in results.items()}
    mean_kb = sum(os.path.getsize(f["video"]) for f in files) / len(files) / 1024
    print(f"{args.files} files of {args.min_kb}-{args.max_kb} KB (mean {mean_kb:.0f} KB), one thread, "
          f"moto server on 127.0.0.1; medians of {args.repeats} passes "
          f"(farm/plain: median of per-run ratios; MB = 2^20 bytes)")
    print(f"{'':30} {'plain boto3':>12} {'farm':>9} {'farm/plain':>11} {'requests/item':>14}")
    for label, plain_kind, farm_kind in (("raw upload (video)", "raw-plain", "raw-farm"),
                                         ("whole item (video+thumb+json)", "item-plain", "item-farm")):
        print(f"{label:30} {mbps[plain_kind]:9.1f} MB/s {mbps[farm_kind]:6.1f} MB/s "
              f"{paired_ratio(rates[farm_kind], rates[plain_kind]):10.3f}x {per_item[plain_kind]:6.0f} vs {per_item[farm_kind]:.0f}")
    commit = statistics.median(s for s, _, _ in results["item-farm"])
    print(f"farm's commit, per item: {commit / args.files * 1000:.1f} ms = staging uploads "
          f"{commit_phases['put_file'] / args.files * 1000:.1f} ms, conditional sidecar {commit_phases['put_bytes'] / args.files * 1000:.1f} ms, "
          f"promotion {commit_phases['promote'] / args.files * 1000:.1f} ms (means); plain: "
          f"{statistics.median(s for s, _, _ in results['item-plain']) / args.files * 1000:.1f} ms")
    print(machine_line())


if __name__ == "__main__":
    main()
