"""The light client install, for real: `pip install -c constraints.txt '<farm>[client]'` into a new
virtual environment (no torch, diffusers or Ray there), whose `farm submit --wait`, `status`,
`jobs` and `cancel` drive a real `farm serve` (the tiny model) started from this environment;
`farm run` there exits 3 naming `pip install 'farm[render]'`.

The install reads PyPI (or the machine's configured index) for the client's few packages, at the
versions constraints.txt pins. About 10-20 s for the install where the index is local; the whole
test about 1-2 minutes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from commands import FAST, health, images, start, wait_for
from helpers import free_port
from processes import end, tree

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "client-install-token-0123456789"
RENDER_STACK = ("torch", "ray", "diffusers", "transformers", "numpy", "PIL", "boto3", "fastapi")


def client_env(venv: Path, **extra: str) -> dict[str, str]:
    """Only the client venv on the PATH; nothing of this environment's (no PYTHONPATH, no VIRTUAL_ENV)."""
    keep = {k: os.environ[k] for k in ("HOME", "LANG", "TMPDIR") if k in os.environ}
    return {**keep, "PATH": f"{venv / 'bin'}:/usr/bin:/bin", **extra}


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    """A fresh venv holding `farm[client]`, built from a copy of the sources (so the checkout
    gets no build/ or egg-info) with constraints.txt."""
    base = tmp_path_factory.mktemp("client-install")
    source = base / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "farm", source / "farm", ignore=shutil.ignore_patterns("__pycache__"))
    venv = base / "venv"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q",
         "-c", str(source / "constraints.txt"), f"{source}[client]"],
        capture_output=True, text=True, timeout=900, env=client_env(venv),
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    print(f"\nclient venv created and farm[client] installed in {time.monotonic() - started:.1f} s")
    return venv


def farm(venv: Path, *args: str, cwd: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "farm"), *args], capture_output=True, text=True,
                          cwd=cwd, env=client_env(venv, **env), timeout=timeout)


def test_the_client_install_has_no_render_stack(client_venv):
    python = str(client_venv / "bin" / "python")
    for module in RENDER_STACK:
        result = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True,
                                env=client_env(client_venv), timeout=60)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, f"{module} is importable"
    frozen = subprocess.run([python, "-m", "pip", "freeze", "--disable-pip-version-check"], capture_output=True,
                            text=True, env=client_env(client_venv), timeout=120).stdout
    installed = {line.split("==")[0].lower() for line in frozen.splitlines() if "==" in line}
    assert installed <= {"annotated-types", "certifi", "charset-normalizer", "idna", "markdown-it-py", "mdurl",
                         "pydantic", "pydantic-settings", "pydantic_core", "pygments", "python-dotenv", "pyyaml",
                         "requests", "rich", "typing-inspection", "typing_extensions", "urllib3"}, installed
    pinned = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                  if line and not line.startswith("#"))
    pinned = {name.lower(): version for name, version in pinned.items()}
    for line in frozen.splitlines():
        if "==" in line:
            name, version = line.split("==")
            assert pinned.get(name.lower().replace("_", "-"), pinned.get(name.lower())) == version, line


def test_farm_run_in_the_client_install_names_the_render_extra(client_venv, tmp_path):
    (tmp_path / "m.yaml").write_text("version: 1\nname: t\nitems:\n  - {id: a, image: a.png, prompt: hi}\n")
    result = farm(client_venv, "run", "m.yaml", cwd=tmp_path, timeout=120)
    assert result.returncode == 3, result.stderr
    assert "pip install 'farm[render]'" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    valid = farm(client_venv, "validate", "m.yaml", "--json", cwd=tmp_path, timeout=120)
    assert valid.returncode == 2 and "image file not found" in valid.stdout + valid.stderr  # validate works here


def test_the_client_install_drives_a_real_farm_serve(client_venv, tiny_model_dir, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = start(
        ["serve", "--port", str(port), "--output", str(tmp_path / "out")], tmp_path,
        FARM_MODEL="tiny", FARM_STATE_URI=str(tmp_path / "state"), FARM_API_LOCAL_BASE=str(tmp_path),
        FARM_API_TOKEN=TOKEN, FARM_STOP_GRACE_S="30",
    )
    timings = {}
    try:
        started = time.monotonic()
        wait_for(lambda: health(url) or _answers(url), 300, "farm serve", service)
        timings["serve start"] = time.monotonic() - started
        env = {"FARM_ENDPOINT": url, "FARM_API_TOKEN": TOKEN}

        listed = farm(client_venv, "jobs", cwd=tmp_path, **env)
        assert listed.returncode == 0, listed.stderr
        refused = farm(client_venv, "jobs", cwd=tmp_path, FARM_ENDPOINT=url, FARM_API_TOKEN="wrong-token-0123456789")
        assert refused.returncode == 3 and "HTTP 401" in refused.stderr, refused.stderr

        (tmp_path / "two.json").write_text(json.dumps(
            {"version": 1, "name": "client-two", "defaults": FAST, "items": images(tmp_path, 2)}))
        started = time.monotonic()
        submitted = farm(client_venv, "submit", "two.json", "--wait", cwd=tmp_path, **env)
        timings["submit --wait (2 items)"] = time.monotonic() - started
        assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]
        job_id = submitted.stdout.splitlines()[0].strip()
        assert job_id.startswith("j-") and "succeeded" in submitted.stdout, submitted.stdout
        assert len(list((tmp_path / "out" / "client-two").glob("*.mp4"))) == 2

        status = farm(client_venv, "status", job_id, "--json", cwd=tmp_path, **env)
        assert status.returncode == 0, status.stderr
        record = json.loads(status.stdout)
        assert record["state"] == "succeeded" and record["counts"]["succeeded"] == 2
        line = farm(client_venv, "status", job_id, cwd=tmp_path, **env)
        assert line.returncode == 0 and f"{job_id}  client-two  succeeded  2/2 done" in line.stdout, line.stdout
        unknown = farm(client_venv, "status", "j-does-not-exist", cwd=tmp_path, **env)
        assert unknown.returncode == 2, unknown.stderr

        (tmp_path / "many.json").write_text(json.dumps(
            {"version": 1, "name": "client-many", "defaults": FAST, "items": images(tmp_path, 12)}))
        queued = farm(client_venv, "submit", "many.json", cwd=tmp_path, **env)
        assert queued.returncode == 0, queued.stderr
        many_id = queued.stdout.strip()
        cancelled = farm(client_venv, "cancel", many_id, cwd=tmp_path, **env)
        assert cancelled.returncode == 0 and many_id in cancelled.stdout, cancelled.stderr

        def ended():
            result = farm(client_venv, "status", many_id, "--json", cwd=tmp_path, **env)
            return result.returncode == 0 and json.loads(result.stdout)["state"] == "cancelled"

        wait_for(ended, 120, "the cancelled job to end", service)
        jobs = farm(client_venv, "jobs", "--json", cwd=tmp_path, **env)
        assert jobs.returncode == 0, jobs.stderr
        states = {job["id"]: job["state"] for job in json.loads(jobs.stdout)["jobs"]}
        assert states[job_id] == "succeeded" and states[many_id] == "cancelled", states
        service.send_signal(signal.SIGTERM)
        service.communicate(timeout=180)
    finally:
        end(tree(service.pid))
    print("\n" + ", ".join(f"{what} {seconds:.1f} s" for what, seconds in timings.items()))


def _answers(url: str) -> bool:
    """/healthz answers 401 without the token: the service is up."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{url}/healthz", timeout=5)
        return True
    except urllib.error.HTTPError as error:
        return error.code in (401, 403)
    except OSError:
        return False
