"""Wan 2.x image-to-video: the tiny model built in code renders through farm's adapter, the
adapter conditions exactly as WanImageToVideoPipeline does, the family's parameter rules are the
pipeline's own, and the full-size configuration has the published parameter counts."""

from __future__ import annotations

import time
import types

import numpy as np
import pytest
import torch
from helpers import pattern

from farm.core.families import WAN, check_params
from farm.core.vram import PROFILES, WAN_PROFILE
from farm.media.video import encode_mp4, to_uint8
from farm.models.families import wan

pytestmark = pytest.mark.integration

PROMPT = "a cat turns its head slowly"
NEGATIVE = "blurry, static, low quality"
# 80x48 (not square: width and height cannot be swapped unnoticed), 5 frames = 2 latent frames.
RENDER = dict(prompt=PROMPT, negative_prompt=NEGATIVE, width=80, height=48, frames=5, steps=3,
              guidance_scale=5.0, fps=16)


@pytest.fixture(scope="module")
def wan_adapter(farm_cache):
    from farm.models.registry import load_adapter

    return load_adapter("tiny:wan", device="cpu")


@pytest.fixture(scope="module")
def seed7(wan_adapter):
    """One tiny render (seed 7), shared by the tests that compare against it, and its time."""
    started = time.perf_counter()
    generation = wan_adapter.generate(pattern(80, 48), seed=7, **RENDER)
    return generation, time.perf_counter() - started


@pytest.fixture
def pipeline_module():
    from diffusers.pipelines.wan import pipeline_wan_i2v

    return pipeline_wan_i2v


@pytest.fixture
def with_identity_ftfy(monkeypatch, pipeline_module):
    """ftfy (not installed with farm) as the identity it is on valid text, so the pipeline's own
    prompt path runs: `prompt_clean` looks the module global `ftfy` up at call time."""
    if not hasattr(pipeline_module, "ftfy"):
        monkeypatch.setattr(pipeline_module, "ftfy", types.SimpleNamespace(fix_text=lambda text: text),
                            raising=False)


def pipeline_frames(pipe, image, *, seed: int = 7, **kwargs) -> np.ndarray:
    """The pipeline's own call and decode, as uint8 frames (what farm encodes)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    video = pipe(image=image, generator=generator, output_type="np", **kwargs).frames[0]
    return to_uint8(np.asarray(video))


# --- the tiny model ----------------------------------------------------------------------------


def test_the_tiny_model_has_every_component_of_the_real_pipeline(wan_adapter):
    import json

    index = json.loads((wan_adapter.model.path / "model_index.json").read_text())
    assert index["_class_name"] == "WanImageToVideoPipeline"
    pipe = wan_adapter.pipeline
    kinds = {name: type(getattr(pipe, name)).__name__ for name in
             ("transformer", "vae", "text_encoder", "tokenizer", "image_encoder", "image_processor", "scheduler")}
    assert kinds == {
        "transformer": "WanTransformer3DModel",
        "vae": "AutoencoderKLWan",
        "text_encoder": "UMT5EncoderModel",
        "tokenizer": "T5Tokenizer",  # transformers 5: T5TokenizerFast is this class
        "image_encoder": "CLIPVisionModel",
        # CLIPImageProcessor resolves to its PIL backend where torchvision is not installed
        "image_processor": type(__import__("transformers").CLIPImageProcessor()).__name__,
        "scheduler": "UniPCMultistepScheduler",
    }
    # The real geometry and the real scheduler and latent statistics.
    assert (pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal) == (8, 4)
    assert pipe.transformer.config.in_channels == 36 and tuple(pipe.transformer.config.patch_size) == (1, 2, 2)
    assert pipe.transformer.config.image_dim is not None  # Wan 2.1 I2V: image cross-attention
    published_vae = wan.FULLSIZE_CONFIGS["vae"]
    assert list(pipe.vae.config.latents_mean) == published_vae["latents_mean"]
    assert list(pipe.vae.config.latents_std) == published_vae["latents_std"]
    for key, value in wan.FULLSIZE_CONFIGS["scheduler"].items():
        assert pipe.scheduler.config[key] == value, key
    assert pipe.scheduler.config.flow_shift == 3.0


def test_the_tokenizer_is_a_t5_unigram_tokenizer(wan_adapter):
    tokenizer = wan_adapter.pipeline.tokenizer
    ids = tokenizer("the cat is walking").input_ids
    assert ids[-1] == tokenizer.eos_token_id == 1 and tokenizer.pad_token_id == 0
    assert tokenizer.convert_tokens_to_ids("\u2581walking") in ids  # a whole word, not its letters
    assert tokenizer.unk_token_id not in ids
    assert len(tokenizer) == wan_adapter.pipeline.text_encoder.config.vocab_size


def test_a_tiny_render_encodes_to_an_mp4_of_the_asked_size_frames_and_fps(seed7, tmp_path):
    import imageio_ffmpeg

    generation, seconds = seed7
    assert generation.frames.shape == (5, 48, 80, 3) and generation.frames.dtype == np.uint8
    assert set(generation.timings) == {"denoise", "decode"}
    assert seconds < 60, f"the tiny render took {seconds:.1f}s"
    path = str(tmp_path / "wan.mp4")
    encode_mp4(generation.frames, path, RENDER["fps"])
    reader = imageio_ffmpeg.read_frames(path)
    meta = next(reader)
    frames = list(reader)
    assert tuple(meta["size"]) == (80, 48)
    assert meta["fps"] == 16
    assert len(frames) == 5
    assert all(len(frame) == 80 * 48 * 3 for frame in frames)


def test_the_same_seed_gives_the_same_video_and_another_seed_another(wan_adapter, seed7):
    first = seed7[0].frames
    second = wan_adapter.generate(pattern(80, 48), seed=7, **RENDER).frames
    third = wan_adapter.generate(pattern(80, 48), seed=8, **RENDER).frames
    assert (first == second).all()
    assert not (first == third).all()


# --- conditioning ------------------------------------------------------------------------------


def test_a_cancel_raised_from_the_step_hook_stops_the_denoise_at_that_step_and_the_next_render_is_whole(
        wan_adapter, seed7):
    """The renderer's step hook stops a render by raising (a cancel, a drain): through
    diffusers' callback_on_step_end, before the next step; the adapter renders as before after."""
    from farm.core.cancel import RenderCancelled

    seen = []

    def on_step(done, total):
        seen.append(done)
        if done == 2:
            raise RenderCancelled("item i0 was cancelled", done)

    with pytest.raises(RenderCancelled):
        wan_adapter.denoise(pattern(80, 48), seed=7, on_step=on_step, **{**RENDER, "steps": 6})
    assert seen == [0, 1, 2]  # before the first step and after each: two of six steps ran
    again = wan_adapter.generate(pattern(80, 48), seed=7, **RENDER)
    assert np.array_equal(again.frames, seed7[0].frames)


def test_the_prompt_embeddings_are_the_pipelines_own(wan_adapter, with_identity_ftfy):
    pipe = wan_adapter.pipeline
    for text in (PROMPT, NEGATIVE, "", "  waves &amp; rolling\n  in  "):
        ours, truncated = wan_adapter.encode_prompt(text)
        with torch.no_grad():
            theirs = pipe._get_t5_prompt_embeds(prompt=text, max_sequence_length=wan.MAX_SEQUENCE_LENGTH,
                                                device=torch.device("cpu"))
        assert not truncated
        assert ours.shape == (1, wan.MAX_SEQUENCE_LENGTH, pipe.text_encoder.config.d_model)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert (wan_adapter.encode_prompt(PROMPT)[0][:, 12:] == 0).all()  # zero past the prompt's tokens


def test_the_adapter_renders_what_the_pipelines_own_call_renders(wan_adapter, seed7, with_identity_ftfy):
    """Prompt, negative prompt and image all encoded by diffusers itself, and its own decode."""
    image = pattern(80, 48)
    ours = seed7[0].frames
    theirs = pipeline_frames(wan_adapter.pipeline, image, seed=7, prompt=PROMPT, negative_prompt=NEGATIVE,
                             width=80, height=48, num_frames=5, num_inference_steps=3, guidance_scale=5.0)
    assert theirs.shape == ours.shape
    assert (ours == theirs).all()
    # The prompt conditions the video: another prompt, another video.
    other = wan_adapter.generate(image, seed=7, **{**RENDER, "prompt": "a red car at night"}).frames
    assert not (other == ours).all()


def test_the_adapter_renders_what_the_pipeline_renders_from_its_embeddings(wan_adapter, seed7):
    """Without ftfy: the pipeline given farm's embeddings (image still encoded by the pipeline)."""
    image = pattern(80, 48)
    positive, _ = wan_adapter.encode_prompt(PROMPT)
    negative, _ = wan_adapter.encode_prompt(NEGATIVE)
    ours = seed7[0].frames
    theirs = pipeline_frames(wan_adapter.pipeline, image, seed=7, prompt_embeds=positive,
                             negative_prompt_embeds=negative, width=80, height=48, num_frames=5,
                             num_inference_steps=3, guidance_scale=5.0)
    assert (ours == theirs).all()


def test_why_farm_encodes_the_prompt_itself(wan_adapter, pipeline_module):
    """The pipeline's own prompt path needs ftfy, which farm does not install."""
    from diffusers.utils import is_ftfy_available

    if is_ftfy_available():
        pytest.skip("ftfy is installed here: the pipeline's own prompt path works")
    with pytest.raises(NameError, match="ftfy"):
        wan_adapter.pipeline(image=pattern(64, 64), prompt="a cat", height=64, width=64, num_frames=5,
                             num_inference_steps=1, output_type="latent")


def test_without_guidance_there_is_one_pass_and_no_negative_prompt(wan_adapter):
    calls = []
    hook = wan_adapter.pipeline.transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        arguments = wan_adapter.call_arguments(pattern(64, 64), prompt=PROMPT, negative_prompt=NEGATIVE, width=64,
                                               height=64, frames=5, steps=2, guidance_scale=1.0, fps=16)
        assert "negative_prompt_embeds" not in arguments and "fps" not in arguments
        wan_adapter.generate(pattern(64, 64), seed=7, **{**RENDER, "width": 64, "height": 64, "steps": 2,
                                                         "guidance_scale": 1.0})
        assert len(calls) == 2  # one transformer pass per step
        calls.clear()
        wan_adapter.generate(pattern(64, 64), seed=7, **{**RENDER, "width": 64, "height": 64, "steps": 2})
        assert len(calls) == 4  # classifier-free guidance: two passes per step
    finally:
        hook.remove()


# --- parameter rules ---------------------------------------------------------------------------


def test_frames_outside_4k_plus_1_are_refused_and_the_pipeline_would_cut_them(wan_adapter):
    issues = check_params(WAN, width=64, height=64, frames=8, prompt="a cat").issues
    assert [issue.field for issue in issues] == ["frames"]
    assert "is not allowed" in issues[0].message and "the nearest allowed is 9" in issues[0].message
    assert issues[0].nearest == 9
    assert not check_params(WAN, width=64, height=64, frames=9, prompt="a cat").issues
    # 1 frame (k = 0) is farm's own floor, not the pipeline's: it would render the still image.
    assert check_params(WAN, width=64, height=64, frames=1, prompt="a cat").issues[0].nearest == 5
    # The pipeline does not refuse 8: it logs a warning, changes num_frames to 8 // 4 * 4 + 1 and
    # renders 9 frames, not the 8 asked for (pipeline_wan_i2v.py, __call__: "`num_frames - 1` has
    # to be divisible by 4. Rounding to the nearest number.").
    frames = pipeline_frames(wan_adapter.pipeline, pattern(64, 64), prompt_embeds=wan_adapter.encode_prompt("")[0],
                             width=64, height=64, num_frames=8, num_inference_steps=1, guidance_scale=1.0)
    assert frames.shape[0] == 9
    assert wan_adapter.pipeline.vae_scale_factor_temporal == WAN.frame_step and WAN.frame_offset == 1


def test_sizes_off_the_multiple_of_16_are_refused_and_the_pipeline_refuses_them(wan_adapter):
    issues = check_params(WAN, width=72, height=64, frames=5, prompt="a cat").issues
    assert [issue.field for issue in issues] == ["resolution"]
    assert "72x64" in issues[0].message and "multiples of 16" in issues[0].message
    assert issues[0].nearest in ((64, 64), (80, 64))
    assert f"{issues[0].nearest[0]}x{issues[0].nearest[1]}" in issues[0].message
    pipe = wan_adapter.pipeline
    assert pipe.vae_scale_factor_spatial * pipe.transformer.config.patch_size[1] == WAN.size_multiple
    with pytest.raises(ValueError, match="divisible by 16"):
        pipe(image=pattern(72, 64), prompt_embeds=wan_adapter.encode_prompt("")[0], width=72, height=64,
             num_frames=5, num_inference_steps=1, guidance_scale=1.0, output_type="latent")


# --- the full-size model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fullsize_counts():
    return wan.fullsize_parameter_counts()


def test_the_fullsize_configuration_has_the_published_parameter_counts(fullsize_counts):
    assert set(fullsize_counts) == set(wan.PUBLISHED_PARAMETER_COUNTS)
    for name, published in wan.PUBLISHED_PARAMETER_COUNTS.items():
        assert abs(fullsize_counts[name] - published) <= 0.01 * published, (name, fullsize_counts[name], published)
    assert fullsize_counts == {
        "transformer": 16_394_878_784,
        "text_encoder": 5_680_910_336,
        "image_encoder": 630_766_080,
        "vae": 126_892_531,
    }


def test_the_fullsize_components_are_built_on_the_meta_device():
    components = wan.build_fullsize_components("meta", torch.bfloat16)
    for name, module in components.items():
        assert all(p.device.type == "meta" and p.dtype == torch.bfloat16 for p in module.parameters()), name
    assert torch.get_default_dtype() == torch.float32  # restored after the build
    transformer = components["transformer"]
    assert transformer.config.num_layers == 40 and transformer.config.in_channels == 36
    assert components["text_encoder"].config.d_model == transformer.config.text_dim
    assert components["image_encoder"].config.hidden_size == transformer.config.image_dim


def test_the_vram_profile_holds_the_counted_numbers(fullsize_counts):
    assert PROFILES["wan"] is WAN_PROFILE
    assert WAN_PROFILE.component_params == fullsize_counts
    assert WAN_PROFILE.flop_per_token == 2.0 * fullsize_counts["transformer"]
    config = wan.FULLSIZE_CONFIGS["transformer"]
    assert WAN_PROFILE.hidden_width == config["num_attention_heads"] * config["attention_head_dim"]
    assert WAN_PROFILE.dit_layers == config["num_layers"]
    assert WAN_PROFILE.patch == tuple(config["patch_size"])
    assert WAN_PROFILE.latent_downsample == 8 and WAN_PROFILE.temporal_downsample == 4
    assert WAN_PROFILE.vae_decoder_top_channels == wan.FULLSIZE_CONFIGS["vae"]["base_dim"]
    assert WAN_PROFILE.cfg_batched is False  # the pipeline runs the two guidance passes one after the other


def test_describe_names_the_family_adapter_and_pipeline(wan_adapter):
    described = wan_adapter.describe()
    assert described["family"] == "wan"
    assert described["adapter"] == "WanAdapter"
    assert described["pipeline"] == "WanImageToVideoPipeline"
    assert described["id"] == "tiny:wan" and described["source"] == "tiny"
    assert described["dtype"] == "float32"
