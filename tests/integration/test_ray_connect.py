"""Reaching and joining Ray: every failure is exit 3 within FARM_RAY_CONNECT_TIMEOUT_S, with a
message that names the address and what to check, and no traceback; and an embedded cluster
leaves no `~/.ray/auth_token` behind.

Nothing listens on 127.0.0.2 here (a loopback address Ray does not rewrite to the machine's, so
no traffic leaves loopback). The token head is a real `ray start --head --block` on 127.0.0.1
with token authentication, its own temp folder, HOME and free ports, ended by its process group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import subprocess_env
from helpers import encode, free_port, pattern, write_manifest

pytestmark = pytest.mark.integration

TIMEOUT_S = 10
HEAD_TOKEN = "fedcba9876543210" * 4
# What an earlier embedded cluster of this test session may have put in the environment.
RAY_AUTH = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


def farm(args: list[str], cwd: Path, timeout_s: float = 120, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    base = {k: v for k, v in subprocess_env().items() if k not in RAY_AUTH}
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "farm", *args], cwd=cwd, env={**base, **env},
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    return done, time.monotonic() - began


def manifest(folder: Path) -> Path:
    (folder / "still.png").write_bytes(encode(pattern(320, 240), "PNG"))
    return write_manifest(folder, [{"id": "a", "image": "still.png", "prompt": "waves rolling in", "seed": 1}],
                          name="connect")


def assert_cannot_run(done: subprocess.CompletedProcess, elapsed_s: float, *needles: str) -> None:
    assert done.returncode == 3, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    for needle in needles:
        assert needle in done.stderr, (needle, done.stderr[-3000:])
    assert elapsed_s < TIMEOUT_S + 15, elapsed_s  # the bound, plus the interpreter's start on a busy machine


@pytest.mark.parametrize("command", ["run", pytest.param("serve", marks=pytest.mark.slow)])
def test_nothing_listening_is_exit_3_naming_the_address_within_the_bound(tmp_path, command):
    address = f"127.0.0.2:{free_port()}"
    args = ["run", str(manifest(tmp_path))] if command == "run" else ["serve", "--port", str(free_port())]
    done, elapsed = farm([*args, "--address", address, "--output", str(tmp_path / "out")], tmp_path,
                         FARM_RAY_CONNECT_TIMEOUT_S=str(TIMEOUT_S), FARM_MODEL="tiny",
                         FARM_STATE_URI=str(tmp_path / "state"))
    assert_cannot_run(done, elapsed, address, "cannot reach the Ray cluster", "firewall", "6379",
                      "FARM_RAY_CONNECT_TIMEOUT_S")
    assert elapsed >= TIMEOUT_S - 1  # a head that is still starting gets the whole bound


def test_address_auto_without_a_cluster_here_is_exit_3_at_once(tmp_path):
    # RAY_TMPDIR: a folder where no `ray start` recorded an address (farm never falls back to
    # Ray's "any GCS process on the machine", which would find other people's clusters).
    done, elapsed = farm(["run", str(manifest(tmp_path)), "--address", "auto", "--output", str(tmp_path / "out")],
                         tmp_path, FARM_RAY_CONNECT_TIMEOUT_S=str(TIMEOUT_S), RAY_TMPDIR=str(tmp_path))
    assert_cannot_run(done, elapsed, "--address auto", str(tmp_path / "ray" / "ray_current_cluster"), "ray start --head")
    assert elapsed < TIMEOUT_S


@pytest.fixture(scope="module")
def token_head():
    """`ray start --head --block` with token authentication, on 127.0.0.1 only; its address."""
    base = Path(tempfile.mkdtemp(prefix="farm-rc-", dir="/tmp"))  # short: Ray's socket paths live under it
    (base / "home").mkdir()
    port = free_port()
    env = {**{k: v for k, v in subprocess_env().items() if k not in RAY_AUTH},
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": HEAD_TOKEN, "HOME": str(base / "home"),
           "RAY_TMPDIR": str(base), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    ray = str(Path(sys.executable).parent / "ray")
    argv = [ray, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
            f"--temp-dir={base / 'ray'}", "--num-cpus=0", "--include-dashboard=false",
            f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}"]
    with open(base / "head.log", "wb") as log:
        head = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (base / "ray" / "ray_current_cluster").exists():
            assert head.poll() is None and time.monotonic() < deadline, (base / "head.log").read_text()[-3000:]
            time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        yield f"127.0.0.1:{port}"
    finally:
        try:
            os.killpg(head.pid, signal.SIGKILL)  # the head and every daemon it started: its own session
        except ProcessLookupError:
            pass
        head.wait(10)
        assert not (base / "home" / ".ray" / "auth_token").exists()
        import shutil

        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("auth", [{"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "wrong-token"}, {}],
                         ids=["wrong-token", "no-token"])
def test_a_token_mismatch_is_exit_3_that_says_which_token_to_set(tmp_path, token_head, auth):
    done, elapsed = farm(["run", str(manifest(tmp_path)), "--address", token_head, "--output", str(tmp_path / "out")],
                         tmp_path, FARM_RAY_CONNECT_TIMEOUT_S=str(TIMEOUT_S), HOME=str(tmp_path),
                         RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **auth)
    assert_cannot_run(done, elapsed, token_head, "InvalidAuthToken", "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN")
    assert done.stderr.count("gcs_client.cc") <= 3, done.stderr  # Ray's retry warnings: bounded, not a minute of them


@pytest.mark.slow  # default suite time; run with -m slow
def test_a_machine_without_a_node_of_the_cluster_is_told_so_within_the_bound(tmp_path, token_head):
    """Ray drivers join through a raylet on their own machine (the old compose `serve` container had
    none): Ray's 60 s search for one is cut to the bound, and the message says what to do."""
    script = (
        "import ray\n"
        "from farm.runtime.connect import join\n"
        f"join({token_head!r}, {TIMEOUT_S}, lambda a: ray.init(address=a, _node_ip_address='127.0.0.3',"
        " configure_logging=False, log_to_driver=False))\n"
    )
    base = {k: v for k, v in subprocess_env().items() if k not in RAY_AUTH}
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
                          env={**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": HEAD_TOKEN, "HOME": str(tmp_path),
                               "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    elapsed = time.monotonic() - began
    assert done.returncode != 0 and "ClusterUnavailableError" in done.stderr, done.stderr[-3000:]
    assert "runs no Ray node of that cluster" in done.stderr and token_head in done.stderr, done.stderr[-3000:]
    assert elapsed < TIMEOUT_S + 15, elapsed


@pytest.mark.slow  # default suite time; run with -m slow
def test_an_embedded_run_leaves_no_auth_token_in_home(tmp_path, farm_cache, tiny_model_dir):
    """Ray 2.60 switches token authentication on for a new local cluster and, given no token,
    writes ~/.ray/auth_token, which every later `ray start` on the machine then requires. farm's
    embedded cluster uses a token of its own, in its environment only."""
    home = tmp_path / "home"
    home.mkdir()
    done, _ = farm(["run", str(manifest(tmp_path)), "--output", str(tmp_path / "out"), "--model", "tiny"],
                   tmp_path, timeout_s=600, HOME=str(home))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "connect" / "a.mp4").read_bytes()[4:8] == b"ftyp"
    assert not (home / ".ray").exists(), list((home / ".ray").iterdir())


@pytest.mark.slow  # default suite time; run with -m slow
def test_farm_serve_on_a_taken_port_is_exit_3_naming_it(tmp_path, farm_cache, tiny_model_dir):
    """Serve's HTTP proxy cannot bind: the start fails with the port named, not a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done, _ = farm(["serve", "--port", str(port), "--output", str(tmp_path / "out")], tmp_path, timeout_s=300,
                       FARM_MODEL="tiny", FARM_STATE_URI=str(tmp_path / "state"), HOME=str(tmp_path))
    assert done.returncode == 3, done.stderr[-3000:]
    assert f"the HTTP API did not start on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr
