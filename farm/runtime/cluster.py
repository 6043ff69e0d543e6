"""Start an embedded Ray cluster on 127.0.0.1, or join an existing one.

An embedded cluster is bound to loopback only: Ray normally advertises (and binds its gRPC
servers to) the machine's outward address. `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` makes Ray
treat the node as single-machine and use the loopback address, which is what we want for a
local run. Ray reads it when it is imported, so `prepare_local_environment()` must run first;
`RayCluster` also corrects Ray's copy of it when `ray` was imported earlier. Usage statistics
reporting is switched off so nothing leaves the machine.

Joining (`address` given) is bounded by FARM_RAY_CONNECT_TIMEOUT_S, and every failure to reach,
join or start Ray is a `ClusterUnavailableError` naming the address and what to check
(`farm.runtime.connect`). The embedded cluster runs with Ray's token authentication on, with a
random token held in this process's environment only: Ray would otherwise write
`~/.ray/auth_token`, which every later `ray start` on the machine then silently requires.

The embedded cluster's processes are guarded by `farm.runtime.reaper`, so none of them outlives
the farm process, even when it is killed. Ray adds the driver's current folder to every
worker's import path; farm starts Ray from a private empty folder instead, so a user's folder
that holds a `farm/` (or `torch/`...) sub-folder cannot shadow the installed packages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

LOOPBACK = "127.0.0.1"
NAMESPACE = "farm"


# The embedded cluster's environment (a joined cluster keeps its operator's settings): loopback
# addresses and no usage reporting; and, since farm starts its render actors itself and exports
# its own metrics, no idle pre-started workers and no Ray-internal metrics, which would take CPU
# from the render on a CPU node. Each stays overridable from the environment.
EMBEDDED_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_enable_worker_prestart": "0",
    "RAY_prestart_worker_first_driver": "0",
    "RAY_enable_metrics_collection": "0",
}


def prepare_local_environment() -> None:
    """Environment for a loopback-only Ray; must run before `ray` is first imported."""
    for name, value in EMBEDDED_RAY_ENV.items():
        os.environ.setdefault(name, value)


def local_gpu_resources(table, workers) -> dict:
    """Ray start options for this machine's GPUs: `num_gpus` and the `farm_tier_<tier>` resources.

    `workers` (farm.settings.WorkerSettings): FARM_GPU_VRAM_GB (with FARM_GPU_COUNT, default: the
    GPUs nvidia-smi lists, else 1) declares the cards, which simulates GPUs on a machine without
    any. Otherwise nvidia-smi is asked.
    """
    from farm.core.tiers import GIB

    cards_mib = _nvidia_smi_memory_mib()
    if workers.gpu_vram_gb:
        count = workers.gpu_count or len(cards_mib) or 1
        cards = [workers.gpu_vram_gb * GIB] * count
    else:
        cards = [mib * 1024**2 for mib in cards_mib]
    resources: dict[str, float] = {}
    for card in cards:
        tier = table.tier_for_memory(int(card))
        if tier is not None:
            resources[tier.resource] = resources.get(tier.resource, 0.0) + 1
    if not cards:
        return {}
    return {"num_gpus": len(cards), "resources": resources}


def embedded_cpus(settings, gpus: int, cpu_workers: int | None = None) -> int:
    """Logical CPUs of an embedded one-machine cluster: the machine's cores, but never fewer than
    its render workers (one CPU each) plus the CPU stage's tasks (FARM_POST_CONCURRENCY times
    FARM_POST_NUM_CPUS), so deliverables can always be scheduled beside the renders (on a 1-core
    laptop they share the core rather than wait for the render workers to stop)."""
    import math

    workers = gpus or cpu_workers or settings.engine.cpu_workers
    post = math.ceil(settings.post.concurrency * settings.post.num_cpus)
    return max(os.cpu_count() or 1, workers + post)


def _nvidia_smi_memory_mib() -> list[int]:
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        result = subprocess.run(
            [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(float(line)) for line in result.stdout.split() if line.strip()]


@dataclass
class ClusterInfo:
    address: str
    embedded: bool
    cpus: float
    gpus: float
    resources: dict[str, float]


class RayCluster:
    """Context manager: connect on enter; on exit, stop Ray only if we started or connected it."""

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        resources: dict[str, float] | None = None,
        log_to_driver: bool = False,
        connect_timeout_s: float = 60.0,
    ):
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.connect_timeout_s = connect_timeout_s
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.resources = resources
        self.log_to_driver = log_to_driver
        self._owned = False
        self._reaper = None

    def __enter__(self) -> ClusterInfo:
        if self.address is None:
            prepare_local_environment()
            absolutize_path_settings()
            _private_auth_token()
        else:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        if not ray.is_initialized():
            with _neutral_working_dir():
                if self.address is None:
                    _loopback_only()
                    before = _child_pids()
                    _start_embedded(
                        ray.init,
                        address="local",
                        _node_ip_address=LOOPBACK,
                        include_dashboard=False,
                        num_cpus=self.num_cpus,
                        num_gpus=self.num_gpus,
                        resources=self.resources,
                        namespace=NAMESPACE,
                        log_to_driver=self.log_to_driver,
                        configure_logging=False,
                        runtime_env=worker_runtime_env(),
                    )
                    from farm.runtime.reaper import start_reaper

                    self._reaper = start_reaper(sorted(_child_pids() - before))
                else:
                    from farm.runtime.connect import join

                    join(self.address, self.connect_timeout_s, lambda address: ray.init(
                        address=address,
                        namespace=NAMESPACE,
                        log_to_driver=self.log_to_driver,
                        configure_logging=False,
                        runtime_env=worker_runtime_env(),
                    ))
            self._owned = True
        total = ray.cluster_resources()
        return ClusterInfo(
            address=self.address or "embedded",
            embedded=self.address is None,
            cpus=total.get("CPU", 0.0),
            gpus=total.get("GPU", 0.0),
            resources=dict(total),
        )

    def __exit__(self, *exc_info) -> None:
        if self._owned:
            import ray

            from farm.runtime.reaper import stop_reaper

            try:
                ray.shutdown()
            finally:
                stop_reaper(self._reaper)  # ends what ray.shutdown left running (its agents)
                self._reaper = None


def _start_embedded(init, **options) -> None:
    """`ray.init` of the embedded cluster; what keeps it from starting is a ClusterUnavailableError."""
    from farm.core.errors import ClusterUnavailableError
    from farm.runtime.connect import error_text, last_line

    try:
        init(**options)
    except Exception as error:  # noqa: BLE001 - Ray's start errors are RuntimeError, ConnectionError, ...
        import ray

        ray.shutdown()
        raise ClusterUnavailableError(
            f"could not start the embedded Ray cluster on {LOOPBACK}: {last_line(error_text(error))}; check the "
            "free space and permissions of Ray's temp folder (RAY_TMPDIR, default /tmp/ray) and of /dev/shm"
        ) from None


def _private_auth_token() -> None:
    """A token for the embedded cluster in this process's environment (its cluster processes
    inherit it), unless the operator chose one or turned token authentication off."""
    from farm.runtime.connect import private_token_environment

    added = private_token_environment(os.environ)
    if not added:
        return
    os.environ.update(added)
    try:  # Ray caches what its token loader found; make it look again
        from ray._raylet import AuthenticationTokenLoader

        AuthenticationTokenLoader.instance().reset_cache()
    except Exception:  # noqa: BLE001 - another Ray layout: it reads RAY_AUTH_TOKEN when it first loads
        pass


def worker_runtime_env() -> dict | None:
    """FARM_WORKER_PYTHONPATH (folders, `:`-separated) is put on the workers' import path, for
    code of the user's own that workers must import; farm puts nothing of the user's there
    otherwise. None (Ray's default environment) when unset."""
    folders = [f for f in os.environ.get("FARM_WORKER_PYTHONPATH", "").split(os.pathsep) if f]
    if not folders:
        return None
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(os.path.abspath(os.path.expanduser(f)) for f in folders)}}


# Path-valued settings that the coordinator and the workers read in their own processes, whose
# working folder is not the user's (see _neutral_working_dir): made absolute in the driver first.
PATH_SETTINGS = ("FARM_STATE_URI", "FARM_DEFAULT_OUTPUT", "FARM_CACHE_DIR", "FARM_TIERS_FILE", "FARM_API_LOCAL_BASE")


def absolutize_path_settings() -> None:
    for name in PATH_SETTINGS:
        value = os.environ.get(name)
        if value and "://" not in value and not os.path.isabs(os.path.expanduser(value)):
            os.environ[name] = os.path.abspath(os.path.expanduser(value))


def _neutral_working_dir():
    """Run `ray.init` from farm's own empty folder: Ray puts the driver's working folder on every
    worker's import path (and an embedded cluster's processes keep it as theirs)."""
    import contextlib

    from farm.models.loading import cache_dir

    @contextlib.contextmanager
    def switched():
        folder = cache_dir().resolve() / "ray-cwd"
        folder.mkdir(parents=True, exist_ok=True)
        previous = os.getcwd()
        os.chdir(folder)
        try:
            yield
        finally:
            os.chdir(previous)

    return switched()


def _loopback_only() -> None:
    """Ray read RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER at import; if it was imported before
    `prepare_local_environment()`, its copy still says 'multi-machine' (bind every interface)."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def _child_pids() -> set[int]:
    import psutil

    try:
        return {child.pid for child in psutil.Process().children()}
    except psutil.Error:
        return set()


def bind_serve_replica_to_loopback() -> None:
    """Called in a Ray Serve replica before Serve starts the replica's inter-deployment gRPC
    server, which Ray Serve 2.60 binds to `[::]:0` (every interface) whatever the node's
    address. On a node whose address is loopback (the embedded cluster) nothing off the machine
    may reach it anyway: bind it to 127.0.0.1 too."""
    import ray

    if ray.util.get_node_ip_address() != LOOPBACK:
        return
    try:
        from ray.serve._private import replica
    except ImportError:  # another Ray layout: nothing to correct
        return
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "farm_loopback", False):
        return

    def on_loopback(server, address: str):
        if address.startswith("[::]:"):
            address = f"{LOOPBACK}:{address.rsplit(':', 1)[1]}"
        return original(server, address)

    on_loopback.farm_loopback = True
    replica.add_port_to_grpc_server = on_loopback


def draining_nodes() -> dict[str, float | None]:
    """The nodes being drained, `{node id hex: deadline}` (epoch seconds; None: no deadline, the
    node goes once idle): Ray's node drain (autoscaler, preemption, `ray drain-node`), and a
    SIGTERM to a node's raylet, which drains the node itself for
    `RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S`. One GCS call (about 1 ms); the same source Ray Train
    and Ray Serve use."""
    import ray
    from ray._private.state import state

    from farm.core.drain import NodeDrain

    if not ray.is_initialized():
        return {}
    return {node: NodeDrain.from_ray(deadline).deadline_s for node, deadline in state.get_draining_nodes().items()}
