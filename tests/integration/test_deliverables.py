"""Deliverables through the real engine, renderer, CPU stage, ffmpeg and storage (local folder
and moto's S3 server over HTTP), with in-process workers: every file's probed facts against
its spec; a rerun that adds one deliverable renders nothing and makes only that one."""

import json

import boto3
import pytest
from helpers import MotoServer, engine_job

from farm.cli import main
from farm.core.deliverables import parse_entries
from farm.core.tiers import GIB, TierTable
from farm.media.deliverables import probe
from farm.metrics import FarmMetrics
from farm.models.memory import CardInfo
from farm.runtime.engine import Engine, Worker
from farm.runtime.handles import LocalCallPool, LocalWorkerHandle
from farm.runtime.jobs import JobRecorder, prepare_job, write_job_files
from farm.runtime.mailbox import LocalMailbox
from farm.runtime.workers import RenderWorkerImpl
from farm.storage import open_store

pytestmark = pytest.mark.integration
TABLE = TierTable()
CUSTOM = {"name": "reel", "preset": "vertical", "fps": 24, "fade_in_s": 0.25, "fade_out_s": 0.25, "crf": 28}
DELIVERABLES = ["vertical", "web", "fps30", "gif", CUSTOM]


def engine_with(tiny_adapter, metrics=None) -> Engine:
    mailbox = LocalMailbox()
    spec = TABLE["24g"]
    card = CardInfo("24g", int(spec.card_gib * GIB), spec.budget_bytes, "FARM_GPU_VRAM_GB", True)
    impl = RenderWorkerImpl.in_process("24g-0", tiny_adapter, card, mailbox=mailbox)
    return Engine([Worker("24g-0", LocalWorkerHandle(impl), "24g", impl.info())], TABLE, metrics, pool=LocalCallPool(),
                  mailbox=mailbox)


def run(engine, job, store):
    write_job_files(store, job.state.spec, None)  # spec.json, as `farm run` writes it
    plan, decision = prepare_job(engine, job, store)
    engine.admit(job, plan, decision.replace, decision.post)
    assert engine.run_until_done() and job.done.is_set()
    return plan


def check_files(store, job_name: str, item_id: str, names, tmp_path):
    """Each deliverable's file is where its entry says, with the facts its spec asks for."""
    sidecar = json.loads(store.get_bytes(f"{job_name}/{item_id}.json"))
    source = sidecar["outputs"]
    duration = source["frames"] / source["fps"]
    for deliverable in parse_entries(names):
        entry = sidecar["deliverables"][deliverable.name]
        assert entry["key"] == f"{job_name}/deliverables/{deliverable.name}/{item_id}.{deliverable.extension}"
        data = store.get_bytes(entry["key"])
        assert len(data) == entry["bytes"] and entry["digest"] == deliverable.digest
        local = tmp_path / f"{item_id}.{deliverable.name}.{deliverable.extension}"
        local.write_bytes(data)
        facts = probe(str(local), deliverable.container)
        assert facts.to_dict() == entry["probed"]
        width, height = deliverable.size or (source["width"], source["height"])
        assert (facts.width, facts.height) == (width, height), deliverable.name
        fps = deliverable.fps or source["fps"]
        if deliverable.kind == "video":
            assert facts.codec == deliverable.codec and facts.pix_fmt == "yuv420p"
            assert facts.fps == fps and facts.frames == round(duration * fps), deliverable.name
            assert abs(facts.duration_s - duration) <= 1 / fps + 1e-6, deliverable.name
        elif deliverable.kind == "image":
            assert (facts.codec, facts.frames) == ("png", 1)
        else:
            assert facts.codec == "gif" and facts.frames == round(duration * fps)
            assert abs(facts.duration_s - duration) <= 1 / fps + 1e-6
            assert entry["bytes"] <= deliverable.max_bytes
    return sidecar


def test_each_deliverable_matches_its_spec_and_a_rerun_adding_one_makes_only_that_one(tmp_path, tiny_adapter):
    metrics = FarmMetrics()
    engine = engine_with(tiny_adapter, metrics)
    job, _ = engine_job(tmp_path, "deliver", 2, engine, TABLE, deliverables=DELIVERABLES)
    run(engine, job, open_store(str(tmp_path / "out")))
    assert job.state.final_state == "succeeded", job.state.failures()
    store = open_store(str(tmp_path / "out"))
    for item_id in ("i0", "i1"):
        sidecar = check_files(store, "deliver", item_id, DELIVERABLES, tmp_path)
    assert job.state.post.to_dict() | {"seconds": 0} == {"queued": 0, "running": 0, "made": 10, "skipped": 0,
                                                          "failed": 0, "superseded": 0, "seconds": 0, "failures": []}
    rendered = sidecar["created_at"], sidecar["commit"]["token"]

    # The same job with `poster` added: nothing renders, only the poster is made, per item.
    again = engine_with(tiny_adapter, metrics)
    job2, _ = engine_job(tmp_path, "deliver", 2, again, TABLE, deliverables=[*DELIVERABLES, "poster"])
    job2.recorder = JobRecorder(job2.state, store, 0.1)
    plan = run(again, job2, store)
    job2.recorder.close()
    assert plan.items == [] and job2.state.counts()["skipped"] == 2
    assert (job2.state.post.made, job2.state.post.skipped, job2.state.post.failed) == (2, 0, 0)
    made = {labels: value for labels, value in _samples(metrics, "farm_deliverables_total")}
    assert made[("poster", "failed")] == 0  # at 0 from the admission on, as every counter
    assert made[("poster", "made")] == 2 and made[("vertical", "made")] == 2  # vertical: the first run's only
    sidecar = check_files(store, "deliver", "i1", [*DELIVERABLES, "poster"], tmp_path)
    assert (sidecar["created_at"], sidecar["commit"]["token"]) == rendered  # the render stayed as it was
    assert json.loads(store.get_bytes("deliver/job.json"))["post"]["made"] == 2

    # `farm post` adds one to the finished job: made from the committed MP4s, recorded in spec.json.
    assert main(["post", str(tmp_path / "out" / "deliver"), "--deliverable", "square"]) == 0
    check_files(store, "deliver", "i0", ["square"], tmp_path)
    assert json.loads(store.get_bytes("deliver/job.json"))["post"]["made"] == 4
    spec = json.loads(store.get_bytes("deliver/spec.json"))
    assert [d["name"] for d in spec["items"][0]["deliverables"]][-1] == "square"
    assert main(["post", str(tmp_path / "out" / "deliver"), "--deliverable", "square"]) == 0  # all there: skipped
    assert json.loads(store.get_bytes("deliver/job.json"))["post"]["skipped"] == 2


def _samples(metrics, name):
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                yield (sample.labels["deliverable"], sample.labels["outcome"]), sample.value


def test_deliverables_commit_on_an_s3_endpoint(tmp_path, tiny_adapter, monkeypatch):
    server = MotoServer().start()
    try:
        monkeypatch.setenv("FARM_S3_ENDPOINT_URL", server.endpoint)
        for name, value in (("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s"), ("AWS_DEFAULT_REGION", "us-east-1")):
            monkeypatch.setenv(name, value)
        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").create_bucket(Bucket="renders")
        engine = engine_with(tiny_adapter)
        job, _ = engine_job(tmp_path, "s3job", 1, engine, TABLE, deliverables=DELIVERABLES)
        job.state.spec.output = "s3://renders/farm"
        store = open_store("s3://renders/farm")
        run(engine, job, store)
        assert job.state.final_state == "succeeded" and job.state.post.made == 5, job.state.post.to_dict()
        check_files(store, "s3job", "i0", DELIVERABLES, tmp_path)
        assert main(["post", "s3://renders/farm/s3job", "--deliverable", "poster"]) == 0  # `farm post` on S3
        check_files(store, "s3job", "i0", ["poster"], tmp_path)
        assert not [info.key for info in store.list("s3job/.staging/")]  # every staged file was promoted
    finally:
        server.stop()
