"""Committing one deliverable exactly once, with the render's protocol: file first, sidecar entry last.

Layout: JOB/deliverables/NAME/ITEM.EXT (one folder per deliverable, ready to publish as a set).
Protocol, run by the CPU worker that made the file:
  1. upload it to an attempt-unique staging key (JOB/.staging/ITEM.NAME.TOKEN.EXT);
  2. add its entry to the item's sidecar (`deliverables.NAME`: spec, digest, key, bytes, sha256,
     md5, the probed facts) with a compare-and-swap write (`If-Match` the etag read). This write
     is the commit. The sidecar must still be the render the file was made from (the same
     `commit.token`): if the item was rendered again meanwhile, the file is dropped
     (`superseded`: the new render makes its own). A lost race with another writer of the same
     sidecar is read again and retried;
  3. promote the staging object to its final key.
A crash between 2 and 3 leaves an entry whose file is still in staging: the next run finds it
through the entry's `commit.staging` and finishes the promotion (`repair`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from farm.core.errors import CommitConflict
from farm.storage.base import STAGING, ObjectInfo, OutputStore, item_keys
from farm.storage.digests import file_digests

CAS_ATTEMPTS = 8
CONTENT_TYPES = {"mp4": "video/mp4", "webm": "video/webm", "mkv": "video/x-matroska", "gif": "image/gif",
                 "webp": "image/webp", "png": "image/png"}


def deliverable_key(job_name: str, item_id: str, name: str, extension: str) -> str:
    return f"{job_name}/deliverables/{name}/{item_id}.{extension}"


def deliverable_staging_key(job_name: str, item_id: str, name: str, token: str, extension: str) -> str:
    return f"{job_name}/{STAGING}/{item_id}.{name}.{token}.{extension}"


@dataclass(frozen=True)
class Committed:
    outcome: str  # "made" | "skipped" (the same deliverable was committed by another writer) | "superseded"
    key: str | None = None
    info: ObjectInfo | None = None


def read_sidecar(store: OutputStore, job_name: str, item_id: str) -> tuple[dict, str] | None:
    """The committed sidecar and its etag, or None (not rendered, or unreadable)."""
    found = store.get_object(item_keys(job_name, item_id)["sidecar"])
    if found is None:
        return None
    body, info = found
    try:
        sidecar = json.loads(body)
    except ValueError:
        return None
    return (sidecar, info.etag) if isinstance(sidecar, dict) and sidecar.get("status") == "succeeded" else None


def render_token(sidecar: dict) -> str | None:
    """Which render a sidecar is (a new attempt writes a new token)."""
    return (sidecar.get("commit") or {}).get("token")


def entry_intact(store: OutputStore, entry: dict | None, digest: str, listing: dict[str, ObjectInfo] | None = None) -> bool:
    """Whether a recorded entry is this deliverable (same digest) with its file in place (size)."""
    if not entry or entry.get("digest") != digest:
        return False
    info = listing.get(entry["key"]) if listing is not None else store.head(entry["key"])
    return info is not None and info.size == entry.get("bytes")


def commit_deliverable(store: OutputStore, job_name: str, item_id: str, path: str, entry: dict, *,
                       render: str | None, token: str) -> Committed:
    """Steps 1-3 of the module text for the file at `path`; `entry` is completed here (key,
    bytes, digests, commit) and `render` is the render token it was made from."""
    name, extension = entry["name"], entry["extension"]
    final = deliverable_key(job_name, item_id, name, extension)
    staging = deliverable_staging_key(job_name, item_id, name, token, extension)
    digests = file_digests(path)
    entry.update(key=final, bytes=digests.size, sha256=digests.sha256, md5=digests.md5,
                 commit={"token": token, "staging": staging})
    staged = store.put_file(staging, path, CONTENT_TYPES.get(extension, "application/octet-stream"))
    sidecar_key = item_keys(job_name, item_id)["sidecar"]
    for _ in range(CAS_ATTEMPTS):
        found = read_sidecar(store, job_name, item_id)
        if found is None or render_token(found[0]) != render:
            _forget(store, staging)
            return Committed("superseded")
        sidecar, etag = found
        current = (sidecar.get("deliverables") or {}).get(name)
        if current and current.get("digest") == entry["digest"] and current.get("commit", {}).get("token") != token:
            _forget(store, staging)  # another writer committed this very deliverable first
            return Committed("skipped", final)
        sidecar.setdefault("deliverables", {})[name] = entry
        try:
            store.put_bytes(sidecar_key, json.dumps(sidecar, indent=2).encode(), "application/json", if_match=etag)
        except CommitConflict:
            continue  # the sidecar changed under us: read it again
        info = store.promote(staging, final, size=staged.size)
        return Committed("made", final, info)
    _forget(store, staging)
    raise CommitConflict(f"the sidecar of {item_id} kept changing; {name} was not committed (a rerun makes it)")


def repair(store: OutputStore, entry: dict, listing: dict[str, ObjectInfo] | None = None) -> bool:
    """Finish step 3 for an entry whose file is still in staging; True when the file is in place."""
    final = entry.get("key")
    staging = (entry.get("commit") or {}).get("staging")
    if not final or not staging:
        return False
    source = listing.get(staging) if listing is not None else store.head(staging)
    if source is None or source.size != entry.get("bytes"):
        return False
    store.promote(staging, final, size=source.size)
    return True


def _forget(store: OutputStore, key: str) -> None:
    try:
        store.delete(key)
    except Exception:  # best effort: a leftover staging object is harmless (cleared at the job's end)
        pass
