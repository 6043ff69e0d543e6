"""Full-size random weights: the real I2VGen-XL architecture with random parameters.

`random:ali-vilab/i2vgen-xl` builds every component from the published configuration of
`ali-vilab/i2vgen-xl` (the config.json files of its unet, vae, text_encoder and image_encoder,
written out below), with freshly initialised weights, so that benchmarks and hardware checks
(benchmarks/gpu_check.py) measure real sizes, real FLOPs and real memory on a machine without
the weights. It is for measuring, never a default: its videos are noise.

The modules are constructed directly on the target device in the target dtype (torch's
default device and dtype are set while the constructors run), so a 2.5 B-parameter model on a
GPU never has an fp32 copy on the host; on the `meta` device nothing is allocated at all,
which is how the CPU test counts parameters. `ensure_random_model` then saves the pipeline
into farm's cache the way the Hub stores it (fp16 weights as `variant="fp16"` files only) and
the caller loads it with `from_pretrained`, the same path real weights take.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from farm.models.cached_build import build_once
from farm.models.loading import ModelUnavailableError

FULLSIZE_VERSION = 1
RANDOM_SEED = 20241202
SUPPORTED_REPOS = ("ali-vilab/i2vgen-xl",)

# ali-vilab/i2vgen-xl, unet/config.json
UNET_CONFIG = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "cross_attention_dim": 1024,
    "attention_head_dim": 64,
    "num_attention_heads": None,
}
# vae/config.json (the Stable Diffusion KL VAE; force_upcast: decode in fp32)
VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 768,
    "scaling_factor": 0.18125,
    "force_upcast": True,
}
# text_encoder/config.json (OpenCLIP ViT-H/14 text tower, all 24 layers)
TEXT_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "projection_dim": 1024,
    "hidden_act": "gelu",
}
# image_encoder/config.json (ViT-H/14 at 224 px, projected to 1024)
VISION_CONFIG = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "projection_dim": 1024,
    "hidden_act": "gelu",
}
# The published parameter counts (reference/numbers.md), which the test recomputes.
PUBLISHED_PARAMETERS = {
    "unet": 1_420_469_224,
    "vae": 83_653_863,
    "text_encoder": 352_984_064,
    "image_encoder": 632_076_800,
}


class UnknownRandomModel(ModelUnavailableError):
    """A `random:` reference to an architecture farm has no configuration for."""


@contextlib.contextmanager
def building_on(device: str, dtype):
    """Construct modules directly on `device` in `dtype` (torch's defaults while inside)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_components(factories: dict, device: str = "meta", dtype=None, *, seed: int | None = None) -> dict:
    """{name: factory()} built directly on `device` in `dtype` (fp32 unless given; the meta device
    allocates nothing: how the tests count parameters), in eval mode without gradients. Every
    module is moved to `device` afterwards too: a few diffusers blocks make tensors with
    `torch.Tensor([...])`, which ignores the default device. `seed`: the random weights' seed
    (off the meta device)."""
    from farm.models.libraries import quiet_libraries

    quiet_libraries()
    import torch

    dtype = dtype or torch.float32
    if seed is not None and device != "meta":
        torch.manual_seed(seed)
    with building_on(device, dtype):
        components = {name: factory() for name, factory in factories.items()}
    return {name: module.to(device).eval().requires_grad_(False) for name, module in components.items()}


def build_random_components(device: str = "meta", dtype=None, *, token_ids: dict | None = None) -> dict:
    """The four weighted components of I2VGen-XL with random weights, on `device` in `dtype`.

    `token_ids` gives the text encoder the bos/eos ids of the tokenizer it will be paired with.
    """
    from farm.models.libraries import quiet_libraries

    quiet_libraries()
    import torch
    from diffusers import AutoencoderKL
    from diffusers.models.unets.unet_i2vgen_xl import I2VGenXLUNet
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    dtype = dtype or torch.float32
    token_ids = token_ids or {}
    if device != "meta":
        torch.manual_seed(RANDOM_SEED)
    with building_on(device, dtype):
        components = {
            "unet": I2VGenXLUNet(**UNET_CONFIG),
            "vae": AutoencoderKL(**VAE_CONFIG),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG, **token_ids)),
            "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION_CONFIG)),
        }
    for module in components.values():
        module.eval().requires_grad_(False)
    return components


def parameter_counts(components: dict) -> dict[str, int]:
    return {name: sum(p.numel() for p in module.parameters()) for name, module in components.items()}


def random_model_dir(cache_dir: Path, repo_id: str, dtype) -> Path:
    dtype_name = str(dtype).removeprefix("torch.")
    return cache_dir / "models" / f"random-{repo_id.replace('/', '--')}-{dtype_name}-v{FULLSIZE_VERSION}"


def ensure_random_model(cache_dir: Path, repo_id: str, *, device: str, dtype) -> Path:
    """Build (once) and save a random-weight pipeline of `repo_id`'s architecture into the cache.

    fp16 weights are written only as `variant="fp16"` files, as in the Hub repo, so loading
    them takes the same variant path as a real download.
    """
    import torch

    if repo_id not in SUPPORTED_REPOS:
        raise UnknownRandomModel(
            f"random weights are built only for {', '.join(SUPPORTED_REPOS)} (its published configuration "
            f"is written into farm); got {repo_id!r}: use `random:{SUPPORTED_REPOS[0]}`"
        )
    def build(staging: Path) -> None:
        pipeline = _build_pipeline(staging, device, dtype)
        variant = "fp16" if dtype == torch.float16 else None
        pipeline.save_pretrained(staging, variant=variant, safe_serialization=True)
        del pipeline
        _release(device)

    return build_once(random_model_dir(cache_dir, repo_id, dtype), build, prefix=".random-build-")


def _build_pipeline(folder: Path, device: str, dtype):
    from diffusers import DDIMScheduler, I2VGenXLPipeline
    from transformers import CLIPImageProcessor, CLIPTokenizer

    from farm.models.tiny import tokenizer_vocabulary, write_tokenizer_files

    # A byte-level BPE vocabulary of our own stands in for CLIP's (which needs a download);
    # the text encoder keeps the real 49,408-row embedding.
    write_tokenizer_files(folder / ".tokenizer-source")
    tokenizer = CLIPTokenizer(
        vocab=str(folder / ".tokenizer-source" / "vocab.json"),
        merges=str(folder / ".tokenizer-source" / "merges.txt"),
        model_max_length=TEXT_CONFIG["max_position_embeddings"],
    )
    vocab, _ = tokenizer_vocabulary()
    ids = {"bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
           "pad_token_id": vocab["<|endoftext|>"]}
    components = build_random_components(device, dtype, token_ids=ids)
    size = VISION_CONFIG["image_size"]
    pipeline = I2VGenXLPipeline(
        **components,
        tokenizer=tokenizer,
        feature_extractor=CLIPImageProcessor(crop_size={"height": size, "width": size}, size={"shortest_edge": size}),
        # ali-vilab/i2vgen-xl scheduler/scheduler_config.json
        scheduler=DDIMScheduler(
            beta_schedule="squaredcos_cap_v2", clip_sample=False, prediction_type="v_prediction",
            rescale_betas_zero_snr=True, steps_offset=1, timestep_spacing="leading",
        ),
    )
    shutil.rmtree(folder / ".tokenizer-source", ignore_errors=True)
    return pipeline


def _release(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
