"""The tiny I2VGen-XL: built from code, loaded like real weights, conditioned like the real model."""

import json
import types

import pytest
import torch
import transformers
from packaging.version import Version

from farm.core.errors import ModelUnavailableError
from farm.models.loading import config_hash, resolve_model

pytestmark = pytest.mark.integration


def test_tiny_model_is_a_diffusers_folder_with_every_component(tiny_model_dir, tiny_adapter):
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "I2VGenXLPipeline"
    for component in ("unet", "vae", "text_encoder", "image_encoder", "tokenizer", "feature_extractor", "scheduler"):
        assert component in index, component
    assert (tiny_model_dir / "tokenizer" / "vocab.json").is_file()
    assert (tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    pipe = tiny_adapter.pipeline
    assert type(pipe).__name__ == "I2VGenXLPipeline"
    assert type(pipe.unet).__name__ == "I2VGenXLUNet"
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel"
    assert type(pipe.image_encoder).__name__ == "CLIPVisionModelWithProjection"
    assert type(pipe.tokenizer).__name__ == "CLIPTokenizer"
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.vae_scale_factor == 8  # the real latent geometry
    assert pipe.unet.dtype == torch.float32  # fp32 on the CPU
    assert tiny_adapter.describe()["config_sha256"] == config_hash(tiny_model_dir)


def test_tokenizer_does_real_bpe(tiny_adapter):
    tokenizer = tiny_adapter.pipeline.tokenizer
    ids = tokenizer("the cat is walking").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.convert_tokens_to_ids("the</w>") in ids  # a merged token, not single bytes


def test_conditioning_uses_the_penultimate_clip_layer(tiny_adapter):
    encoder = tiny_adapter.pipeline.text_encoder
    tokenizer = tiny_adapter.pipeline.tokenizer
    prompt = "a cat turns its head"
    ours, _, truncated = tiny_adapter.encode_prompt(prompt, "")
    assert not truncated
    ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        output = encoder(ids, output_hidden_states=True)
        norm = getattr(encoder, "text_model", encoder).final_layer_norm
        penultimate = norm(output.hidden_states[-2])
        last = output.last_hidden_state
    torch.testing.assert_close(ours, penultimate)
    assert not torch.allclose(ours, last, atol=1e-3), "that would be the last layer (clip_skip=None)"


def test_conditioning_matches_the_pipelines_own_clip_skip_1_path(tiny_adapter):
    """Run diffusers' own encode_prompt (clip_skip=1) through a shim that restores `.text_model`."""
    from diffusers import I2VGenXLPipeline

    pipe = tiny_adapter.pipeline
    encoder = pipe.text_encoder

    class TextEncoderShim:  # a plain object, not a module: no module cycle
        def __init__(self):
            self.text_model = types.SimpleNamespace(final_layer_norm=getattr(encoder, "text_model", encoder).final_layer_norm)

        def __call__(self, *args, **kwargs):
            return encoder(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(encoder, name)

    fake_pipeline = types.SimpleNamespace(
        tokenizer=pipe.tokenizer, text_encoder=TextEncoderShim(), unet=pipe.unet, do_classifier_free_guidance=True
    )
    with torch.no_grad():
        upstream, upstream_negative = I2VGenXLPipeline.encode_prompt(
            fake_pipeline, "waves rolling in", "cpu", 1, "blurry", clip_skip=1
        )
    ours, ours_negative, _ = tiny_adapter.encode_prompt("waves rolling in", "blurry")
    torch.testing.assert_close(ours, upstream)
    torch.testing.assert_close(ours_negative, upstream_negative)


@pytest.mark.skipif(Version(transformers.__version__) < Version("5.6"), reason="the breakage starts at 5.6")
def test_the_pipelines_default_call_is_broken_with_this_transformers(tiny_adapter):
    """Why farm computes the embeddings itself: the pipeline's default (clip_skip=1) path fails."""
    from PIL import Image

    with pytest.raises(AttributeError, match="text_model"):
        tiny_adapter.pipeline(
            prompt="a cat", image=Image.new("RGB", (64, 64)), height=64, width=64, num_frames=2, num_inference_steps=1
        )


def test_same_seed_same_video(tiny_adapter):
    from helpers import pattern

    kwargs = dict(prompt="a cat", negative_prompt="", width=64, height=64, frames=8, steps=10, guidance_scale=9.0, fps=8)
    first = tiny_adapter.generate(pattern(64, 64), seed=123, **kwargs)
    second = tiny_adapter.generate(pattern(64, 64), seed=123, **kwargs)
    third = tiny_adapter.generate(pattern(64, 64), seed=124, **kwargs)
    assert first.frames.shape == (8, 64, 64, 3)
    assert (first.frames == second.frames).all()
    assert not (first.frames == third.frames).all()
    assert set(first.timings) == {"denoise", "decode"}


def test_a_real_model_that_is_not_available_offline_explains_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelUnavailableError) as caught:
        resolve_model("ali-vilab/i2vgen-xl")
    message = str(caught.value)
    for needle in ("ali-vilab/i2vgen-xl", "HF_HOME", "HF_HUB_OFFLINE", "--model DIR", "hf download", "tiny"):
        assert needle in message


def test_local_folders_must_be_diffusers_pipelines(tmp_path):
    with pytest.raises(ModelUnavailableError, match="no model_index.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="neither an existing folder"):
        resolve_model(str(tmp_path / "missing"))


def test_a_local_folder_loads_like_a_hub_model(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    assert resolved.source == "local" and resolved.path == tiny_model_dir.resolve()
