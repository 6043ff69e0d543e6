"""The savers every transformer family shares (farm.models.adapter), on a tiny pipeline on the CPU:
group offloading and fp8 layerwise storage go on and come off again, and the video after
taking them off is the video of a render that never had them."""

import numpy as np
import pytest
import torch
from PIL import Image

from farm.models.adapter import apply_group_offloading_to, remove_group_offloading
from farm.models.registry import load_adapter

pytestmark = pytest.mark.integration

RENDER = dict(prompt="a wave", negative_prompt="", width=64, height=64, frames=9, steps=2, guidance_scale=3.0,
              fps=24, seed=3)


@pytest.fixture(scope="module")
def ltx():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_adapter("tiny:ltx", device="cpu")
    torch.set_num_threads(threads)


def image():
    return Image.new("RGB", (64, 64), (30, 120, 200))


def test_group_offloading_goes_on_and_off_without_changing_the_video(ltx):
    plain = ltx.generate(image(), **RENDER).frames
    apply_group_offloading_to(ltx.pipeline, torch.device("cpu"), use_stream=False)  # CUDA streams need a GPU
    offloaded = ltx.generate(image(), **RENDER).frames
    remove_group_offloading(ltx.pipeline, "cpu")
    from diffusers.hooks import HookRegistry

    registry = HookRegistry.check_if_exists_or_initialize(ltx.pipeline.transformer)
    assert "group_offloading" not in registry.hooks
    after = ltx.generate(image(), **RENDER).frames
    assert np.array_equal(plain, after) and np.array_equal(plain, offloaded)


def test_fp8_layerwise_storage_is_recorded_and_undone_by_a_reload(ltx):
    plain = ltx.generate(image(), **RENDER).frames
    ltx.apply_savers(["vae_slicing", "vae_tiling", "fp8_layerwise"])
    assert ltx.savers == ("vae_slicing", "vae_tiling", "fp8_layerwise")
    block_weight = lambda: ltx.pipeline.transformer.transformer_blocks[0].attn1.to_q.weight  # noqa: E731
    assert block_weight().dtype == torch.float8_e4m3fn  # stored in fp8, cast up layer by layer
    stored = ltx.generate(image(), **RENDER).frames
    assert stored.shape == plain.shape and np.abs(stored.astype(int) - plain.astype(int)).mean() < 40
    ltx.apply_savers([])
    assert ltx.savers == () and block_weight().dtype == torch.float32
    assert np.array_equal(ltx.generate(image(), **RENDER).frames, plain)
