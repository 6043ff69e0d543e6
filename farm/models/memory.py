"""GPU memory on the worker: how big the card is, what is allocated now, the cap, and the simulated card.

A worker learns its card's memory from CUDA, or is told with FARM_GPU_VRAM_GB (simulation on
machines without GPUs, or a cap below the real card).

- Without a GPU, a told card is simulated: every render phase first checks the estimator's
  figure for its settings against the tier budget and raises a real `torch.OutOfMemoryError`
  if it does not fit, before doing the work; model loading does the same for the weights.
- On a CUDA card, a declared smaller card (FARM_GPU_VRAM_GB, or a tier smaller than the card
  that the worker was started for) caps the process with
  `torch.cuda.set_per_process_memory_fraction`, so the OOM is the allocator's own.

Everything after that exception is the real OOM path. `is_out_of_memory` also recognises the
allocation failures CUDA libraries raise as plain `RuntimeError`s. `PhaseMemory` measures each
render phase's peak allocated and reserved memory.
"""

from __future__ import annotations

import gc
import os
import resource
from dataclasses import dataclass, field

from farm.core.tiers import CPU_TIER, GIB, TierTable
from farm.core.vram import ModelProfile, estimate_vram

VRAM_ENV = "FARM_GPU_VRAM_GB"
ALLOC_CONF_ENV = "PYTORCH_CUDA_ALLOC_CONF"
# Long-lived workers see a different tensor shape on nearly every item: expandable segments let
# the caching allocator grow blocks in place instead of fragmenting into unusable ones.
DEFAULT_ALLOC_CONF = "expandable_segments:True"

# How allocation failures read when they do not arrive as torch.OutOfMemoryError: the CUDA
# runtime's own error, cuBLAS/cuDNN/cuFFT/cuSOLVER failing to allocate a handle or workspace,
# and ROCm's HIP equivalents. Each is documented in the library's status codes.
OOM_MESSAGE_MARKERS = (
    "out of memory",  # "CUDA error: out of memory", "CUDA driver error: out of memory", "HIP out of memory"
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED",
    "CUFFT_ALLOC_FAILED",
    "CUSOLVER_STATUS_ALLOC_FAILED",
    "CUSPARSE_STATUS_ALLOC_FAILED",
    "HIPBLAS_STATUS_ALLOC_FAILED",
    "MIOPEN_STATUS_ALLOC_FAILED",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's OutOfMemoryError and for RuntimeErrors that report a failed GPU allocation."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if type(exc) is not RuntimeError and not isinstance(exc, getattr(torch, "AcceleratorError", ())):
        return False
    message = str(exc)
    return any(marker.lower() in message.lower() for marker in OOM_MESSAGE_MARKERS)


def prepare_allocator() -> str:
    """Set expandable segments for this process unless the operator chose a setting (before CUDA starts)."""
    return os.environ.setdefault(ALLOC_CONF_ENV, DEFAULT_ALLOC_CONF)


@dataclass(frozen=True)
class CardInfo:
    """The memory a worker may use, and where that figure came from."""

    tier: str
    card_bytes: int | None
    budget_bytes: int | None
    source: str  # "cuda", "FARM_GPU_VRAM_GB", "tier" or "cpu"
    simulated: bool
    physical_bytes: int | None = None  # the real card's memory, when there is one
    gpu: dict = field(default_factory=dict)  # name, capability, driver and CUDA versions

    @property
    def cap_fraction(self) -> float | None:
        """The share of the real card this worker may allocate, when declared smaller than it."""
        if self.simulated or not self.physical_bytes or not self.card_bytes or self.card_bytes >= self.physical_bytes:
            return None
        return self.card_bytes / self.physical_bytes

    def to_dict(self) -> dict:
        return {
            "tier": self.tier,
            "card_gib": round(self.card_bytes / GIB, 2) if self.card_bytes else None,
            "budget_gib": round(self.budget_bytes / GIB, 2) if self.budget_bytes else None,
            "source": self.source,
            "simulated": self.simulated,
            "physical_gib": round(self.physical_bytes / GIB, 2) if self.physical_bytes else None,
            "cap_fraction": round(self.cap_fraction, 4) if self.cap_fraction else None,
            **({"gpu": self.gpu} if self.gpu else {}),
        }


def declared_card_bytes(
    table: TierTable, advertised_tier: str | None, vram_gb: float | None = None
) -> tuple[int | None, str | None]:
    """The card size the operator declared: `vram_gb` (FARM_GPU_VRAM_GB), else the tier the
    worker was started for."""
    if vram_gb is not None:
        if not vram_gb > 0 or vram_gb == float("inf"):
            raise ValueError(f"{VRAM_ENV}={vram_gb!r} is not a positive number of GiB; set e.g. {VRAM_ENV}=24")
        return int(vram_gb * GIB), VRAM_ENV
    tier = table[advertised_tier] if advertised_tier and advertised_tier in table else None
    return (int(tier.card_gib * GIB), "tier") if tier is not None else (None, None)


def gpu_description(device: str) -> dict:
    """Name, compute capability, driver and CUDA versions of a CUDA device (for sidecars)."""
    import torch

    index = cuda_index(device)
    properties = torch.cuda.get_device_properties(index)
    driver = nvidia_driver_version()
    return {
        "name": properties.name,
        "capability": f"{properties.major}.{properties.minor}",
        "total_gib": round(properties.total_memory / GIB, 2),
        "cuda_driver": driver,
        "cuda_runtime": torch.version.cuda,
        "torch": torch.__version__,
    }


def detect_card(
    device: str, table: TierTable, advertised_tier: str | None = None, vram_gb: float | None = None,
    *, simulate_tier: bool = False,
) -> CardInfo:
    """This worker's card: the declared size (`vram_gb`: FARM_GPU_VRAM_GB, or its tier) capped to
    the real card on CUDA; the declared size simulated without a GPU (its tier's card too, with
    `simulate_tier`: FARM_SIMULATE_TIER_CARDS); else the CPU."""
    declared, source = declared_card_bytes(table, advertised_tier, vram_gb)
    on_cuda = device.startswith("cuda")
    physical, gpu = None, {}
    if on_cuda:
        import torch

        physical = int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
        gpu = gpu_description(device)
    if on_cuda:
        card_bytes = min(declared, physical) if declared else physical
        source = source if declared and declared < physical else "cuda"
        simulated = False
    elif source == VRAM_ENV or (source == "tier" and simulate_tier):
        card_bytes, simulated = declared, True
    else:
        return CardInfo(CPU_TIER, None, None, "cpu", False)
    tier = table.tier_for_memory(card_bytes)
    if tier is None:  # smaller than the smallest tier: usable budget from the card itself
        name = advertised_tier or f"{int(card_bytes / GIB)}g"
        budget = max(int(card_bytes * 0.95) - GIB, 0)
        return CardInfo(name, card_bytes, budget, source, simulated, physical, gpu)
    return CardInfo(tier.name, card_bytes, tier.budget_bytes, source, simulated, physical, gpu)


def apply_memory_cap(card: CardInfo, device: str) -> None:
    """Cap this process's CUDA allocations to the declared card (no-op when not declared smaller)."""
    fraction = card.cap_fraction
    if fraction is not None and device.startswith("cuda"):
        import torch

        torch.cuda.set_per_process_memory_fraction(fraction, cuda_index(device))


def cuda_index(device: str, current=None) -> int:
    """The ordinal of a CUDA device string: "cuda:1" -> 1; a bare "cuda" means the current device.

    CUDA's memory APIs refuse an index-less torch.device("cuda") (a ValueError, seen on an H200).
    """
    index = torch_device_index(device)
    if index is not None:
        return index
    if current is None:
        import torch

        current = torch.cuda.current_device
    return int(current())


def torch_device_index(device: str) -> int | None:
    _, _, ordinal = device.partition(":")
    return int(ordinal) if ordinal.strip() else None


class PhaseMemory:
    """Peak memory of each render phase: CUDA's max allocated and reserved, or the process's RSS."""

    def __init__(self, device: str):
        self.on_cuda = device.startswith("cuda")
        self.device = device
        self._phases: dict[str, dict[str, int]] = {}
        self.baseline_bytes: int | None = None  # allocated when the render began (the weights, mostly)

    def reset(self) -> None:
        self._phases = {}
        if self.on_cuda:
            import torch

            self.baseline_bytes = int(torch.cuda.memory_allocated(self.device))

    def begin(self, phase: str) -> None:
        if self.on_cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def end(self, phase: str) -> None:
        if self.on_cuda:
            import torch

            torch.cuda.synchronize(self.device)
            figures = {
                "max_allocated_bytes": int(torch.cuda.max_memory_allocated(self.device)),
                "max_reserved_bytes": int(torch.cuda.max_memory_reserved(self.device)),
            }
        else:
            figures = {"max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        previous = self._phases.get(phase, {})  # a retried decode keeps the larger figures
        self._phases[phase] = {key: max(value, previous.get(key, 0)) for key, value in figures.items()}

    def phases(self) -> dict[str, dict[str, int]]:
        return {phase: dict(figures) for phase, figures in self._phases.items()}

    def peak(self) -> tuple[int, str]:
        """(bytes, kind): the largest allocated figure over the phases so far."""
        key, kind = ("max_allocated_bytes", "cuda_max_allocated") if self.on_cuda else ("max_rss_bytes", "process_max_rss")
        return max((figures.get(key, 0) for figures in self._phases.values()), default=0), kind


class SimulatedCard:
    """Raises a real torch.OutOfMemoryError when the estimate (of the whole render, or of one
    phase) exceeds the budget."""

    def __init__(self, card: CardInfo, profile: ModelProfile, dtype_bytes: int = 2):
        self.card = card
        self.profile = profile
        self.dtype_bytes = dtype_bytes  # the card would run fp16, whatever the CPU stand-in uses

    def check_load(self) -> None:
        weights = self.profile.total_params * self.dtype_bytes + self.profile.overhead_bytes
        if self.card.budget_bytes is not None and weights > self.card.budget_bytes:
            self._raise("loading the model", weights)

    def peak_bytes(self, width: int, height: int, frames: int, savers, guidance: bool) -> int:
        """What the simulated card's allocator would have peaked at for this render."""
        return estimate_vram(
            self.profile, width, height, frames, dtype_bytes=self.dtype_bytes, savers=savers, guidance=guidance
        ).total_bytes

    def check_render(self, width: int, height: int, frames: int, savers, guidance: bool, phase: str | None = None) -> None:
        """Raise if the render (or only its `phase`: denoise or decode) would not fit the budget."""
        estimate = estimate_vram(
            self.profile, width, height, frames, dtype_bytes=self.dtype_bytes, savers=savers, guidance=guidance
        )
        phase = phase or estimate.peak_phase
        needed = estimate.overhead_bytes + (estimate.denoise_bytes if phase == "denoise" else estimate.decode_bytes)
        if self.card.budget_bytes is not None and needed > self.card.budget_bytes:
            self._raise(f"{phase} at {width}x{height}x{frames}", needed)

    def _raise(self, what: str, needed: int) -> None:
        import torch

        raise torch.OutOfMemoryError(
            f"CUDA out of memory (simulated {self.card.card_bytes / GIB:.0f} GiB card): {what} needs about "
            f"{needed / GIB:.1f} GiB, the {self.card.tier} budget is {self.card.budget_bytes / GIB:.1f} GiB"
        )


def allocated_bytes(device: str) -> int:
    """Bytes held by live tensors: CUDA's allocator figure, or on the CPU the storages that
    Python objects still reference (what a leaked exception frame would keep alive)."""
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.memory_allocated(torch.device(device)))
    seen: set[int] = set()
    total = 0

    def count(candidate) -> None:
        nonlocal total
        if not issubclass(type(candidate), torch.Tensor):  # type(): no attribute lookups on odd objects
            return
        try:
            if candidate.device.type != "cpu":
                return
            storage = candidate.untyped_storage()
            key = storage.data_ptr()
        except Exception:  # meta tensors, wrappers without storage
            return
        if key and key not in seen:
            seen.add(key)
            total += storage.nbytes()

    # Tensors are not always tracked by the garbage collector themselves; the containers and
    # frames that hold them are, so look one level into every tracked object too.
    for obj in gc.get_objects():
        count(obj)
        for referent in gc.get_referents(obj):
            count(referent)
    return total


def nvidia_driver_version() -> str | None:
    """The kernel driver's version (e.g. "580.159.04") through NVML, or None where it cannot say."""
    try:
        import pynvml  # nvidia-ml-py, beside CUDA builds of torch

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # no NVML here (a CPU build, a container without the driver's library)
        return None


def release_memory(device: str) -> None:
    """After an OOM: collect what the failed attempt left and hand cached blocks back."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def device_memory(adapter, card: CardInfo | None) -> dict:
    """{"used", "total"} bytes for a worker: its CUDA device, its simulated card (the resident
    fp16 weights), or, on a CPU worker, the process's resident memory and the host's RAM."""
    if adapter is not None and adapter.device.startswith("cuda"):
        import torch

        device = torch.device(adapter.device)
        return {"used": int(torch.cuda.memory_allocated(device)), "total": card.card_bytes if card else None}
    if card is not None and card.simulated and adapter is not None:
        profile = adapter.profile
        return {"used": profile.total_params * 2 + profile.overhead_bytes, "total": card.card_bytes}
    with open("/proc/self/statm") as handle:
        rss = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return {"used": rss, "total": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}
