"""Running `farm` commands as subprocesses in tests: start one, wait for a condition while it
runs, talk to `farm serve` over HTTP, and check what its process tree listens on."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import subprocess_env
from helpers import encode, pattern
from processes import LOOPBACK_ADDRESSES, listening_addresses, tree

FAST = {"resolution": 256, "frames": 8, "steps": 10}


def start(args: list[str], cwd: Path, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "farm", *args], cwd=cwd, env=subprocess_env(**env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(condition, timeout_s: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the command ended first ({process.returncode}): {process.stderr.read()[-2000:]}")
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def assert_loopback_only(process: subprocess.Popen) -> list:
    sockets = listening_addresses(tree(process.pid))
    assert any(name in ("gcs_server", "raylet") for _, _, name in sockets), sockets
    strays = [s for s in sockets if s[0] not in LOOPBACK_ADDRESSES]
    assert not strays, f"listening beyond loopback: {strays}"
    return sockets


def images(folder: Path, count: int) -> list[dict]:
    (folder / "still.png").write_bytes(encode(pattern(320, 240), "PNG"))
    return [{"id": f"i{n}", "image": "still.png", "prompt": f"pan {n}", "seed": n} for n in range(count)]


def health(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def submit(url: str, document: dict) -> str:
    request = urllib.request.Request(f"{url}/v1/jobs", data=json.dumps(document).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["id"]


def serve(tmp_path: Path, port: int) -> subprocess.Popen:
    return start(
        ["serve", "--port", str(port), "--output", str(tmp_path / "out")], tmp_path,
        FARM_MODEL="tiny", FARM_STATE_URI=str(tmp_path / "state"), FARM_API_LOCAL_BASE=str(tmp_path),
        FARM_STOP_GRACE_S="60",
    )
