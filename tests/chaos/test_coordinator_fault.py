"""The coordinator behind `farm serve` SIGKILLed mid-job: Ray restarts the detached actor, the new
incarnation adopts the render workers that outlived it (no model loaded again: the same worker
processes render the rest), reloads the job from its registry, skips what was committed and
renders the rest, each item committed exactly once. Runs against the real service
(tests/conftest.py's `service`: moto S3, Ray, Serve on 127.0.0.1) with two render workers."""

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
SERVICE_ENV = {"FARM_CPU_WORKERS": "2", "FARM_CPU_THREADS": "1"}


def render_worker_pids() -> set[int]:
    """Render worker processes of this test session: each one is one model load."""
    return {p.pid for p in own_processes("ray::RenderWorkerImpl")}


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
        workers = render_worker_pids()
        assert len(workers) == 2, workers
        before = committed_etags(watcher)
        os.kill(coordinator_pid(), signal.SIGKILL)
        killed_at = time.monotonic()
        status = service.wait(job_id, timeout=600)
        assert render_worker_pids() == workers, "the same two workers finished the job: no model loaded again"
    assert status["state"] == "succeeded", status
    health = service.session.get(f"{service.url}/healthz", timeout=30).json()
    assert len(health.get("workers") or {}) == 2, health
    record = json.loads(store.get_bytes(f"{document['name']}/job.json"))
    result = audit(
        "coordinator (farm serve) SIGKILLed mid-job", store, document["name"], [i["id"] for i in document["items"]],
        record["items"], watcher, fault_over_at=None, committed_before_fault=before,
        notes="Ray restarts the detached actor; it adopts the live workers (0 model reloads), reloads the job "
        "from FARM_STATE_URI, skips committed items; time to recover = kill to the next commit",
    )
    result.recover_seconds = watcher.first_commit_after(killed_at) - killed_at
    skipped = [i for i, s in record["items"].items() if s["state"] == "skipped"]
    assert len(skipped) >= len(before), "the restarted coordinator skipped what was committed"
    chaos_report(result)
