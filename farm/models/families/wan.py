"""Wan 2.x image-to-video: the adapter, the tiny random-weight pipeline, the full-size configuration.

The pipeline is diffusers' `WanImageToVideoPipeline` (Wan 2.1 I2V): a UMT5 text encoder with a
T5 (Unigram) tokenizer, a CLIP ViT-H/14 vision tower whose penultimate hidden states condition
every block's extra image cross-attention, the `WanTransformer3DModel` (36 input channels: 16
noisy latent channels, 4 first-frame mask channels, 16 channels of the VAE-encoded first frame
followed by zeros), the causal 3D `AutoencoderKLWan` (8x spatial, 4x temporal: 4k+1 frames ->
k+1 latent frames) and a `UniPCMultistepScheduler` with flow sigmas (flow_shift 3.0, as the
480P weights publish it).

Prompt conditioning is computed here rather than by the pipeline, exactly as the pipeline
intends it (`_get_t5_prompt_embeds`): the prompt cleaned, tokenized to 512 tokens with the
attention mask, the UMT5 encoder's last hidden state, and every position past the prompt's own
tokens set to zero. The pipeline's own path cannot run in farm's environment: its
`prompt_clean` calls `ftfy.fix_text`, and ftfy is an optional dependency that diffusers only
imports when installed (`is_ftfy_available()`); farm does not depend on it, so every call with
`prompt=` dies with `NameError: name 'ftfy' is not defined`. `clean_prompt` below uses ftfy when
it is installed and otherwise leaves that one step out (ftfy repairs mojibake; text that is
already valid Unicode comes back unchanged), then applies the pipeline's own HTML unescaping
and whitespace cleaning. The image conditioning is the pipeline's own (`encode_image`).

Classifier-free guidance is two transformer passes per step (conditional, then unconditional;
`guidance_scale > 1`), which the VRAM profile records as `cfg_batched=False`. The decode is the
pipeline's: latents are de-normalised with the VAE config's `latents_mean`/`latents_std`
(`latents / (1 / std) + mean`) and decoded in one call; the Wan VAE already decodes one latent
frame at a time with a causal cache, so the clip is never split into chunks (a chunk boundary
would cut that cache and change the frames).
"""

from __future__ import annotations

import html
from pathlib import Path

from farm.core.families import WAN
from farm.core.vram import WAN_PROFILE
from farm.models.adapter import VideoAdapter
from farm.models.cached_build import build_once

# Bump when the tiny configs below change so that caches built by older versions are rebuilt.
TINY_MODEL_VERSION = 1
TINY_SEED = 20250301
MAX_SEQUENCE_LENGTH = 512  # WanImageToVideoPipeline.__call__'s max_sequence_length default

REFERENCE = "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"

# --- the published configuration --------------------------------------------------------------

# The config.json (or scheduler_config.json / preprocessor_config.json) values of each component
# of Wan-AI/Wan2.1-I2V-14B-480P-Diffusers.
FULLSIZE_CONFIGS: dict[str, dict] = {
    # transformer/config.json
    "transformer": {
        "patch_size": (1, 2, 2),
        "num_attention_heads": 40,
        "attention_head_dim": 128,
        "in_channels": 36,
        "out_channels": 16,
        "text_dim": 4096,
        "freq_dim": 256,
        "ffn_dim": 13824,
        "num_layers": 40,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "image_dim": 1280,
        "added_kv_proj_dim": 5120,
        "rope_max_seq_len": 1024,
        "pos_embed_seq_len": None,
    },
    # vae/config.json (the Wan 2.1 VAE)
    "vae": {
        "base_dim": 96,
        "z_dim": 16,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
        "dropout": 0.0,
        "latents_mean": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                         0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
        "latents_std": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                        3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916],
    },
    # text_encoder/config.json (google/umt5-xxl's encoder)
    "text_encoder": {
        "vocab_size": 256384,
        "d_model": 4096,
        "d_kv": 64,
        "d_ff": 10240,
        "num_layers": 24,
        "num_decoder_layers": 24,
        "num_heads": 64,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "dropout_rate": 0.1,
        "layer_norm_epsilon": 1e-6,
        "feed_forward_proj": "gated-gelu",
        "dense_act_fn": "gelu_new",
        "is_gated_act": True,
        "scalable_attention": True,
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    },
    # image_encoder/config.json (CLIPVisionModel: OpenCLIP ViT-H/14's vision tower, no projection)
    "image_encoder": {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "num_channels": 3,
        "image_size": 224,
        "patch_size": 14,
        "projection_dim": 1024,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
    },
    # scheduler/scheduler_config.json
    "scheduler": {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "solver_order": 2,
        "prediction_type": "flow_prediction",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "predict_x0": True,
        "solver_type": "bh2",
        "lower_order_final": True,
        "disable_corrector": [],
        "solver_p": None,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_flow_sigmas": True,
        "flow_shift": 3.0,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "final_sigmas_type": "zero",
        "rescale_betas_zero_snr": False,
    },
    # image_processor/preprocessor_config.json (CLIP's 224 px preprocessing)
    "image_processor": {
        "do_resize": True,
        "size": {"shortest_edge": 224},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True,
    },
}
WEIGHTED_COMPONENTS = ("transformer", "text_encoder", "image_encoder", "vae")

# Published parameter counts, rounded as published (the test allows 1%):
# - transformer: 16.4B, the Hugging Face Hub's "Model size" of the Wan2.1-I2V-14B-480P
#   transformer (city96/Wan2.1-I2V-14B-480P-gguf, a direct conversion; the same 16.4B is the
#   32.8 GB bf16 file of Comfy-Org/Wan_2.1_ComfyUI_repackaged at 2 bytes a parameter). The
#   "14B" of the name is the text-to-video backbone; I2V adds the image embedder and a second
#   (image) key/value projection pair in each of the 40 blocks' cross-attention.
# - vae: 127M, the Wan-VAE's size in the Wan 2.1 paper ("Wan: Open and Advanced Large-Scale
#   Video Generative Models", 2025) and its 508 MB fp32 Wan2.1_VAE.pth.
# - text_encoder: 5.68B, UMT5-XXL's encoder: the 22.7 GB of fp32 text_encoder shards of
#   Wan-AI/Wan2.1-I2V-14B-720P-Diffusers at 4 bytes a parameter (11.4 GB in bf16).
# - image_encoder: 0.63B, CLIP ViT-H/14's vision tower: the 1.26 GB fp16 image_encoder
#   model.safetensors of Wan-AI/Wan2.1-I2V-14B-720P-Diffusers at 2 bytes a parameter.
PUBLISHED_PARAMETER_COUNTS = {
    "transformer": 16_400_000_000,
    "text_encoder": 5_680_000_000,
    "image_encoder": 630_000_000,
    "vae": 127_000_000,
}


def build_fullsize_components(device: str = "meta", dtype=None) -> dict:
    """The four weighted components of the reference model from FULLSIZE_CONFIGS, on `device`
    (nothing allocated on `meta`), in `dtype` (fp32 unless given)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    from farm.models.fullsize import build_components

    config = FULLSIZE_CONFIGS
    return build_components({
        "transformer": lambda: WanTransformer3DModel(**config["transformer"]),
        "text_encoder": lambda: UMT5EncoderModel(UMT5Config(**config["text_encoder"])),
        "image_encoder": lambda: CLIPVisionModel(CLIPVisionConfig(**config["image_encoder"])),
        "vae": lambda: AutoencoderKLWan(**config["vae"]),
    }, device, dtype)


def fullsize_parameter_counts() -> dict[str, int]:
    """Parameters of each weighted component of the reference model, counted on the meta device."""
    components = build_fullsize_components("meta")
    return {name: sum(p.numel() for p in module.parameters()) for name, module in components.items()}


# --- the tiny model ----------------------------------------------------------------------------

TINY_TEXT_DIM = 32
TINY_IMAGE_DIM = 32
TINY_CLIP_IMAGE_SIZE = 32

# A Unigram vocabulary of our own (UMT5's 256k SentencePiece pieces need a download): T5's
# special tokens first (<pad>=0, </s>=1, <unk>=2), the word-start marker, single characters
# (word-initial and inner), then whole words and a few common pieces, each scored by how long it
# is, so that Unigram prefers a known word over its letters.
_WORDS = (
    "a", "an", "the", "and", "of", "in", "on", "is", "it", "its", "to", "with", "at", "by",
    "cat", "dog", "man", "woman", "bird", "car", "sea", "sky", "wave", "waves", "tree", "trees",
    "walk", "walks", "walking", "run", "runs", "running", "turn", "turns", "head", "slowly",
    "camera", "pan", "pans", "zoom", "light", "water", "city", "night", "rolling", "blurry",
    "static", "low", "quality", "bright", "dark", "red", "blue", "green",
)
_PIECES = ("ing", "ed", "er", "es", "ly", "th", "an", "on", "re", "in")
_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()"


def tokenizer_vocabulary() -> list[tuple[str, float]]:
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for char in _CHARACTERS:
        vocab += [("\u2581" + char, -8.0), (char, -8.5)]
    vocab += [(piece, -6.0) for piece in _PIECES]
    vocab += [("\u2581" + word, -3.0 - 0.01 * len(vocab)) for word in _WORDS]
    return vocab


def build_tokenizer():
    """A T5 tokenizer (the class Wan's pipeline loads) over farm's own Unigram vocabulary."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=tokenizer_vocabulary(), extra_ids=0, model_max_length=MAX_SEQUENCE_LENGTH)


def build_tiny_pipeline():
    """Every component of WanImageToVideoPipeline with seeded random weights (no files, no network)."""
    from farm.models.libraries import quiet_libraries

    quiet_libraries()
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    tokenizer = build_tokenizer()
    torch.manual_seed(TINY_SEED)
    real_vae = FULLSIZE_CONFIGS["vae"]
    # The real geometry: 4 levels (8x spatial), temporal downsampling in the last two (4x),
    # 16 latent channels with the real latents_mean/latents_std; only the widths are small.
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=real_vae["z_dim"],
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=real_vae["temperal_downsample"],
        latents_mean=real_vae["latents_mean"],
        latents_std=real_vae["latents_std"],
    )
    heads, head_dim = 2, 12
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=2 * real_vae["z_dim"] + 4,  # noisy latents + condition latents + 4 mask channels
        out_channels=real_vae["z_dim"],
        text_dim=TINY_TEXT_DIM,
        freq_dim=32,
        ffn_dim=48,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=TINY_IMAGE_DIM,
        added_kv_proj_dim=heads * head_dim,  # the real model's is its inner width too (40 x 128)
        rope_max_seq_len=1024,
    )
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            **{**FULLSIZE_CONFIGS["text_encoder"], "vocab_size": len(tokenizer), "d_model": TINY_TEXT_DIM,
               "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4}
        )
    )
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=TINY_IMAGE_DIM,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            image_size=TINY_CLIP_IMAGE_SIZE,
            patch_size=8,
            projection_dim=TINY_IMAGE_DIM,
            hidden_act="gelu",
        )
    )
    image_processor = CLIPImageProcessor(
        **{**FULLSIZE_CONFIGS["image_processor"], "size": {"shortest_edge": TINY_CLIP_IMAGE_SIZE},
           "crop_size": {"height": TINY_CLIP_IMAGE_SIZE, "width": TINY_CLIP_IMAGE_SIZE}}
    )
    scheduler = UniPCMultistepScheduler(**FULLSIZE_CONFIGS["scheduler"])
    for module in (vae, transformer, text_encoder, image_encoder):
        module.eval()
    return WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        image_processor=image_processor,
        image_encoder=image_encoder,
        transformer=transformer,
    )


def tiny_model_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "models" / f"tiny-wan-v{TINY_MODEL_VERSION}"


def ensure_tiny_model(cache_dir: Path) -> Path:
    """Build the tiny Wan model into the cache (once; safe across concurrent processes)."""

    def build(staging: Path) -> None:
        build_tiny_pipeline().save_pretrained(staging, safe_serialization=True)

    return build_once(tiny_model_dir(cache_dir), build, prefix=".tiny-wan-build-")


# --- the adapter -------------------------------------------------------------------------------


def clean_prompt(text: str) -> str:
    """The pipeline's `prompt_clean`, with ftfy's repair only where ftfy is installed."""
    from diffusers.pipelines.wan.pipeline_wan_i2v import whitespace_clean
    from diffusers.utils import is_ftfy_available

    if is_ftfy_available():
        import ftfy

        text = ftfy.fix_text(text)
    return whitespace_clean(html.unescape(html.unescape(text)).strip())


class WanAdapter(VideoAdapter):
    """One loaded Wan 2.x image-to-video pipeline on one device."""

    family = WAN
    profile = WAN_PROFILE
    pipeline_class = "WanImageToVideoPipeline"
    denoiser_name = "transformer"
    default_decode_chunk = 0  # the Wan VAE decodes frame by frame itself (a causal cache)

    # --- conditioning ----------------------------------------------------------------------

    def encode_prompt(self, prompt: str, *, max_sequence_length: int = MAX_SEQUENCE_LENGTH):
        """(embeddings, truncated): what `_get_t5_prompt_embeds` computes, for one prompt."""
        import torch
        from diffusers.utils.torch_utils import get_module_execution_device

        pipe = self.pipeline
        tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
        text = clean_prompt(prompt)
        tokens = tokenizer([text], padding="max_length", max_length=max_sequence_length, truncation=True,
                           add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        truncated = len(tokenizer(text, add_special_tokens=True).input_ids) > max_sequence_length
        device = get_module_execution_device(encoder)  # where it runs, also under model CPU offload
        with torch.no_grad():
            hidden = encoder(tokens.input_ids.to(device), tokens.attention_mask.to(device)).last_hidden_state
        length = int(tokens.attention_mask[0].gt(0).sum())
        embeds = hidden.to(dtype=encoder.dtype, device=self.device)
        embeds[:, length:] = 0  # the pipeline keeps the prompt's own tokens and zero-pads the rest
        return embeds, truncated

    # --- rendering -------------------------------------------------------------------------

    def call_arguments(self, image, *, prompt: str, negative_prompt: str, width: int, height: int, frames: int,
                       steps: int, guidance_scale: float, fps: int) -> dict:
        """The pipeline call. Wan takes no frame-rate input: `fps` only sets the MP4's rate."""
        positive, truncated = self.encode_prompt(prompt)
        if truncated:
            self.note(f"the prompt is longer than UMT5's {MAX_SEQUENCE_LENGTH} tokens; the rest was ignored")
        arguments = dict(image=image, prompt_embeds=positive, height=height, width=width, num_frames=frames,
                         num_inference_steps=steps, guidance_scale=guidance_scale,
                         max_sequence_length=MAX_SEQUENCE_LENGTH)
        if guidance_scale > 1:  # the pipeline's do_classifier_free_guidance: only then is it used
            arguments["negative_prompt_embeds"], _ = self.encode_prompt(negative_prompt)
        return arguments

    def decode_video(self, latents, chunk: int):
        """The pipeline's decode after its denoise loop (`chunk` is not used: see the module doc)."""
        import torch
        from diffusers.utils.torch_utils import get_module_execution_device

        vae = self.pipeline.vae
        latents = latents.to(device=get_module_execution_device(vae), dtype=vae.dtype)
        z_dim = vae.config.z_dim
        latents_mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(latents.device, latents.dtype)
        latents_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(
            latents.device, latents.dtype)
        latents = latents / latents_std + latents_mean
        return vae.decode(latents, return_dict=False)[0]
