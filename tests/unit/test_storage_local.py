"""Local output storage, the commit protocol on it, and storage error handling (no network)."""

import json
import os

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from farm.core.errors import CommitConflict, StorageError, TransientStorageError
from farm.storage.base import sidecar_item_id
from farm.storage.commit import commit_item, finish_promotion
from farm.storage.local import LocalStore
from farm.storage.s3 import classify, parse_s3_uri, with_retries


def files(tmp_path, who):
    (tmp_path / f"{who}.mp4").write_bytes(who.encode() * 100)
    (tmp_path / f"{who}.jpg").write_bytes(who.encode() * 10)
    return {"video": str(tmp_path / f"{who}.mp4"), "thumbnail": str(tmp_path / f"{who}.jpg")}


def test_conditional_writes(tmp_path):
    store = LocalStore(str(tmp_path / "out"))
    first = store.put_bytes("job/a.json", b"1", if_none_match=True)
    with pytest.raises(CommitConflict):
        store.put_bytes("job/a.json", b"2", if_none_match=True)
    replaced = store.put_bytes("job/a.json", b"3", if_match=first.etag)
    with pytest.raises(CommitConflict):
        store.put_bytes("job/a.json", b"4", if_match=first.etag)  # stale etag
    assert store.get_bytes("job/a.json") == b"3" and replaced.etag != first.etag
    assert not [p for p in (tmp_path / "out" / "job").iterdir() if p.name.endswith(".tmp")]


def test_results_are_readable_and_listed(tmp_path):
    store = LocalStore(str(tmp_path / "out"))
    store.put_bytes("job/x.json", b"{}")
    assert oct(os.stat(tmp_path / "out" / "job" / "x.json").st_mode & 0o444) == oct(0o444)
    assert [i.key for i in store.list("job/")] == ["job/x.json"]
    assert store.head("job/missing.json") is None and store.get_bytes("job/missing.json") is None


def test_keys_cannot_escape_the_output_folder(tmp_path):
    store = LocalStore(str(tmp_path / "out"))
    with pytest.raises(StorageError, match="escapes"):
        store.put_bytes("../outside.json", b"x")


def test_commit_has_one_winner_and_cleans_up(tmp_path):
    store = LocalStore(str(tmp_path / "out"))
    won = commit_item(store, "job", "item", files(tmp_path, "a"), {"status": "succeeded", "who": "a"}, token="t1")
    lost = commit_item(store, "job", "item", files(tmp_path, "b"), {"status": "succeeded", "who": "b"}, token="t2")
    assert won.committed and not lost.committed
    assert store.get_bytes("job/item.mp4") == b"a" * 100
    assert json.loads(store.get_bytes("job/item.json"))["commit"]["token"] == "t1"
    assert not list(store.list("job/.staging/"))


def test_a_crash_between_commit_and_promotion_is_repaired(tmp_path):
    store = LocalStore(str(tmp_path / "out"))
    sidecar = {"status": "succeeded", "commit": {"staging": {"video": "job/.staging/i.t.mp4", "thumbnail": "job/.staging/i.t.jpg"}}}
    store.put_file("job/.staging/i.t.mp4", files(tmp_path, "a")["video"])
    store.put_file("job/.staging/i.t.jpg", files(tmp_path, "a")["thumbnail"])
    store.put_bytes("job/i.json", json.dumps(sidecar).encode(), if_none_match=True)  # ... and the worker died here
    assert store.head("job/i.mp4") is None
    assert finish_promotion(store, "job", "i", sidecar)
    assert store.get_bytes("job/i.mp4") == b"a" * 100 and not list(store.list("job/.staging/"))


def test_a_full_disk_is_a_clear_storage_error(tmp_path, monkeypatch):
    import errno

    store = LocalStore(str(tmp_path / "out"))

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match="no space left"):
        store.put_bytes("job/a.json", b"x")
    assert not list((tmp_path / "out" / "job").iterdir())  # no temp file left behind


def test_sidecar_keys():
    assert sidecar_item_id("job", "job/a.json") == "a"
    assert sidecar_item_id("job", "job/job.json") is None and sidecar_item_id("job", "job/spec.json") is None
    assert sidecar_item_id("job", "job/.staging/a.t.json") is None and sidecar_item_id("job", "other/a.json") is None


def client_error(code, status):
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize(
    "error, kind",
    [
        (EndpointConnectionError(endpoint_url="http://x"), TransientStorageError),
        (client_error("SlowDown", 503), TransientStorageError),
        (client_error("InternalError", 500), TransientStorageError),
        (client_error("Whatever", 429), TransientStorageError),
        (client_error("PreconditionFailed", 412), CommitConflict),
        (client_error("NoSuchBucket", 404), StorageError),
        (client_error("InvalidAccessKeyId", 403), StorageError),
    ],
)
def test_error_classification(error, kind):
    classified = classify(error, "write x")
    assert type(classified) is kind


def test_transient_errors_are_retried_within_the_window():
    calls = []
    clock = [0.0]

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise EndpointConnectionError(endpoint_url="http://x")
        return "ok"

    assert with_retries(flaky, "write", 60, sleep=lambda s: clock.__setitem__(0, clock[0] + s), clock=lambda: clock[0]) == "ok"
    assert len(calls) == 4


def test_retries_stop_at_the_window_and_permanent_errors_are_not_retried():
    clock = [0.0]
    tick = dict(sleep=lambda s: clock.__setitem__(0, clock[0] + s), clock=lambda: clock[0])

    def down():
        raise EndpointConnectionError(endpoint_url="http://x")

    with pytest.raises(TransientStorageError, match="giving up"):
        with_retries(down, "write", 30, **tick)
    assert 20 <= clock[0] <= 30
    calls = []

    def denied():
        calls.append(1)
        raise client_error("AccessDenied", 403)

    with pytest.raises(StorageError, match="access denied"):
        with_retries(denied, "write", 30, **tick)
    assert len(calls) == 1


def test_s3_uris():
    assert parse_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    with pytest.raises(StorageError):
        parse_s3_uri("s3:///x")
