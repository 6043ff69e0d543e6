"""Fault injection for tests and chaos runs: raise a real OOM, or poison the output, at a chosen point.

Spec (FARM_FAULTS or the worker's `faults` argument), `;`-separated rules:
    oom:denoise:3            every render: OOM at the 3rd UNet call
    oom:decode:1:every=3     every third render: OOM at the first VAE decode call
    oom:denoise:2:count=1    only once in the worker's life
    oom:denoise:2@12g        only on workers of tier 12g
    oom:denoise:1:as=cublas  the OOM as CUDA libraries raise it: a RuntimeError (as=cuda, cublas,
                             cudnn, cufft), not torch.OutOfMemoryError (as=torch, the default)
    nan:decode:1             the first VAE decode call returns NaN (an fp16 overflow)
    nan:denoise:2            the 2nd UNet call returns NaN
Calls count from 1 within a render. Injection is a forward hook on the UNet or the VAE
decoder (pre-hook for OOMs, post-hook for NaN), so the failure surfaces from inside diffusers
exactly where a real one would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PHASES = ("denoise", "decode")
# The messages the real failures carry (what `farm.models.memory.is_out_of_memory` must match).
RUNTIME_OOM_MESSAGES = {
    "cuda": "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported at some other API call",
    "cublas": "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "cudnn": "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "cufft": "cuFFT error: CUFFT_ALLOC_FAILED",
}
KINDS = ("torch", *RUNTIME_OOM_MESSAGES)


@dataclass
class FaultRule:
    phase: str
    at_call: int
    every: int = 1
    count: int | None = None
    tier: str | None = None
    fired: int = 0
    effect: str = "oom"  # or "nan"
    kind: str = "torch"  # how an OOM is raised


_RULE = re.compile(r"(oom|nan):(denoise|decode):(\d+)((?::(?:every|count)=\d+|:as=\w+)*)(?:@(\w+))?")


def parse_faults(spec: str | None) -> list[FaultRule]:
    rules = []
    for part in filter(None, (p.strip() for p in (spec or "").split(";"))):
        match = _RULE.fullmatch(part)
        if not match:
            raise ValueError(
                f"fault rule {part!r}: write oom|nan:denoise|decode:CALL[:every=N][:count=N][:as=KIND][@TIER]"
            )
        options = dict(re.findall(r":(every|count|as)=(\w+)", match.group(4)))
        kind = options.get("as", "torch")
        if kind not in KINDS or (kind != "torch" and match.group(1) != "oom"):
            raise ValueError(f"fault rule {part!r}: as= takes one of {', '.join(KINDS)}, and only for oom rules")
        rules.append(
            FaultRule(
                phase=match.group(2),
                at_call=int(match.group(3)),
                every=int(options.get("every", 1)),
                count=int(options["count"]) if "count" in options else None,
                tier=match.group(5),
                effect=match.group(1),
                kind=kind,
            )
        )
    return rules


def out_of_memory(kind: str, where: str) -> Exception:
    """The exception a real allocation failure of this kind raises."""
    import torch

    if kind == "torch":
        return torch.OutOfMemoryError(f"CUDA out of memory (injected: {where})")
    return RuntimeError(f"{RUNTIME_OOM_MESSAGES[kind]} (injected: {where})")


def poisoned(output):
    """`output` (a tensor, or a tuple/ModelOutput whose first item is one) filled with NaN."""
    import torch

    if isinstance(output, torch.Tensor):
        return torch.full_like(output, float("nan"))
    if isinstance(output, tuple):
        return (poisoned(output[0]), *output[1:])
    first = next(iter(output.keys()))
    output[first] = poisoned(output[first])
    return output


class OomInjector:
    """Attach to a pipeline; call `begin_render()` before each render."""

    def __init__(self, rules: list[FaultRule], tier: str | None = None):
        self.rules = [rule for rule in rules if rule.tier is None or rule.tier == tier]
        self.renders = 0
        self.calls = {phase: 0 for phase in PHASES}
        self._handles = []

    def attach(self, pipeline) -> None:
        if not self.rules:
            return
        # The denoiser is a UNet (I2VGen-XL, SVD) or a transformer (Wan, LTX-Video, CogVideoX, HunyuanVideo).
        denoiser = getattr(pipeline, "transformer", None) or pipeline.unet
        modules = {"denoise": denoiser, "decode": pipeline.vae.decoder}
        for phase, module in modules.items():
            self._handles.append(module.register_forward_pre_hook(self._before(phase)))
            self._handles.append(module.register_forward_hook(self._after(phase)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def begin_render(self) -> None:
        self.renders += 1
        self.calls = {phase: 0 for phase in PHASES}

    def _due(self, effect: str, phase: str) -> FaultRule | None:
        for rule in self.rules:
            if rule.effect != effect or rule.phase != phase or self.calls[phase] != rule.at_call:
                continue
            if self.renders % rule.every != 0 or (rule.count is not None and rule.fired >= rule.count):
                continue
            rule.fired += 1
            return rule
        return None

    def _before(self, phase: str):
        def hook(module, args):
            self.calls[phase] += 1
            rule = self._due("oom", phase)
            if rule is not None:
                raise out_of_memory(rule.kind, f"{phase} call {self.calls[phase]} of render {self.renders}")

        return hook

    def _after(self, phase: str):
        def hook(module, args, output):
            return poisoned(output) if self._due("nan", phase) is not None else None

        return hook
