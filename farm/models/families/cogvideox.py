"""CogVideoX image-to-video: the adapter, the tiny random-weight pipeline, the full-size configuration.

The pipeline is diffusers' `CogVideoXImageToVideoPipeline`: a T5 v1.1 encoder (tokenised by
`T5Tokenizer`, the class the pipeline declares), a `CogVideoXTransformer3DModel` that denoises
the noisy latents concatenated channel-wise with the image's latents, the causal 3D VAE
`AutoencoderKLCogVideoX` (8x spatial, 4x temporal) and `CogVideoXDDIMScheduler` with the
published model's configuration. Conditioning is the pipeline's own: it tokenises and encodes
the prompt and the negative prompt with T5 (this works with transformers 5.x) and encodes the
image with the VAE; farm passes the prompt, the negative prompt and the image straight through.

What the model accepts (verified in diffusers 0.42.1, see `farm.core.families.COGVIDEOX`):

- frames 8k+1. The pipeline takes `(frames - 1) // 4 + 1` latent frames and never checks the
  count; the VAE decodes an odd number of latent frames X into 4(X-1)+1 frames and an even
  number into 4X (`AutoencoderKLCogVideoX._decode` decodes 2 latent frames at a time, the first
  batch taking the odd one, and `CogVideoXUpsample3D` keeps the first frame only when the batch
  is odd). So 4k+1 frames with k odd (13, 21, ...) come back as 4k+4 frames, and other counts are
  rounded down to a 4k+1 first: only 8k+1 frames come back as many as were asked for.
- CogVideoX-5b-I2V has learned positional embeddings (`use_learned_positional_embeddings`):
  `CogVideoXPatchEmbed.forward` raises a ValueError at any latent size but its
  `sample_height` x `sample_width` (60 x 90: 720x480 pixels), and at any frame count but its
  `sample_frames` (49) silently replaces the learned table by a freshly computed sin-cos one.
  So the reference model renders 720x480 and 49 frames only.
- CogVideoX1.5-5B-I2V (`patch_size_t=2`, rotary embeddings only, an `ofs` embedding) takes any
  size that is a multiple of 16 and pads an odd latent frame count by one frame at the front;
  with `output_type="latent"` the pipeline returns the padded latents, so `decode_video` drops the
  padding as the pipeline does after its denoise loop.

There is no frame-rate conditioning in this pipeline (the 1.5 model's `ofs` is fixed at 2.0 by
the pipeline): farm's fps only sets the MP4's rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from farm.core.families import COGVIDEOX, FamilyRules
from farm.core.vram import COGVIDEOX_PROFILE, ModelProfile
from farm.models.adapter import VideoAdapter
from farm.models.cached_build import build_once

# Bump when the configs below change so that caches built by older versions are rebuilt.
TINY_MODEL_VERSION = 1
TINY_SEED = 20240919
FAMILY = "cogvideox"
REFERENCE = "THUDM/CogVideoX-5b-I2V"

# --- the published configuration ----------------------------------------------------------------

# THUDM/CogVideoX-5b-I2V: transformer/config.json, vae/config.json, text_encoder/config.json
# (google t5-v1_1-xxl, encoder only) and scheduler/scheduler_config.json.
FULLSIZE_CONFIGS: dict[str, dict] = {
    "transformer": {
        "activation_fn": "gelu-approximate",
        "attention_bias": True,
        "attention_head_dim": 64,
        "dropout": 0.0,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 32,  # 16 noisy latent channels + 16 image latent channels
        "max_text_seq_length": 226,
        "norm_elementwise_affine": True,
        "norm_eps": 1e-05,
        "num_attention_heads": 48,
        "num_layers": 42,
        "out_channels": 16,
        "patch_size": 2,
        "sample_frames": 49,
        "sample_height": 60,  # latent rows: 480 pixels
        "sample_width": 90,  # latent columns: 720 pixels
        "spatial_interpolation_scale": 1.875,
        "temporal_compression_ratio": 4,
        "temporal_interpolation_scale": 1.0,
        "text_embed_dim": 4096,
        "time_embed_dim": 512,
        "timestep_activation_fn": "silu",
        "use_learned_positional_embeddings": True,
        "use_rotary_positional_embeddings": True,
    },
    "vae": {
        "act_fn": "silu",
        "block_out_channels": (128, 256, 256, 512),
        "down_block_types": ("CogVideoXDownBlock3D",) * 4,
        "force_upcast": True,
        "in_channels": 3,
        "latent_channels": 16,
        "latents_mean": None,
        "latents_std": None,
        "layers_per_block": 3,
        "norm_eps": 1e-06,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_height": 480,
        "sample_width": 720,
        "scaling_factor": 0.7,
        "shift_factor": None,
        "temporal_compression_ratio": 4,
        "up_block_types": ("CogVideoXUpBlock3D",) * 4,
        "use_post_quant_conv": False,
        "use_quant_conv": False,
    },
    "text_encoder": {
        "d_ff": 10240,
        "d_kv": 64,
        "d_model": 4096,
        "decoder_start_token_id": 0,
        "dense_act_fn": "gelu_new",
        "dropout_rate": 0.1,
        "eos_token_id": 1,
        "feed_forward_proj": "gated-gelu",
        "initializer_factor": 1.0,
        "is_encoder_decoder": True,
        "is_gated_act": True,
        "layer_norm_epsilon": 1e-06,
        "num_decoder_layers": 24,
        "num_heads": 64,
        "num_layers": 24,
        "pad_token_id": 0,
        "relative_attention_max_distance": 128,
        "relative_attention_num_buckets": 32,
        "tie_word_embeddings": False,
        "vocab_size": 32128,
    },
    "scheduler": {  # CogVideoXDDIMScheduler
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "sample_max_value": 1.0,
        "set_alpha_to_one": True,
        "snr_shift_scale": 1.0,
        "steps_offset": 0,
        "timestep_spacing": "trailing",
        "trained_betas": None,
    },
}

# What the published checkpoint of THUDM/CogVideoX-5b-I2V holds per component, from the Hub's
# file listing: every component is stored in bf16 (2 bytes per value), so values = bytes / 2.
#   transformer: shards of 4.99 + 4.99 + 1.27 GB = 11.25 GB (rounded to 10 MB per shard, so
#     this figure is good to about 0.2%); it includes the learned positional embedding, a
#     persistent buffer of (226 + 13 x 30 x 45) x 3072 values;
#   vae: one file of 431 MB (good to about 0.1%);
#   text_encoder: the t5-v1_1-xxl encoder, shards of 4.99 + 4.53 GB; exactly 4,762,310,656
#     parameters (its bf16 safetensors index total_size: 9,524,621,312 bytes).
# The model card and the paper (arXiv 2408.06072) only say "5B" for the transformer.
PUBLISHED_PARAMETER_COUNTS = {
    "transformer": 5_625_000_000,
    "vae": 215_500_000,
    "text_encoder": 4_762_310_656,
}
PUBLISHED_EXACT = frozenset({"text_encoder"})  # the others are rounded: within 1%


def build_fullsize_components(device: str = "meta", dtype=None) -> dict:
    """The three weighted components of CogVideoX-5b-I2V from the published configs (random
    weights; on the meta device nothing is allocated)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from farm.models.fullsize import build_components

    config = FULLSIZE_CONFIGS
    return build_components({
        "transformer": lambda: CogVideoXTransformer3DModel(**config["transformer"]),
        "vae": lambda: AutoencoderKLCogVideoX(**config["vae"]),
        "text_encoder": lambda: T5EncoderModel(T5Config(**config["text_encoder"])),
    }, device, dtype)


def stored_values(module) -> int:
    """What a checkpoint of `module` holds: its parameters plus its persistent buffers (the
    5b-I2V transformer's learned positional embedding is a buffer), each tensor counted once."""
    seen: set[int] = set()
    total = 0
    for tensor in module.state_dict(keep_vars=True).values():
        if id(tensor) in seen:  # tied weights (T5's shared embedding) are stored once
            continue
        seen.add(id(tensor))
        total += tensor.numel()
    return total


def fullsize_parameter_counts(components: dict | None = None) -> dict[str, int]:
    """Values stored per component of the full-size model (parameters + persistent buffers)."""
    components = components or build_fullsize_components("meta")
    return {name: stored_values(module) for name, module in components.items()}


# --- the tiny model ---------------------------------------------------------------------------

TEXT_WIDTH = 32  # the tiny T5's d_model (4096 in the real one)
TINY_SIZE = 64  # its reference size (the transformer's sample size, in pixels)
TINY_FRAMES = 9
MAX_PROMPT_TOKENS = 226  # the pipeline's max_sequence_length and the transformer's max_text_seq_length

_WORDS = (
    "the a an of and in on to with is are at by from it its his her their this that "
    "cat dog bird fish horse person man woman girl boy child people car boat tree flower "
    "water sea ocean wave waves river sky cloud clouds sun moon light fire snow rain wind "
    "city street road house room forest mountain field beach night day "
    "walk walks walking run runs running turn turns turning fly flies flying roll rolls rolling "
    "move moves moving look looks looking smile head eye hand slowly quickly gently camera "
    "red green blue white black golden bright dark small big high quality detailed realistic video"
).split()


def tokenizer_vocabulary() -> list[tuple[str, float]]:
    """A T5-style Unigram vocabulary written here: <pad>=0, </s>=1, <unk>=2, then pieces with
    log-probability scores (whole words beat their letters, so tokenising really segments),
    then the 100 sentinel tokens <extra_id_99> ... <extra_id_0>, as in t5-v1_1."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{w}", -3.0 - 0.01 * i) for i, w in enumerate(_WORDS)]
    pieces += [(suffix, -4.0) for suffix in ("s", "ing", "ed", "ly", "er")]
    characters = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;()"
    pieces += [(f"▁{c}", -6.0) for c in characters]
    pieces += [(c, -7.0) for c in characters + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    seen: set[str] = set()
    unique = []
    for piece, score in pieces:
        if piece not in seen:
            seen.add(piece)
            unique.append((piece, score))
    return unique + [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]


def build_tokenizer():
    from transformers import T5Tokenizer

    vocab = tokenizer_vocabulary()
    return T5Tokenizer(vocab=vocab, extra_ids=100, model_max_length=MAX_PROMPT_TOKENS)


def build_tiny_pipeline():
    """Every component of the real pipeline, tiny, with seeded random weights (no files, no network).

    The transformer keeps the real model's rotary embeddings but not its learned positional
    table (which pins a model to one size), so the tiny model renders any multiple of 16.
    """
    from farm.models.libraries import quiet_libraries

    quiet_libraries()
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_tokenizer()
    torch.manual_seed(TINY_SEED)
    latent_channels = FULLSIZE_CONFIGS["vae"]["latent_channels"]  # the real latent geometry
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,  # rotary: 4 temporal + 6 + 6 spatial dimensions per head
        in_channels=2 * latent_channels,
        out_channels=latent_channels,
        time_embed_dim=32,
        text_embed_dim=TEXT_WIDTH,
        num_layers=2,
        sample_width=TINY_SIZE // 8,
        sample_height=TINY_SIZE // 8,
        sample_frames=TINY_FRAMES,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=MAX_PROMPT_TOKENS,
        use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False,
    )
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=4,
        temporal_compression_ratio=4,
        sample_height=256,  # VAE tiling works in tiles of half this (128 pixels)
        sample_width=256,
        scaling_factor=FULLSIZE_CONFIGS["vae"]["scaling_factor"],
        force_upcast=True,
    )
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=TEXT_WIDTH,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            relative_attention_num_buckets=32,
            relative_attention_max_distance=128,
            feed_forward_proj="gated-gelu",
            dense_act_fn="gelu_new",
            is_gated_act=True,
            layer_norm_epsilon=1e-6,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
    )
    scheduler = CogVideoXDDIMScheduler(**FULLSIZE_CONFIGS["scheduler"])
    return CogVideoXImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


def tiny_model_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "models" / f"tiny-{FAMILY}-v{TINY_MODEL_VERSION}"


def ensure_tiny_model(cache_dir: Path) -> Path:
    """Build the tiny CogVideoX into the cache (once; safe across concurrent processes)."""

    def build(staging: Path) -> None:
        build_tiny_pipeline().save_pretrained(staging)

    return build_once(tiny_model_dir(cache_dir), build, prefix=".tiny-cogvideox-build-")


# --- the adapter --------------------------------------------------------------------------------


class CogVideoXAdapter(VideoAdapter):
    """CogVideoX image-to-video behind farm's adapter interface.

    The VAE decodes 2 latent frames at a time with a causal cache between them (and its
    `enable_slicing` slices the batch, not the frames), so there is no frame chunk to choose:
    `decode_video` ignores `chunk`.
    """

    family: ClassVar[FamilyRules] = COGVIDEOX
    profile: ClassVar[ModelProfile] = COGVIDEOX_PROFILE
    pipeline_class: ClassVar[str] = "CogVideoXImageToVideoPipeline"
    denoiser_name: ClassVar[str] = "transformer"
    default_decode_chunk: ClassVar[int] = 0

    _latent_frames: int | None = None  # of the last denoise, before any CogVideoX 1.5 padding

    def call_arguments(self, image, *, prompt: str, negative_prompt: str, width: int, height: int, frames: int,
                       steps: int, guidance_scale: float, fps: int) -> dict:
        pipe = self.pipeline
        self._latent_frames = (frames - 1) // pipe.vae_scale_factor_temporal + 1
        return {
            "image": image,
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "width": width,
            "height": height,
            "num_frames": frames,
            "num_inference_steps": steps,
            "guidance_scale": guidance_scale,
            # The docstring's requirement: as long as the transformer's text sequence.
            "max_sequence_length": pipe.transformer.config.max_text_seq_length,
        }

    def decode_video(self, latents, chunk: int):
        """As the pipeline after its denoise loop: drop CogVideoX 1.5's padding frames, then
        `decode_latents` (to (B, C, F, H, W), divide by the VAE's scaling factor, decode)."""
        pipe = self.pipeline
        padding = latents.shape[1] - self._latent_frames if self._latent_frames else 0
        if padding > 0:
            latents = latents[:, padding:]
        latents = latents.permute(0, 2, 1, 3, 4)
        latents = 1 / pipe.vae_scaling_factor_image * latents
        return pipe.vae.decode(latents.to(self.vae_dtype)).sample

    def upcast_vae_decoder(self) -> None:
        """Only the decoder in fp32: the pipeline encodes the image with the VAE's encoder in the
        transformer's dtype (`prepare_latents` casts the image to the prompt embeddings' dtype),
        which an fp32 encoder would refuse."""
        import torch

        self.pipeline.vae.decoder.to(torch.float32)

    @property
    def vae_dtype(self):
        return next(self.pipeline.vae.decoder.parameters()).dtype
