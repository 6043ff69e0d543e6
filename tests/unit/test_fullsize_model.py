"""The full-size random model (`random:ali-vilab/i2vgen-xl`): the published architecture, counted
on the meta device (nothing allocated), against the real model's parameter counts."""

import pytest
import torch

from farm.models.fullsize import (
    PUBLISHED_PARAMETERS,
    UnknownRandomModel,
    build_random_components,
    ensure_random_model,
    parameter_counts,
)
from farm.models.loading import ModelUnavailableError


@pytest.fixture(scope="module")
def meta_components():
    return build_random_components("meta", torch.float16)


def test_the_parameter_counts_are_the_real_models(meta_components):
    assert parameter_counts(meta_components) == {
        "unet": 1_420_469_224,
        "vae": 83_653_863,
        "text_encoder": 352_984_064,
        "image_encoder": 632_076_800,
    }
    assert PUBLISHED_PARAMETERS == parameter_counts(meta_components)


def test_built_on_the_target_device_in_the_target_dtype_without_allocating(meta_components):
    for name, module in meta_components.items():
        tensors = list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]
        assert all(t.device.type == "meta" for t in tensors), name
        assert all(t.dtype == torch.float16 for t in tensors), name
    assert torch.get_default_dtype() == torch.float32  # restored after the build


def test_the_configuration_is_the_published_one(meta_components):
    unet, vae = meta_components["unet"], meta_components["vae"]
    assert list(unet.config.block_out_channels) == [320, 640, 1280, 1280]
    assert unet.conv_in.in_channels == 8  # noisy latents + image latents
    assert vae.config.force_upcast and vae.config.scaling_factor == 0.18125
    assert meta_components["text_encoder"].config.num_hidden_layers == 24
    assert meta_components["image_encoder"].config.patch_size == 14


def test_other_architectures_are_refused_with_what_to_use(tmp_path):
    with pytest.raises(UnknownRandomModel, match="random:ali-vilab/i2vgen-xl") as caught:
        ensure_random_model(tmp_path, "stabilityai/stable-video-diffusion", device="meta", dtype=torch.float16)
    assert isinstance(caught.value, ModelUnavailableError)
    assert not list(tmp_path.iterdir())
