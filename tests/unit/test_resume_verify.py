"""A re-run keeps a committed result only when its outputs match the sidecar's sizes and digests
(local store, no Ray, no network): damage in place is found even when size and mtime are kept."""

import hashlib
import json
import os

import pytest

from farm.core.job import inputs_digest
from farm.core.manifest import parse_manifest
from farm.storage.base import ObjectInfo
from farm.storage.commit import commit_item, finish_promotion, outputs_problem
from farm.storage.digests import etag_proves_intact, file_digests, sha256_problem, size_problem
from farm.storage.inputs import local_fingerprint
from farm.storage.local import LocalStore
from farm.storage.resume import scan_committed
from helpers import encode, pattern

CONFIG = "x"


@pytest.fixture
def job(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(encode(pattern(64, 48), "PNG"))
    items = [{"id": f"i{n}", "image": "a.png", "prompt": f"p{n}"} for n in range(3)]
    document = {"version": 1, "name": "job", "model": "tiny", "items": items}
    return parse_manifest(json.dumps(document).encode(), "json", base_dir=tmp_path)


def sidecar_for(spec, item) -> dict:
    """The sidecar the renderer writes, as far as resume reads it (inputs match the manifest)."""
    data = open(item.image, "rb").read()
    image_sha256 = hashlib.sha256(data).hexdigest()
    digest = inputs_digest(
        image_sha256=image_sha256,
        prompt=item.prompt,
        params=item.params.model_dump(),
        seed=item.seed,
        model=spec.model,
        model_config_sha256=CONFIG,
    )
    return {
        "status": "succeeded",
        "input": {"sha256": image_sha256, "fingerprint": local_fingerprint(item.image)},
        "inputs_sha256": digest,
        "model": {"id": spec.model, "config_sha256": CONFIG},
    }


def commit_all(tmp_path, store, spec) -> dict:
    """Commit every item with small fake outputs; item id -> the commit result."""
    results = {}
    for item in spec.items:
        video, thumb = tmp_path / f"{item.id}.mp4", tmp_path / f"{item.id}.jpg"
        video.write_bytes(os.urandom(5000))
        thumb.write_bytes(os.urandom(700))
        files = {"video": str(video), "thumbnail": str(thumb)}
        results[item.id] = commit_item(store, spec.name, item.id, files, sidecar_for(spec, item), token=f"t-{item.id}")
    return results


def corrupt_in_place(path):
    """Flip bytes in the middle, keeping the size and the modification time."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = bytes(b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 16])
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns


def sidecar(store, item_id) -> dict:
    return json.loads(store.get_bytes(f"job/{item_id}.json"))


def test_the_sidecar_records_size_sha256_and_md5_of_each_output(tmp_path, job):
    store = LocalStore(str(tmp_path / "out"))
    commit_all(tmp_path, store, job)
    outputs = sidecar(store, "i0")["outputs"]
    for name, ext in (("video", "mp4"), ("thumbnail", "jpg")):
        data = (tmp_path / "out" / "job" / f"i0.{ext}").read_bytes()
        assert outputs["sha256"][name] == hashlib.sha256(data).hexdigest()
        assert outputs["md5"][name] == hashlib.md5(data).hexdigest()
        assert outputs["bytes"][name] == len(data)


def test_file_digests_read_large_files_in_chunks(tmp_path):
    path = tmp_path / "big"
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one 1 MiB chunk, and a partial last one
    path.write_bytes(data)
    digests = file_digests(str(path))
    assert digests.size == len(data)
    assert (digests.sha256, digests.md5) == (hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest())
    store = LocalStore(str(tmp_path))
    assert store.sha256("big") == digests.sha256 and store.sha256("missing") is None


def test_an_intact_job_is_skipped_whole(tmp_path, job):
    store = LocalStore(str(tmp_path / "out"))
    commit_all(tmp_path, store, job)
    decision = scan_committed(store, job, model_config_sha256=CONFIG)
    assert set(decision.skip) == {"i0", "i1", "i2"} and not decision.replace and not decision.damaged


def test_before_any_worker_loaded_the_model_what_committed_is_kept_when_the_sidecar_names_the_same_model(tmp_path, job):
    """A farm scaled to zero scans before a worker could say which model it loads: the model
    each sidecar names stands in (a farm restarted with nothing loaded must not render again)."""
    store = LocalStore(str(tmp_path / "out"))
    commit_all(tmp_path, store, job)
    assert set(scan_committed(store, job, model_config_sha256=None).skip) == {"i0", "i1", "i2"}
    assert not scan_committed(store, job, model_config_sha256="another model").skip  # a known, different one


def test_a_video_corrupted_in_place_with_the_same_size_and_mtime_is_rendered_again(tmp_path, job, caplog):
    store = LocalStore(str(tmp_path / "out"))
    committed = commit_all(tmp_path, store, job)
    corrupt_in_place(tmp_path / "out" / "job" / "i1.mp4")
    with caplog.at_level("WARNING", logger="farm.storage.resume"):
        decision = scan_committed(store, job, model_config_sha256=CONFIG)
    assert set(decision.skip) == {"i0", "i2"}
    assert decision.replace == {"i1": committed["i1"].sidecar.etag}  # replaced If-Match its sidecar
    assert decision.damaged == {"i1": "video sha256 differs from the sidecar's"}
    assert "i1" in caplog.text and "damaged" in caplog.text


def test_a_corrupted_thumbnail_is_found_too(tmp_path, job):
    store = LocalStore(str(tmp_path / "out"))
    commit_all(tmp_path, store, job)
    corrupt_in_place(tmp_path / "out" / "job" / "i2.jpg")
    decision = scan_committed(store, job, model_config_sha256=CONFIG)
    assert decision.damaged == {"i2": "thumbnail sha256 differs from the sidecar's"} and "i2" in decision.replace


def test_a_missing_thumbnail_is_rendered_again(tmp_path, job):
    store = LocalStore(str(tmp_path / "out"))
    committed = commit_all(tmp_path, store, job)
    (tmp_path / "out" / "job" / "i0.jpg").unlink()
    decision = scan_committed(store, job, model_config_sha256=CONFIG)
    assert decision.replace == {"i0": committed["i0"].sidecar.etag} and "i0" not in decision.skip
    assert decision.damaged == {"i0": "thumbnail is missing"}


def test_a_truncated_video_is_caught_by_its_size_before_any_hashing(tmp_path, job, monkeypatch):
    store = LocalStore(str(tmp_path / "out"))
    commit_all(tmp_path, store, job)
    video = tmp_path / "out" / "job" / "i0.mp4"
    video.write_bytes(video.read_bytes()[:100])
    hashed = []
    original = LocalStore.sha256
    monkeypatch.setattr(LocalStore, "sha256", lambda self, key: hashed.append(key) or original(self, key))
    decision = scan_committed(store, job, model_config_sha256=CONFIG)
    assert decision.damaged == {"i0": "video is 100 bytes, the sidecar says 5000"}
    assert not [key for key in hashed if key.startswith("job/i0.")], "the size alone decides"


def test_an_old_sidecar_without_digests_keeps_the_size_only_check(tmp_path, job):
    store = LocalStore(str(tmp_path / "out"))
    commit_all(tmp_path, store, job)
    for item in job.items:  # rewrite the sidecars as older farms wrote them
        old = sidecar(store, item.id)
        del old["outputs"]["sha256"], old["outputs"]["md5"]
        store.put_bytes(f"job/{item.id}.json", json.dumps(old).encode())
    corrupt_in_place(tmp_path / "out" / "job" / "i1.mp4")  # same size: undetectable without digests
    video = tmp_path / "out" / "job" / "i2.mp4"
    video.write_bytes(video.read_bytes() + b"more")  # a different size: still caught
    decision = scan_committed(store, job, model_config_sha256=CONFIG)
    assert set(decision.skip) == {"i0", "i1"}
    assert set(decision.replace) == {"i2"} and decision.damaged == {"i2": "video is 5004 bytes, the sidecar says 5000"}


def test_changed_inputs_are_replaced_without_hashing_the_outputs(tmp_path, job, monkeypatch):
    store = LocalStore(str(tmp_path / "out"))
    commit_all(tmp_path, store, job)
    (tmp_path / "a.png").write_bytes(encode(pattern(64, 40), "PNG"))
    monkeypatch.setattr(LocalStore, "sha256", lambda self, key: pytest.fail(f"hashed {key}"))
    decision = scan_committed(store, job, model_config_sha256=CONFIG)
    assert set(decision.replace) == {"i0", "i1", "i2"} and not decision.damaged


def test_an_interrupted_replace_promotes_the_staged_outputs_instead_of_rendering(tmp_path, job):
    """The sidecar was replaced (If-Match) but the old same-size bytes still sit at the final
    key: content decides, and the staged copy that matches the sidecar is promoted."""
    store = LocalStore(str(tmp_path / "out"))
    committed = commit_all(tmp_path, store, job)
    old_video = (tmp_path / "out" / "job" / "i0.mp4").read_bytes()
    new = {"video": tmp_path / "new.mp4", "thumbnail": tmp_path / "new.jpg"}
    new["video"].write_bytes(os.urandom(5000))
    new["thumbnail"].write_bytes((tmp_path / "out" / "job" / "i0.jpg").read_bytes())
    commit_item(store, "job", "i0", {k: str(v) for k, v in new.items()}, sidecar_for(job, job.items[0]),
                token="t2", replace_etag=committed["i0"].sidecar.etag)
    # Undo the promotion, as if the worker died right after the sidecar write.
    store.put_bytes("job/.staging/i0.t2.mp4", new["video"].read_bytes())
    store.put_bytes("job/.staging/i0.t2.jpg", new["thumbnail"].read_bytes())
    store.put_bytes("job/i0.mp4", old_video)
    decision = scan_committed(store, job, model_config_sha256=CONFIG)
    assert decision.repaired == ["i0"] and "i0" in decision.skip and not decision.damaged
    assert store.get_bytes("job/i0.mp4") == new["video"].read_bytes()


def test_finish_promotion_refuses_a_staged_object_that_does_not_match(tmp_path, job):
    store = LocalStore(str(tmp_path / "out"))
    commit_all(tmp_path, store, job)
    recorded = sidecar(store, "i0")
    staged = recorded["commit"]["staging"]
    for name, ext in (("video", "mp4"), ("thumbnail", "jpg")):  # back into staging, as before step 3
        store.promote(f"job/i0.{ext}", staged[name])
    corrupt_in_place(tmp_path / "out" / staged["video"])
    assert not finish_promotion(store, "job", "i0", recorded)
    assert store.head("job/i0.mp4") is None and store.head("job/i0.jpg") is None, "nothing half-promoted"
    decision = scan_committed(store, job, model_config_sha256=CONFIG)
    assert decision.damaged == {"i0": "video is missing"}


def test_outputs_problem_reads_an_etag_equal_to_the_md5_as_proof(tmp_path, job, monkeypatch):
    """The S3 shortcut: a single-part object's ETag is its md5, so no download is needed."""
    store = LocalStore(str(tmp_path / "out"))
    commit_all(tmp_path, store, job)
    recorded = sidecar(store, "i0")
    listing = {info.key: info for info in store.list("job/")}
    md5 = recorded["outputs"]["md5"]
    as_s3 = {key: ObjectInfo(key, md5["video" if key.endswith(".mp4") else "thumbnail"], info.size)
             for key, info in listing.items() if key.startswith("job/i0.") and not key.endswith(".json")}
    corrupt_in_place(tmp_path / "out" / "job" / "i0.mp4")
    monkeypatch.setattr(LocalStore, "sha256", lambda self, key: pytest.fail(f"hashed {key}"))
    assert outputs_problem(store, as_s3, "job", "i0", recorded) is None


def test_the_pure_checks():
    sidecar = {"outputs": {"bytes": {"video": 10}, "sha256": {"video": "ab"}, "md5": {"video": "CD"}}}
    assert size_problem("video", 10, sidecar) is None
    assert size_problem("video", 9, sidecar) == "video is 9 bytes, the sidecar says 10"
    assert size_problem("thumbnail", 9, sidecar) is None  # nothing recorded: nothing to compare
    assert etag_proves_intact('"cd"', sidecar, "video")
    assert not etag_proves_intact("cd-2", sidecar, "video") and not etag_proves_intact("cd", {}, "video")
    assert sha256_problem("video", "ab", sidecar) is None
    assert sha256_problem("video", None, sidecar) == "video is missing"
    assert sha256_problem("video", "ff", sidecar) == "video sha256 differs from the sidecar's"
