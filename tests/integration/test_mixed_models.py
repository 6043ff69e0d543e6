"""A manifest that mixes model families renders on one local Ray cluster: one CPU worker holds one
model at a time and switches only when its model's queue is empty (the fewest switches there can
be: one per further model), each sidecar naming its family, adapter and pipeline."""

import json

import pytest
from helpers import encode, pattern, write_manifest

from farm.media.video import probe_mp4
from farm.metrics import FarmMetrics
from farm.runtime.executor import RunOptions, run_job
from farm.storage.manifest_file import load_manifest

pytestmark = pytest.mark.integration

FAMILY_ITEMS = {  # model -> (family, pipeline, frames it renders at 256x256)
    "tiny": ("i2vgen-xl", "I2VGenXLPipeline", 8),
    "tiny:wan": ("wan", "WanImageToVideoPipeline", 5),
    "tiny:ltx": ("ltx-video", "LTXImageToVideoPipeline", 9),
    "tiny:cogvideox": ("cogvideox", "CogVideoXImageToVideoPipeline", 9),
    "tiny:svd": ("svd", "StableVideoDiffusionPipeline", 4),
}


@pytest.mark.slow  # suite time: in the slow suite (python3 dev.py test -m slow)
def test_a_mixed_manifest_renders_on_one_cluster_and_workers_switch_only_when_their_queue_is_empty(
        ray_cluster, tmp_path):
    (tmp_path / "a.png").write_bytes(encode(pattern(320, 240), "PNG"))
    items = []
    for model, (family, _, frames) in FAMILY_ITEMS.items():
        for n in range(2):
            entry = {"id": f"{family}-{n}", "image": "a.png", "prompt": "the tide comes in", "frames": frames, "seed": n}
            if model != "tiny":
                entry["model"] = model
            items.append(entry)
    items.reverse()  # the job's model (tiny) last in the manifest: the order does not decide the switches
    spec = load_manifest(write_manifest(tmp_path, items, name="mixed", output=str(tmp_path / "out")))
    metrics = FarmMetrics()
    state = run_job(spec, RunOptions(workers=1, cpu_threads=2, metrics=metrics, record_interval_s=0))
    assert state.counts()["succeeded"] == len(items), state.counts()

    for model, (family, pipeline, frames) in FAMILY_ITEMS.items():
        for n in range(2):
            sidecar = json.loads((tmp_path / "out" / "mixed" / f"{family}-{n}.json").read_text())
            assert sidecar["model"]["family"] == family and sidecar["model"]["pipeline"] == pipeline
            assert sidecar["model"]["id"] == model and sidecar["model"]["adapter"]
            facts = probe_mp4(str(tmp_path / "out" / "mixed" / f"{family}-{n}.mp4"))
            assert facts.frames == frames and (facts.width, facts.height) == (256, 256)

    switched = {labels["model"]: value for labels, value in samples(metrics, "farm_model_switches_total")
                if labels["outcome"] == "switched"}
    assert sum(switched.values()) == len(FAMILY_ITEMS) - 1  # one per model beyond the first: no thrash
    assert set(switched) == set(FAMILY_ITEMS) - {"tiny"}
    loads = {labels["model"] for labels, _ in samples(metrics, "farm_model_load_seconds_count")}
    assert loads == set(switched)


def samples(metrics, name):
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and sample.value:
                yield sample.labels, sample.value
