"""Stopping `farm run` and `farm serve` as an operator or Kubernetes would: SIGTERM stops them
gracefully (a "stopping" line, running items finished or handed back, the documented exit code,
no native crash) and SIGKILL leaves no process of their embedded Ray cluster behind. Every
socket of the embedded cluster listens on loopback. Processes are found from the command's own
pid (its process tree), never by name across the machine."""

import json
import os
import signal
import subprocess
import sys

import pytest
from commands import FAST, assert_loopback_only, health, images, serve, start, submit, wait_for
from conftest import subprocess_env
from helpers import free_port, write_manifest
from processes import end, own_processes, tree, wait_until_gone

pytestmark = pytest.mark.integration

CRASH_SIGNS = ("Traceback", "Fatal Python error", "core dumped", "Aborted", "SIGABRT")


def test_farm_run_stops_on_sigterm_finishes_what_runs_and_resumes(tmp_path):
    manifest = write_manifest(tmp_path, images(tmp_path, 4), name="stop", defaults=FAST)
    out = tmp_path / "out"
    run = start(["run", str(manifest), "--output", str(out)], tmp_path, FARM_STOP_GRACE_S="60")
    try:
        wait_for(lambda: list((out / "stop").glob("*.mp4")), 300, "a first commit", run)
        assert_loopback_only(run)
        family = tree(run.pid)
        run.send_signal(signal.SIGTERM)
        stdout, stderr = run.communicate(timeout=120)
    finally:
        end(tree(run.pid))
    assert run.returncode == 128 + signal.SIGTERM, (run.returncode, stderr[-3000:])
    assert "stopping (SIGTERM)" in stderr and "farm resume" in stderr, stderr[-3000:]
    assert not any(sign in stderr for sign in CRASH_SIGNS), stderr[-3000:]
    assert not wait_until_gone(family[1:], 15), "processes of the stopped run are still alive"
    record = json.loads((out / "stop" / "job.json").read_text())
    assert record["state"] == "interrupted", record["state"]
    committed = {p.stem for p in (out / "stop").glob("i*.json")}
    assert record["counts"]["succeeded"] == len(committed) >= 1
    assert record["counts"]["running"] == 0  # the item running at the signal finished, or went back to the queue
    assert record["counts"]["queued"] == 4 - len(committed)
    resumed = subprocess.run([sys.executable, "-m", "farm", "resume", str(out / "stop")], capture_output=True, text=True,
                             env=subprocess_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = json.loads((out / "stop" / "job.json").read_text())
    assert final["counts"]["skipped"] == len(committed) and final["counts"]["succeeded"] == 4 - len(committed)


def test_farm_run_killed_with_sigkill_leaves_no_process_behind(tmp_path):
    manifest = write_manifest(tmp_path, images(tmp_path, 6), name="killed", defaults=FAST)
    run = start(["run", str(manifest), "--output", str(tmp_path / "out")], tmp_path)
    try:
        wait_for(lambda: own_processes("ray::RenderWorkerImpl", run.pid), 300, "a render worker", run)
        family = tree(run.pid)
        run.kill()
        run.wait(timeout=30)
        left = wait_until_gone(family[1:], 20)
    finally:
        end(tree(run.pid))
    assert not left, f"alive after SIGKILL of farm run: {[(p.pid, p.name()) for p in left]}"
    end(family)


@pytest.mark.slow  # suite time: in the slow suite (python3 dev.py test -m slow)
def test_farm_serve_binds_loopback_and_stops_gracefully_on_sigterm(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = serve(tmp_path, port)
    try:
        wait_for(lambda: health(url), 300, "the service", service)
        sockets = assert_loopback_only(service)
        assert any(port == p for _, p, _ in sockets)  # the HTTP proxy, on 127.0.0.1 too
        submit(url, {"version": 1, "name": "served", "defaults": FAST, "items": images(tmp_path, 4)})
        wait_for(lambda: list((tmp_path / "out" / "served").glob("*.mp4")), 300, "a first commit", service)
        family = tree(service.pid)
        service.send_signal(signal.SIGTERM)
        stdout, stderr = service.communicate(timeout=180)
    finally:
        end(tree(service.pid))
    assert service.returncode == 0, (service.returncode, stderr[-3000:])
    assert "stopping (SIGTERM)" in stderr and "handed back" in stderr, stderr[-3000:]
    assert not any(sign in stderr for sign in CRASH_SIGNS), stderr[-3000:]
    left = wait_until_gone(family[1:], 15)
    assert not left, f"alive after SIGTERM of farm serve: {[(p.pid, p.name()) for p in left]}"
    record = json.loads((tmp_path / "out" / "served" / "job.json").read_text())
    assert record["counts"]["running"] == 0 and record["state"] in ("interrupted", "succeeded"), record["counts"]
    assert os.path.isdir(tmp_path / "state" / "jobs")
