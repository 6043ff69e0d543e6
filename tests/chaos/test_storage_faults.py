"""Faults in the output storage during a job: the S3 endpoint down for 30 s, and the output disk full.

S3 is moto's server on 127.0.0.1 behind a TCP proxy the test takes down for 30 s (every connection
reset, new ones refused) and brings back on the same port, so the data survives, as a real
endpoint's would. The full disk is a
1.2 MB tmpfs mounted over the output folder (needs root, as in CI); after the job ends with
`no space left` failures, the test grows the tmpfs, as an operator would free space, and resumes.
"""

from __future__ import annotations

import logging
import subprocess
import time

import boto3
import pytest
from chaoskit import BackgroundJob, CommitWatcher, OutageProxy, audit, chaos_items, committed_etags, write_images
from helpers import MotoServer, free_port, write_manifest

from farm.runtime.executor import RunOptions, run_job
from farm.storage import open_store
from farm.storage.manifest_file import load_manifest

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

OUTAGE_S = 30.0


def test_the_s3_endpoint_down_for_30_seconds_mid_job(tmp_path, gpu_cluster, chaos_report, monkeypatch):
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto, port = MotoServer(), free_port()
    endpoint = f"http://127.0.0.1:{port}"  # the farm sees moto through the proxy we take down
    for name, value in {
        "FARM_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)  # before the cluster starts: its workers inherit them
    moto.start()
    proxy = OutageProxy(moto.port, port)
    proxy.up()
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="renders")
        cluster = gpu_cluster("12g", "24g")
        items = chaos_items(10, write_images(tmp_path))
        spec = load_manifest(write_manifest(tmp_path, items, name="s3-outage", output="s3://renders/chaos"))
        store = open_store(spec.output)
        with CommitWatcher(store, spec.name) as watcher:
            job = BackgroundJob(spec, RunOptions(address=cluster.address, record_interval_s=0.5))
            watcher.wait_for_commits(2)
            before = committed_etags(watcher)
            proxy.down()
            time.sleep(OUTAGE_S)
            committed_while_down = watcher.committed_count() - len(before)
            proxy.up()
            back_at = time.monotonic()
            state = job.result()
        assert state.final_state == "succeeded", state.failures()
        assert committed_while_down == 0, "nothing can commit while S3 is unreachable"
        result = audit(
            "S3 endpoint unreachable for 30 s mid-job", store, spec.name, [i.id for i in spec.items],
            state.to_record()["items"], watcher, fault_over_at=back_at, committed_before_fault=before,
            notes="uploads wait and retry within FARM_S3_RETRY_WINDOW_S (300 s); workers block on a full upload queue",
        )
        # Recovered when the results rendered during the outage (held in the workers' upload
        # queues) are committed: the first commits after the endpoint is back.
        waiting = sorted(t for t in watcher.first_seen.values() if t >= back_at)
        result.recover_seconds = waiting[min(len(waiting), 2) - 1] - back_at if waiting else None
        chaos_report(result)
    finally:
        proxy.down()
        moto.stop()


@pytest.fixture
def small_disk(tmp_path):
    """A 1.2 MB tmpfs: room for about four results (~280 KB each) and the job files."""
    folder = tmp_path / "out"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(folder)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_the_output_disk_full_then_space_freed_and_resumed(tmp_path, gpu_cluster, chaos_report, small_disk):
    cluster = gpu_cluster("12g", "24g")
    items = chaos_items(10, write_images(tmp_path))
    spec = load_manifest(write_manifest(tmp_path, items, name="disk-full", output=str(small_disk)))
    store = open_store(spec.output)
    with CommitWatcher(store, spec.name) as watcher:
        first = run_job(spec, RunOptions(address=cluster.address, record_interval_s=0.5))
        assert first.final_state == "partial", first.counts()
        full = {item_id: status.reason for item_id, status in first.failures()}
        assert full and set(full.values()) == {"storage_error"}, full
        assert all("no space left" in status.message for _, status in first.failures())
        before = committed_etags(watcher)
        assert before, "some results fitted before the disk filled up"
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        freed_at = time.monotonic()
        second = run_job(spec, RunOptions(address=cluster.address, record_interval_s=0.5))
    assert second.final_state == "succeeded", second.failures()
    result = audit(
        "output disk full (1.2 MB tmpfs), then space freed and the job resumed", store, spec.name,
        [i.id for i in spec.items], second.to_record()["items"], watcher,
        fault_over_at=freed_at, committed_before_fault=before,
        notes=f"first run: {len(before)} committed, {len(full)} failed with storage_error (no space left); "
        "the resume skipped the committed ones",
    )
    # The resume re-renders exactly the items the full disk failed; time to recover is until the last.
    redone = [watcher.first_seen[i] for i in full if i in watcher.first_seen]
    result.recover_seconds = max(redone) - freed_at
    result.extra["rendered_again"] = len(full)
    chaos_report(result)
