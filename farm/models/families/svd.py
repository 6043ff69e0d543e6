"""Stable Video Diffusion (image-to-video, no prompt): the adapter, the tiny model, the full-size configs.

The pipeline is diffusers' `StableVideoDiffusionPipeline`: a CLIP ViT-H/14 image embedding
(`CLIPVisionModelWithProjection`, the image resized to 224x224 and normalised by the
`CLIPImageProcessor`) in the cross-attention of a spatio-temporal UNet
(`UNetSpatioTemporalConditionModel`, 8 input channels: the noisy latents and the VAE latents of
the conditioning image), the micro-conditioning `added_time_ids` = (fps - 1, motion bucket,
noise augmentation), an EDM-style `EulerDiscreteScheduler` (v-prediction, Karras sigmas from
0.002 to 700) and a VAE whose decoder is temporal (`AutoencoderKLTemporalDecoder`). The
conditioning is the pipeline's own: nothing is computed here.

farm's parameters map as follows:
- `guidance_scale` -> `max_guidance_scale`, with `min_guidance_scale=1.0`: SVD's guidance rises
  linearly from 1 on the first frame to `guidance_scale` on the last (farm's FRAME_RAMP);
- `fps` -> `fps`, as the pipeline expects it: the pipeline itself subtracts 1 (the UNet was
  micro-conditioned on fps - 1 in training);
- `motion_bucket_id=127` and `noise_aug_strength=0.02` stay the pipeline's (and the model
  card's) defaults;
- `prompt` and `negative_prompt`: SVD reads neither. The base class notes an unused prompt;
  an unused negative prompt is noted here. Both end in the render's warnings.

Decoding (`decode_video`) is the pipeline's own `decode_latents(latents, num_frames, chunk)`:
1/scaling_factor, then the temporal decoder over `chunk` frames at a time (num_frames is taken
from the latents, which are (batch, frames, channels, height, width)). Frames in one chunk are
decoded together (the decoder has temporal layers), so the chunk changes the result slightly:
8 by default (as in the pipeline's own example, `decode_chunk_size=8`), 1 with the `vae_slicing` saver.

Memory savers are applied here, not by the base class: the temporal VAE has no slicing of its
own (`AutoencoderKLTemporalDecoder.enable_slicing` raises NotImplementedError, which the shared
`VideoAdapter.apply_savers` would call), and feed-forward chunking (`ff_chunking`, one of SVD's
savers) is not handled by the base class at all. In SVD's UNet `enable_forward_chunking(1, dim=0)`
is right for every block: spatial blocks are chunked over batch x frames (one frame at a time),
temporal blocks are hard-wired by diffusers to chunk over their frame axis (one frame at a time).
"""

from __future__ import annotations

import json
from pathlib import Path

from farm.core.families import SVD
from farm.core.vram import CPU_OFFLOAD, FF_CHUNKING, SAVER_LEVELS, SVD_PROFILE, VAE_SLICING
from farm.models.adapter import VideoAdapter
from farm.models.cached_build import build_once
from farm.models.fullsize import VISION_CONFIG as I2VGEN_XL_VISION_CONFIG

# Bump when the tiny configs below change so that caches built by older versions are rebuilt.
TINY_MODEL_VERSION = 1
TINY_SEED = 20240711

REFERENCE_REPO = "stabilityai/stable-video-diffusion-img2vid-xt"
MOTION_BUCKET_ID = 127  # the pipeline's default (the model card's)
NOISE_AUG_STRENGTH = 0.02  # the pipeline's default
MIN_GUIDANCE_SCALE = 1.0  # guidance on the first frame; the last gets guidance_scale
CLIP_IMAGE_SIZE = 224  # the pipeline resizes the conditioning image to 224x224 itself

# The published configuration of stabilityai/stable-video-diffusion-img2vid-xt, component by
# component (each folder's config.json / scheduler_config.json / preprocessor_config.json).
FULLSIZE_CONFIGS: dict[str, dict] = {
    # unet/config.json
    "unet": {
        "sample_size": 96,
        "in_channels": 8,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal",
                             "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        "up_block_types": ("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal",
                           "CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        "block_out_channels": (320, 640, 1280, 1280),
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 768,
        "layers_per_block": 2,
        "cross_attention_dim": 1024,
        "transformer_layers_per_block": 1,
        "num_attention_heads": (5, 10, 20, 20),
        "num_frames": 25,
    },
    # vae/config.json (force_upcast: the VAE asks for fp32 under fp16)
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "sample_size": 768,
        "scaling_factor": 0.18215,
        "force_upcast": True,
    },
    # image_encoder/config.json: the OpenCLIP ViT-H/14 image tower at 224 px, projected to 1024
    # (the same as I2VGen-XL's)
    "image_encoder": {**I2VGEN_XL_VISION_CONFIG, "layer_norm_eps": 1e-05},
    # scheduler/scheduler_config.json (EulerDiscreteScheduler; clip_sample, set_alpha_to_one and
    # skip_prk_steps are in the file too, but are not EulerDiscreteScheduler arguments)
    "scheduler": {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "sigma_max": 700.0,
        "sigma_min": 0.002,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "timestep_type": "continuous",
        "trained_betas": None,
        "use_karras_sigmas": True,
    },
    # feature_extractor/preprocessor_config.json (OpenAI CLIP mean/std, the CLIPImageProcessor defaults)
    "feature_extractor": {
        "crop_size": {"height": 224, "width": 224},
        "size": {"shortest_edge": 224},
        "do_center_crop": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
    },
}

# Parameters counted on the meta device from FULLSIZE_CONFIGS (the family's test recounts them;
# farm.core.vram.SVD_PROFILE.component_params holds the same numbers).
COUNTED_PARAMETER_COUNTS = {
    "unet": 1_524_623_082,
    "vae": 97_742_847,
    "image_encoder": 632_076_800,
}
# Published figures, rounded as they were published (the test allows 1%):
# - unet: the SVD paper (Blattmann et al. 2023, "Stable Video Diffusion", arXiv:2311.15127) gives
#   the video UNet as 1521M parameters (SD 2.1's UNet plus about 656M temporal ones);
# - image_encoder: OpenCLIP's model profile table (docs/model_profile.csv) gives the ViT-H-14
#   image tower as 632.08M.
# Both are quoted from those sources as remembered: neither could be opened offline here.
# No count of the temporal-decoder VAE is published; its encoder is checked instead to be
# Stable Diffusion's KL encoder (the test compares it with I2VGen-XL's published VAE config).
PUBLISHED_PARAMETER_COUNTS = {
    "unet": 1_521_000_000,
    "image_encoder": 632_080_000,
}


def build_fullsize_components(device: str = "meta", dtype=None) -> dict:
    """The weighted components of SVD-XT from the published configs (on `meta`: nothing allocated).
    Its AlphaBlender's mix_factor is made with torch.Tensor([...]), off the default device:
    `build_components` moves every module where the rest is."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from farm.models.fullsize import build_components

    config = FULLSIZE_CONFIGS
    return build_components({
        "unet": lambda: UNetSpatioTemporalConditionModel(**config["unet"]),
        "vae": lambda: AutoencoderKLTemporalDecoder(**config["vae"]),
        "image_encoder": lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**config["image_encoder"])),
    }, device, dtype, seed=TINY_SEED)


def fullsize_parameter_counts(components: dict | None = None) -> dict[str, int]:
    components = components if components is not None else build_fullsize_components("meta")
    return {name: sum(p.numel() for p in module.parameters()) for name, module in components.items()}


# --- the tiny model -------------------------------------------------------------------------

TINY_WIDTH = 32  # GroupNorm in SVD's blocks has 32 groups: 32 channels is the least a block takes
TINY_CROSS_ATTENTION_DIM = 32


def build_tiny_pipeline():
    """Every component of the real pipeline, same classes, seeded random weights, tiny widths.

    The UNet keeps the real block layout (three cross-attention spatio-temporal levels and one
    without, so three down- and three upsamplers) and the real 8-channel input; the VAE keeps
    the real 8x downsampling (four levels) and 4 latent channels; the image encoder takes the
    224x224 image the pipeline resizes to (patches of 32 px: 49 tokens). The scheduler is the
    real one with the real model's config.
    """
    from farm.models.libraries import quiet_libraries

    quiet_libraries()
    import torch
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(TINY_SEED)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=8,
        in_channels=8,
        out_channels=4,
        down_block_types=FULLSIZE_CONFIGS["unet"]["down_block_types"],
        up_block_types=FULLSIZE_CONFIGS["unet"]["up_block_types"],
        block_out_channels=(TINY_WIDTH,) * 4,
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=3 * 8,  # fps, motion bucket, noise augmentation
        layers_per_block=1,
        cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
        transformer_layers_per_block=1,
        num_attention_heads=(2, 2, 2, 2),
        num_frames=SVD.default_frames,
    )
    vae = AutoencoderKLTemporalDecoder(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        block_out_channels=(TINY_WIDTH,) * 4,
        layers_per_block=1,
        latent_channels=4,
        sample_size=64,
        scaling_factor=FULLSIZE_CONFIGS["vae"]["scaling_factor"],
        force_upcast=True,
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=TINY_CROSS_ATTENTION_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=CLIP_IMAGE_SIZE,
            patch_size=32,
            projection_dim=TINY_CROSS_ATTENTION_DIM,
            hidden_act="gelu",
        )
    )
    feature_extractor = CLIPImageProcessor(**FULLSIZE_CONFIGS["feature_extractor"])
    scheduler = EulerDiscreteScheduler(**FULLSIZE_CONFIGS["scheduler"])
    return StableVideoDiffusionPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler, feature_extractor=feature_extractor,
    )


def tiny_model_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "models" / f"tiny-{SVD.name}-v{TINY_MODEL_VERSION}"


def ensure_tiny_model(cache_dir: Path) -> Path:
    """Build the tiny SVD into the cache (once; safe across concurrent processes)."""

    def build(staging: Path) -> None:
        build_tiny_pipeline().save_pretrained(staging)
        # transformers 5 without torchvision resolves CLIPImageProcessor to its PIL backend class,
        # and save_pretrained records that name; record the class the real model's index names.
        index_path = staging / "model_index.json"
        index = json.loads(index_path.read_text())
        index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True))

    return build_once(tiny_model_dir(cache_dir), build, prefix=".tiny-svd-build-")


# --- the adapter ----------------------------------------------------------------------------


def set_feed_forward_chunking(unet, enabled: bool) -> None:
    """Feed-forward one frame at a time in every transformer block of SVD's UNet, or not at all.

    `enable_forward_chunking(1, dim=0)`: spatial blocks chunk their (batch x frames) axis, temporal
    blocks (diffusers fixes their chunk axis to 1) their frame axis; a chunk of 1 divides any size.
    """
    if enabled:
        unet.enable_forward_chunking(chunk_size=1, dim=0)
        return
    for module in unet.modules():
        if hasattr(module, "set_chunk_feed_forward"):
            module.set_chunk_feed_forward(chunk_size=None, dim=0)


class SVDAdapter(VideoAdapter):
    """One loaded Stable Video Diffusion pipeline on one device (see the module docstring)."""

    family = SVD
    profile = SVD_PROFILE
    pipeline_class = "StableVideoDiffusionPipeline"
    denoiser_name = "unet"
    default_decode_chunk = SVD_PROFILE.default_decode_chunk

    def call_arguments(self, image, *, prompt: str, negative_prompt: str, width: int, height: int, frames: int,
                       steps: int, guidance_scale: float, fps: int) -> dict:
        if negative_prompt and negative_prompt.strip():
            self.note(f"{self.family.title} is conditioned on the image only: the negative prompt was not used")
        return {
            "image": image,
            "height": height,
            "width": width,
            "num_frames": frames,
            "num_inference_steps": steps,
            "min_guidance_scale": MIN_GUIDANCE_SCALE,
            "max_guidance_scale": guidance_scale,
            "fps": fps,  # the pipeline conditions on fps - 1 itself
            "motion_bucket_id": MOTION_BUCKET_ID,
            "noise_aug_strength": NOISE_AUG_STRENGTH,
        }

    def decode_video(self, latents, chunk: int):
        """The pipeline's own decode: (batch, frames, C, h, w) latents -> (batch, 3, frames, H, W) float32."""
        num_frames = latents.shape[1]
        chunk = chunk if chunk and chunk > 0 else num_frames
        return self.pipeline.decode_latents(latents.to(self.vae_dtype), num_frames, chunk)

    def apply_savers(self, savers) -> None:
        """Switch SVD's savers (vae_slicing, ff_chunking, cpu_offload) to exactly `savers`; others are ignored."""
        wanted = set(savers) & set(self.family.savers)
        current = set(self.savers)
        pipe = self.pipeline
        # The temporal VAE has no slicing of its own: decoding one frame per chunk is SVD's slicing.
        self.decode_chunk = 1 if VAE_SLICING in wanted else self.default_decode_chunk
        if (FF_CHUNKING in wanted) != (FF_CHUNKING in current):
            set_feed_forward_chunking(pipe.unet, FF_CHUNKING in wanted)
        self.set_model_cpu_offload(CPU_OFFLOAD in wanted, CPU_OFFLOAD in current)
        self.savers = tuple(s for s in SAVER_LEVELS[-1] if s in wanted)
