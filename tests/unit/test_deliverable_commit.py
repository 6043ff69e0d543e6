"""The deliverable commit protocol on a real local store: file to staging, sidecar entry by
compare-and-swap, promotion; a crash before promotion is repaired, a render that changed
meanwhile supersedes the file, a racing writer is read again."""

import json

import pytest

from farm.core.errors import CommitConflict
from farm.storage.deliverables import commit_deliverable, entry_intact, read_sidecar, repair
from farm.storage.local import LocalStore

SIDECAR = {"status": "succeeded", "commit": {"token": "render-1"}, "outputs": {}}


@pytest.fixture
def store(tmp_path):
    store = LocalStore(str(tmp_path / "out"))
    store.put_bytes("job/i0.json", json.dumps(SIDECAR).encode(), "application/json")
    return store


def made(tmp_path, data=b"x" * 100):
    path = tmp_path / "made.mp4"
    path.write_bytes(data)
    return str(path)


def entry(digest="d1"):
    return {"name": "web", "extension": "mp4", "digest": digest}


def test_a_committed_deliverable_is_in_the_sidecar_and_at_its_key(tmp_path, store):
    result = commit_deliverable(store, "job", "i0", made(tmp_path), entry(), render="render-1", token="t1")
    assert result.outcome == "made" and result.key == "job/deliverables/web/i0.mp4"
    sidecar, _ = read_sidecar(store, "job", "i0")
    recorded = sidecar["deliverables"]["web"]
    assert recorded["bytes"] == 100 and len(recorded["sha256"]) == 64 and recorded["commit"]["token"] == "t1"
    assert store.get_bytes("job/deliverables/web/i0.mp4") == b"x" * 100
    assert entry_intact(store, recorded, "d1") and not entry_intact(store, recorded, "d2")
    assert not list(store.list("job/.staging/"))


def test_a_crash_before_promotion_is_repaired_from_staging(tmp_path, store, monkeypatch):
    monkeypatch.setattr(store, "promote", lambda *a, **k: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        commit_deliverable(store, "job", "i0", made(tmp_path), entry(), render="render-1", token="t1")
    monkeypatch.undo()
    recorded = read_sidecar(store, "job", "i0")[0]["deliverables"]["web"]  # committed: the entry is there
    assert not entry_intact(store, recorded, "d1")  # ... its file still in staging
    assert repair(store, recorded) and entry_intact(store, recorded, "d1")
    assert store.get_bytes("job/deliverables/web/i0.mp4") == b"x" * 100


def test_a_render_committed_again_meanwhile_supersedes_the_file(tmp_path, store):
    store.put_bytes("job/i0.json", json.dumps({**SIDECAR, "commit": {"token": "render-2"}}).encode(), "application/json")
    result = commit_deliverable(store, "job", "i0", made(tmp_path), entry(), render="render-1", token="t1")
    assert result.outcome == "superseded"
    assert "deliverables" not in read_sidecar(store, "job", "i0")[0]
    assert store.head("job/deliverables/web/i0.mp4") is None and not list(store.list("job/.staging/"))


def test_a_lost_compare_and_swap_is_read_again_and_keeps_the_other_writers_entry(tmp_path, store, monkeypatch):
    real_put = store.put_bytes
    raced = []

    def put(key, data, content_type="", **conditions):
        if key == "job/i0.json" and conditions.get("if_match") and not raced:
            raced.append(1)  # another deliverable of the same item commits first
            current = json.loads(store.get_bytes(key))
            current.setdefault("deliverables", {})["gif"] = {"name": "gif", "digest": "g"}
            real_put(key, json.dumps(current).encode(), content_type)
        return real_put(key, data, content_type, **conditions)

    monkeypatch.setattr(store, "put_bytes", put)
    result = commit_deliverable(store, "job", "i0", made(tmp_path), entry(), render="render-1", token="t1")
    assert result.outcome == "made" and raced
    assert set(read_sidecar(store, "job", "i0")[0]["deliverables"]) == {"gif", "web"}


def test_a_sidecar_that_never_stops_changing_gives_up_cleanly(tmp_path, store, monkeypatch):
    real_put = store.put_bytes

    def put(key, data, content_type="", **conditions):
        if key == "job/i0.json" and conditions.get("if_match"):
            raise CommitConflict("lost")
        return real_put(key, data, content_type, **conditions)

    monkeypatch.setattr(store, "put_bytes", put)
    with pytest.raises(CommitConflict):
        commit_deliverable(store, "job", "i0", made(tmp_path), entry(), render="render-1", token="t1")
    assert not list(store.list("job/.staging/")) and store.head("job/deliverables/web/i0.mp4") is None
