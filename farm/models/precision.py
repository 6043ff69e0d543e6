"""Numeric precision of a worker: which dtype the model runs in, and whether the VAE decodes in fp32.

`FARM_PRECISION` is `auto` (default), `bf16`, `fp16` or `fp32`. `auto` means bf16 on CUDA cards
that support it (Ampere and newer), fp16 on older cards, fp32 on the CPU. bf16 has fp32's range,
so it does not overflow where fp16 can (black or NaN frames).

`FARM_VAE_UPCAST` is `auto` (default), `always` or `never`. The SD-family VAE overflows in fp16
on some inputs, which is why its config says `force_upcast`; with `auto` the VAE decoder runs in
fp32 when the model runs in fp16 and the config asks for it (as diffusers' SDXL pipelines do).
The decision is pure: the caller passes what the device supports.
"""

from __future__ import annotations

from dataclasses import dataclass

from farm.core.errors import FarmError

PRECISION_ENV = "FARM_PRECISION"
VAE_UPCAST_ENV = "FARM_VAE_UPCAST"
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
VAE_UPCAST_MODES = ("auto", "always", "never")
DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class Precision:
    """What a worker runs in: `name` (bf16/fp16/fp32) and where the choice came from."""

    name: str
    requested: str
    vae_upcast: bool

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.name]

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.name]

    @property
    def variant(self) -> str | None:
        """The weight-file variant worth reading: half-precision files for a half-precision run."""
        return "fp16" if self.name in ("fp16", "bf16") else None

    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype_name)

    def advice(self) -> str:
        """What to try when this precision produced NaN/Inf frames."""
        if self.name == "fp16":
            tips = f"set {PRECISION_ENV}=bf16 (cards of compute capability 8.0 or newer) or {PRECISION_ENV}=fp32"
            if not self.vae_upcast:
                tips += f", or let the VAE decode in fp32 ({VAE_UPCAST_ENV}=always)"
            return tips
        if self.name == "bf16":
            return f"set {PRECISION_ENV}=fp32 to rule out precision, or check the model's weights"
        return "the model itself produced non-finite values at fp32: check its weights and parameters"


def choose_precision(
    requested: str, *, on_cuda: bool, bf16_supported: bool, vae_upcast: str = "auto", vae_force_upcast: bool = True
) -> Precision:
    """The precision a worker runs in, from the setting and what the device supports."""
    if requested not in PRECISIONS:
        raise FarmError(f"{PRECISION_ENV}={requested!r} is not a valid setting; use one of {', '.join(PRECISIONS)}")
    if vae_upcast not in VAE_UPCAST_MODES:
        raise FarmError(f"{VAE_UPCAST_ENV}={vae_upcast!r} is not a valid setting; use one of {', '.join(VAE_UPCAST_MODES)}")
    if requested == "auto":
        name = ("bf16" if bf16_supported else "fp16") if on_cuda else "fp32"
    elif requested == "bf16" and on_cuda and not bf16_supported:
        raise FarmError(
            f"{PRECISION_ENV}=bf16 but this GPU does not support bfloat16 (compute capability below 8.0); "
            f"use {PRECISION_ENV}=fp16 or auto"
        )
    else:
        name = requested
    if vae_upcast == "always":
        upcast = name != "fp32"
    elif vae_upcast == "never":
        upcast = False
    else:
        upcast = name == "fp16" and vae_force_upcast
    return Precision(name=name, requested=requested, vae_upcast=upcast)


def precision_for_device(
    device: str, *, requested: str = "auto", vae_upcast: str = "auto", vae_force_upcast: bool = True
) -> Precision:
    """Decide for `device` (the one place that asks torch) from the settings (FARM_PRECISION,
    FARM_VAE_UPCAST: farm.settings.WorkerSettings)."""
    requested, upcast = requested.strip().lower(), vae_upcast.strip().lower()
    on_cuda = device.startswith("cuda")
    bf16_supported = False
    if on_cuda:
        import torch

        bf16_supported = bool(torch.cuda.is_bf16_supported())
    return choose_precision(
        requested, on_cuda=on_cuda, bf16_supported=bf16_supported, vae_upcast=upcast, vae_force_upcast=vae_force_upcast
    )
