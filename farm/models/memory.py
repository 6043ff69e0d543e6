"""GPU memory on the worker: how big the card is, what is allocated now, and the simulated card.

A worker learns its card's memory from CUDA, or is told with FARM_GPU_VRAM_GB (simulation on
machines without GPUs, or a cap below the real card). When told, every render first checks the
estimator's figure for its settings against the tier budget and raises a real
`torch.OutOfMemoryError` if it does not fit, before doing the work; model loading does the same
for the weights. Everything after that exception is the real OOM path.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

from farm.core.tiers import CPU_TIER, GIB, TierTable
from farm.core.vram import ModelProfile, estimate_vram

VRAM_ENV = "FARM_GPU_VRAM_GB"


@dataclass(frozen=True)
class CardInfo:
    """The memory a worker may use, and where that figure came from."""

    tier: str
    card_bytes: int | None
    budget_bytes: int | None
    source: str  # "cuda", "FARM_GPU_VRAM_GB" or "cpu"
    simulated: bool

    def to_dict(self) -> dict:
        return {
            "tier": self.tier,
            "card_gib": round(self.card_bytes / GIB, 2) if self.card_bytes else None,
            "budget_gib": round(self.budget_bytes / GIB, 2) if self.budget_bytes else None,
            "source": self.source,
            "simulated": self.simulated,
        }


def detect_card(device: str, table: TierTable, advertised_tier: str | None = None) -> CardInfo:
    """This worker's card: FARM_GPU_VRAM_GB if set, else CUDA's total memory, else the CPU."""
    told = os.environ.get(VRAM_ENV)
    if told:
        try:
            card_bytes = int(float(told) * GIB)
        except ValueError:
            raise ValueError(f"{VRAM_ENV}={told!r} is not a number of GiB; set e.g. {VRAM_ENV}=24") from None
        source, simulated = VRAM_ENV, not device.startswith("cuda")
    elif device.startswith("cuda"):
        import torch

        card_bytes = torch.cuda.get_device_properties(torch.device(device)).total_memory
        source, simulated = "cuda", False
    else:
        return CardInfo(CPU_TIER, None, None, "cpu", False)
    tier = table.tier_for_memory(card_bytes)
    if tier is None:  # smaller than the smallest tier: usable budget from the card itself
        name = advertised_tier or f"{int(card_bytes / GIB)}g"
        budget = max(int(card_bytes * 0.95) - GIB, 0)
        return CardInfo(name, card_bytes, budget, source, simulated)
    return CardInfo(tier.name, card_bytes, tier.budget_bytes, source, simulated)


class SimulatedCard:
    """Raises a real torch.OutOfMemoryError when the estimate exceeds the budget."""

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

    def check_render(self, width: int, height: int, frames: int, savers, guidance: bool) -> None:
        estimate = estimate_vram(
            self.profile, width, height, frames, dtype_bytes=self.dtype_bytes, savers=savers, guidance=guidance
        )
        if self.card.budget_bytes is not None and estimate.total_bytes > self.card.budget_bytes:
            self._raise(f"{estimate.peak_phase} at {width}x{height}x{frames}", estimate.total_bytes)

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
