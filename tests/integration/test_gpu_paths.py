"""The code paths a real GPU takes, on the CPU: fp16-variant weights, precision, CUDA library OOMs
raised as RuntimeError, the phase-aware ladder (a decode OOM keeps the latents), NaN frames."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import subprocess_env
from helpers import encode, pattern
from test_degrade import task

from farm.core.job import FAILED, SUCCEEDED
from farm.models.faults import RUNTIME_OOM_MESSAGES
from farm.models.loading import weight_variant
from farm.renderer import ItemRenderer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fp16_only_folder(tiny_adapter, tmp_path_factory):
    """The tiny pipeline saved as a `variant="fp16"` download leaves it: only *.fp16.* weight files."""
    folder = tmp_path_factory.mktemp("fp16-only") / "i2vgen"
    tiny_adapter.pipeline.save_pretrained(folder, variant="fp16")
    weights = sorted(p.name for p in folder.glob("*/*.safetensors"))
    assert weights and all(".fp16." in name for name in weights), weights
    return folder


def render_cli(tmp_path, model: str, **env) -> subprocess.CompletedProcess:
    (tmp_path / "still.png").write_bytes(encode(pattern(320, 240), "PNG"))
    args = ["render", "still.png", "--prompt", "a slow pan", "--model", model, "--resolution", "256",
            "--frames", "8", "--steps", "10", "-o", "clip.mp4"]
    return subprocess.run([sys.executable, "-m", "farm", *args], cwd=tmp_path, env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=300)


def test_a_folder_with_only_fp16_variant_files_renders_through_farm_render(tmp_path, fp16_only_folder):
    assert weight_variant(fp16_only_folder, prefer_half=False) == "fp16"  # nothing else to load
    result = render_cli(tmp_path, str(fp16_only_folder))
    assert result.returncode == 0, result.stderr[-3000:]
    sidecar = json.loads((tmp_path / "clip.json").read_text())
    assert sidecar["model"]["weight_variant"] == "fp16" and sidecar["model"]["source"] == "local"
    assert (tmp_path / "clip.mp4").stat().st_size > 0


@pytest.mark.slow  # suite time: in the slow suite (python3 dev.py test -m slow)
def test_a_hub_id_renders_from_an_offline_hf_cache_holding_only_fp16_files(tmp_path, fp16_only_folder):
    home = tmp_path / "hf-home"
    repo = home / "hub" / "models--ali-vilab--i2vgen-xl"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(fp16_only_folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    result = render_cli(tmp_path, "ali-vilab/i2vgen-xl", HF_HOME=str(home), HF_HUB_OFFLINE="1")
    assert result.returncode == 0, result.stderr[-3000:]
    sidecar = json.loads((tmp_path / "clip.json").read_text())
    assert sidecar["model"]["id"] == "ali-vilab/i2vgen-xl" and sidecar["model"]["source"] == "hub"
    assert sidecar["model"]["weight_variant"] == "fp16"


def test_half_precision_prefers_the_variant_and_full_precision_the_plain_files(tmp_path, tiny_adapter, fp16_only_folder):
    both = tmp_path / "both"
    shutil.copytree(fp16_only_folder, both)
    tiny_adapter.pipeline.save_pretrained(both)  # plain files beside the variant ones
    assert weight_variant(both, prefer_half=True) == "fp16"
    assert weight_variant(both, prefer_half=False) is None
    assert weight_variant(tmp_path, prefer_half=True) is None  # no weights at all: nothing to ask for


def test_bf16_precision_renders_and_the_sidecar_says_so(tmp_path, tiny_model_dir):
    from farm.models.i2vgen import I2VGenXLAdapter

    adapter = I2VGenXLAdapter.load(str(tiny_model_dir), device="cpu", requested_precision="bf16")
    assert adapter.pipeline.unet.dtype == torch.bfloat16 and not adapter.precision.vae_upcast
    outcome = ItemRenderer(adapter).render(task(tmp_path))
    assert outcome.status == SUCCEEDED, outcome.message
    sidecar = json.loads((tmp_path / "out" / "ladder" / "clip.json").read_text())
    assert sidecar["model"]["dtype"] == "bfloat16" and sidecar["model"]["precision"] == "bf16"
    assert sidecar["device"]["torch"] == torch.__version__
    assert sidecar["memory"]["dtype_bytes"] == 2 and sidecar["memory"]["kind"] == "cpu"


def test_fp16_with_force_upcast_decodes_in_fp32(tiny_model_dir):
    from farm.models.i2vgen import I2VGenXLAdapter

    adapter = I2VGenXLAdapter.load(str(tiny_model_dir), device="cpu", requested_precision="fp16")
    vae = adapter.pipeline.vae
    assert adapter.precision.vae_upcast and adapter.describe()["vae_decode_dtype"] == "float32"
    assert vae.decoder.conv_in.weight.dtype == torch.float32 and vae.encoder.conv_in.weight.dtype == torch.float16
    latents = torch.randn(1, 4, 2, 8, 8, dtype=torch.float16)
    generation = adapter.decode(latents)  # fp16 latents into the fp32 decoder
    assert generation.frames.shape == (2, 64, 64, 3)


@pytest.mark.parametrize("kind", ["cuda", "cublas", "cudnn", "cufft"])
def test_cuda_library_ooms_raised_as_runtime_error_enter_the_ladder(tmp_path, tiny_adapter, injected, kind):
    injected(f"oom:denoise:2:as={kind}:count=1")
    outcome = ItemRenderer(tiny_adapter).render(task(tmp_path))
    assert outcome.status == SUCCEEDED, outcome.message
    first_line = RUNTIME_OOM_MESSAGES[kind].splitlines()[0]
    assert outcome.ooms[0]["phase"] == "denoise" and outcome.ooms[0]["message"].startswith(first_line)
    assert [d["step"] for d in outcome.degradations] == ["memory_savers"]


def test_a_decode_oom_keeps_the_latents_and_does_not_redo_the_denoise(tmp_path, tiny_adapter, injected):
    calls = injected("oom:decode:1:count=1")
    outcome = ItemRenderer(tiny_adapter).render(task(tmp_path))  # 10 steps, guidance batched: 10 UNet calls
    assert outcome.status == SUCCEEDED, outcome.message
    assert calls["unet"] == 10, "the denoise ran again"
    assert outcome.ooms[0]["phase"] == "decode"
    assert outcome.degradations[0]["to"] == ["vae_slicing", "vae_tiling"]
    assert "the finished latents were kept" in outcome.degradations[0]["why"]
    sidecar = json.loads((tmp_path / "out" / "ladder" / "clip.json").read_text())
    assert sidecar["effective"]["memory_savers"] == ["vae_slicing", "vae_tiling"]
    assert set(sidecar["memory"]["phases"]) == {"denoise", "decode"}


def test_a_decode_oom_with_the_decode_savers_on_climbs_the_whole_ladder(tmp_path, tiny_adapter, injected):
    calls = injected("oom:decode:1:count=1;oom:decode:2:count=1")  # the first decode, then its retry
    outcome = ItemRenderer(tiny_adapter).render(task(tmp_path))
    assert outcome.status == SUCCEEDED, outcome.message
    assert [o["phase"] for o in outcome.ooms] == ["decode", "decode"]
    assert [d["step"] for d in outcome.degradations] == ["memory_savers", "memory_savers"]
    assert calls["unet"] == 20  # the second decode OOM had nothing cheaper for the decode alone


def test_a_decode_oom_with_degrade_never_fails_the_item(tmp_path, tiny_adapter, injected):
    injected("oom:decode:1:count=1")
    outcome = ItemRenderer(tiny_adapter).render(task(tmp_path, degrade="never"))
    assert outcome.status == FAILED and outcome.reason == "oom" and outcome.degradations == []


@pytest.mark.parametrize("phase, where", [("decode", "the VAE decode"), ("denoise", "the denoise")])
def test_nan_frames_fail_the_item_with_nan_output_and_nothing_is_committed(tmp_path, tiny_adapter, injected, phase, where):
    injected(f"nan:{phase}:1")
    outcome = ItemRenderer(tiny_adapter).render(task(tmp_path))
    assert outcome.status == FAILED and outcome.reason == "nan_output", outcome.message
    assert f"first produced by {where}, precision fp32" in outcome.message  # the tiny adapter runs fp32 on the CPU
    assert "nothing was committed" in outcome.message and "at fp32: check its weights" in outcome.message
    assert not (tmp_path / "out" / "ladder").exists()


def test_the_sidecar_keeps_measured_peaks_per_phase_beside_the_estimate(tmp_path, tiny_adapter):
    outcome = ItemRenderer(tiny_adapter).render(task(tmp_path))
    assert outcome.status == SUCCEEDED
    memory = json.loads((tmp_path / "out" / "ladder" / "clip.json").read_text())["memory"]
    assert memory["kind"] == "cpu" and memory["gpu_name"] is None
    assert all(figures["max_rss_bytes"] > 0 for figures in memory["phases"].values())
    estimate = memory["estimate"]
    assert estimate["total_bytes"] >= max(estimate["denoise_bytes"], estimate["decode_bytes"]) > estimate["weights_bytes"]


def test_nan_advice_names_the_precision_to_try():
    from farm.models.precision import choose_precision

    fp16 = choose_precision("fp16", on_cuda=True, bf16_supported=True, vae_upcast="never")
    assert "FARM_PRECISION=bf16" in fp16.advice() and "FARM_VAE_UPCAST=always" in fp16.advice()
    bf16 = choose_precision("auto", on_cuda=True, bf16_supported=True)
    assert bf16.name == "bf16" and "FARM_PRECISION=fp32" in bf16.advice()
