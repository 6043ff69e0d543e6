"""The OOM ladder inside one worker, in process: simulated cards, injected OOMs, memory baseline."""

import gc
import json

import pytest
import torch
from helpers import encode, pattern

from dataclasses import replace

from farm.core.contracts import Escalation
from farm.core.job import FAILED, SUCCEEDED, RenderTask
from farm.core.manifest import parse_manifest
from farm.core.tiers import GIB
from farm.models.memory import CardInfo, allocated_bytes
from farm.renderer import ItemRenderer

pytestmark = pytest.mark.integration


def card(budget_gib: float, tier: str = "sim") -> CardInfo:
    return CardInfo(tier, int((budget_gib + 1) * GIB), int(budget_gib * GIB), "FARM_GPU_VRAM_GB", True)


def task(tmp_path, *, resolution=256, frames=8, degrade="allowed", bigger=False, name="clip"):
    (tmp_path / "in.png").write_bytes(encode(pattern(320, 240), "PNG"))
    document = {
        "version": 1,
        "name": "ladder",
        "model": "tiny",
        "output": str(tmp_path / "out"),
        "defaults": {"steps": 10, "fps": 8},
        "items": [{"id": name, "image": "in.png", "prompt": "p", "resolution": resolution, "frames": frames, "degrade": degrade}],
    }
    spec = parse_manifest(json.dumps(document), "json", base_dir=tmp_path)
    return RenderTask.for_item(spec, spec.items[0], planned_tier="sim", bigger_tier_available=bigger)


def test_simulated_card_oom_climbs_the_saver_levels_until_it_fits(tmp_path, tiny_adapter):
    renderer = ItemRenderer(tiny_adapter, card=card(6.6))
    outcome = renderer.render(task(tmp_path, resolution=512, frames=8))
    assert outcome.status == SUCCEEDED, outcome.message
    assert [d["step"] for d in outcome.degradations] == ["memory_savers", "memory_savers"]
    assert outcome.degradations[-1]["to"] == ["vae_slicing", "vae_tiling", "ff_chunking"]
    assert "out of memory during denoise at 512x512x8" in outcome.degradations[0]["why"]
    assert all(isinstance(o["message"], str) and o["phase"] == "denoise" for o in outcome.ooms) and len(outcome.ooms) == 2
    sidecar = json.loads((tmp_path / "out" / "ladder" / "clip.json").read_text())
    assert sidecar["degraded"] and sidecar["degradations"] == outcome.degradations
    assert sidecar["effective"]["memory_savers"] == ["vae_slicing", "vae_tiling", "ff_chunking"]
    assert sidecar["effective"]["resolution"] == 512 and sidecar["outputs"]["width"] == 512


def test_never_means_the_item_fails_with_reason_oom(tmp_path, tiny_adapter):
    outcome = ItemRenderer(tiny_adapter, card=card(6.6)).render(task(tmp_path, resolution=512, degrade="never"))
    assert outcome.status == FAILED and outcome.reason == "oom"
    assert "no cheaper option left (degrade: never)" in outcome.message and outcome.degradations == []
    assert not (tmp_path / "out" / "ladder").exists()


def test_memory_savers_mode_stops_after_the_savers(tmp_path, tiny_adapter):
    outcome = ItemRenderer(tiny_adapter, card=card(3.0)).render(task(tmp_path, resolution=512, degrade="memory_savers"))
    assert outcome.reason == "oom" and [d["step"] for d in outcome.degradations] == ["memory_savers"] * 3


@pytest.mark.slow  # over a minute, or repeated by tests/chaos: `python3 dev.py test -m slow`
def test_resolution_and_frames_come_after_the_savers(tmp_path, tiny_adapter):
    outcome = ItemRenderer(tiny_adapter, card=card(6.0)).render(task(tmp_path, resolution=1024, frames=8))
    assert outcome.status == SUCCEEDED
    steps = [d["step"] for d in outcome.degradations]
    assert steps[:3] == ["memory_savers"] * 3 and "resolution" in steps
    resolution_steps = [(d["from"], d["to"]) for d in outcome.degradations if d["step"] == "resolution"]
    assert resolution_steps[0] == (1024, 768)
    assert json.loads((tmp_path / "out" / "ladder" / "clip.json").read_text())["outputs"]["width"] < 1024


def test_a_bigger_tier_is_asked_for_after_the_savers(tmp_path, tiny_adapter):
    outcome = ItemRenderer(tiny_adapter, card=card(6.6)).render(task(tmp_path, resolution=1024, bigger=True))
    assert isinstance(outcome, Escalation)
    assert [d.step for d in outcome.degradations] == ["memory_savers"] * 3
    assert outcome.settings.saver_level == 3 and outcome.settings.resolution == 1024
    assert [o.settings.saver_level for o in outcome.ooms] == [0, 1, 2, 3] and {o.tier for o in outcome.ooms} == {"sim"}


@pytest.mark.slow  # suite time: in the slow suite (python3 dev.py test -m slow)
def test_an_item_back_on_the_same_tier_does_not_retry_what_ran_out_of_memory_there(tmp_path, tiny_adapter):
    """Escalation refused (the bigger card was busy): the worker's ladder goes on from where it
    stopped, without running the blocked settings again."""
    renderer = ItemRenderer(tiny_adapter, card=card(6.6))
    escalation = renderer.render(task(tmp_path, resolution=1024, bigger=True))
    back = replace(task(tmp_path, resolution=1024), settings=escalation.settings,
                   degradations=escalation.degradations, ooms=escalation.ooms)
    outcome = renderer.render(back)
    assert outcome.status == SUCCEEDED, outcome.message
    assert len(outcome.ooms) == len(escalation.ooms)  # no new OOM: the blocked rung was skipped
    assert [d["step"] for d in outcome.degradations][-1] == "resolution"
    assert "ran out of memory on sim before" in outcome.degradations[-1]["why"]


@pytest.mark.parametrize("phase", ["denoise", "decode"])
def test_an_oom_injected_mid_render_is_recovered_by_the_ladder(tmp_path, tiny_adapter, injected, phase):
    injected(f"oom:{phase}:{3 if phase == 'denoise' else 1}:count=1")
    outcome = ItemRenderer(tiny_adapter).render(task(tmp_path))
    assert outcome.status == SUCCEEDED, outcome.message
    assert outcome.ooms[0]["phase"] == phase and "injected" in outcome.ooms[0]["message"]
    assert [d["step"] for d in outcome.degradations] == ["memory_savers"]


def test_memory_returns_to_baseline_after_an_injected_oom(tmp_path, tiny_adapter, injected):
    renderer = ItemRenderer(tiny_adapter)
    renderer.render(task(tmp_path, name="warm"))  # first-render allocations (caches) happen here
    gc.collect()
    baseline = allocated_bytes("cpu")
    injected("oom:denoise:5:count=1")
    failed = renderer.render(task(tmp_path, degrade="never", name="failing"))
    assert failed.reason == "oom"
    after_oom = allocated_bytes("cpu")
    assert abs(after_oom - baseline) < 256 * 1024, (baseline, after_oom)
    assert renderer.render(task(tmp_path, name="next")).status == SUCCEEDED
    assert abs(allocated_bytes("cpu") - baseline) < 256 * 1024


def test_the_memory_measure_sees_a_kept_exception(tmp_path, tiny_adapter, injected):
    """Control: keeping the exception (and so its frames) holds the failed attempt's tensors."""
    gc.collect()
    baseline = allocated_bytes("cpu")
    injected("oom:denoise:5:count=1")
    kept = None
    try:
        tiny_adapter.generate(
            pattern(256, 256), prompt="p", negative_prompt="", width=256, height=256, frames=8, steps=10,
            guidance_scale=9.0, fps=8, seed=1,
        )
    except torch.OutOfMemoryError as exc:
        kept = exc
    assert kept is not None
    assert allocated_bytes("cpu") - baseline > 1024 * 1024  # what a leak would look like
    del kept
    gc.collect()
    assert abs(allocated_bytes("cpu") - baseline) < 256 * 1024
