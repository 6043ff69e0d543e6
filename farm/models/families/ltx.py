"""LTX-Video image-to-video (`LTXImageToVideoPipeline`): the adapter, the tiny model, the full-size configs.

The pipeline: a T5 v1.1 XXL encoder (`T5EncoderModel` + `T5TokenizerFast`, 128 tokens), a
diffusion transformer (`LTXVideoTransformer3DModel`, one token per latent voxel: patch 1x1x1),
a causal video VAE (`AutoencoderKLLTXVideo`, 32x32 spatial and 8x temporal compression to 128
channels) and `FlowMatchEulerDiscreteScheduler` with resolution-dependent shifting. The image
is VAE-encoded into the first latent frame, which is kept (timestep 0) while the rest denoise.

Conditioning is the pipeline's own, which works with transformers 5: its `encode_prompt` (the
T5 last hidden state of 128 padded tokens; the padding mask goes to the transformer's cross
attention), its image preprocessing and VAE encoding, and `frame_rate`, which scales the
temporal RoPE positions (`rope_interpolation_scale = (8 / frame_rate, 32, 32)`): farm's `fps`
goes there (the pipeline's default is 25; the model renders 24 fps video).

The denoise loop returns *packed* latents, (batch, tokens, channels). `decode_video` repeats the
end of the pipeline's `__call__` for `output_type != "latent"`: unpack to (B, C, F, H, W) with
the pipeline's `_unpack_latents`, de-normalise with the VAE's `latents_mean` / `latents_std` and
`scaling_factor`, and, where the VAE config has `timestep_conditioning` (LTX-Video 0.9.1 and
later; not the 0.9.0 VAE of `Lightricks/LTX-Video`'s diffusers folders), blend in noise at
`decode_noise_scale` and decode at `decode_timestep`. That noise comes from the render's own
generator, continued where the denoise left it, exactly as the pipeline draws it (the shared
denoise creates that generator, so `denoise` picks it up where the pipeline's `prepare_latents`
receives it); its state is kept after the denoise so that a decode retried after an OOM draws
the same noise again. Where
the pipeline calls `torch.randn(..., generator=cpu_generator, device="cuda")` (torch refuses a
CPU generator for a CUDA tensor), farm draws on the CPU and moves the noise, so a seed gives the same video on any
device. Decoders that inject noise (0.9.1+) draw it from the global RNG: the decode runs with
that seeded too, as it is in the pipeline's own call (nothing else draws from it there).

The VAE decodes the whole clip at once (its slicing works over the batch, which is one video),
so the decode chunk is not used; `vae_tiling` tiles it spatially. With FARM_VAE_UPCAST only the
decoder goes to fp32 (`upcast_vae_decoder`): the pipeline encodes the image in the model dtype.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

from farm.core.families import LTX_VIDEO
from farm.core.vram import LTX_VIDEO_PROFILE
from farm.models.adapter import VideoAdapter
from farm.models.cached_build import build_once
from farm.models.memory import cuda_index

# Bump when the tiny configs below change so that caches built by older versions are rebuilt.
TINY_MODEL_VERSION = 1
TINY_SEED = 20250105
TINY_LATENT_CHANNELS = 8
TINY_TEXT_WIDTH = 32
MAX_PROMPT_TOKENS = 128  # the pipeline's max_sequence_length and the published tokenizer's model_max_length
T5_EXTRA_IDS = 100  # T5's sentinel tokens <extra_id_0..99>

# The recommended decode settings for timestep-conditioned VAEs (the diffusers LTX-Video docs'
# examples: decode_timestep=0.03, decode_noise_scale=0.025); unused by a VAE without
# `timestep_conditioning`, such as the 0.9.0 VAE of Lightricks/LTX-Video.
DECODE_TIMESTEP = 0.03
DECODE_NOISE_SCALE = 0.025

REFERENCE_REPO = "Lightricks/LTX-Video"

# --- the published configuration ------------------------------------------------------------
# Lightricks/LTX-Video (0.9.x, the diffusers folders at the repo root): transformer/config.json,
# vae/config.json, text_encoder/config.json (google/t5-v1_1-xxl, encoder only) and
# scheduler/scheduler_config.json, without the `_class_name` / `_diffusers_version` keys. The VAE
# folder is the 0.9.0 VAE: its config has no decoder_* or timestep_conditioning keys (the
# class defaults: the decoder mirrors the encoder, no timestep conditioning, no noise injection).
FULLSIZE_CONFIGS: dict[str, dict] = {
    "transformer": {
        "activation_fn": "gelu-approximate",
        "attention_bias": True,
        "attention_head_dim": 64,
        "attention_out_bias": True,
        "caption_channels": 4096,
        "cross_attention_dim": 2048,
        "in_channels": 128,
        "norm_elementwise_affine": False,
        "norm_eps": 1e-06,
        "num_attention_heads": 32,
        "num_layers": 28,
        "out_channels": 128,
        "patch_size": 1,
        "patch_size_t": 1,
        "qk_norm": "rms_norm_across_heads",
    },
    "vae": {
        "block_out_channels": (128, 256, 512, 512),
        "decoder_causal": False,
        "encoder_causal": True,
        "in_channels": 3,
        "latent_channels": 128,
        "layers_per_block": (4, 3, 3, 3, 4),
        "out_channels": 3,
        "patch_size": 4,
        "patch_size_t": 1,
        "resnet_norm_eps": 1e-06,
        "scaling_factor": 1.0,
        "spatio_temporal_scaling": (True, True, True, False),
    },
    "text_encoder": {  # the encoder's values (feed_forward_proj implies dense_act_fn gelu_new, gated)
        "d_ff": 10240,
        "d_kv": 64,
        "d_model": 4096,
        "decoder_start_token_id": 0,
        "dropout_rate": 0.1,
        "eos_token_id": 1,
        "feed_forward_proj": "gated-gelu",
        "initializer_factor": 1.0,
        "layer_norm_epsilon": 1e-06,
        "num_heads": 64,
        "num_layers": 24,
        "pad_token_id": 0,
        "relative_attention_max_distance": 128,
        "relative_attention_num_buckets": 32,
        "tie_word_embeddings": False,
        "vocab_size": 32128,
    },
    "scheduler": {
        "base_image_seq_len": 1024,
        "base_shift": 0.95,
        "invert_sigmas": False,
        "max_image_seq_len": 4096,
        "max_shift": 2.05,
        "num_train_timesteps": 1000,
        "shift": 1.0,
        "shift_terminal": 0.1,
        "use_beta_sigmas": False,
        "use_dynamic_shifting": True,
        "use_exponential_sigmas": False,
        "use_karras_sigmas": False,
    },
}
SCHEDULER_CONFIG = FULLSIZE_CONFIGS["scheduler"]

# Published parameter counts, as (count, significant digits it is given to; None = exact).
# - transformer: "1.9B", the 2B model's size as the LTX-Video technical report (HaCohen et al.,
#   arXiv:2501.00103) gives it; the checkpoints are named "2b" (ltx-video-2b-v0.9*.safetensors).
#   Rounded to 2 digits, so the test compares the count rounded the same way (1.92B is 1.2% above
#   1.9B, inside the rounding). Third-party counts of the `model.*` tensors of those checkpoints
#   give 1,923,385,472, the exact count here.
# - text_encoder: 4,762,310,656, the google/t5-v1_1-xxl encoder; no LTX-specific figure is
#   published, this is the exact count recorded for that same encoder elsewhere (SD3's
#   text_encoder_3, PixArt-alpha's text encoder).
# - vae: no count is published, but its weight file is: vae/diffusion_pytorch_model.safetensors,
#   1,676,798,532 bytes in fp32 (Lightricks/LTX-Video revision 8984fa25007f376c1a299016d0957a37a2f797bb,
#   as pinned by a third-party lock file), which the test re-derives to the byte from the
#   meta-device VAE (the safetensors header of its tensor names and shapes, then 4 bytes a value).
PUBLISHED_PARAMETER_COUNTS: dict[str, tuple[int, int | None]] = {
    "transformer": (1_900_000_000, 2),
    "text_encoder": (4_762_310_656, None),
}
PUBLISHED_VAE_FILE_BYTES = 1_676_798_532


# --- the adapter -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _DecodeState:
    """What the decode of one render needs from its denoise."""

    seed: int
    latent_frames: int
    latent_height: int
    latent_width: int
    generator_state: object  # the render generator's state after the denoise (a CPU ByteTensor)


class LTXVideoAdapter(VideoAdapter):
    """One loaded LTX-Video image-to-video pipeline on one device."""

    family = LTX_VIDEO
    profile = LTX_VIDEO_PROFILE
    pipeline_class = "LTXImageToVideoPipeline"
    denoiser_name = "transformer"
    default_decode_chunk = 0  # the VAE decodes the whole clip; see the module docstring
    decode_timestep = DECODE_TIMESTEP
    decode_noise_scale = DECODE_NOISE_SCALE

    _decode_state: _DecodeState | None = None

    def call_arguments(self, image, *, prompt: str, negative_prompt: str, width: int, height: int, frames: int,
                       steps: int, guidance_scale: float, fps: int) -> dict:
        return {
            "image": image,
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "width": width,
            "height": height,
            "num_frames": frames,
            "frame_rate": fps,
            "num_inference_steps": steps,
            "guidance_scale": guidance_scale,
            # Read only by the pipeline's own decode (output_type != "latent"); decode_video uses the same.
            "decode_timestep": self.decode_timestep,
            "decode_noise_scale": self.decode_noise_scale,
        }

    def denoise(self, image, *, prompt: str, negative_prompt: str, width: int, height: int, frames: int,
                steps: int, guidance_scale: float, fps: int, seed: int, on_step=None):
        """The shared denoise, keeping what the decode needs: the latent grid, the seed, and the
        state of the render's generator after the loop (the pipeline's decode continues it)."""
        pipe = self.pipeline
        captured: dict = {}
        own = "prepare_latents" in vars(pipe)
        prepare_latents = pipe.prepare_latents
        signature = inspect.signature(prepare_latents)

        def capturing(*args, **kwargs):
            captured["generator"] = signature.bind(*args, **kwargs).arguments.get("generator")
            return prepare_latents(*args, **kwargs)

        self._decode_state = None
        object.__setattr__(pipe, "prepare_latents", capturing)
        try:
            latents = super().denoise(image, prompt=prompt, negative_prompt=negative_prompt, width=width,
                                      height=height, frames=frames, steps=steps, guidance_scale=guidance_scale,
                                      fps=fps, seed=seed, on_step=on_step)
        finally:
            if own:
                object.__setattr__(pipe, "prepare_latents", prepare_latents)
            else:
                object.__delattr__(pipe, "prepare_latents")
        generator = captured.get("generator")
        self._decode_state = _DecodeState(
            seed=seed,
            latent_frames=(frames - 1) // pipe.vae_temporal_compression_ratio + 1,
            latent_height=height // pipe.vae_spatial_compression_ratio,
            latent_width=width // pipe.vae_spatial_compression_ratio,
            generator_state=generator.get_state() if generator is not None else None,
        )
        return latents

    def decode_video(self, latents, chunk: int):
        """The end of `LTXImageToVideoPipeline.__call__`: unpack, de-normalise, (timestep) decode."""
        import torch

        state = self._decode_state
        if state is None:
            raise RuntimeError("LTX-Video latents are packed: decode the latents of this adapter's last denoise")
        pipe = self.pipeline
        vae = pipe.vae
        tokens = state.latent_frames * state.latent_height * state.latent_width
        if latents.ndim != 3 or latents.shape[1] != tokens:
            raise ValueError(f"expected packed latents (batch, {tokens}, channels) from the last denoise, "
                             f"got {tuple(latents.shape)}")
        latents = pipe._unpack_latents(latents, state.latent_frames, state.latent_height, state.latent_width,
                                       pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size)
        latents = pipe._denormalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        # The pipeline casts to the text encoder's dtype, which is the VAE's unless its decoder was upcast.
        latents = latents.to(self.vae_dtype)
        timestep = None
        if vae.config.timestep_conditioning:
            batch = latents.shape[0]
            generator = torch.Generator(device="cpu")
            if state.generator_state is not None:
                generator.set_state(state.generator_state)
            noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
            timestep = torch.tensor([self.decode_timestep] * batch, device=latents.device, dtype=latents.dtype)
            scale = torch.tensor([self.decode_noise_scale] * batch, device=latents.device, dtype=latents.dtype)
            scale = scale[:, None, None, None, None]
            latents = (1 - scale) * latents + scale * noise
        devices = [cuda_index(self.device)] if self.device.startswith("cuda") else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(state.seed)
            return vae.decode(latents, timestep, return_dict=False)[0]

    # --- precision -------------------------------------------------------------------------

    def upcast_vae_decoder(self) -> None:
        """Only the decoder in fp32: the pipeline encodes the image in the text encoder's dtype,
        which a wholly upcast VAE would refuse (input and weight dtypes must match)."""
        import torch

        self.pipeline.vae.decoder.to(torch.float32)

    @property
    def vae_dtype(self):
        return next(self.pipeline.vae.decoder.parameters()).dtype


# --- the tiny model --------------------------------------------------------------------------

# A small English vocabulary with unigram log-probabilities: whole words score better than their
# letters, so the Unigram model really segments (" the cat" -> "▁the", "▁cat").
_WORDS = ("the a an of and in on with to is are at its his her cat dog man woman child bird fish car tree sea "
          "waves water sky sun light camera slowly turns walks runs looks head face hair red blue green white "
          "black video scene close up view moving rolling flying").split()


def tokenizer_vocabulary() -> list[tuple[str, float]]:
    """T5's layout: <pad>=0, </s>=1, <unk>=2, then the pieces (the sentinels are added after)."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + word, -4.0 - 0.01 * index) for index, word in enumerate(_WORDS)]
    letters = "abcdefghijklmnopqrstuvwxyz0123456789.,'!?-"
    pieces += [("▁" + letter, -7.0) for letter in letters]
    pieces += [(letter, -8.0) for letter in letters]
    return pieces


def build_tokenizer():
    """A T5 Unigram tokenizer written in code (the real one needs a download), 128 tokens long."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast(vocab=tokenizer_vocabulary(), extra_ids=T5_EXTRA_IDS, model_max_length=MAX_PROMPT_TOKENS)


def build_tiny_pipeline(*, timestep_conditioning: bool = False):
    """Every component of the real pipeline with seeded random weights (no files, no network).

    The VAE keeps the real geometry (patch 4, three spatio-temporal 2x stages: 32x spatial, 8x
    temporal compression, so the 8k+1 frame and 32-pixel rules hold) with few channels; its
    latent statistics are random rather than zero/one so that de-normalisation is exercised.
    `timestep_conditioning=True` gives it the decoder of LTX-Video 0.9.1 and later (a timestep
    input and noise injection) instead of the reference's 0.9.0 one; `tiny:ltx` is the latter.
    """
    from farm.models.libraries import quiet_libraries

    quiet_libraries()
    import torch
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXImageToVideoPipeline,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_tokenizer()
    torch.manual_seed(TINY_SEED)
    heads, head_dim = 2, 8
    transformer = LTXVideoTransformer3DModel(
        in_channels=TINY_LATENT_CHANNELS,
        out_channels=TINY_LATENT_CHANNELS,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        cross_attention_dim=heads * head_dim,  # the caption is projected to the inner width
        num_layers=2,
        activation_fn="gelu-approximate",
        qk_norm="rms_norm_across_heads",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        caption_channels=TINY_TEXT_WIDTH,
        attention_bias=True,
        attention_out_bias=True,
    )
    if timestep_conditioning:  # the 0.9.1 decoder's layout (diffusers' convert_ltx_to_diffusers.py), narrow
        decoder = dict(decoder_block_out_channels=(8, 16, 32), decoder_layers_per_block=(1, 1, 1, 1),
                       decoder_spatio_temporal_scaling=(True, True, True), decoder_inject_noise=(False, True, True, True),
                       upsample_residual=(True, True, True), upsample_factor=(2, 2, 2))
    else:  # the reference's 0.9.0 decoder: the encoder mirrored
        decoder = dict(decoder_block_out_channels=(8, 16, 16, 16), decoder_layers_per_block=(1, 1, 1, 1, 1),
                       decoder_spatio_temporal_scaling=(True, True, True, False))
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=TINY_LATENT_CHANNELS,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        patch_size=4,
        patch_size_t=1,
        resnet_norm_eps=1e-6,
        scaling_factor=1.0,
        encoder_causal=True,
        decoder_causal=False,
        timestep_conditioning=timestep_conditioning,
        **decoder,
    )
    with torch.no_grad():
        vae.latents_mean.copy_(0.3 * torch.randn(TINY_LATENT_CHANNELS))
        vae.latents_std.copy_(0.5 + torch.rand(TINY_LATENT_CHANNELS))
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer),
        d_model=TINY_TEXT_WIDTH,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        dropout_rate=0.1,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    ))
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)
    return LTXImageToVideoPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
    )


def tiny_model_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "models" / f"tiny-{LTX_VIDEO.name}-v{TINY_MODEL_VERSION}"


def ensure_tiny_model(cache_dir: Path) -> Path:
    """Build the tiny LTX-Video into the cache (once; safe across concurrent processes)."""

    def build(staging: Path) -> None:
        build_tiny_pipeline().save_pretrained(staging, safe_serialization=True)

    return build_once(tiny_model_dir(cache_dir), build, prefix=".tiny-ltx-build-")


# --- the full-size architecture --------------------------------------------------------------

def build_fullsize_components(device: str = "meta", dtype=None) -> dict:
    """The weighted components of Lightricks/LTX-Video from the published configs, random
    weights, on `device` in `dtype` (the meta device allocates nothing)."""
    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from farm.models.fullsize import build_components

    config = FULLSIZE_CONFIGS
    return build_components({
        "transformer": lambda: LTXVideoTransformer3DModel(**config["transformer"]),
        "vae": lambda: AutoencoderKLLTXVideo(**config["vae"]),
        "text_encoder": lambda: T5EncoderModel(T5Config(**config["text_encoder"])),
    }, device, dtype)


def fullsize_parameter_counts(components: dict | None = None) -> dict[str, int]:
    components = components or build_fullsize_components("meta")
    return {name: sum(p.numel() for p in module.parameters()) for name, module in components.items()}
