"""CogVideoX image-to-video: the tiny model renders through farm's adapter exactly as the
pipeline itself would, the family rules are the ones the pipeline enforces, and the full-size
configuration has the published model's size."""

import json

import numpy as np
import pytest
import torch

from farm.core.families import COGVIDEOX, check_params, rules_for

COGVIDEOX_5B_I2V = rules_for("THUDM/CogVideoX-5b-I2V", COGVIDEOX)  # the reference model's own rules
from farm.core.vram import COGVIDEOX_PROFILE
from farm.media.video import encode_mp4, to_uint8

pytestmark = pytest.mark.integration

SIZE = 64
FRAMES = 9  # 8k+1: three latent frames
STEPS = 2
RENDER = dict(prompt="a cat turns its head", negative_prompt="", width=SIZE, height=SIZE, frames=FRAMES,
              steps=STEPS, guidance_scale=6.0, fps=8)


@pytest.fixture(scope="module")
def adapter(farm_cache):
    from farm.models.registry import load_adapter

    return load_adapter("tiny:cogvideox", device="cpu")


@pytest.fixture(scope="module")
def image():
    from helpers import pattern

    return pattern(SIZE, SIZE)


@pytest.fixture(scope="module")
def first_render(adapter, image):
    return adapter.generate(image, seed=7, **RENDER)


def pipeline_frames(pipe, image, *, seed=7, prompt=RENDER["prompt"], negative_prompt="", frames=FRAMES,
                    width=SIZE, height=SIZE, steps=STEPS, guidance_scale=6.0):
    """The pipeline's own call, its own conditioning and decode: (F, H, W, 3) floats in [0, 1]."""
    return pipe(image=image, prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
                num_frames=frames, num_inference_steps=steps, guidance_scale=guidance_scale,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="np").frames[0]


def learned_embedding_pipeline(pipe):
    """The tiny pipeline with a transformer built like CogVideoX-5b-I2V's: rotary and learned
    positional embeddings (for its 64x64, 9-frame sample size)."""
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXTransformer3DModel

    config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
    config["use_learned_positional_embeddings"] = True
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(**config).eval()
    return CogVideoXImageToVideoPipeline(**{**pipe.components, "transformer": transformer})


# --- the tiny model -----------------------------------------------------------------------------


def test_the_tiny_model_is_every_component_of_the_real_pipeline(adapter):
    from farm.models.families.cogvideox import FULLSIZE_CONFIGS

    index = json.loads((adapter.model.path / "model_index.json").read_text())
    assert index["_class_name"] == "CogVideoXImageToVideoPipeline"
    assert index["tokenizer"] == ["transformers", "T5Tokenizer"]  # the class the pipeline declares
    assert index["text_encoder"] == ["transformers", "T5EncoderModel"]
    assert index["transformer"] == ["diffusers", "CogVideoXTransformer3DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLCogVideoX"]
    assert index["scheduler"] == ["diffusers", "CogVideoXDDIMScheduler"]
    pipe = adapter.pipeline
    assert (pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal) == (8, 4)  # the real geometry
    published = FULLSIZE_CONFIGS["scheduler"]
    assert {k: pipe.scheduler.config[k] for k in published} == published
    assert pipe.transformer.config.in_channels == 2 * pipe.vae.config.latent_channels == 32
    assert pipe.transformer.dtype == torch.float32


def test_the_tokenizer_really_segments(adapter):
    tokenizer = adapter.pipeline.tokenizer
    ids = tokenizer("the cat is walking").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["▁the", "▁cat", "▁is", "▁walking", "</s>"]
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("astronaut").input_ids)
    assert len(pieces) > 2 and "<unk>" not in pieces  # unknown words fall back to smaller pieces
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)  # T5's layout


def test_a_tiny_render_becomes_an_mp4_of_the_asked_size_length_and_rate(first_render, tmp_path):
    import imageio_ffmpeg

    assert first_render.frames.shape == (FRAMES, SIZE, SIZE, 3)
    assert first_render.frames.dtype == np.uint8
    assert set(first_render.timings) == {"denoise", "decode"}
    path = str(tmp_path / "clip.mp4")
    encode_mp4(first_render.frames, path, RENDER["fps"])
    reader = imageio_ffmpeg.read_frames(path)
    meta = next(reader)
    decoded = list(reader)
    assert len(decoded) == FRAMES
    assert tuple(meta["size"]) == (SIZE, SIZE)
    assert meta["fps"] == RENDER["fps"]


def test_the_same_seed_gives_the_same_video_and_another_seed_another(adapter, image, first_render):
    again = adapter.generate(image, seed=7, **RENDER)
    other = adapter.generate(image, seed=8, **RENDER)
    assert np.array_equal(first_render.frames, again.frames)
    assert not np.array_equal(first_render.frames, other.frames)


def test_the_adapter_renders_what_the_pipelines_own_call_renders(adapter, image):
    """Same image, prompt, negative prompt, seed: the pipeline's own prompt and image encoding and
    its own decode give the frames the adapter gives (its latent call plus `decode_video`)."""
    ours = adapter.generate(image, seed=11, **{**RENDER, "negative_prompt": "blurry"})
    upstream = pipeline_frames(adapter.pipeline, image, seed=11, negative_prompt="blurry")
    assert np.array_equal(ours.frames, to_uint8(upstream))
    # ... and that conditioning is really used: another prompt or image changes the video.
    from helpers import pattern

    other_prompt = pipeline_frames(adapter.pipeline, image, seed=11, prompt="waves rolling in", negative_prompt="blurry")
    assert not np.array_equal(to_uint8(other_prompt), ours.frames)
    flipped = pattern(SIZE, SIZE).transpose(0)  # PIL.Image.FLIP_LEFT_RIGHT
    other_image = pipeline_frames(adapter.pipeline, flipped, seed=11, negative_prompt="blurry")
    assert not np.array_equal(to_uint8(other_image), ours.frames)


def test_cogvideox_1_5_padding_is_dropped_as_the_pipeline_drops_it(adapter, image):
    """A transformer built like CogVideoX1.5-5B-I2V's (patch_size_t=2, ofs embedding): 9 frames are
    3 latent frames, padded to 4 for the denoise; the latent output keeps the pad, the adapter's
    decode drops it as the pipeline does, so both give the same 9 frames."""
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXTransformer3DModel

    from farm.models.families.cogvideox import CogVideoXAdapter

    pipe = adapter.pipeline
    config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
    config.update(patch_size_t=2, ofs_embed_dim=32, patch_bias=False)
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(**config).eval()
    pipe_15 = CogVideoXImageToVideoPipeline(**{**pipe.components, "transformer": transformer})
    pipe_15.set_progress_bar_config(disable=True)
    adapter_15 = CogVideoXAdapter(pipe_15, adapter.model, "cpu", 0.0)
    latents = adapter_15.denoise(image, seed=3, **RENDER)
    assert latents.shape[1] == 4  # (9 - 1) // 4 + 1 = 3 latent frames, padded to a multiple of 2
    ours = adapter_15.decode(latents)
    assert ours.frames.shape == (FRAMES, SIZE, SIZE, 3)
    assert np.array_equal(ours.frames, to_uint8(pipeline_frames(pipe_15, image, seed=3)))


def test_half_precision_decodes_in_fp32_and_leaves_the_encoder_to_the_pipeline(adapter, image):
    """The VAE's force_upcast: only its decoder goes to fp32, because the pipeline encodes the
    image with the VAE encoder in the transformer's dtype (an fp32 encoder refuses bf16 input)."""
    from farm.models.adapter import VideoAdapter
    from farm.models.families.cogvideox import CogVideoXAdapter
    from farm.models.precision import Precision

    half = CogVideoXAdapter.load("tiny:cogvideox", device="cpu", precision=Precision("bf16", "bf16", True))
    assert half.dtype_name == "bfloat16" and half.describe()["vae_decode_dtype"] == "float32"
    assert next(half.pipeline.vae.encoder.parameters()).dtype == torch.bfloat16
    assert half.generate(image, seed=7, **RENDER).frames.shape == (FRAMES, SIZE, SIZE, 3)
    half.pipeline.vae.to(torch.float32)  # the whole VAE in fp32 instead: the pipeline's image encode fails
    with pytest.raises(RuntimeError, match="should be the same"):
        half.generate(image, seed=7, **RENDER)
    assert VideoAdapter.upcast_vae_decoder is not None


# --- the family rules, and the pipeline behaviour behind them -------------------------------------


def test_frames_outside_the_rule_are_refused_with_the_nearest_allowed():
    assert check_params(COGVIDEOX_5B_I2V, width=720, height=480, frames=49, prompt="a cat").issues == []
    for frames in (48, 41, 9, 81):
        (issue,) = check_params(COGVIDEOX_5B_I2V, width=720, height=480, frames=frames, prompt="a cat").issues
        assert issue.field == "frames" and issue.value == frames and issue.nearest == 49
        assert f"{frames} is not allowed" in issue.message
        assert "the nearest allowed is 49" in issue.message and "8k+1" in issue.message


def test_sizes_other_than_720x480_are_refused_with_the_one_allowed():
    for width, height in ((1280, 720), (480, 720), (64, 64), (736, 480)):
        (issue,) = check_params(COGVIDEOX_5B_I2V, width=width, height=height, frames=49, prompt="a cat").issues
        assert issue.field == "resolution" and issue.value == f"{width}x{height}"
        assert issue.nearest == (720, 480)
        assert "only 720x480" in issue.message and "use resolution 480 with aspect 3:2" in issue.message


def test_the_vae_gives_back_as_many_frames_as_asked_only_for_8k_plus_1(adapter, image):
    """Why 8k+1 and not 4k+1: the pipeline never checks num_frames; it takes (frames - 1) // 4 + 1
    latent frames, and the VAE decodes an even number of them into 4 frames each."""
    assert (COGVIDEOX.frame_step, COGVIDEOX.frame_offset) == (8, 1)
    got = {frames: len(pipeline_frames(adapter.pipeline, image, frames=frames, steps=1)) for frames in (13, 12, 17)}
    assert got == {13: 16, 12: 9, 17: 17}  # 4k+1 with an even latent count: 3 frames too many


def test_the_reference_models_learned_embeddings_refuse_any_other_size(adapter, image):
    """CogVideoX-5b-I2V's transformer config: learned positional embeddings for 60x90 latents,
    that is 720x480 pixels and 49 frames, which is what the family's rules allow."""
    from farm.models.families.cogvideox import FULLSIZE_CONFIGS

    config = FULLSIZE_CONFIGS["transformer"]
    assert config["use_learned_positional_embeddings"]
    scale = 2 ** (len(FULLSIZE_CONFIGS["vae"]["block_out_channels"]) - 1)
    assert COGVIDEOX_5B_I2V.fixed_sizes == ((config["sample_width"] * scale, config["sample_height"] * scale),)
    assert COGVIDEOX_5B_I2V.min_frames == COGVIDEOX_5B_I2V.max_frames == COGVIDEOX_5B_I2V.default_frames == config["sample_frames"]
    # The same flags on the tiny pipeline (sample size 64x64): another size is refused.
    pipe = learned_embedding_pipeline(adapter.pipeline)
    assert pipeline_frames(pipe, image, steps=1).shape == (FRAMES, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="not possible to generate videos at a different resolution"):
        pipeline_frames(pipe, image.resize((SIZE + 32, SIZE)), width=SIZE + 32, steps=1)


def test_the_learned_embedding_is_dropped_at_another_frame_count(adapter):
    """At any frame count but `sample_frames` the patch embedding adds a freshly computed sin-cos
    table instead of the learned one: it runs, but not as the model was trained."""
    embed = learned_embedding_pipeline(adapter.pipeline).transformer.patch_embed
    config = adapter.pipeline.transformer.config
    text = torch.zeros(1, config.max_text_seq_length, config.text_embed_dim)

    def learned_table_used(latent_frames: int) -> bool:
        latents = torch.randn(1, latent_frames, config.in_channels, SIZE // 8, SIZE // 8)
        with torch.no_grad():
            embed.pos_embedding.zero_()
            without = embed(text, latents)
            embed.pos_embedding.fill_(1.0)
            with_ones = embed(text, latents)
        return not torch.equal(without, with_ones)

    assert learned_table_used((FRAMES - 1) // 4 + 1)  # its sample_frames: the learned table
    assert not learned_table_used(5)  # 17 frames: the learned table is ignored


def test_sizes_must_be_multiples_of_16(adapter, image):
    """The 8x VAE and 2x2 patches: a latent side that is odd breaks the unpatchify (the rule any
    CogVideoX without learned embeddings, like the tiny one or 1.5, is held to)."""
    assert COGVIDEOX.size_multiple == 16
    assert pipeline_frames(adapter.pipeline, image.resize((SIZE, 80)), height=80, steps=1).shape[1:3] == (80, SIZE)
    with pytest.raises(RuntimeError, match="must match the size"):
        pipeline_frames(adapter.pipeline, image.resize((SIZE, 72)), height=72, steps=1)


# --- the full-size model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def meta_components():
    from farm.models.families.cogvideox import build_fullsize_components

    return build_fullsize_components("meta")


def test_the_full_size_model_has_the_published_size(meta_components):
    from farm.models.families.cogvideox import PUBLISHED_EXACT, PUBLISHED_PARAMETER_COUNTS, fullsize_parameter_counts

    counts = fullsize_parameter_counts(meta_components)
    assert counts == {"transformer": 5_625_087_552, "vae": 215_583_907, "text_encoder": 4_762_310_656}
    for name, published in PUBLISHED_PARAMETER_COUNTS.items():
        if name in PUBLISHED_EXACT:
            assert counts[name] == published, name
        else:
            assert abs(counts[name] - published) / published < 0.01, (name, counts[name], published)
    transformer = meta_components["transformer"]
    parameters = sum(p.numel() for p in transformer.parameters())
    assert parameters == 5_570_479_680
    assert counts["transformer"] - parameters == transformer.patch_embed.pos_embedding.numel() == (226 + 13 * 30 * 45) * 3072
    assert all(t.device.type == "meta" for m in meta_components.values() for t in m.parameters())


def test_the_vram_profile_holds_the_counted_numbers(meta_components):
    from farm.models.families.cogvideox import fullsize_parameter_counts

    assert COGVIDEOX_PROFILE.component_params == fullsize_parameter_counts(meta_components)
    config = meta_components["transformer"].config
    assert COGVIDEOX_PROFILE.hidden_width == config.num_attention_heads * config.attention_head_dim == 3072
    assert COGVIDEOX_PROFILE.dit_layers == config.num_layers == 42
    assert COGVIDEOX_PROFILE.patch == (1, config.patch_size, config.patch_size)
    assert COGVIDEOX_PROFILE.temporal_downsample == meta_components["vae"].config.temporal_compression_ratio
    assert COGVIDEOX_PROFILE.vae_decoder_top_channels == meta_components["vae"].config.block_out_channels[0]


def test_describe_names_the_family_the_adapter_and_the_pipeline(adapter):
    from farm.models.loading import config_hash

    described = adapter.describe()
    assert described["family"] == "cogvideox"
    assert described["adapter"] == "CogVideoXAdapter"
    assert described["pipeline"] == "CogVideoXImageToVideoPipeline"
    assert described["id"] == "tiny:cogvideox" and described["source"] == "tiny"
    assert described["config_sha256"] == config_hash(adapter.model.path)
    assert described["vae_decode_dtype"] == "float32"
