"""Tier routing, work stealing and degradation on simulated heterogeneous GPU clusters.

Nodes are real Ray nodes on 127.0.0.1 with fake GPUs and `farm_tier_<tier>` resources; their
workers learn their card from FARM_GPU_VRAM_GB, so every render checks the VRAM estimate against
a real tier budget and a misfit raises a real torch.OutOfMemoryError. Renders are real (tiny).
"""

import json

import pytest
import ray
from helpers import encode, pattern, write_manifest

from farm.core.job import RenderTask
from farm.runtime.executor import RunOptions, run_job
from farm.storage.manifest_file import load_manifest

pytestmark = pytest.mark.integration


def sidecars(folder):
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json") if p.name not in ("job.json", "spec.json")}


def images(tmp_path):
    (tmp_path / "a.png").write_bytes(encode(pattern(400, 300), "PNG"))


@pytest.mark.slow  # over a minute, or repeated by tests/chaos: `python3 dev.py test -m slow`
def test_mixed_manifest_runs_on_the_planned_tiers_and_the_big_tier_steals(tmp_path, gpu_cluster):
    cluster = gpu_cluster("12g", "12g", "24g", "80g")
    images(tmp_path)
    items = [{"id": f"small-{n}", "image": "a.png", "prompt": "p", "resolution": 256, "frames": 8} for n in range(4)]
    items.append({"id": "mid-0", "image": "a.png", "prompt": "p", "resolution": 512, "frames": 8})
    # 1024p without guidance (half the activations, cheap on a CPU); decoding 4 frames at 1024x1024
    # at once makes it 12.0 GiB: over the 12g budget, and 16g is absent, so 24g.
    items.append({"id": "large", "image": "a.png", "prompt": "p", "resolution": 1024, "frames": 8, "guidance_scale": 1.0})
    spec = load_manifest(write_manifest(tmp_path, items, name="mixed", output=str(tmp_path / "out")))
    state = run_job(spec, RunOptions(address=cluster.address))
    assert state.final_state == "succeeded", state.failures()

    record = json.loads((tmp_path / "out" / "mixed" / "job.json").read_text())
    planned = {item_id: entry["planned_tier"] for item_id, entry in record["items"].items()}
    assert planned == {**{f"small-{n}": "12g" for n in range(4)}, "mid-0": "12g", "large": "24g"}
    assert record["plan"]["cluster"] == {"12g": 2, "24g": 1, "80g": 1}
    rank = {"12g": 0, "24g": 1, "80g": 2}
    ran_on = {}
    for item_id, sidecar in sidecars(tmp_path / "out" / "mixed").items():
        tier = sidecar["tier"]
        assert tier["planned"] == planned[item_id]
        assert rank[tier["ran_on"]] >= rank[tier["planned"]], "never on a smaller tier"
        assert tier["stolen"] == (tier["ran_on"] != tier["planned"])
        assert tier["simulated"] and tier["budget_gib"] is not None
        assert not sidecar["degradations"]
        ran_on[item_id] = tier["ran_on"]
    assert len(ran_on) == 6
    # Sidecars say where: each names its Ray node, and a node holds one tier (one GPU each here).
    node_tiers = {}
    for sidecar in sidecars(tmp_path / "out" / "mixed").values():
        node_id = sidecar["device"]["node_id"]
        assert isinstance(node_id, str) and len(node_id) == 56 and sidecar["device"]["worker"]
        assert node_tiers.setdefault(node_id, sidecar["tier"]["ran_on"]) == sidecar["tier"]["ran_on"]
    assert any(t == "80g" for t in ran_on.values()), "the idle 80g worker took small items"
    assert ran_on["large"] in ("24g", "80g")


@pytest.mark.slow  # over a minute, or repeated by tests/chaos: `python3 dev.py test -m slow`
def test_without_an_80g_node_big_items_finish_degraded_or_fail_with_never(tmp_path, gpu_cluster):
    cluster = gpu_cluster("12g", "12g")
    images(tmp_path)
    items = [
        {"id": "big", "image": "a.png", "prompt": "p", "resolution": 1024, "frames": 32},
        {"id": "big-never", "image": "a.png", "prompt": "p", "resolution": 1024, "frames": 32, "degrade": "never"},
        {"id": "small", "image": "a.png", "prompt": "p", "resolution": 256, "frames": 8},
    ]
    spec = load_manifest(write_manifest(tmp_path, items, name="nobig", output=str(tmp_path / "out")))
    state = run_job(spec, RunOptions(address=cluster.address))
    assert state.items["big"].state == "succeeded"
    assert state.items["small"].state == "succeeded"
    never = state.items["big-never"]
    assert never.state == "failed" and never.reason == "oom"
    assert "out of memory" in never.message and "degrade: never" in never.message

    big = sidecars(tmp_path / "out" / "nobig")["big"]
    steps = [d["step"] for d in big["degradations"]]
    assert steps[0] == "memory_savers" and "resolution" in steps
    assert all(d["why"].startswith("planned:") and d["from"] != d["to"] for d in big["degradations"])
    assert big["degraded"] and big["effective"]["frames"] == 32 and big["effective"]["resolution"] < 1024
    assert big["outputs"]["width"] == big["effective"]["width"] and big["tier"]["ran_on"] == "12g"
    record = json.loads((tmp_path / "out" / "nobig" / "job.json").read_text())
    assert record["counts"]["degraded"] == 1 and record["items"]["big-never"]["reason"] == "oom"


def test_an_oom_on_a_small_card_moves_the_item_to_an_idle_bigger_gpu(tmp_path, gpu_cluster):
    cluster = gpu_cluster("12g", "24g", "80g")
    images(tmp_path)
    items = [{"id": f"i{n}", "image": "a.png", "prompt": "p", "resolution": 256, "frames": 8} for n in range(2)]
    spec = load_manifest(write_manifest(tmp_path, items, name="escalate", output=str(tmp_path / "out")))
    # Every render on the 12g card runs out of memory mid-denoise (injected), whatever its settings.
    state = run_job(spec, RunOptions(address=cluster.address, faults="oom:denoise:2@12g"))
    assert state.final_state == "succeeded", state.failures()
    moved = [s for s in sidecars(tmp_path / "out" / "escalate").values() if s["tier"]["planned"] == "12g" and s["ooms"]]
    assert moved, "the 12g worker took an item first and ran out of memory"
    for sidecar in moved:
        steps = [d["step"] for d in sidecar["degradations"]]
        assert steps == ["memory_savers"] * 3 + ["bigger_tier"]
        hop = sidecar["degradations"][-1]
        assert hop["from"] == "12g" and hop["to"] in ("24g", "80g") and sidecar["tier"]["ran_on"] == hop["to"]
        assert not sidecar["tier"]["stolen"] and len(sidecar["ooms"]) == 4


@pytest.mark.slow  # suite time: in the slow suite (python3 dev.py test -m slow)
def test_an_actor_survives_an_injected_oom_with_memory_back_to_baseline(tmp_path, gpu_cluster):
    from farm.runtime.workers import RenderWorker

    gpu_cluster("12g")
    images(tmp_path)
    items = [
        {"id": "oom", "image": "a.png", "prompt": "p", "resolution": 256, "frames": 8, "degrade": "never"},
        {"id": "next", "image": "a.png", "prompt": "p", "resolution": 256, "frames": 8},
    ]
    spec = load_manifest(write_manifest(tmp_path, items, name="survive", output=str(tmp_path / "out")))
    actor = RenderWorker.options(num_gpus=1, resources={"farm_tier_12g": 1}).remote(
        "tiny", "probe", None, "oom:denoise:5:count=1", "12g"
    )
    try:
        info = ray.get(actor.info.remote(measure_memory=True))
        assert info["ok"] and info["tier"] == "12g" and info["card"]["simulated"]
        pid = info["pid"]
        reply = ray.get(actor.render.remote(RenderTask.for_item(spec, spec.items[0], planned_tier="12g")))
        first = reply.outcomes[0]
        assert first.status == "failed" and first.reason == "oom" and "injected" in first.message
        after_oom = ray.get(actor.info.remote(measure_memory=True))
        assert after_oom["pid"] == pid, "the same process, not a restart"
        baseline = info["memory_allocated_bytes"]
        assert abs(after_oom["memory_allocated_bytes"] - baseline) < 512 * 1024, (baseline, after_oom)
        reply = ray.get(actor.render.remote(RenderTask.for_item(spec, spec.items[1], planned_tier="12g")))
        outcomes = reply.outcomes + ray.get(actor.flush.remote()).outcomes
        assert [o.status for o in outcomes] == ["succeeded"]
        after_next = ray.get(actor.info.remote(measure_memory=True))
        assert after_next["pid"] == pid
        assert abs(after_next["memory_allocated_bytes"] - baseline) < 512 * 1024
    finally:
        ray.kill(actor)


@pytest.mark.slow  # suite time: in the slow suite (python3 dev.py test -m slow)
def test_a_worker_that_runs_out_of_memory_loading_the_model_is_routed_around(tmp_path, gpu_cluster):
    # The second 12g node's card is really 4 GiB: the fp16 weights alone do not fit.
    cluster = gpu_cluster("12g", "24g", node_env={"24g": {"FARM_GPU_VRAM_GB": "4"}})
    images(tmp_path)
    items = [{"id": f"i{n}", "image": "a.png", "prompt": "p", "resolution": 256, "frames": 8} for n in range(3)]
    spec = load_manifest(write_manifest(tmp_path, items, name="routed", output=str(tmp_path / "out")))
    state = run_job(spec, RunOptions(address=cluster.address))
    assert state.final_state == "succeeded"
    assert list(state.workers) == ["12g-0"]
    assert {s["tier"]["ran_on"] for s in sidecars(tmp_path / "out" / "routed").values()} == {"12g"}
