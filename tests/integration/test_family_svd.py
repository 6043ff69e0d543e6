"""Stable Video Diffusion behind farm's adapter interface: the tiny SVD built in code (every real
component, random weights), rendered, encoded and decoded; conditioned exactly as the pipeline
conditions; the family's parameter rules checked against what the pipeline really does; the
full-size configuration counted on the meta device."""

import numpy as np
import pytest
import torch

from farm.core.families import SVD, check_params
from farm.core.vram import PROFILES, SVD_PROFILE
from farm.media.video import encode_mp4, to_uint8
from farm.models.families import svd as svd_module
from farm.models.families.svd import (
    COUNTED_PARAMETER_COUNTS,
    FULLSIZE_CONFIGS,
    PUBLISHED_PARAMETER_COUNTS,
    SVDAdapter,
    build_fullsize_components,
    fullsize_parameter_counts,
)

pytestmark = pytest.mark.integration

W, H, F, STEPS, GUIDANCE, FPS = 64, 64, 5, 3, 3.0, 7


@pytest.fixture(scope="module")
def svd(farm_cache):
    from farm.models.registry import load_adapter

    return load_adapter("tiny:svd", device="cpu")


@pytest.fixture(scope="module")
def image():
    from helpers import pattern

    return pattern(W, H)


def render(adapter, image, **overrides):
    params = {"prompt": "", "negative_prompt": "", "width": W, "height": H, "frames": F, "steps": STEPS,
              "guidance_scale": GUIDANCE, "fps": FPS, "seed": 7}
    return adapter.generate(image, **{**params, **overrides})


def test_the_tiny_model_is_a_diffusers_folder_with_every_real_component(svd, farm_cache):
    import importlib
    import json

    folder = svd_module.tiny_model_dir(farm_cache)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableVideoDiffusionPipeline"
    pipe = svd.pipeline
    assert {name: index[name] for name in pipe.components} == {
        "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],  # as the real model's index says
    }
    for name, module in pipe.components.items():
        library, class_name = index[name]
        assert isinstance(module, getattr(importlib.import_module(library), class_name)), name
    for key, value in FULLSIZE_CONFIGS["scheduler"].items():  # the real model's scheduler settings
        assert pipe.scheduler.config[key] == value, key
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.in_channels == 8  # the real latent geometry
    assert tuple(pipe.unet.config.down_block_types) == FULLSIZE_CONFIGS["unet"]["down_block_types"]
    assert pipe.image_encoder.config.image_size == 224  # what the pipeline resizes the image to
    assert svd.describe()["config_sha256"] == svd.config_sha256


def test_describe_names_family_adapter_and_pipeline(svd):
    description = svd.describe()
    assert description["family"] == "svd"
    assert description["adapter"] == "SVDAdapter"
    assert description["pipeline"] == "StableVideoDiffusionPipeline"
    assert description["id"] == "tiny:svd" and description["dtype"] == "float32"
    assert isinstance(svd, SVDAdapter) and svd.denoiser is svd.pipeline.unet


def test_tiny_render_encodes_to_an_mp4_with_the_asked_frames_size_and_fps(svd, image, tmp_path):
    import imageio_ffmpeg

    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs["added_time_ids"].clone())

    hook = svd.pipeline.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        generation = render(svd, image, prompt="a cat turns its head", negative_prompt="blurry")
    finally:
        hook.remove()
    assert generation.frames.shape == (F, H, W, 3) and generation.frames.dtype == np.uint8
    assert generation.frames.std() > 0
    assert set(generation.timings) == {"denoise", "decode"}
    # The prompt and negative prompt are recorded as unused, in the render's warnings.
    assert any("the prompt was not used" in w for w in generation.warnings), generation.warnings
    assert any("the negative prompt was not used" in w for w in generation.warnings), generation.warnings
    # farm's fps reaches the UNet as fps - 1 (the pipeline subtracts it), beside the defaults;
    # one UNet call per step, both guidance halves in one batch.
    assert len(seen) == STEPS
    assert seen[0].tolist() == [[FPS - 1, 127, pytest.approx(0.02)]] * 2

    path = tmp_path / "clip.mp4"
    encode_mp4(generation.frames, str(path), FPS)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    frames = list(reader)
    assert len(frames) == F
    assert tuple(meta["size"]) == (W, H)
    assert meta["fps"] == FPS
    assert all(len(frame) == W * H * 3 for frame in frames)


def test_same_seed_same_video_other_seed_other_video(svd, image):
    first = render(svd, image, seed=11)
    second = render(svd, image, seed=11)
    third = render(svd, image, seed=12)
    assert (first.frames == second.frames).all()
    assert not (first.frames == third.frames).all()


def test_the_adapter_renders_what_the_pipelines_own_call_renders(svd, image):
    """Conditioning is the pipeline's own: the same call through `adapter.pipeline` gives the same frames."""
    ours = render(svd, image, seed=5)
    theirs = svd.pipeline(
        image=image, height=H, width=W, num_frames=F, num_inference_steps=STEPS,
        min_guidance_scale=1.0, max_guidance_scale=GUIDANCE, fps=FPS, motion_bucket_id=127, noise_aug_strength=0.02,
        decode_chunk_size=svd.decode_chunk, generator=torch.Generator("cpu").manual_seed(5), output_type="np",
    ).frames[0]
    assert (ours.frames == to_uint8(theirs)).all()
    # The image really conditions the video, and SVD's pipeline takes no prompt at all.
    from helpers import noise

    other = render(svd, noise(W, H, seed=3), seed=5)
    assert not (other.frames == ours.frames).all()
    with pytest.raises(TypeError, match="prompt"):
        svd.pipeline(image=image, prompt="a cat", height=H, width=W, num_frames=2, num_inference_steps=1)


def test_call_arguments_map_farms_parameters_to_the_pipelines(svd, image):
    import inspect

    arguments = svd.call_arguments(image, prompt="x", negative_prompt="", width=W, height=H, frames=F, steps=STEPS,
                                   guidance_scale=2.5, fps=12)
    assert arguments == {
        "image": image, "height": H, "width": W, "num_frames": F, "num_inference_steps": STEPS,
        "min_guidance_scale": 1.0, "max_guidance_scale": 2.5, "fps": 12, "motion_bucket_id": 127,
        "noise_aug_strength": 0.02,
    }
    accepted = set(inspect.signature(type(svd.pipeline).__call__).parameters)
    assert set(arguments) <= accepted


def test_frame_and_size_rules_name_the_value_and_the_nearest_allowed():
    too_many = check_params(SVD, width=1024, height=576, frames=26, prompt="")
    assert [(i.field, i.value, i.nearest) for i in too_many.issues] == [("frames", 26, 25)]
    assert "26 is not allowed" in too_many.issues[0].message and "nearest allowed is 25" in too_many.issues[0].message
    one = check_params(SVD, width=1024, height=576, frames=1, prompt="")
    assert [(i.field, i.value, i.nearest) for i in one.issues] == [("frames", 1, 2)]
    odd = check_params(SVD, width=1020, height=576, frames=14, prompt="")
    assert [(i.field, i.value) for i in odd.issues] == [("resolution", "1020x576")]
    assert "multiples of 8" in odd.issues[0].message and "1024x576" in odd.issues[0].message
    assert not check_params(SVD, width=1000, height=568, frames=25, prompt="").issues  # multiples of 8, not of 64
    prompted = check_params(SVD, width=1024, height=576, frames=14, prompt="a cat")
    assert not prompted.issues and any("prompt is not used" in w for w in prompted.warnings)
    assert SVD.native_fps == 7  # the pipeline's default fps


def test_the_pipeline_refuses_sizes_the_rule_refuses_and_renders_those_it_allows(svd, image):
    with pytest.raises(ValueError, match="divisible by 8"):  # StableVideoDiffusionPipeline.check_inputs
        svd.pipeline(image=image, height=64, width=60, num_frames=2, num_inference_steps=1)
    # 72 is a multiple of 8, not of 64: the latent (9 wide) is not a multiple of the UNet's
    # 3 downsamplings, and the UNet forwards the skip sizes to its upsamplers, so it renders.
    generation = render(svd, image, width=72, frames=2, steps=1)
    assert generation.frames.shape == (2, H, 72, 3)


def test_one_frame_breaks_the_guidance_ramp(svd, image):
    """The rule's minimum of 2 frames: with 1 frame the ramp linspace(1, max, 1) is just [1], so
    the pipeline turns guidance off after it encoded the image for guidance (a batch of 2), and
    the UNet input cannot be put together (with max_guidance_scale 1 it would render unguided)."""

    def frames(num_frames, max_guidance):
        return svd.pipeline(image=image, height=H, width=W, num_frames=num_frames, num_inference_steps=1,
                            max_guidance_scale=max_guidance, generator=torch.Generator("cpu").manual_seed(1),
                            output_type="np").frames[0]

    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        frames(1, 3.0)
    assert not np.array_equal(frames(2, 3.0), frames(2, 9.0))  # 2 frames: the ramp 1 -> max is applied
    # The maximum is the trained clip length of the reference model (the pipeline's default
    # num_frames is unet.config.num_frames); the pipeline does not refuse more.
    assert SVD.max_frames == FULLSIZE_CONFIGS["unet"]["num_frames"] == 25


def test_savers_are_svds_own(svd, image):
    """The temporal VAE's enable_slicing raises NotImplementedError (the shared apply_savers
    therefore asks `use_slicing`); SVD's slicing is a decode chunk of one frame, and ff_chunking
    chunks every UNet feed-forward."""
    with pytest.raises(NotImplementedError):
        svd.pipeline.vae.enable_slicing()
    assert not hasattr(svd.pipeline.vae, "use_slicing")
    plain = render(svd, image, frames=2, steps=2)
    try:
        svd.apply_savers(["ff_chunking", "vae_tiling", "group_offload"])  # the last two are not SVD's
        assert svd.savers == ("ff_chunking",) and svd.decode_chunk == svd.default_decode_chunk == 8
        blocks = [m for m in svd.pipeline.unet.modules() if hasattr(m, "set_chunk_feed_forward")]
        assert blocks and all(m._chunk_size == 1 for m in blocks)
        chunked = render(svd, image, frames=2, steps=2)
        assert np.abs(chunked.frames.astype(int) - plain.frames.astype(int)).max() <= 1
        svd.apply_savers(["vae_slicing", "ff_chunking"])
        assert svd.savers == ("vae_slicing", "ff_chunking") and svd.decode_chunk == 1
        assert render(svd, image, frames=2, steps=2).frames.shape == (2, H, W, 3)
    finally:
        svd.apply_savers([])
    assert svd.savers == () and svd.decode_chunk == 8
    assert all(m._chunk_size is None for m in svd.pipeline.unet.modules() if hasattr(m, "set_chunk_feed_forward"))


def test_fp16_renders_with_the_vae_upcast_to_fp32(farm_cache, image):
    """The VAE's force_upcast: the whole VAE in fp32 (the pipeline then encodes in fp32 too, and
    decode_video casts the fp16 latents to it); bf16 needs no upcast."""
    from farm.models.precision import Precision
    from farm.models.registry import load_adapter

    half = load_adapter("tiny:svd", device="cpu", precision=Precision("fp16", "fp16", True))
    assert half.describe()["dtype"] == "float16" and half.describe()["vae_decode_dtype"] == "float32"
    generation = render(half, image, frames=2, steps=2)
    assert generation.frames.shape == (2, H, W, 3) and generation.frames.std() > 0


@pytest.fixture(scope="module")
def meta_components():
    return build_fullsize_components("meta", torch.float16)


def test_fullsize_parameter_counts_are_the_published_ones(meta_components):
    counted = fullsize_parameter_counts(meta_components)
    assert counted == COUNTED_PARAMETER_COUNTS
    for name, published in PUBLISHED_PARAMETER_COUNTS.items():  # published rounded: within 1%
        assert abs(counted[name] - published) <= 0.01 * published, (name, counted[name], published)
    # No published VAE count: its encoder is Stable Diffusion's KL encoder, the same as I2VGen-XL's.
    from diffusers import AutoencoderKL

    from farm.models.fullsize import VAE_CONFIG

    with torch.device("meta"):
        sd_vae = AutoencoderKL(**VAE_CONFIG)
    encoder = sum(p.numel() for p in meta_components["vae"].encoder.parameters())
    assert encoder == sum(p.numel() for p in sd_vae.encoder.parameters())
    # farm's VRAM profile plans with exactly these numbers.
    assert PROFILES["svd"] is SVD_PROFILE and SVD_PROFILE.component_params == counted


def test_fullsize_build_allocates_nothing_on_meta_and_matches_the_profile(meta_components):
    for name, module in meta_components.items():
        tensors = list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]
        assert all(t.device.type == "meta" and t.dtype == torch.float16 for t in tensors), name
    assert torch.get_default_dtype() == torch.float32
    unet = meta_components["unet"]
    assert tuple(unet.config.block_out_channels) == SVD_PROFILE.unet_channels
    assert unet.config.layers_per_block == SVD_PROFILE.unet_layers_per_block
    assert meta_components["vae"].config.block_out_channels[0] == SVD_PROFILE.vae_decoder_top_channels
    assert meta_components["vae"].config.force_upcast and meta_components["vae"].config.scaling_factor == 0.18215
