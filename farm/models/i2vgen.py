"""The I2VGen-XL adapter: load the diffusers pipeline once, then turn (image, prompt, params) into frames.

Prompt conditioning is computed here rather than by the pipeline. I2VGen-XL conditions on the
penultimate CLIP text layer passed through the encoder's final layer norm (`clip_skip=1`, the
pipeline default). With transformers >= 5.6 the pipeline's own code for that path breaks
(`CLIPTextModel` lost its `.text_model` attribute), and `clip_skip=None` would silently switch
to the last layer. So we compute the embeddings the way the model was trained and pass them in.

Denoising and VAE decoding are run as separate calls so each is timed, and so decoding can be
chunked (four frames at a time by default; one at a time with the `vae_slicing` memory saver).
`phase` says which stage is running, so an out-of-memory error can be attributed to it, and
the renderer can retry only the decode (the latents kept) when that is where memory ran out.
`denoise(on_step=...)` calls back before each denoise step (a UNet pre-hook, for the renderer's
watch on its node's drain; what the callback raises stops the denoise there).
Each phase's peak allocated and reserved CUDA memory is measured on its own.

Precision comes from `farm.models.precision` (bf16 where the card has it); with fp16 the VAE
decoder can run in fp32 (its config's `force_upcast`). Decoded frames are checked for NaN/Inf
before anything is encoded: `NonFiniteFrames` fails the item instead of committing a black video.
"""

from __future__ import annotations

import math
import time


from farm.core.families import I2VGEN_XL
from farm.core.vram import CPU_OFFLOAD, FF_CHUNKING, I2VGENXL_PROFILE, SAVER_LEVELS, VAE_SLICING, VAE_TILING
from farm.models.adapter import Generation, NonFiniteFrames, VideoAdapter, check_finite, vae_force_upcast
from farm.models.libraries import quiet_libraries
from farm.models.loading import resolve_model, select_device, weight_variant
from farm.models.memory import cuda_index
from farm.models.precision import Precision, precision_for_device

__all__ = ["Generation", "I2VGenXLAdapter", "NonFiniteFrames", "check_finite", "vae_force_upcast"]


# Feed-forward chunking for a video UNet. diffusers' `enable_forward_chunking` uses one setting
# for every block, which is wrong here: spatial blocks see (batch*frames, tokens, C), temporal
# blocks (batch*tokens, frames, C). Spatial blocks get one frame at a time (dim 0, chunks of 1);
# temporal blocks get up to 64 positions at a time (dim 0), a power of two that divides their
# level's position count (diffusers requires the chunk to divide it), so it is set per render.
MAX_TEMPORAL_FF_CHUNK = 64


def _block_level(name: str, levels: int) -> int:
    parts = name.split(".")
    if parts[0] == "down_blocks":
        return int(parts[1])
    if parts[0] == "up_blocks":
        return levels - 1 - int(parts[1])
    if parts[0] == "mid_block":
        return levels - 1
    return 0  # transformer_in works at full latent resolution


def set_feed_forward_chunking(unet, enabled: bool, *, batch: int = 2, latent_height: int = 0, latent_width: int = 0) -> None:
    from diffusers.models.attention import BasicTransformerBlock

    levels = len(unet.config.block_out_channels)
    for name, module in unet.named_modules():
        if not isinstance(module, BasicTransformerBlock):
            continue
        if not enabled:
            module.set_chunk_feed_forward(None, 0)
        elif name.startswith("transformer_in") or ".temp_attentions." in name:
            level = _block_level(name, levels)
            positions = batch * max(latent_height >> level, 1) * max(latent_width >> level, 1)
            module.set_chunk_feed_forward(math.gcd(positions, MAX_TEMPORAL_FF_CHUNK), 0)
        else:
            module.set_chunk_feed_forward(1, 0)


class I2VGenXLAdapter(VideoAdapter):
    """One loaded I2VGen-XL pipeline on one device (the default family)."""

    family = I2VGEN_XL
    profile = I2VGENXL_PROFILE
    pipeline_class = "I2VGenXLPipeline"
    denoiser_name = "unet"
    default_decode_chunk = I2VGENXL_PROFILE.default_decode_chunk

    # --- memory savers ---------------------------------------------------------------------

    def apply_savers(self, savers) -> None:
        """Switch memory savers to exactly `savers` (each is turned on or off as needed)."""
        wanted = set(savers)
        current = set(self.savers)
        pipe = self.pipeline
        self.decode_chunk = 1 if VAE_SLICING in wanted else self.profile.default_decode_chunk
        if (VAE_TILING in wanted) != (VAE_TILING in current):
            pipe.vae.enable_tiling() if VAE_TILING in wanted else pipe.vae.disable_tiling()
        if FF_CHUNKING not in wanted and FF_CHUNKING in current:
            set_feed_forward_chunking(pipe.unet, False)  # turned on per render in generate()
        self.set_model_cpu_offload(CPU_OFFLOAD in wanted, CPU_OFFLOAD in current)
        self.savers = tuple(s for s in SAVER_LEVELS[-1] if s in wanted)

    @classmethod
    def load(
        cls,
        ref: str,
        *,
        device: str | None = None,
        precision: Precision | None = None,
        requested_precision: str = "auto",
        vae_upcast: str = "auto",
    ) -> I2VGenXLAdapter:
        """Load `ref` once. `precision` as decided, else decided here for the device from the
        settings (`requested_precision`: FARM_PRECISION, `vae_upcast`: FARM_VAE_UPCAST)."""
        quiet_libraries()  # before the pipeline import, which emits warnings of its own
        import torch
        from diffusers import I2VGenXLPipeline

        started = time.perf_counter()
        device = device or select_device()
        chosen = precision or precision_for_device(device, requested=requested_precision, vae_upcast=vae_upcast)
        resolved = resolve_model(ref, variant=chosen.variant, device=device, dtype=chosen.torch_dtype())
        if precision is None and not vae_force_upcast(resolved.path):
            chosen = precision_for_device(
                device, requested=requested_precision, vae_upcast=vae_upcast, vae_force_upcast=False
            )
        variant = weight_variant(resolved.path, prefer_half=chosen.variant is not None)
        pipeline = I2VGenXLPipeline.from_pretrained(resolved.path, dtype=chosen.torch_dtype(), variant=variant)
        pipeline.to(device)
        if chosen.vae_upcast:
            # Only the decoding half: the encoder takes the image in the model's dtype, and a
            # resident fp32 decoder costs ~100 MB instead of a cast on every render.
            pipeline.vae.post_quant_conv.to(torch.float32)
            pipeline.vae.decoder.to(torch.float32)
        pipeline.set_progress_bar_config(disable=True)
        adapter = cls(pipeline, resolved, device, time.perf_counter() - started)
        adapter.precision, adapter.weight_variant = chosen, variant
        return adapter

    def describe(self) -> dict:
        # Only the decoder is upcast (see load): the VAE's first parameters stay in the model's dtype.
        return {**super().describe(), "vae_decode_dtype": "float32" if self.precision.vae_upcast else self.dtype_name}

    # --- conditioning ----------------------------------------------------------------------

    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> tuple:
        """(prompt_embeds, negative_prompt_embeds, truncated): penultimate CLIP layer + final norm."""
        positive, truncated = self._encode_text(prompt)
        negative, _ = self._encode_text(negative_prompt)
        return positive, negative, truncated

    def _encode_text(self, text: str):
        import torch

        tokenizer = self.pipeline.tokenizer
        encoder = self.pipeline.text_encoder
        tokens = tokenizer(
            [text], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        full_length = len(tokenizer(text, truncation=False).input_ids)
        truncated = full_length > tokenizer.model_max_length
        attention_mask = None
        if getattr(encoder.config, "use_attention_mask", False):
            attention_mask = tokens.attention_mask.to(self.device)
        with torch.no_grad():
            output = encoder(tokens.input_ids.to(self.device), attention_mask=attention_mask, output_hidden_states=True)
            penultimate = output.hidden_states[-2]
            # transformers >= 5.6 flattened CLIPTextModel; older versions keep the norm in .text_model.
            final_norm = getattr(encoder, "text_model", encoder).final_layer_norm
            embeds = final_norm(penultimate)
        return embeds.to(dtype=encoder.dtype, device=self.device), truncated

    # --- rendering -------------------------------------------------------------------------

    def denoise(
        self,
        image,
        *,
        prompt: str,
        negative_prompt: str,
        width: int,
        height: int,
        frames: int,
        steps: int,
        guidance_scale: float,
        fps: int,
        seed: int,
        on_step=None,
    ):
        """Encode the prompt and the image, run the denoising loop; the latents stay on the device.
        `on_step(done, total)` is called before each denoise step (one UNet call per step); what
        it raises stops the render there."""
        import torch

        self.begin_render()
        on_cuda = self.device.startswith("cuda")
        if FF_CHUNKING in self.savers:
            down = self.pipeline.vae_scale_factor
            set_feed_forward_chunking(
                self.pipeline.unet, True, batch=2 if guidance_scale > 1 else 1,
                latent_height=height // down, latent_width=width // down,
            )
        started = time.perf_counter()
        self.phase = "denoise"
        self.memory.begin("denoise")
        positive, negative, truncated = self.encode_prompt(prompt, negative_prompt)
        if truncated:
            limit = self.pipeline.tokenizer.model_max_length
            self._notes.append(f"the prompt is longer than CLIP's {limit} tokens; the rest was ignored")
        # The initial noise comes from a CPU generator, so a seed gives the same video on any device.
        # The pipeline also samples the image latents from the global RNG (no generator there):
        # seed that too, inside fork_rng so the process's own RNG state is left as it was.
        generator = torch.Generator(device="cpu").manual_seed(seed)
        rng_devices = [cuda_index(self.device)] if on_cuda else []
        hook = None
        if on_step is not None:
            done = [0]

            def before_step(module, args):
                on_step(done[0], steps)
                done[0] += 1

            hook = self.pipeline.unet.register_forward_pre_hook(before_step)
        try:
            with torch.random.fork_rng(devices=rng_devices):
                torch.manual_seed(seed)
                latents = self.pipeline(
                    image=image,
                    prompt_embeds=positive,
                    negative_prompt_embeds=negative,
                    height=height,
                    width=width,
                    num_frames=frames,
                    num_inference_steps=steps,
                    guidance_scale=guidance_scale,
                    target_fps=fps,
                    generator=generator,
                    output_type="latent",
                ).frames
        finally:
            if hook is not None:
                hook.remove()
        self.memory.end("denoise")
        self._timings["denoise"] = time.perf_counter() - started
        self.phase = "idle"
        return latents

    def decode_video(self, latents, chunk: int):
        """The pipeline's chunked VAE decode, in the decoder's dtype (fp32 when upcast); the shared
        `decode` checks the frames and measures the phase."""
        decoder_dtype = self.pipeline.vae.post_quant_conv.weight.dtype
        return self.pipeline.decode_latents(latents.to(decoder_dtype), decode_chunk_size=chunk)
