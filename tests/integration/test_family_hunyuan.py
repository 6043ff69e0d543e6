"""HunyuanVideo image-to-video: the tiny model built in code (every real component, the real
prompt template), rendered through farm's adapter, against the pipeline's own call; the family
rules against what the pipeline really does; the published model's size on the meta device."""

import json

import numpy as np
import pytest
import torch

from farm.core.families import EMBEDDED, HUNYUAN_VIDEO, check_params
from farm.core.vram import PROFILES
from farm.media.video import encode_mp4, probe_mp4, to_uint8
from farm.models.families import hunyuan
from farm.models.registry import load_adapter

pytestmark = pytest.mark.integration

W, H, F, STEPS = 64, 64, 9, 2


@pytest.fixture(scope="module")
def adapter(farm_cache):
    return load_adapter("tiny:hunyuan", device="cpu")


@pytest.fixture(scope="module")
def image():
    from helpers import pattern

    return pattern(W, H)


def render(adapter, image, seed=7, **overrides):
    params = {"prompt": "a cat walks on a red sofa", "negative_prompt": "", "width": W, "height": H, "frames": F,
              "steps": STEPS, "guidance_scale": 6.0, "fps": 24}
    params.update(overrides)
    return adapter.generate(image, seed=seed, **params)


def pipeline_frames(adapter, image, seed=7, **overrides):
    """The pipeline's own call, output as uint8 frames."""
    arguments = {"image": image, "prompt": "a cat walks on a red sofa", "height": H, "width": W, "num_frames": F,
                 "num_inference_steps": STEPS, "guidance_scale": 6.0}
    arguments.update(overrides)
    frames = adapter.pipeline(**arguments, generator=torch.Generator("cpu").manual_seed(seed), output_type="np").frames
    return to_uint8(np.asarray(frames[0]))


def test_the_tiny_model_has_every_component_of_the_real_pipeline(adapter):
    index = json.loads((adapter.model.path / "model_index.json").read_text())
    assert index["_class_name"] == "HunyuanVideoImageToVideoPipeline"
    assert index["tokenizer"] == ["transformers", "LlamaTokenizerFast"]  # as in the Hub repo
    assert index["image_processor"] == ["transformers", "CLIPImageProcessor"]
    assert adapter.model.path.name == f"tiny-hunyuan-video-v{hunyuan.TINY_MODEL_VERSION}"
    pipe = adapter.pipeline
    assert type(pipe.text_encoder).__name__ == "LlavaForConditionalGeneration"
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModel"
    assert type(pipe.tokenizer_2).__name__ == "CLIPTokenizer"
    assert type(pipe.transformer).__name__ == "HunyuanVideoTransformer3DModel"
    assert type(pipe.vae).__name__ == "AutoencoderKLHunyuanVideo"
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert pipe.scheduler.config.shift == 7.0  # the real scheduler config
    config = pipe.transformer.config
    assert config.image_condition_type == "token_replace" and config.guidance_embeds
    assert (config.patch_size, config.patch_size_t) == (2, 1)
    assert (pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal) == (8, 4)
    assert pipe.vae_scaling_factor == 0.476986
    assert config.text_embed_dim == pipe.text_encoder.config.text_config.hidden_size
    assert config.pooled_projection_dim == pipe.text_encoder_2.config.hidden_size


def test_the_tokenizer_fits_the_pipelines_default_prompt_template(adapter):
    """crop_start=103 and image_emb_start=5 are positions in Llama 3's tokenization of the
    template; the tiny tokenizer (byte-level BPE, Llama 3's split) reproduces them."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE

    tokenizer = adapter.pipeline.tokenizer
    prefix = DEFAULT_PROMPT_TEMPLATE["template"].split("{}")[0]
    ids = tokenizer(prefix).input_ids
    assert len(ids) == DEFAULT_PROMPT_TEMPLATE["crop_start"] == 103
    assert ids[0] == tokenizer.bos_token_id
    assert ids.index(tokenizer.convert_tokens_to_ids("<image>")) == DEFAULT_PROMPT_TEMPLATE["image_emb_start"] == 5
    assert tokenizer.convert_ids_to_tokens(ids[4]) == "ĊĊ"  # "\n\n" is one token (Llama 3's 271)
    full = tokenizer(DEFAULT_PROMPT_TEMPLATE["template"].format("a cat")).input_ids
    assert full.count(tokenizer.convert_tokens_to_ids("<|end_header_id|>")) == 3  # system, user, assistant
    assert tokenizer.decode(tokenizer("a cat walks", add_special_tokens=False).input_ids) == "a cat walks"
    assert tokenizer.padding_side == "right"
    assert tokenizer.pad_token_id == adapter.pipeline.text_encoder.config.pad_token_id
    assert tokenizer.convert_tokens_to_ids("<image>") == adapter.pipeline.text_encoder.config.image_token_index
    # the vision tower gives exactly the image_emb_len features the template reserves
    vision = adapter.pipeline.text_encoder.config.vision_config
    assert (vision.image_size // vision.patch_size) ** 2 == DEFAULT_PROMPT_TEMPLATE["image_emb_len"] == 576


def test_transformers_5_rebuilds_the_saved_tokenizer_and_the_prompt_is_lost(adapter, image):
    """Why the adapter reloads the tokenizer as saved: `LlamaTokenizerFast.from_pretrained`
    (what diffusers calls) swaps tokenizer.json's byte-level pre-tokenizer for a SentencePiece
    Metaspace one; the template no longer fits, and the prompt is truncated away."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE
    from transformers import LlamaTokenizerFast

    folder = adapter.model.path / "tokenizer"
    rebuilt = LlamaTokenizerFast.from_pretrained(folder)
    assert type(rebuilt.backend_tokenizer.pre_tokenizer).__name__ == "Metaspace"
    assert hunyuan.saved_tokenizer_differs(rebuilt, folder)
    assert not hunyuan.saved_tokenizer_differs(adapter.pipeline.tokenizer, folder)
    assert adapter.tokenizer_repaired and adapter.describe()["tokenizer"] == "tokenizer.json as saved"
    prefix = len(rebuilt(DEFAULT_PROMPT_TEMPLATE["template"].split("{}")[0]).input_ids)
    assert prefix > 256 + DEFAULT_PROMPT_TEMPLATE["crop_start"]  # longer than all the pipeline tokenizes

    pipe = adapter.pipeline

    def embeds(prompt):
        with torch.no_grad():
            return pipe.encode_prompt(image=image, prompt=prompt, device="cpu", image_embed_interleave=4)[0]

    repaired = pipe.tokenizer
    try:
        pipe.tokenizer = rebuilt
        assert torch.equal(embeds("a cat"), embeds("a dog on a sofa"))  # the prompt does not matter
    finally:
        pipe.tokenizer = repaired
    assert not torch.allclose(embeds("a cat"), embeds("a dog on a sofa"))


def test_a_tiny_render_round_trips_through_farms_mp4(adapter, image, tmp_path):
    import imageio_ffmpeg

    result = render(adapter, image)
    assert result.frames.shape == (F, H, W, 3) and result.frames.dtype == np.uint8
    assert set(result.timings) == {"denoise", "decode"}
    print(f"tiny HunyuanVideo-I2V render {W}x{H}x{F}, {STEPS} steps: {sum(result.timings.values()):.2f} s")
    path = tmp_path / "clip.mp4"
    encode_mp4(result.frames, str(path), fps=24)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    decoded = [np.frombuffer(frame, np.uint8).reshape(meta["size"][1], meta["size"][0], 3) for frame in reader]
    assert len(decoded) == F
    assert tuple(meta["size"]) == (W, H)
    assert meta["fps"] == 24
    info = probe_mp4(str(path))
    assert (info.frames, info.width, info.height, info.fps) == (F, W, H, 24)


def test_same_seed_same_video_another_seed_another(adapter, image):
    first = render(adapter, image, seed=7)
    second = render(adapter, image, seed=7)
    third = render(adapter, image, seed=8)
    assert np.array_equal(first.frames, second.frames)
    assert not np.array_equal(first.frames, third.frames)


def test_the_adapter_renders_what_the_pipelines_own_call_renders(adapter, image):
    """The adapter's denoise (latents out) + decode_video equals the pipeline's full call,
    prompt and image encoded by the pipeline itself."""
    ours = render(adapter, image, seed=11, prompt="waves rolling in")
    theirs = pipeline_frames(adapter, image, seed=11, prompt="waves rolling in")
    assert np.array_equal(ours.frames, theirs)
    assert not np.array_equal(ours.frames, render(adapter, image, seed=11, prompt="a dog turns its head").frames)


def test_guidance_is_embedded_one_transformer_pass_per_step(adapter, image):
    assert HUNYUAN_VIDEO.guidance == EMBEDDED
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs["guidance"])

    hook = adapter.pipeline.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        six = render(adapter, image, guidance_scale=6.0, negative_prompt="blurry")
    finally:
        hook.remove()
    assert len(seen) == STEPS  # no unconditional pass
    assert all(g.tolist() == [6000.0] for g in seen)  # guidance_scale x 1000 into the guidance embedding
    assert any("negative prompt was not used" in w for w in six.warnings)
    assert np.array_equal(six.frames, render(adapter, image, guidance_scale=6.0).frames)
    assert not np.array_equal(six.frames, render(adapter, image, guidance_scale=1.0).frames)


def test_frames_must_be_4k_plus_1_and_the_pipeline_really_drops_the_rest(adapter, image):
    check = check_params(HUNYUAN_VIDEO, width=W, height=H, frames=7, prompt="a cat")
    [issue] = check.issues
    assert issue.field == "frames" and issue.nearest == 5
    assert "7 is not allowed" in issue.message and "nearest allowed is 5" in issue.message and "4k+1" in issue.message
    assert not check_params(HUNYUAN_VIDEO, width=W, height=H, frames=9, prompt="a cat").issues
    # The pipeline accepts 7 but renders (7 - 1) // 4 + 1 = 2 latent frames: 5 frames, not 7.
    assert pipeline_frames(adapter, image, num_frames=7, num_inference_steps=1).shape[0] == 5


def test_sizes_must_be_multiples_of_16_and_the_pipeline_refuses_others(adapter, image):
    check = check_params(HUNYUAN_VIDEO, width=72, height=64, frames=9, prompt="a cat")
    [issue] = check.issues
    assert issue.field == "resolution" and issue.nearest == (64, 64)
    assert "72x64" in issue.message and "multiples of 16" in issue.message and "64x64" in issue.message
    with pytest.raises(ValueError, match="divisible by 16"):  # check_inputs
        adapter.pipeline(image=image, prompt="a cat", height=64, width=72, num_frames=5, num_inference_steps=1)


def test_the_full_size_model_has_the_published_parameter_counts():
    counts = hunyuan.fullsize_parameter_counts()
    assert counts == {
        "transformer": 12_821_012_544,
        "text_encoder": 8_355_272_704,
        "text_encoder_2": 123_060_480,
        "vae": 246_478_803,
    }
    for name, published in hunyuan.PUBLISHED_PARAMETER_COUNTS.items():
        assert abs(counts[name] - published) <= 0.01 * published, name
    assert counts["text_encoder_2"] == hunyuan.PUBLISHED_PARAMETER_COUNTS["text_encoder_2"]  # published exactly
    profile = PROFILES["hunyuan-video"]
    assert profile.component_params == counts
    config = hunyuan.FULLSIZE_CONFIGS["transformer"]
    assert profile.hidden_width == config["num_attention_heads"] * config["attention_head_dim"] == 3072
    assert profile.dit_layers == config["num_layers"] + config["num_single_layers"] == 60
    assert profile.patch == (config["patch_size_t"], config["patch_size"], config["patch_size"])
    assert (profile.latent_downsample, profile.temporal_downsample) == (8, 4)


def test_the_full_size_components_are_the_published_architecture():
    components = hunyuan.build_fullsize_components("meta")
    llava = components["text_encoder"]
    assert llava.config.text_config.num_hidden_layers == 32 and llava.config.text_config.vocab_size == 128320
    assert llava.config.vision_config.image_size // llava.config.vision_config.patch_size == 24  # 576 features
    assert components["transformer"].config.image_condition_type == "token_replace"
    assert components["vae"].config.latent_channels == 16
    assert all(p.device.type == "meta" for module in components.values() for p in module.parameters())


def test_describe_names_the_family_the_adapter_and_the_pipeline(adapter):
    described = adapter.describe()
    assert described["family"] == "hunyuan-video"
    assert described["adapter"] == "HunyuanVideoAdapter"
    assert described["pipeline"] == "HunyuanVideoImageToVideoPipeline"
    assert described["id"] == "tiny:hunyuan"
