"""The coordinator behind `farm serve` SIGKILLed mid-job: Ray restarts the detached actor, the new
incarnation reloads the job from its registry, skips what was committed and renders the rest.
Runs against the real service (tests/conftest.py's `service`: moto S3, Ray, Serve on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from chaoskit import CommitWatcher, audit, chaos_items, committed_etags
from processes import own_processes

from farm.storage import open_store

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


def coordinator_pid() -> int:
    """The coordinator of the cluster this test session started (a descendant of this process)."""
    found = own_processes("ray::Coordinator")
    assert len(found) == 1, f"expected this session's one coordinator, found {[p.pid for p in found]}"
    return found[0].pid


def test_the_coordinator_killed_mid_job(service, chaos_report):
    images = [f"s3://inputs/img{n}.png" for n in range(3)]
    document = {"version": 1, "name": "coordinator-killed", "items": chaos_items(10, images)}
    response = service.submit(document)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    store = open_store("s3://renders/api")
    with CommitWatcher(store, document["name"]) as watcher:
        watcher.wait_for_commits(3)
        before = committed_etags(watcher)
        os.kill(coordinator_pid(), signal.SIGKILL)
        killed_at = time.monotonic()
        status = service.wait(job_id, timeout=600)
    assert status["state"] == "succeeded", status
    record = json.loads(store.get_bytes(f"{document['name']}/job.json"))
    result = audit(
        "coordinator (farm serve) SIGKILLed mid-job", store, document["name"], [i["id"] for i in document["items"]],
        record["items"], watcher, fault_over_at=None, committed_before_fault=before,
        notes="Ray restarts the detached actor; it reloads the job from FARM_STATE_URI, starts new workers, "
        "skips committed items; time to recover = kill to the next commit",
    )
    result.recover_seconds = watcher.first_commit_after(killed_at) - killed_at
    skipped = [i for i, s in record["items"].items() if s["state"] == "skipped"]
    assert len(skipped) >= len(before), "the restarted coordinator skipped what was committed"
    chaos_report(result)
