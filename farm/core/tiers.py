"""VRAM tiers: named GPU classes, their usable memory budgets and relative speeds.

A tier is named by its card size (`12g` ... `80g`). Its budget is the card's memory minus
headroom for the CUDA context, cuBLAS/cuDNN workspaces and allocator fragmentation (1 GiB plus
5% by default): what a render's peak *allocated* memory (the estimator's figure) may reach.
Each node advertises its GPUs to Ray as the custom resource `farm_tier_<tier>`; KubeRay worker
groups use the same names.

Speeds are used only for planning (`farm plan`): a representative card's dense fp16/bf16 peak
times an efficiency of 0.24 (the seeds' 52 s for 512p/16 frames/50 steps on an RTX 4090 is 24%
of its peak). The table can be replaced with a YAML/JSON file (`FARM_TIERS_FILE`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

GIB = 1024**3
RESOURCE_PREFIX = "farm_tier_"
CPU_TIER = "cpu"
DEFAULT_EFFICIENCY = 0.24
# A card reports a little less than its nominal size (an "80 GB" A100 shows 79.3 GiB).
NOMINAL_TOLERANCE = 0.95


class TierSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[0-9]+g$")
    card_gib: float = Field(gt=0)
    headroom_gib: float | None = Field(default=None, ge=0)
    example: str = ""
    peak_tflops: float = Field(gt=0)
    efficiency: float = Field(default=DEFAULT_EFFICIENCY, gt=0, le=1)

    @property
    def budget_gib(self) -> float:
        headroom = self.headroom_gib if self.headroom_gib is not None else 1.0 + 0.05 * self.card_gib
        return max(self.card_gib - headroom, 0.0)

    @property
    def budget_bytes(self) -> int:
        return int(self.budget_gib * GIB)

    @property
    def effective_flops(self) -> float:
        return self.peak_tflops * 1e12 * self.efficiency

    @property
    def resource(self) -> str:
        return RESOURCE_PREFIX + self.name


DEFAULT_TIERS = (
    TierSpec(name="12g", card_gib=12, example="RTX 3060 12GB", peak_tflops=51),
    TierSpec(name="16g", card_gib=16, example="RTX 4080 16GB", peak_tflops=97.5),
    TierSpec(name="24g", card_gib=24, example="RTX 4090 24GB", peak_tflops=165),
    TierSpec(name="40g", card_gib=40, example="A100 40GB", peak_tflops=312),
    TierSpec(name="48g", card_gib=48, example="L40S 48GB", peak_tflops=362),
    TierSpec(name="80g", card_gib=80, example="H100 SXM 80GB", peak_tflops=989),
)


class TierTable:
    """Tiers ordered from smallest to largest card."""

    def __init__(self, tiers=DEFAULT_TIERS):
        self.tiers = tuple(sorted(tiers, key=lambda t: t.card_gib))
        self.by_name = {tier.name: tier for tier in self.tiers}
        if len(self.by_name) != len(self.tiers):
            raise ValueError("tier names must be unique")

    def __getitem__(self, name: str) -> TierSpec:
        try:
            return self.by_name[name]
        except KeyError:
            raise KeyError(f"unknown tier {name!r}; known tiers: {', '.join(self.by_name)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    def names(self) -> list[str]:
        return [tier.name for tier in self.tiers]

    def rank(self, name: str) -> int:
        return self.names().index(name)

    def tier_for_memory(self, card_bytes: int) -> TierSpec | None:
        """The largest tier whose nominal card size this card has (None below the smallest)."""
        card_gib = card_bytes / GIB
        fitting = [tier for tier in self.tiers if card_gib >= tier.card_gib * NOMINAL_TOLERANCE]
        return fitting[-1] if fitting else None

    def ordered(self, names) -> list[str]:
        return sorted(set(names), key=self.rank)


def load_tier_table(path: str | None = None) -> TierTable:
    """The default table, or the one in `path` (FARM_TIERS_FILE: a list of tier mappings)."""
    if not path:
        return TierTable()
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    entries = data.get("tiers", data) if isinstance(data, dict) else data
    return TierTable(TierSpec.model_validate(entry) for entry in entries)


@dataclass(frozen=True)
class ClusterShape:
    """How many GPU workers of each tier a cluster has (for planning)."""

    workers: dict[str, int]

    @property
    def present(self) -> list[str]:
        return [name for name, count in self.workers.items() if count > 0]


def parse_gpus(text: str, table: TierTable) -> ClusterShape:
    """Parse `12g:4,24g:2,80g:1` (a count defaults to 1)."""
    workers: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"([0-9]+g)(?::([0-9]+))?", part)
        if not match:
            raise ValueError(f"--gpus part {part!r}: write TIER:COUNT, e.g. 24g:2")
        name, count = match.group(1), int(match.group(2) or 1)
        if name not in table:
            raise ValueError(f"--gpus part {part!r}: unknown tier {name!r}; known tiers: {', '.join(table.names())}")
        workers[name] = workers.get(name, 0) + count
    if not workers:
        raise ValueError("--gpus is empty; write e.g. 12g:4,24g:2,80g:1")
    return ClusterShape(workers)


def tier_resources(tier: str, gpus: int) -> dict[str, float]:
    """The Ray custom resources a node with `gpus` cards of `tier` advertises."""
    return {RESOURCE_PREFIX + tier: float(gpus)}


def tiers_in_resources(resources: dict[str, float]) -> dict[str, int]:
    """Tier -> GPU count from a Ray resource dict."""
    return {
        key[len(RESOURCE_PREFIX) :]: int(value)
        for key, value in resources.items()
        if key.startswith(RESOURCE_PREFIX) and value >= 1
    }
