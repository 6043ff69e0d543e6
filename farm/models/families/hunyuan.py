"""HunyuanVideo image-to-video (`HunyuanVideoImageToVideoPipeline`): adapter, tiny model, full-size configs.

The reference is `hunyuanvideo-community/HunyuanVideo-I2V`, Tencent's 16-channel I2V model
(`image_condition_type="token_replace"`: the first latent frame is the image's latent, the
transformer denoises the rest; `guidance_embeds=True`: guidance is distilled into the model).

Conditioning is the pipeline's own. The prompt goes through a LLaVA (Llama 3 8B + a CLIP
ViT-L/14-336 vision tower) inside a chat template that carries the image: the pipeline
tokenizes the template, expands its one `<image>` token into the vision tower's 576 features,
takes the third-last hidden layer, keeps every 4th image feature (144) and crops the template
tokens away by position (`crop_start=103`: the template before the user's text is 103 Llama 3
tokens; the image token sits at position 5). A CLIP-L text model adds a pooled embedding.

One transformers 5 breakage is repaired, inside this adapter. The tokenizer is Llama 3's
byte-level BPE, saved as `tokenizer.json`; the pipeline declares it a `LlamaTokenizerFast`, and
the tiny model's model_index.json names that class (as the community repo's is understood to;
the Hub is out of reach here, so that is not checked). diffusers then loads it with
`LlamaTokenizerFast.from_pretrained`. In transformers 5 that name is an alias of
`LlamaTokenizer`, whose `__init__` rebuilds the backend
as a SentencePiece tokenizer (a Metaspace pre-tokenizer; huggingface/transformers#45488), keeping
only the vocabulary and merges: spaces and newlines vanish (the vocabulary marks them with the
byte-level `Ġ`/`Ċ`, never `▁`), so the ids are other tokens and the positions the pipeline
crops by (`crop_start`, the image token at 5) no longer fall on the template's boundaries. No
error is raised. In the tiny model words fall apart into single characters, the template
alone becomes longer than the 256 + 103 tokens the pipeline tokenizes, and the truncation cuts
the user's prompt off: every prompt gives the same conditioning. The least invasive fix: after the
pipeline has loaded, its `tokenizer` is replaced by the same folder loaded as
`PreTrainedTokenizerFast` (transformers' tokenizers backend, which takes `tokenizer.json`
verbatim) when the loaded one's pre-tokenizer, decoder or model differ from the file's (a repo
whose index names another class, or a transformers that keeps the file, is left as loaded).
Nothing else changes: the pipeline, its template and its encoding run as written.

Guidance (`FamilyRules.guidance == EMBEDDED`): farm's `guidance_scale` is the pipeline's
`guidance_scale`, which the pipeline passes to the transformer's guidance embedding
(`guidance_scale * 1000`, `if self.transformer.config.guidance_embeds`), one transformer pass
per step. True classifier-free guidance (`true_cfg_scale > 1` with a negative prompt, a second
pass per step) is not what this distilled model is run with (Tencent's sampler:
`--embedded-cfg-scale 6.0`), so the negative prompt is not passed; a non-empty one is recorded
as unused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from farm.core.families import HUNYUAN_VIDEO
from farm.core.vram import HUNYUAN_VIDEO_PROFILE
from farm.models.adapter import VideoAdapter
from farm.models.cached_build import build_once
from farm.models.precision import Precision

# Bump when the configs below change so that caches built by older versions are rebuilt.
TINY_MODEL_VERSION = 1
TINY_SEED = 20250306
TINY_NAME = "hunyuan-video"

# --- the Llama 3 tokenizer, written in code ---------------------------------------------------

# Llama 3's pre-tokenizer split (its tokenizer.json `Split` pattern), then byte-level BPE.
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
HEADER_START, HEADER_END, END_OF_TURN = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
IMAGE_TOKEN, PAD_TOKEN = "<image>", "<pad>"  # what LLaVA-Llama-3 adds
SPECIAL_TOKENS = (BOS, EOS, HEADER_START, HEADER_END, END_OF_TURN, IMAGE_TOKEN, PAD_TOKEN)
# A few words beyond the template's, so prompts tokenize into words too (the rest: bytes).
EXTRA_WORDS = ("a", "cat", "dog", "walks", "turns", "its", "head", "on", "sofa", "red", "waves", "rolling", "in")
TOKENIZER_MAX_LENGTH = 8192  # Llama 3's context

# --- the tiny model's sizes ------------------------------------------------------------------

TEXT_HIDDEN = 16  # the Llama's width = the transformer's text_embed_dim (4096 in the real model)
CLIP_TEXT_HIDDEN = 16  # CLIP-L's pooled width = pooled_projection_dim (768)
VISION_IMAGE_SIZE = 48  # 48 px / 2 px patches = 24 x 24 = 576 image features, as 336 / 14 in the real one
VISION_PATCH = 2
LATENT_CHANNELS = 4  # 16 in the real VAE

# --- the real model: hunyuanvideo-community/HunyuanVideo-I2V ---------------------------------

REFERENCE = HUNYUAN_VIDEO.hub_ids[0]
# The published config.json of each component (defaults the files leave out written in).
FULLSIZE_CONFIGS: dict[str, dict] = {
    # transformer/config.json (diffusers' "HYVideo-T/2-I2V-16ch")
    "transformer": {
        "in_channels": 16,
        "out_channels": 16,
        "num_attention_heads": 24,
        "attention_head_dim": 128,
        "num_layers": 20,
        "num_single_layers": 40,
        "num_refiner_layers": 2,
        "mlp_ratio": 4.0,
        "patch_size": 2,
        "patch_size_t": 1,
        "qk_norm": "rms_norm",
        "guidance_embeds": True,
        "text_embed_dim": 4096,
        "pooled_projection_dim": 768,
        "rope_theta": 256.0,
        "rope_axes_dim": (16, 56, 56),
        "image_condition_type": "token_replace",
    },
    # vae/config.json (the causal 3D VAE HunyuanVideo T2V and I2V share)
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 16,
        "down_block_types": ("HunyuanVideoDownBlock3D",) * 4,
        "up_block_types": ("HunyuanVideoUpBlock3D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "scaling_factor": 0.476986,
        "spatial_compression_ratio": 8,
        "temporal_compression_ratio": 4,
        "mid_block_add_attention": True,
    },
    # text_encoder/config.json: xtuner/llava-llama-3-8b-v1_1-transformers (LLaVA: Llama 3 8B + CLIP ViT-L/14-336)
    "text_encoder": {
        "image_token_index": 128257,
        "pad_token_id": 128258,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "text_config": {
            "model_type": "llama",
            "bos_token_id": 128000,
            "eos_token_id": 128001,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-05,
            "rope_theta": 500000.0,
            "tie_word_embeddings": False,
            "vocab_size": 128320,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": 1024,
            "image_size": 336,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "num_hidden_layers": 24,
            "patch_size": 14,
            "projection_dim": 768,
            "hidden_act": "quick_gelu",
        },
    },
    # text_encoder_2/config.json: openai/clip-vit-large-patch14, text model
    "text_encoder_2": {
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
    },
    # image_processor/preprocessor_config.json (the LLaVA's CLIP-336 preprocessing)
    "image_processor": {
        "size": {"shortest_edge": 336},
        "crop_size": {"height": 336, "width": 336},
        "do_center_crop": True,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
    },
    # scheduler/scheduler_config.json (flow_shift 7.0, the conversion script's and Tencent's default)
    "scheduler": {"shift": 7.0, "num_train_timesteps": 1000, "use_dynamic_shifting": False},
}

# Published sizes, rounded, with where they come from (the test allows 1% for rounding):
PUBLISHED_PARAMETER_COUNTS = {
    # 12.8B: the bf16 transformer shards on the Hub are 25.6 GB at 2 bytes a parameter (diffusers'
    # HunyuanVideo transformer, whose 16-channel architecture the I2V one shares); the HunyuanVideo
    # paper (arXiv 2412.03603) rounds it to "13B".
    "transformer": 12_800_000_000,
    # 8.36B: Llama 3 8B, 8.03B (Meta's model card / the Hub), with LLaVA-Llama-3's 64 extra vocabulary
    # rows, + the CLIP ViT-L/14-336 vision tower, 0.30B, + the two-layer projector, 0.02B.
    "text_encoder": 8_355_000_000,
    # 123.06M: the CLIP ViT-L/14 text model (the Stable Diffusion 1.x text encoder), exact.
    "text_encoder_2": 123_060_480,
    # 246.5M: the fp32 HunyuanVideo VAE file is 986 MB at 4 bytes a parameter (493 MB in bf16).
    "vae": 246_500_000,
}


def _template_pieces(pre_tokenizer) -> list[str]:
    """The byte-level pre-tokens of the pipeline's default prompt template (special tokens apart)."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE

    split = "(" + "|".join(re.escape(token) for token in SPECIAL_TOKENS) + r"|\{\})"
    pieces: list[str] = []
    for part in re.split(split, DEFAULT_PROMPT_TEMPLATE["template"]):
        if part and part not in SPECIAL_TOKENS and part != "{}":
            pieces.extend(piece for piece, _ in pre_tokenizer.pre_tokenize_str(part))
    for word in EXTRA_WORDS:
        pieces.extend(piece for piece, _ in pre_tokenizer.pre_tokenize_str(" " + word))
    return pieces


def build_llama_tokenizer():
    """A Llama 3 style tokenizer: byte-level BPE behind Llama 3's split pattern, `ignore_merges`
    (a pre-token in the vocabulary is one token), the chat-template special tokens, LLaVA's
    `<image>` and `<pad>`, BOS prepended by the post-processor, right padding (as the real
    pipeline was saved). Every pre-token of the default template is one token, as with Llama 3,
    so the template is the 103 tokens `crop_start` says, with `<image>` at position 5."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import LlamaTokenizerFast

    pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    vocab = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges: list[tuple[str, str]] = []
    for piece in dict.fromkeys(_template_pieces(pre_tokenizer)):
        merged = piece[0]
        for symbol in piece[1:]:
            if merged + symbol not in vocab:
                merges.append((merged, symbol))
                vocab[merged + symbol] = len(vocab)
            merged += symbol
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]),
    ])
    return LlamaTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD_TOKEN, unk_token=None,
        padding_side="right", model_max_length=TOKENIZER_MAX_LENGTH,
    )


def _clip_tokenizer(folder: Path):
    """CLIP-L's tokenizer stand-in: farm's own byte-level CLIP BPE (as the tiny I2VGen-XL has)."""
    from transformers import CLIPTokenizer

    from farm.models.tiny import write_tokenizer_files

    write_tokenizer_files(folder)
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77)


def build_tiny_pipeline():
    """Every component of the real pipeline, same classes, seeded random weights, tiny sizes."""
    import tempfile

    from farm.models.libraries import quiet_libraries

    quiet_libraries()
    import torch
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoImageToVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    from farm.models.tiny import tokenizer_vocabulary

    tokenizer = build_llama_tokenizer()
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer_2 = _clip_tokenizer(Path(scratch))
    clip_vocab, _ = tokenizer_vocabulary()
    real = FULLSIZE_CONFIGS
    torch.manual_seed(TINY_SEED)
    text_encoder = LlavaForConditionalGeneration(LlavaConfig(
        text_config=LlamaConfig(
            hidden_size=TEXT_HIDDEN, intermediate_size=56, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            max_position_embeddings=real["text_encoder"]["text_config"]["max_position_embeddings"],
            rms_norm_eps=1e-05, rope_theta=500000.0, tie_word_embeddings=False,
        ),
        vision_config=CLIPVisionConfig(
            hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
            image_size=VISION_IMAGE_SIZE, patch_size=VISION_PATCH, projection_dim=8, hidden_act="quick_gelu",
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), pad_token_id=tokenizer.pad_token_id,
        projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
    ))
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_vocab), hidden_size=CLIP_TEXT_HIDDEN, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=CLIP_TEXT_HIDDEN,
        bos_token_id=clip_vocab["<|startoftext|>"], eos_token_id=clip_vocab["<|endoftext|>"],
        pad_token_id=clip_vocab["<|endoftext|>"],
    ))
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_attention_heads=2, attention_head_dim=12,
        num_layers=1, num_single_layers=1, num_refiner_layers=1, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
        qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=TEXT_HIDDEN, pooled_projection_dim=CLIP_TEXT_HIDDEN,
        rope_theta=256.0, rope_axes_dim=(4, 4, 4), image_condition_type="token_replace",
    )
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4, up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 16, 16), layers_per_block=1, act_fn="silu", norm_num_groups=4,
        scaling_factor=real["vae"]["scaling_factor"], spatial_compression_ratio=8, temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )
    image_processor = CLIPImageProcessor(**{
        **real["image_processor"],
        "size": {"shortest_edge": VISION_IMAGE_SIZE},
        "crop_size": {"height": VISION_IMAGE_SIZE, "width": VISION_IMAGE_SIZE},
    })
    return HunyuanVideoImageToVideoPipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(**real["scheduler"]),
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, image_processor=image_processor,
    )


def tiny_model_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "models" / f"tiny-{TINY_NAME}-v{TINY_MODEL_VERSION}"


def ensure_tiny_model(cache_dir: Path) -> Path:
    """Build the tiny HunyuanVideo-I2V into the cache (once; safe across concurrent processes)."""

    def build(staging: Path) -> None:
        build_tiny_pipeline().save_pretrained(staging)
        # transformers 5 names the saved classes by what they are here (LlamaTokenizerFast is an
        # alias of LlamaTokenizer; CLIPImageProcessor without torchvision is CLIPImageProcessorPil);
        # write the names the Hub repo's model_index.json has, which load the same classes.
        index_path = staging / "model_index.json"
        index = json.loads(index_path.read_text())
        index["tokenizer"] = ["transformers", "LlamaTokenizerFast"]
        index["image_processor"] = ["transformers", "CLIPImageProcessor"]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True))

    return build_once(tiny_model_dir(cache_dir), build, prefix=".tiny-hunyuan-build-")


# --- full size ---------------------------------------------------------------------------------


def build_fullsize_components(device: str = "meta", dtype=None) -> dict:
    """The four weighted components of HunyuanVideo-I2V from the published configs, on `device`
    (the meta device allocates nothing: for counting), random weights elsewhere."""
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel, LlavaConfig, LlavaForConditionalGeneration

    from farm.models.fullsize import build_components

    config = FULLSIZE_CONFIGS
    return build_components({
        "transformer": lambda: HunyuanVideoTransformer3DModel(**config["transformer"]),
        "vae": lambda: AutoencoderKLHunyuanVideo(**config["vae"]),
        "text_encoder": lambda: LlavaForConditionalGeneration(LlavaConfig(**config["text_encoder"])),
        "text_encoder_2": lambda: CLIPTextModel(CLIPTextConfig(**config["text_encoder_2"])),
    }, device, dtype, seed=TINY_SEED)


def fullsize_parameter_counts() -> dict[str, int]:
    """{component: parameters} of the full-size model, counted on the meta device."""
    components = build_fullsize_components("meta")
    return {name: sum(p.numel() for p in module.parameters()) for name, module in components.items()}


# --- the tokenizer repair ------------------------------------------------------------------------


def _backend_parts(backend) -> dict:
    data = json.loads(backend.to_str())
    return {"pre_tokenizer": data.get("pre_tokenizer"), "decoder": data.get("decoder"),
            "model": (data.get("model") or {}).get("type"), "ignore_merges": (data.get("model") or {}).get("ignore_merges")}


def saved_tokenizer_differs(tokenizer, folder: Path) -> bool:
    """Whether `tokenizer` (as the pipeline loaded it) tokenizes differently from the
    `tokenizer.json` in `folder`: another pre-tokenizer, decoder or BPE setting."""
    from tokenizers import Tokenizer

    saved = Path(folder) / "tokenizer.json"
    if not saved.is_file() or not hasattr(tokenizer, "backend_tokenizer"):
        return False
    return _backend_parts(Tokenizer.from_file(str(saved))) != _backend_parts(tokenizer.backend_tokenizer)


def tokenizer_as_saved(folder: Path):
    """`folder`'s tokenizer exactly as its tokenizer.json says (transformers' tokenizers backend)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(folder))


# --- the adapter ---------------------------------------------------------------------------------


class HunyuanVideoAdapter(VideoAdapter):
    """One loaded HunyuanVideo-I2V pipeline on one device."""

    family = HUNYUAN_VIDEO
    profile = HUNYUAN_VIDEO_PROFILE
    pipeline_class = "HunyuanVideoImageToVideoPipeline"
    denoiser_name = "transformer"
    default_decode_chunk = 0  # the causal 3D VAE decodes the clip at once (tiling/slicing are its savers)

    tokenizer_repaired = False

    @classmethod
    def load(cls, ref: str, *, device: str | None = None, precision: Precision | None = None,
             requested_precision: str = "auto", vae_upcast: str = "auto"):
        """The shared load, then the tokenizer as saved (see the module docstring) if transformers
        rebuilt it into something else."""
        import time

        adapter = super().load(ref, device=device, precision=precision, requested_precision=requested_precision,
                               vae_upcast=vae_upcast)
        started = time.perf_counter()
        folder = adapter.model.path / "tokenizer"
        if saved_tokenizer_differs(adapter.pipeline.tokenizer, folder):
            adapter.pipeline.tokenizer = tokenizer_as_saved(folder)
            adapter.tokenizer_repaired = True
        adapter.load_seconds += time.perf_counter() - started
        return adapter

    def describe(self) -> dict:
        tokenizer = "tokenizer.json as saved" if self.tokenizer_repaired else type(self.pipeline.tokenizer).__name__
        return {**super().describe(), "tokenizer": tokenizer}

    def call_arguments(self, image, *, prompt: str, negative_prompt: str, width: int, height: int, frames: int,
                       steps: int, guidance_scale: float, fps: int) -> dict:
        """The pipeline's own prompt template, sequence length and image encoding; farm's
        guidance_scale as the embedded guidance. fps: the pipeline takes no frame rate (the
        model renders at its native 24 fps; the MP4 is written at the job's fps)."""
        transformer = self.pipeline.transformer
        if negative_prompt.strip():
            self.note(f"{self.family.title} is guidance-distilled (one pass per step): the negative prompt was not used")
        if not transformer.config.guidance_embeds:
            self.note("this HunyuanVideo-I2V transformer has no guidance embedding: guidance_scale has no effect")
        if transformer.config.image_condition_type == "latent_concat":
            self.note("a latent-concat (33-channel) HunyuanVideo-I2V: its first latent frame is dropped before "
                      "the decode, so the first frames differ from the pipeline's own decode")
        limit = 256  # the pipeline's max_sequence_length for the prompt (after the template)
        if len(self.pipeline.tokenizer(prompt, add_special_tokens=False).input_ids) > limit:
            self.note(f"the prompt is longer than the {limit} tokens HunyuanVideo reads; the rest was ignored")
        return {
            "image": image,
            "prompt": prompt,
            "height": height,
            "width": width,
            "num_frames": frames,
            "num_inference_steps": steps,
            "guidance_scale": guidance_scale,
        }

    def decode_video(self, latents, chunk: int):
        """As the pipeline after its loop: undo the VAE scaling, decode with the causal 3D VAE.
        (token_replace models return every latent frame; the first is the image's own.)"""
        vae = self.pipeline.vae
        latents = latents.to(vae.dtype) / self.pipeline.vae_scaling_factor
        return vae.decode(latents, return_dict=False)[0]
