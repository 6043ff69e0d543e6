"""The model adapter interface: what a render worker needs from any image-to-video pipeline.

`ModelAdapter` is the protocol the renderer, the workers and the GPU check use. `VideoAdapter`
carries what every diffusers family shares, so a family's adapter (`farm.models.families.*`)
writes only what is its own:

- `call_arguments(...)`: farm's parameters (size, frames, fps, steps, guidance_scale,
  negative_prompt) as the keyword arguments of the family's pipeline call;
- `decode_video(latents, chunk)`: the family's own latent-to-video decode (latent
  normalisation, unpacking, temporal VAE), returning the pipeline's video tensor;
- optionally `upcast_vae_decoder()` and `apply_savers` for savers beyond the shared ones.

The shared part: `load` (weights resolved by `farm.models.loading`, precision by
`farm.models.precision`, the fp16 weight variant where the folder has one), `describe`
(id, family, adapter, pipeline class, config hash, dtype), the denoise call with a CPU
generator (a seed gives the same video on any device) and the process's global RNG seeded
inside `fork_rng`, step callbacks through `callback_on_step_end` (what the callback raises
stops the denoise at that step), `phase` for attributing an OOM, per-phase peak memory, the
NaN/Inf check before anything is encoded, and the memory savers diffusers has for every
family: VAE slicing and tiling, model CPU offload, group offloading with CUDA streams, and
layerwise fp8 weight storage.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from farm.core.errors import ItemError
from farm.core.families import FamilyRules
from farm.core.vram import CPU_OFFLOAD, FP8_LAYERWISE, GROUP_OFFLOAD, SAVER_LEVELS, VAE_SLICING, VAE_TILING, ModelProfile
from farm.media.video import to_uint8
from farm.models.faults import OomInjector
from farm.models.libraries import quiet_libraries
from farm.models.loading import ResolvedModel, resolve_model, select_device, weight_variant
from farm.models.memory import PhaseMemory, cuda_index
from farm.models.precision import Precision, precision_for_device


class NonFiniteFrames(ItemError):
    """A render produced NaN or Inf values (numeric overflow, usually fp16)."""

    reason = "nan_output"


@dataclass
class Generation:
    """The frames of one render and what it cost."""

    frames: np.ndarray  # (F, H, W, 3) uint8
    timings: dict[str, float]
    peak_memory_bytes: int
    memory_kind: str
    warnings: list[str] = field(default_factory=list)
    phases: dict[str, dict[str, int]] = field(default_factory=dict)  # measured peaks per phase


@runtime_checkable
class ModelAdapter(Protocol):
    """One loaded pipeline on one device, as the renderer drives it."""

    family: ClassVar[FamilyRules]
    profile: ModelProfile
    model: ResolvedModel
    device: str
    load_seconds: float
    config_sha256: str
    phase: str  # idle, denoise or decode: where an OOM struck
    savers: tuple[str, ...]
    precision: Precision
    memory: PhaseMemory
    injector: OomInjector | None

    @property
    def dtype_name(self) -> str: ...

    def describe(self) -> dict: ...

    def apply_savers(self, savers) -> None: ...

    def denoise(self, image, *, prompt: str, negative_prompt: str, width: int, height: int, frames: int,
                steps: int, guidance_scale: float, fps: int, seed: int, on_step=None) -> Any: ...

    def decode(self, latents, *, decode_chunk_size: int | None = None) -> Generation: ...

    def generate(self, image, **params) -> Generation: ...


# diffusers' hook names (diffusers.hooks.group_offloading), to take group offloading off again.
_GROUP_OFFLOAD_HOOKS = ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading")


def offloaded_components(pipe) -> list[tuple[str, Any]]:
    """The weighted components group offloading streams: all but the VAE (it decodes at the end
    and is small next to the others)."""
    import torch

    return [(name, c) for name, c in pipe.components.items() if isinstance(c, torch.nn.Module) and name != "vae"]


def apply_group_offloading_to(pipe, onload_device, *, use_stream: bool) -> None:
    """Every weighted component but the VAE, leaf by leaf (each transfer on a CUDA stream overlaps
    the compute of the layer before when `use_stream`)."""
    import torch
    from diffusers.hooks import apply_group_offloading

    for _, component in offloaded_components(pipe):
        apply_group_offloading(component, onload_device=onload_device, offload_device=torch.device("cpu"),
                               offload_type="leaf_level", use_stream=use_stream)


def remove_group_offloading(pipe, device: str) -> None:
    """Take group offloading off again (the next render needs no saver): its hooks removed, the
    weights back on `device`."""
    from diffusers.hooks import HookRegistry

    for _, component in offloaded_components(pipe):
        registry = HookRegistry.check_if_exists_or_initialize(component)
        for name in _GROUP_OFFLOAD_HOOKS:
            registry.remove_hook(name, recurse=True)
        component.to(device)


def vae_force_upcast(folder) -> bool:
    """Whether the VAE's config asks to decode in fp32 (AutoencoderKL's default is yes)."""
    config = Path(folder) / "vae" / "config.json"
    try:
        return bool(json.loads(config.read_text()).get("force_upcast", True))
    except (OSError, ValueError):
        return True


def check_finite(video, latents, precision: Precision) -> None:
    """Raise NonFiniteFrames if the decoded video (or the latents it came from) holds NaN/Inf."""
    import torch

    finite = torch.isfinite(video)
    if bool(finite.all()):
        return
    bad = int(finite.numel() - finite.sum())
    where = "the denoise" if not bool(torch.isfinite(latents).all()) else "the VAE decode"
    raise NonFiniteFrames(
        f"the rendered frames hold {bad} NaN/Inf values of {finite.numel()} (first produced by {where}, "
        f"precision {precision.name}); nothing was committed. To fix: {precision.advice()}"
    )


class VideoAdapter:
    """The shared part of every family's adapter (see the module docstring)."""

    family: ClassVar[FamilyRules]
    profile: ClassVar[ModelProfile]
    pipeline_class: ClassVar[str]  # the diffusers class, e.g. "WanImageToVideoPipeline"
    denoiser_name: ClassVar[str] = "transformer"  # the pipeline attribute that denoises
    default_decode_chunk: ClassVar[int] = 0  # 0: the family's VAE decodes the whole clip at once

    def __init__(self, pipeline, model: ResolvedModel, device: str, load_seconds: float):
        self.pipeline = pipeline
        self.model = model
        self.device = device
        self.load_seconds = load_seconds
        self.config_sha256 = model.config_sha256
        self.phase = "idle"
        self.savers: tuple[str, ...] = ()
        self.decode_chunk = self.default_decode_chunk
        self.injector: OomInjector | None = None
        self.precision = Precision("fp32", "fp32", False)
        self.weight_variant: str | None = None
        self.memory = PhaseMemory(device)
        self._timings: dict[str, float] = {}
        self._notes: list[str] = []

    # --- loading ---------------------------------------------------------------------------

    @classmethod
    def load(cls, ref: str, *, device: str | None = None, precision: Precision | None = None,
             requested_precision: str = "auto", vae_upcast: str = "auto"):
        """Load `ref` once, as I2VGen-XL is loaded: precision for the device from the settings
        (FARM_PRECISION, FARM_VAE_UPCAST), the fp16 weight files where the folder has them."""
        quiet_libraries()
        import diffusers

        started = time.perf_counter()
        device = device or select_device()
        chosen = precision or precision_for_device(device, requested=requested_precision, vae_upcast=vae_upcast)
        resolved = resolve_model(ref, variant=chosen.variant, device=device, dtype=chosen.torch_dtype())
        if precision is None and not vae_force_upcast(resolved.path):
            chosen = precision_for_device(device, requested=requested_precision, vae_upcast=vae_upcast,
                                          vae_force_upcast=False)
        variant = weight_variant(resolved.path, prefer_half=chosen.variant is not None)
        pipeline_type = getattr(diffusers, cls.pipeline_class)
        pipeline = pipeline_type.from_pretrained(resolved.path, dtype=chosen.torch_dtype(), variant=variant)
        pipeline.to(device)
        adapter = cls(pipeline, resolved, device, 0.0)
        if chosen.vae_upcast:
            adapter.upcast_vae_decoder()
        pipeline.set_progress_bar_config(disable=True)
        adapter.precision, adapter.weight_variant = chosen, variant
        adapter.load_seconds = time.perf_counter() - started
        return adapter

    def upcast_vae_decoder(self) -> None:
        """Decode in fp32 (the VAE's `force_upcast`): only the decoding half, since the pipelines
        encode the conditioning image with the VAE's encoder in the model's dtype."""
        import torch

        vae = self.pipeline.vae
        for name in ("decoder", "post_quant_conv"):
            part = getattr(vae, name, None)
            if part is not None:
                part.to(torch.float32)

    @property
    def denoiser(self):
        return getattr(self.pipeline, self.denoiser_name)

    @property
    def dtype_name(self) -> str:
        return str(self.denoiser.dtype).removeprefix("torch.")

    @property
    def vae_dtype(self):
        """The dtype the VAE decodes in (its decoder's)."""
        vae = self.pipeline.vae
        return next(getattr(vae, "decoder", vae).parameters()).dtype

    def describe(self) -> dict:
        return {
            "id": self.model.ref,
            "source": self.model.source,
            "config_sha256": self.config_sha256,
            "family": self.family.name,
            "adapter": type(self).__name__,
            "pipeline": type(self.pipeline).__name__,
            "dtype": self.dtype_name,
            "precision": self.precision.name,
            "precision_setting": self.precision.requested,
            "vae_decode_dtype": str(self.vae_dtype).removeprefix("torch."),
            "weight_variant": self.weight_variant,
        }

    def unload(self) -> None:
        """Drop the pipeline and hand its memory back (a worker switching models)."""
        import gc

        from farm.models.memory import release_memory

        self.pipeline = None
        gc.collect()
        release_memory(self.device)

    # --- memory savers ---------------------------------------------------------------------

    def apply_savers(self, savers) -> None:
        """Switch memory savers to exactly `savers`; those this family has no use for are ignored."""
        import torch

        wanted = set(savers) & set(self.family.savers)
        current = set(self.savers)
        pipe, vae = self.pipeline, self.pipeline.vae
        on_cuda = self.device.startswith("cuda")
        # Some VAEs have the methods but raise NotImplementedError (SVD's temporal decoder):
        # `use_slicing`/`use_tiling` say whether a VAE really has the saver.
        if (VAE_SLICING in wanted) != (VAE_SLICING in current) and hasattr(vae, "use_slicing"):
            vae.enable_slicing() if VAE_SLICING in wanted else vae.disable_slicing()
        self.decode_chunk = 1 if VAE_SLICING in wanted else self.default_decode_chunk
        if (VAE_TILING in wanted) != (VAE_TILING in current) and hasattr(vae, "use_tiling"):
            vae.enable_tiling() if VAE_TILING in wanted else vae.disable_tiling()
        if (FP8_LAYERWISE in wanted) != (FP8_LAYERWISE in current):
            if FP8_LAYERWISE in wanted:
                # Weights stored in fp8, each layer cast up to the compute dtype as it runs.
                self.denoiser.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn,
                                                       compute_dtype=self.denoiser.dtype)
            else:
                self._reload_denoiser_weights()
        # Offloading moves weights between host and GPU; on a CPU there is nothing to move.
        offload = {CPU_OFFLOAD, GROUP_OFFLOAD} & wanted if on_cuda else set()
        had = {CPU_OFFLOAD, GROUP_OFFLOAD} & current if on_cuda else set()
        if offload != had:
            if GROUP_OFFLOAD in had:
                remove_group_offloading(pipe, self.device)
            else:
                self.set_model_cpu_offload(False, CPU_OFFLOAD in had)
            if GROUP_OFFLOAD in offload:
                apply_group_offloading_to(pipe, torch.device("cuda", cuda_index(self.device)), use_stream=True)
            else:
                self.set_model_cpu_offload(CPU_OFFLOAD in offload, False)
        self.savers = tuple(s for s in SAVER_LEVELS[-1] if s in wanted) + tuple(
            s for s in (GROUP_OFFLOAD, FP8_LAYERWISE) if s in wanted)

    def set_model_cpu_offload(self, wanted: bool, current: bool) -> None:
        """Model CPU offload on or off (only the component at work on the GPU). On a CPU there is
        nothing to move, so it stays off there."""
        if not self.device.startswith("cuda") or wanted == current:
            return
        if wanted:
            self.pipeline.enable_model_cpu_offload(device=self.device)
        else:
            self.pipeline.remove_all_hooks()
            self.pipeline.to(self.device)

    def _reload_denoiser_weights(self) -> None:
        """Undo fp8 layerwise storage: the fp8 copies cannot be cast back losslessly, so reload."""
        component = type(self.denoiser)
        reloaded = component.from_pretrained(self.model.path, subfolder=self.denoiser_name,
                                             torch_dtype=self.precision.torch_dtype(), variant=self.weight_variant)
        setattr(self.pipeline, self.denoiser_name, reloaded.to(self.device))

    # --- rendering -------------------------------------------------------------------------

    def call_arguments(self, image, *, prompt: str, negative_prompt: str, width: int, height: int, frames: int,
                       steps: int, guidance_scale: float, fps: int) -> dict:
        """The family's pipeline call for farm's parameters (without generator and output_type)."""
        raise NotImplementedError

    def decode_video(self, latents, chunk: int):
        """The family's latent-to-video decode: the pipeline's (B, C, F, H, W) video tensor."""
        raise NotImplementedError

    def begin_render(self) -> None:
        self._timings = {}
        self._notes = []
        self.memory.reset()
        if self.injector is not None:
            self.injector.begin_render()

    def note(self, text: str) -> None:
        """A warning recorded in the render's sidecar."""
        if text not in self._notes:
            self._notes.append(text)

    def generate(self, image, *, decode_chunk_size: int | None = None, **params) -> Generation:
        latents = self.denoise(image, **params)
        return self.decode(latents, decode_chunk_size=decode_chunk_size)

    def denoise(self, image, *, prompt: str, negative_prompt: str, width: int, height: int, frames: int,
                steps: int, guidance_scale: float, fps: int, seed: int, on_step=None):
        """Encode, then run the denoise loop; the latents stay on the device. `on_step(done,
        total)` is called before the first step and after each; what it raises stops the render."""
        import torch

        self.begin_render()
        started = time.perf_counter()
        self.phase = "denoise"
        self.memory.begin("denoise")
        if not self.family.takes_prompt and prompt.strip():
            self.note(f"{self.family.title} is conditioned on the image only: the prompt was not used")
        arguments = self.call_arguments(image, prompt=prompt, negative_prompt=negative_prompt, width=width,
                                        height=height, frames=frames, steps=steps, guidance_scale=guidance_scale,
                                        fps=fps)
        # A CPU generator: the same seed gives the same initial noise on any device. Anything a
        # pipeline draws from the global RNG is seeded too, inside fork_rng (the process's own
        # RNG state is left as it was).
        generator = torch.Generator(device="cpu").manual_seed(seed)
        on_cuda = self.device.startswith("cuda")
        rng_devices = [cuda_index(self.device)] if on_cuda else []
        if on_step is not None:
            on_step(0, steps)

            def after_step(pipe, index, timestep, kwargs):
                on_step(index + 1, steps)
                return {}

            arguments["callback_on_step_end"] = after_step
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seed)
            latents = self.pipeline(**arguments, generator=generator, output_type="latent").frames
        self.memory.end("denoise")
        self._timings["denoise"] = time.perf_counter() - started
        self.phase = "idle"
        return latents

    def decode(self, latents, *, decode_chunk_size: int | None = None) -> Generation:
        """Decode `latents` into uint8 frames (checked for NaN/Inf); may be retried with savers."""
        import torch

        started = time.perf_counter()
        self.phase = "decode"
        self.memory.begin("decode")
        with torch.no_grad():
            video = self.decode_video(latents, decode_chunk_size or self.decode_chunk)
            check_finite(video, latents, self.precision)
            array = self.pipeline.video_processor.postprocess_video(video=video.float(), output_type="np")[0]
        del video
        self.memory.end("decode")
        self._timings["decode"] = self._timings.get("decode", 0.0) + time.perf_counter() - started
        self.phase = "idle"
        peak, kind = self.memory.peak()
        return Generation(to_uint8(np.asarray(array)), dict(self._timings), peak, kind, list(self._notes),
                          self.memory.phases())
