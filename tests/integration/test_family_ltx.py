"""LTX-Video (`tiny:ltx`): built from code, loaded like real weights, rendered through the adapter
exactly as the pipeline renders, with the family's rules checked against the pipeline itself and
the full-size architecture counted on the meta device against the published figures."""

import inspect
import json
import os

import numpy as np
import pytest
import torch

from farm.core.families import LTX_VIDEO, check_params
from farm.core.vram import PROFILES
from farm.media.video import encode_mp4, to_uint8
from farm.models.families import ltx
from farm.models.registry import load_adapter

pytestmark = pytest.mark.integration

W, H, FRAMES, STEPS, FPS = 96, 64, 9, 3, 24  # 96x64: width and height differ, so a swap shows
PARAMS = dict(prompt="a cat slowly turns its head", negative_prompt="", width=W, height=H, frames=FRAMES,
              steps=STEPS, guidance_scale=3.0, fps=FPS)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: two OpenMP threads on a shared 2-core machine are slower than one (this module only)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def adapter(farm_cache):
    return load_adapter("tiny:ltx", device="cpu")


@pytest.fixture(scope="module")
def image():
    from helpers import pattern

    return pattern(W, H)


@pytest.fixture(scope="module")
def rendered(adapter, image):
    return adapter.generate(image, seed=7, **PARAMS)


def pipeline_call(pipe, image, *, seed, **overrides):
    """The pipeline's own call (its own encoding and decode) for PARAMS, as numpy frames in [0, 1]."""
    arguments = dict(image=image, prompt=PARAMS["prompt"], negative_prompt=PARAMS["negative_prompt"], width=W,
                     height=H, num_frames=FRAMES, frame_rate=FPS, num_inference_steps=STEPS,
                     guidance_scale=PARAMS["guidance_scale"], decode_timestep=ltx.DECODE_TIMESTEP,
                     decode_noise_scale=ltx.DECODE_NOISE_SCALE)
    arguments.update(overrides)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # as the adapter seeds it (only a noise-injecting decoder reads it)
        return pipe(**arguments, generator=torch.Generator("cpu").manual_seed(seed), output_type="np").frames[0]


def test_the_tiny_model_is_a_diffusers_folder_with_every_component(adapter, farm_cache):
    folder = ltx.tiny_model_dir(farm_cache)
    assert adapter.model.path == folder
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "LTXImageToVideoPipeline"
    pipe = adapter.pipeline
    assert {name: type(getattr(pipe, name)).__name__ for name in ("transformer", "vae", "text_encoder", "tokenizer",
                                                                  "scheduler")} == {
        "transformer": "LTXVideoTransformer3DModel",
        "vae": "AutoencoderKLLTXVideo",
        "text_encoder": "T5EncoderModel",
        "tokenizer": "T5Tokenizer",  # transformers 5: T5TokenizerFast is this (tokenizers-backed) class
        "scheduler": "FlowMatchEulerDiscreteScheduler",
    }
    from transformers import T5TokenizerFast

    assert isinstance(pipe.tokenizer, T5TokenizerFast)
    # The real latent geometry, the real scheduler settings, the real prompt length.
    assert (pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio) == (32, 8)
    assert {key: pipe.scheduler.config[key] for key in ltx.SCHEDULER_CONFIG} == ltx.SCHEDULER_CONFIG
    assert pipe.tokenizer_max_length == ltx.MAX_PROMPT_TOKENS
    assert pipe.transformer.config.caption_channels == pipe.text_encoder.config.d_model
    assert not torch.equal(pipe.vae.latents_std, torch.ones_like(pipe.vae.latents_std))
    assert not pipe.vae.config.timestep_conditioning  # as the reference's 0.9.0 VAE


def test_the_tokenizer_segments_like_t5(adapter):
    tokenizer = adapter.pipeline.tokenizer
    ids = tokenizer("the cat slowly turns").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["▁the", "▁cat", "▁slowly", "▁turns", "</s>"]
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.convert_ids_to_tokens(tokenizer("zebra").input_ids)[:2] == ["▁z", "e"]  # letters, not <unk>


def test_a_tiny_render_encodes_to_an_mp4_of_the_asked_size_frames_and_fps(rendered, tmp_path):
    import imageio_ffmpeg

    assert rendered.frames.shape == (FRAMES, H, W, 3) and rendered.frames.dtype == np.uint8
    assert set(rendered.timings) == {"denoise", "decode"}
    path = tmp_path / "clip.mp4"
    encode_mp4(rendered.frames, str(path), FPS)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    frames = list(reader)
    assert meta["size"] == (W, H)
    assert meta["fps"] == FPS
    assert len(frames) == FRAMES


def test_the_same_seed_gives_the_same_video_and_another_seed_another(adapter, image, rendered):
    steps = []
    again = adapter.generate(image, seed=7, on_step=lambda done, total: steps.append((done, total)), **PARAMS)
    other = adapter.generate(image, seed=8, **PARAMS)
    assert np.array_equal(rendered.frames, again.frames)
    assert not np.array_equal(rendered.frames, other.frames)
    assert steps == [(done, STEPS) for done in range(STEPS + 1)]  # the step callback, through the pipeline's


def test_the_adapter_renders_what_the_pipelines_own_call_renders(adapter, image, rendered):
    """Its own prompt and image encoding, frame_rate, and the decode at the end of __call__."""
    own = pipeline_call(adapter.pipeline, image, seed=7)
    assert own.shape == (FRAMES, H, W, 3)
    assert np.array_equal(to_uint8(own), rendered.frames)


def test_only_arguments_the_pipeline_takes_and_each_one_matters(adapter, image, rendered):
    arguments = adapter.call_arguments(image, **PARAMS)
    accepted = inspect.signature(type(adapter.pipeline).__call__).parameters
    assert set(arguments) <= set(accepted)
    assert arguments["frame_rate"] == FPS and arguments["num_frames"] == FRAMES
    # fps reaches the model (the temporal RoPE scale), and so do the prompt and the image.
    for changed in (dict(fps=12), dict(prompt="waves rolling in the sea"), dict(negative_prompt="blurry")):
        assert not np.array_equal(adapter.generate(image, seed=7, **{**PARAMS, **changed}).frames, rendered.frames)
    from helpers import noise

    assert not np.array_equal(adapter.generate(noise(W, H), seed=7, **PARAMS).frames, rendered.frames)


def test_a_timestep_conditioned_vae_decodes_as_the_pipeline_does(tmp_path, image):
    """LTX-Video 0.9.1+ VAEs: noise blended at decode_noise_scale from the render's generator,
    decoded at decode_timestep, noise injected inside the decoder; a retried decode is the same."""
    from farm.models.families.ltx import LTXVideoAdapter

    folder = tmp_path / "ltx-091-like"
    ltx.build_tiny_pipeline(timestep_conditioning=True).save_pretrained(folder)
    adapter = LTXVideoAdapter.load(str(folder), device="cpu")
    assert adapter.pipeline.vae.config.timestep_conditioning
    latents = adapter.denoise(image, seed=11, **PARAMS)
    first = adapter.decode(latents).frames
    retried = adapter.decode(latents).frames
    assert np.array_equal(first, retried)
    assert np.array_equal(first, to_uint8(pipeline_call(adapter.pipeline, image, seed=11)))
    # The decode noise really is used: without it (scale 0) the video differs.
    adapter.decode_noise_scale = 0.0
    assert not np.array_equal(adapter.decode(latents).frames, first)


def test_an_upcast_vae_decodes_in_fp32_and_still_encodes_the_image(farm_cache, image):
    """FARM_VAE_UPCAST: only the decoder goes to fp32; the pipeline VAE-encodes the image in the
    text encoder's dtype, which a wholly upcast VAE (the base class's default) refuses."""
    from farm.models.families.ltx import LTXVideoAdapter
    from farm.models.precision import Precision

    adapter = LTXVideoAdapter.load("tiny:ltx", device="cpu", precision=Precision("bf16", "bf16", True))
    vae = adapter.pipeline.vae
    assert next(vae.encoder.parameters()).dtype == torch.bfloat16
    assert next(vae.decoder.parameters()).dtype == torch.float32
    assert adapter.describe()["vae_decode_dtype"] == "float32" and adapter.dtype_name == "bfloat16"
    small = {**PARAMS, "steps": 2}
    assert adapter.generate(image, seed=7, **small).frames.shape == (FRAMES, H, W, 3)
    vae.to(torch.float32)  # what VideoAdapter.upcast_vae_decoder does
    with pytest.raises(RuntimeError, match="should be the same"):
        adapter.generate(image, seed=7, **small)


def test_decoding_needs_the_latents_of_a_denoise(adapter, image):
    from farm.models.families.ltx import LTXVideoAdapter

    fresh = LTXVideoAdapter(adapter.pipeline, adapter.model, "cpu", 0.0)  # no denoise yet
    with pytest.raises(RuntimeError, match="packed"):
        fresh.decode_video(torch.zeros(1, 8, 8), 0)
    latents = fresh.denoise(image, seed=7, **{**PARAMS, "steps": 2})
    with pytest.raises(ValueError, match="packed latents"):
        fresh.decode_video(latents[:, :-1], 0)


def test_the_family_rules_are_the_pipelines(adapter, image):
    # 8k+1 frames: the pipeline does not refuse 12, it silently renders (12 - 1) // 8 * 8 + 1 = 9.
    check = check_params(LTX_VIDEO, width=W, height=H, frames=12, prompt="a cat")
    assert [issue.field for issue in check.issues] == ["frames"]
    message = check.issues[0].message
    assert "12 is not allowed" in message and "8k+1" in message and "nearest allowed is 9" in message
    assert check.issues[0].nearest == 9
    assert check_params(LTX_VIDEO, width=W, height=H, frames=14, prompt="a cat").issues[0].nearest == 17
    twelve = pipeline_call(adapter.pipeline, image, seed=7, num_frames=12, num_inference_steps=2)
    assert twelve.shape[0] == 9
    # Sizes: multiples of 32, which check_inputs enforces.
    check = check_params(LTX_VIDEO, width=88, height=H, frames=FRAMES, prompt="a cat")
    assert [issue.field for issue in check.issues] == ["resolution"]
    assert "88x64" in check.issues[0].message and "nearest allowed is 96x64" in check.issues[0].message
    with pytest.raises(ValueError, match="divisible by 32"):
        pipeline_call(adapter.pipeline, image, seed=7, width=88, num_inference_steps=1)
    assert not check_params(LTX_VIDEO, width=W, height=H, frames=FRAMES, prompt="a cat").issues
    assert LTX_VIDEO.allowed_frames()[:3] == [9, 17, 25] and LTX_VIDEO.allowed_frames()[-1] == 257
    assert LTX_VIDEO.native_fps == 24 and LTX_VIDEO.default_frames == adapter.pipeline.default_frames == 121


@pytest.fixture(scope="module")
def meta_components():
    return ltx.build_fullsize_components("meta")


def _rounded(count: int, digits: int) -> int:
    """`count` to `digits` significant digits, as a published "1.9B" is rounded."""
    magnitude = 10 ** (len(str(count)) - digits)
    return round(count / magnitude) * magnitude


def _safetensors_bytes(module) -> int:
    """The size of `module`'s fp32 safetensors file as save_pretrained writes it: an 8-byte length,
    the JSON header (tensors by name, offsets in order, padded to 8 bytes), then 4 bytes a value."""
    state = module.state_dict()
    entries, offset = {}, 0
    for name in sorted(state):
        size = state[name].numel() * 4
        entries[name] = {"dtype": "F32", "shape": list(state[name].shape), "data_offsets": [offset, offset + size]}
        offset += size
    header = json.dumps({"__metadata__": {"format": "pt"}, **entries}, separators=(",", ":"))
    return 8 + len(header) + (-len(header)) % 8 + offset


def test_the_full_size_counts_are_the_published_ones(meta_components, adapter):
    counts = ltx.fullsize_parameter_counts(meta_components)
    assert counts == {"transformer": 1_923_385_472, "vae": 419_193_649, "text_encoder": 4_762_310_656}
    for name, (published, digits) in ltx.PUBLISHED_PARAMETER_COUNTS.items():
        assert (counts[name] if digits is None else _rounded(counts[name], digits)) == published, name
    # The VAE has no published count but a published weight file, which this architecture fills to the byte.
    assert _safetensors_bytes(meta_components["vae"]) == ltx.PUBLISHED_VAE_FILE_BYTES
    tiny_file = adapter.model.path / "vae" / "diffusion_pytorch_model.safetensors"
    assert _safetensors_bytes(adapter.pipeline.vae) == os.path.getsize(tiny_file)  # the rule, on a real file
    assert all(t.device.type == "meta" for m in meta_components.values() for t in m.parameters())


def test_the_vram_profile_holds_the_counted_architecture(meta_components):
    profile = PROFILES[LTX_VIDEO.name]
    assert profile.component_params == ltx.fullsize_parameter_counts(meta_components)
    config = ltx.FULLSIZE_CONFIGS["transformer"]
    assert profile.hidden_width == config["num_attention_heads"] * config["attention_head_dim"] == 2048
    assert profile.dit_layers == config["num_layers"] == 28
    assert profile.patch == (config["patch_size_t"], config["patch_size"], config["patch_size"]) == (1, 1, 1)
    vae = meta_components["vae"]
    assert (profile.latent_downsample, profile.temporal_downsample) == (vae.spatial_compression_ratio,
                                                                        vae.temporal_compression_ratio) == (32, 8)
    assert profile.vae_decoder_top_channels == vae.config.decoder_block_out_channels[0] == 128


def test_describe_names_the_family_the_adapter_and_the_pipeline(adapter):
    described = adapter.describe()
    assert described["family"] == "ltx-video"
    assert described["adapter"] == "LTXVideoAdapter"
    assert described["pipeline"] == "LTXImageToVideoPipeline"
    assert described["id"] == "tiny:ltx" and described["dtype"] == "float32"
