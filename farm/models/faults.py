"""Fault injection for tests and chaos runs: raise a real OOM at a chosen point of a render.

Spec (FARM_FAULTS or the worker's `faults` argument), `;`-separated rules:
    oom:denoise:3            every render: OOM at the 3rd UNet call
    oom:decode:1:every=3     every third render: OOM at the first VAE decode call
    oom:denoise:2:count=1    only once in the worker's life
    oom:denoise:2@12g        only on workers of tier 12g
Calls count from 1 within a render. Injection is a forward pre-hook on the UNet or the VAE
decoder, so the exception surfaces from inside diffusers exactly where a real one would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PHASES = ("denoise", "decode")


@dataclass
class OomRule:
    phase: str
    at_call: int
    every: int = 1
    count: int | None = None
    tier: str | None = None
    fired: int = 0


def parse_faults(spec: str | None) -> list[OomRule]:
    rules = []
    for part in filter(None, (p.strip() for p in (spec or "").split(";"))):
        match = re.fullmatch(r"oom:(denoise|decode):(\d+)((?::(?:every|count)=\d+)*)(?:@(\w+))?", part)
        if not match:
            raise ValueError(f"fault rule {part!r}: write oom:denoise|decode:CALL[:every=N][:count=N][@TIER]")
        options = dict(re.findall(r":(every|count)=(\d+)", match.group(3)))
        rules.append(
            OomRule(
                phase=match.group(1),
                at_call=int(match.group(2)),
                every=int(options.get("every", 1)),
                count=int(options["count"]) if "count" in options else None,
                tier=match.group(4),
            )
        )
    return rules


class OomInjector:
    """Attach to a pipeline; call `begin_render()` before each render."""

    def __init__(self, rules: list[OomRule], tier: str | None = None):
        self.rules = [rule for rule in rules if rule.tier is None or rule.tier == tier]
        self.renders = 0
        self.calls = {phase: 0 for phase in PHASES}
        self._handles = []

    def attach(self, pipeline) -> None:
        if not self.rules:
            return
        self._handles.append(pipeline.unet.register_forward_pre_hook(self._hook("denoise")))
        self._handles.append(pipeline.vae.decoder.register_forward_pre_hook(self._hook("decode")))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def begin_render(self) -> None:
        self.renders += 1
        self.calls = {phase: 0 for phase in PHASES}

    def _hook(self, phase: str):
        def hook(module, args):
            self.calls[phase] += 1
            for rule in self.rules:
                if rule.phase != phase or self.calls[phase] != rule.at_call:
                    continue
                if self.renders % rule.every != 0 or (rule.count is not None and rule.fired >= rule.count):
                    continue
                rule.fired += 1
                import torch

                raise torch.OutOfMemoryError(
                    f"CUDA out of memory (injected: {phase} call {self.calls[phase]} of render {self.renders})"
                )

        return hook
