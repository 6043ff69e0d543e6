"""The compose stack's topology without containers: the commands deploy/compose/docker-compose.yml
runs for the Ray head (`ray start --head`, then `farm serve --address auto` on it, in one shell as
there) and for the worker node (`ray start --address=ray-head:6379 ... --block`), read from the
file and run as processes on 127.0.0.1 with the compose file's environment and Ray token
authentication; then a 1-item job through the head's published API port, with the token, and
/metrics where deploy/compose/prometheus.yml scrapes it (the farm's series on the API port, Ray's
on each node's metrics port).

What differs from the containers, and nothing else:
- `substitute`: the host name ray-head -> 127.0.0.1, the compose ports (6379, 8000, 8080) -> free
  ports, 0.0.0.0 -> 127.0.0.1 (all the processes share one machine, on loopback only);
- `isolation`: each `ray start` gets this test's temp folder (`--address auto` can then only
  find this test's head, never another cluster on the machine), --node-ip-address=127.0.0.1 and
  free ports for the listeners Ray would open on fixed ones (dashboard, client server, agent);
- the environment: RAY_TMPDIR and HOME in the test's folder, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
  (Ray stays on loopback), the tokens the compose file takes from .env, results and job state in
  a local folder instead of MinIO;
- `LOOPBACK_RAY_CLI`: the worker's `ray start` runs through Ray's CLI with its "multi-node needs
  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1" check passed (see there).
Every process is ended by its process group (each command starts its own session).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml
from conftest import subprocess_env
from helpers import FAST, encode, free_port, pattern
from processes import LOOPBACK_ADDRESSES, listening_addresses

pytestmark = pytest.mark.integration  # about 30 s: the head, a worker node, the API and one render

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy/compose/docker-compose.yml"
PROMETHEUS = ROOT / "deploy/compose/prometheus.yml"
TOKEN = "compose-topology-api-token"
RAY_TOKEN = "0123456789abcdef" * 4
# The compose file's settings for MinIO, left out here (results go to a local folder).
FOR_MINIO = ("FARM_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
# Set by an earlier embedded cluster in this test session; the containers have none of them.
NOT_IN_COMPOSE = ("RAY_enable_worker_prestart", "RAY_prestart_worker_first_driver", "RAY_enable_metrics_collection",
                  "RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")


def head_commands(service: dict) -> list[list[str]]:
    """The head's `sh -c "A && exec B"`: [A, B] as argument lists."""
    shell, flag, script = service["command"]
    assert (shell, flag) == ("sh", "-c"), service["command"]
    first, second = script.split(" && ")
    second = shlex.split(second)
    assert second[0] == "exec", script
    return [shlex.split(first), second[1:]]


def substitute(argv: list[str], ports: dict[str, int]) -> list[str]:
    """SUBSTITUTIONS: compose host names -> 127.0.0.1, compose ports -> this test's free ports,
    0.0.0.0 -> 127.0.0.1 (nothing listens beyond loopback here)."""
    out = []
    for arg in argv:
        arg = arg.replace("ray-head:", "127.0.0.1:").replace("0.0.0.0", "127.0.0.1")
        for compose_port, port in ports.items():
            arg = arg.replace(f"={compose_port}", f"={port}").replace(f"127.0.0.1:{compose_port}", f"127.0.0.1:{port}")
            if arg == compose_port:
                arg = str(port)
        out.append(arg)
    return out


def isolation(temp_dir: Path, **ports: int) -> list[str]:
    """ISOLATION: what each `ray start` gets in addition, so that it cannot meet another Ray."""
    extra = [f"--temp-dir={temp_dir}", "--node-ip-address=127.0.0.1"]
    return extra + [f"--{name.replace('_', '-')}={port}" for name, port in ports.items()]


# Ray's CLI refuses to start a worker node while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, the mode
# that keeps every Ray process on loopback (otherwise Ray binds some servers to every interface and
# replaces 127.0.0.1 with the machine's address). The worker's `ray start` therefore runs through
# Ray's own CLI entry point with only that check told "multi-node is allowed"; the processes it
# starts stay in loopback mode.
LOOPBACK_RAY_CLI = (
    "import sys, types\n"
    "import ray._private.ray_constants as constants\n"
    "import ray.scripts.scripts as cli\n"
    "view = types.ModuleType(constants.__name__)\n"
    "view.__dict__.update(vars(constants))\n"
    "view.ENABLE_RAY_CLUSTER = True\n"
    "cli.ray_constants = view\n"
    "sys.argv = ['ray', *sys.argv[1:]]\n"
    "cli.main()\n"
)


def start(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def end(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM the command (farm serve drains), then SIGKILL its whole process group (the Ray
    daemons `ray start` left in it)."""
    if process.poll() is None and grace_s:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(10)


def wait_for(condition, timeout_s: float, what: str, *logs: Path, running: tuple[subprocess.Popen, ...] = ()):
    """`condition()`'s first truthy value; fails at the timeout, or at once when one of `running`
    has ended (with the logs' tails)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        ended = [p.args for p in running if p.poll() is not None]
        if ended:
            what = f"{what}: ended first: {ended}"
            break
        time.sleep(0.5)
    else:
        what = f"{what}: not within {timeout_s} s"
    tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in logs if log.exists())
    raise AssertionError(f"{what}\n{tails}")


def group_members(groups: list[int]) -> list[psutil.Process]:
    """The processes of these process groups (ours: each command started its own session)."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) in groups:
                members.append(process)
        except (ProcessLookupError, psutil.Error):
            pass
    return members


def get(url: str, **kwargs):
    try:
        return requests.get(url, timeout=10, **kwargs)
    except requests.RequestException:
        return None


@pytest.mark.slow  # suite time: in the slow suite (python3 dev.py test -m slow)
def test_the_compose_topology_renders_a_job_through_the_heads_published_port(farm_cache, tiny_model_dir):
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    head_start, api = head_commands(services["ray-head"])
    worker = services["worker"]["command"]
    assert head_start[:3] == ["ray", "start", "--head"] and api[:2] == ["farm", "serve"]

    base = Path(tempfile.mkdtemp(prefix="farm-ct-", dir="/tmp"))  # short: Ray's socket paths live under it
    processes: list[subprocess.Popen] = []
    try:
        (base / "home").mkdir()
        (base / "images").mkdir()
        (base / "images" / "still.png").write_bytes(encode(pattern(320, 240), "PNG"))
        ports = {"6379": free_port(), "8000": free_port()}
        head_metrics, worker_metrics = free_port(), free_port()

        env = {k: v for k, v in subprocess_env().items() if k not in NOT_IN_COMPOSE}
        for name, value in compose["x-farm"]["environment"].items():
            env[name] = str(value)
        for name in FOR_MINIO:
            env.pop(name)
        env.update({
            "FARM_API_TOKEN": TOKEN, "RAY_AUTH_TOKEN": RAY_TOKEN,  # the compose file's ${...} from .env
            "FARM_DEFAULT_OUTPUT": str(base / "out"), "FARM_STATE_URI": str(base / "state"),
            "FARM_API_LOCAL_BASE": str(base / "images"),
            # Isolation: this test's temp folder (`auto` reads RAY_TMPDIR/ray/ray_current_cluster),
            # its own HOME (no ~/.ray/auth_token of anyone), and Ray on loopback as given.
            "RAY_TMPDIR": str(base), "HOME": str(base / "home"), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        })
        assert env["RAY_AUTH_MODE"] == "token"
        temp_dir = base / "ray"
        head_argv = substitute(head_start, {**ports, "8080": head_metrics}) + isolation(
            temp_dir, dashboard_port=free_port(), ray_client_server_port=free_port(),
            dashboard_agent_listen_port=free_port())
        worker_argv = substitute(worker, {**ports, "8080": worker_metrics}) + isolation(
            temp_dir, dashboard_agent_listen_port=free_port())
        api_argv = substitute(api, ports)
        assert api_argv == ["farm", "serve", "--address", "auto", "--host", "127.0.0.1", "--port", str(ports["8000"])]
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"  # `ray` and `farm`, as in the image

        began = time.monotonic()
        # The head's container command: both parts in one shell, `exec` making farm its main process.
        head_script = f"{shlex.join(head_argv)} && exec {shlex.join(api_argv)}"
        head = start(["sh", "-c", head_script], env, base / "head.log")
        processes.append(head)
        address_file = base / "ray" / "ray_current_cluster"
        wait_for(address_file.exists, 60, "the head's address file", base / "head.log", running=(head,))
        assert address_file.read_text().strip() == f"127.0.0.1:{ports['6379']}"
        assert worker_argv[:2] == ["ray", "start"]
        processes.append(start([sys.executable, "-c", LOOPBACK_RAY_CLI, *worker_argv[1:]], env, base / "worker.log"))

        url = f"http://127.0.0.1:{ports['8000']}"
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        logs = (base / "head.log", base / "worker.log")
        wait_for(lambda: (r := get(f"{url}/healthz")) is not None and r.status_code == 200, 240,
                 "the API on the head's published port", *logs, running=tuple(processes))
        document = {"version": 1, "name": "compose", "defaults": dict(FAST),
                    "items": [{"id": "a", "image": "still.png", "prompt": "waves rolling in", "seed": 1}]}
        assert requests.post(f"{url}/v1/jobs", json=document, timeout=30).status_code == 401  # the token is needed
        response = session.post(f"{url}/v1/jobs", json=document, timeout=60)
        assert response.status_code == 202, response.text
        job = response.json()["id"]

        def finished():
            status = session.get(f"{url}/v1/jobs/{job}", timeout=30).json()
            return status if status["state"] in ("succeeded", "partial", "failed", "cancelled") else None

        status = wait_for(finished, 300, "the job's end", *logs, running=tuple(processes))
        assert status["state"] == "succeeded" and status["counts"]["succeeded"] == 1, status
        video = base / "out" / "compose" / "a.mp4"
        assert video.read_bytes()[4:8] == b"ftyp"
        rendered_s = time.monotonic() - began

        # Prometheus' targets, with the compose host names and ports as substituted above.
        scrape = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
        jobs = {job["job_name"]: job for job in scrape}
        (farm_target,) = jobs["farm"]["static_configs"][0]["targets"]
        farm_url = f"http://{substitute([farm_target], ports)[0]}"
        metrics = requests.get(f"{farm_url}{jobs['farm'].get('metrics_path', '/metrics')}", timeout=30).text
        succeeded = [line for line in metrics.splitlines()
                     if line.startswith("farm_items_total{") and 'outcome="succeeded"' in line]
        assert succeeded and sum(float(line.rsplit(" ", 1)[1]) for line in succeeded) >= 1, metrics[:2000]
        ray_ports = {"ray-head:8080": head_metrics, "worker:8080": worker_metrics}
        assert sorted(jobs["ray"]["static_configs"][0]["targets"]) == sorted(ray_ports)
        for target, port in ray_ports.items():
            text = wait_for(lambda port=port: (r := get(f"http://127.0.0.1:{port}/metrics")) is not None
                            and r.status_code == 200 and "ray_" in r.text and r.text, 60, f"Ray's metrics of {target}")
            assert "ray_" in text

        sockets = listening_addresses(group_members([p.pid for p in processes]))
        assert any(name == "gcs_server" for _, _, name in sockets), sockets
        assert not [s for s in sockets if s[0] not in LOOPBACK_ADDRESSES], sockets

        # Token authentication was on, and nothing wrote a token into HOME.
        assert not (base / "home" / ".ray" / "auth_token").exists()
        print(f"compose topology: job succeeded {rendered_s:.0f} s after the head started")
    finally:
        for process, grace_s in zip(processes, (30.0, 0.0)):  # farm serve drains; then the worker node goes
            end(process, grace_s)
        shutil.rmtree(base, ignore_errors=True)
