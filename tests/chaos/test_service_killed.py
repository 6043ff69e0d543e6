"""`farm serve` SIGKILLed mid-job: no process of its embedded cluster survives it (the reaper
ends them, by the pids it saw descend from the cluster), and a new `farm serve` on the same state
folder finishes the job without rendering a committed item again. Processes are found from the
command's own pid, never by name across the machine."""

from __future__ import annotations

import json
import signal

import pytest
from chaoskit import CommitWatcher, audit, committed_etags
from commands import FAST, health, images, serve, submit, wait_for
from helpers import free_port
from processes import end, tree, wait_until_gone

from farm.storage import open_store

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


def test_farm_serve_killed_leaves_no_process_and_the_next_start_finishes_the_job(tmp_path, chaos_report):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    store = open_store(str(tmp_path / "out"))
    first = serve(tmp_path, port)
    try:
        wait_for(lambda: health(url), 300, "the service", first)
        job_id = submit(url, {"version": 1, "name": "killed", "defaults": FAST, "items": images(tmp_path, 6)})
        with CommitWatcher(store, "killed") as watcher:
            watcher.wait_for_commits(2)
            before = committed_etags(watcher)
            family = tree(first.pid)
            first.kill()
            first.wait(timeout=30)
            left = wait_until_gone(family[1:], 20)
            assert not left, f"alive after SIGKILL of farm serve: {[(p.pid, p.name()) for p in left]}"
            second = serve(tmp_path, port)
            try:
                wait_for(lambda: health(url), 300, "the restarted service", second)

                def finished():
                    with open(tmp_path / "state" / "jobs" / f"{job_id}.json") as handle:
                        return json.load(handle)["state"] in ("succeeded", "partial", "failed")

                wait_for(finished, 300, "the job to finish after the restart", second)
                second.send_signal(signal.SIGTERM)
                second.communicate(timeout=180)
            finally:
                end(tree(second.pid))
        record = json.loads((tmp_path / "out" / "killed" / "job.json").read_text())
    finally:
        end(tree(first.pid))
    assert second.returncode == 0
    result = audit(
        "farm serve SIGKILLed mid-job, started again", store, "killed", [f"i{n}" for n in range(6)], record["items"],
        watcher, fault_over_at=None, committed_before_fault=before,
        notes="no process of its cluster alive 20 s after the kill; the next start skips what was committed",
    )
    assert record["counts"]["skipped"] >= len(before) and record["state"] == "succeeded", record["counts"]
    chaos_report(result)
