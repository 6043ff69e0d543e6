"""The `tiny` model: an I2VGen-XL with random weights, built from configs in code.

It has every component of the real pipeline (3D UNet with temporal and cross attention,
KL VAE with the real 8x downsampling and 4 latent channels, CLIP text and vision encoders,
a BPE tokenizer whose vocabulary we write ourselves, a DDIM scheduler) at a size that
renders 256p/8 frames/10 steps in about a second on a 2-core CPU. It is saved with
`save_pretrained` and loaded back with `from_pretrained`, exactly like real weights.

The UNet keeps spatial attention off its top (full latent resolution) level: attention
there grows with the square of the latent tokens and would make 512p renders take minutes
on a CPU. Every block type of the real UNet is still present one level lower.
"""

from __future__ import annotations

import json
from pathlib import Path

from farm.models.cached_build import build_once

# Bump when the configs below change so that caches built by older versions are rebuilt.
TINY_MODEL_VERSION = 2
TINY_MODEL_NAME = "tiny"
TINY_SEED = 20240601

CROSS_ATTENTION_DIM = 32
CLIP_IMAGE_SIZE = 32
MAX_PROMPT_TOKENS = 77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level mapping: every byte gets a printable unicode character."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


# A handful of merges for frequent English pairs, so the tokenizer does real BPE merging.
_MERGES = ["t h", "th e</w>", "i n", "a n", "e r", "o n", "r e", "in g</w>", "a t", "e n"]


def tokenizer_vocabulary() -> tuple[dict[str, int], list[str]]:
    """Vocabulary and merges for a CLIP BPE tokenizer: all bytes, word-final bytes, merges."""
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    for merge in _MERGES:
        vocab_list.append(merge.replace(" ", ""))
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(vocab_list)}, _MERGES


def write_tokenizer_files(directory: Path) -> int:
    """vocab.json and merges.txt of farm's own CLIP BPE tokenizer; returns the vocabulary size."""
    vocab, merges = tokenizer_vocabulary()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return len(vocab)


def _write_tokenizer(directory: Path) -> int:
    from transformers import CLIPTokenizer

    vocab_size = write_tokenizer_files(directory)
    tokenizer = CLIPTokenizer(
        vocab=str(directory / "vocab.json"),
        merges=str(directory / "merges.txt"),
        model_max_length=MAX_PROMPT_TOKENS,
    )
    tokenizer.save_pretrained(directory)
    return vocab_size


def build_tiny_pipeline(vocab_size: int):
    """Instantiate every component with seeded random weights (no files, no network)."""
    from farm.models.libraries import quiet_libraries

    quiet_libraries()
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline
    from diffusers.models.unets.unet_i2vgen_xl import I2VGenXLUNet
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    vocab, _ = tokenizer_vocabulary()
    torch.manual_seed(TINY_SEED)
    unet = I2VGenXLUNet(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "UpBlock3D"),
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=256,  # VAE tiling works in tiles of this many pixels
        scaling_factor=0.18125,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=CROSS_ATTENTION_DIM,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=MAX_PROMPT_TOKENS,
            projection_dim=CROSS_ATTENTION_DIM,
            hidden_act="gelu",
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=CROSS_ATTENTION_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=CLIP_IMAGE_SIZE,
            patch_size=8,
            projection_dim=CROSS_ATTENTION_DIM,
            hidden_act="gelu",
        )
    )
    feature_extractor = CLIPImageProcessor(
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
        size={"shortest_edge": CLIP_IMAGE_SIZE},
    )
    # The real model's scheduler settings (ali-vilab/i2vgen-xl scheduler_config.json).
    scheduler = DDIMScheduler(
        beta_schedule="squaredcos_cap_v2",
        clip_sample=False,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        steps_offset=1,
        timestep_spacing="leading",
    )
    return I2VGenXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=None,
        image_encoder=image_encoder,
        feature_extractor=feature_extractor,
        unet=unet,
        scheduler=scheduler,
    )


def tiny_model_dir(cache_dir: Path) -> Path:
    return cache_dir / "models" / f"tiny-i2vgen-xl-v{TINY_MODEL_VERSION}"


def ensure_tiny_model(cache_dir: Path) -> Path:
    """Build the tiny model into the cache (once; safe across concurrent processes)."""

    def build(staging: Path) -> None:
        vocab_size = _write_tokenizer(staging / "tokenizer")
        build_tiny_pipeline(vocab_size).save_pretrained(staging)
        # save_pretrained skipped the tokenizer (it was None); register it in the index.
        index_path = staging / "model_index.json"
        index = json.loads(index_path.read_text())
        index["tokenizer"] = ["transformers", "CLIPTokenizer"]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True))

    return build_once(tiny_model_dir(cache_dir), build, prefix=".tiny-build-")
