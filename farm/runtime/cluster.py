"""Start an embedded Ray cluster on 127.0.0.1, or join an existing one.

An embedded cluster is bound to loopback only: Ray normally advertises (and binds its gRPC
servers to) the machine's outward address. `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` makes Ray
treat the node as single-machine and use the loopback address, which is what we want for a
local run. Usage statistics reporting is switched off so nothing leaves the machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

LOOPBACK = "127.0.0.1"
NAMESPACE = "farm"


# For the embedded cluster only (a joined cluster keeps its operator's settings). farm starts
# its render actors itself, so Ray's idle pre-started workers are never used, and nothing reads
# Ray's internal metrics there (farm exports its own); both cost CPU next to the render, which on
# a CPU node shares the cores with torch. Each stays overridable from the environment.
EMBEDDED_RAY_SETTINGS = {
    "RAY_enable_worker_prestart": "0",
    "RAY_prestart_worker_first_driver": "0",
    "RAY_enable_metrics_collection": "0",
}


def prepare_local_environment() -> None:
    """Environment for a loopback-only Ray; must run before `ray` is first imported."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for name, value in EMBEDDED_RAY_SETTINGS.items():
        os.environ.setdefault(name, value)


def local_gpu_resources(table) -> dict:
    """Ray start options for this machine's GPUs: `num_gpus` and the `farm_tier_<tier>` resources.

    FARM_GPU_VRAM_GB (with FARM_GPU_COUNT, default: the GPUs nvidia-smi lists, else 1) declares
    the cards, which simulates GPUs on a machine without any. Otherwise nvidia-smi is asked.
    """
    from farm.core.tiers import GIB

    cards_mib = _nvidia_smi_memory_mib()
    told = os.environ.get("FARM_GPU_VRAM_GB")
    if told:
        count = int(os.environ.get("FARM_GPU_COUNT") or len(cards_mib) or 1)
        cards = [float(told) * GIB] * count
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
    ):
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.resources = resources
        self.log_to_driver = log_to_driver
        self._owned = False

    def __enter__(self) -> ClusterInfo:
        if self.address is None:
            prepare_local_environment()
        else:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        if not ray.is_initialized():
            if self.address is None:
                ray.init(
                    address="local",
                    _node_ip_address=LOOPBACK,
                    include_dashboard=False,
                    num_cpus=self.num_cpus,
                    num_gpus=self.num_gpus,
                    resources=self.resources,
                    namespace=NAMESPACE,
                    log_to_driver=self.log_to_driver,
                    configure_logging=False,
                )
            else:
                ray.init(
                    address=self.address,
                    namespace=NAMESPACE,
                    log_to_driver=self.log_to_driver,
                    configure_logging=False,
                )
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

            ray.shutdown()
