"""Exactly-once results: how one item's outputs are committed, and how a later run reads them back.

Commit protocol, run by the worker that rendered the item:
  1. upload the video and thumbnail to attempt-unique staging keys (JOB/.staging/ITEM.TOKEN.*);
  2. write the sidecar JOB/ITEM.json conditionally: `If-None-Match: *` for a new item, or
     `If-Match: <etag>` when it replaces a result the coordinator saw (changed inputs, --force).
     This write is the commit. If it loses (another render of the item committed first), the
     staging objects are deleted and the committed result stands;
  3. promote the staging objects to JOB/ITEM.mp4 and JOB/ITEM.jpg.
A crash between 2 and 3 leaves a committed sidecar whose outputs still sit in staging; the next
run finds them through the sidecar's `commit.staging` and finishes the promotion.

Before step 1 each local file is read once for its size, sha256 and md5, recorded in the
sidecar's `outputs`, so a later run can tell an intact result from one damaged in place
(see `digests.py`); old sidecars without digests are checked by size alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from farm.core.errors import CommitConflict
from farm.storage.base import CONTENT_TYPES, ObjectInfo, OutputStore, item_keys, staging_keys
from farm.storage.digests import etag_proves_intact, file_digests, record, recorded, sha256_problem, size_problem

OUTPUTS = ("video", "thumbnail")


@dataclass
class CommitResult:
    committed: bool
    sidecar: ObjectInfo | None = None
    outputs: dict[str, ObjectInfo] | None = None


def commit_item(
    store: OutputStore,
    job_name: str,
    item_id: str,
    files: dict[str, str],
    sidecar: dict,
    *,
    token: str,
    replace_etag: str | None = None,
) -> CommitResult:
    staging = staging_keys(job_name, item_id, token)
    final = item_keys(job_name, item_id)
    outputs = sidecar.setdefault("outputs", {})
    for name in OUTPUTS:  # hashed here, from local disk: no request added to the commit
        record(outputs, name, file_digests(files[name]))
    sidecar["commit"] = {"token": token, "staging": staging}
    staged = {name: store.put_file(staging[name], files[name], CONTENT_TYPES[name]) for name in OUTPUTS}
    body = json.dumps(sidecar, indent=2).encode()
    try:
        info = store.put_bytes(
            final["sidecar"], body, CONTENT_TYPES["sidecar"], if_none_match=replace_etag is None, if_match=replace_etag
        )
    except CommitConflict:
        for name in OUTPUTS:
            _forget(store, staging[name])
        return CommitResult(committed=False)
    outputs = {name: store.promote(staging[name], final[name], size=staged[name].size) for name in OUTPUTS}
    return CommitResult(committed=True, sidecar=info, outputs=outputs)


def finish_promotion(store: OutputStore, job_name: str, item_id: str, sidecar: dict) -> bool:
    """Complete step 3 for a committed sidecar whose outputs are still in staging.

    An output already at its final key and matching the sidecar stays; any other is promoted
    from staging, but only when the staged object matches the sidecar too (size and digest).
    Nothing is promoted unless every output can be made whole."""
    staging = (sidecar.get("commit") or {}).get("staging") or {}
    final = item_keys(job_name, item_id)
    sources: dict[str, ObjectInfo] = {}
    for name in OUTPUTS:
        if output_problem(store, store.head(final[name]), sidecar, name) is None:
            continue
        source = store.head(staging[name]) if staging.get(name) else None
        if output_problem(store, source, sidecar, name) is not None:
            return False
        sources[name] = source
    for name, source in sources.items():
        store.promote(source.key, final[name], size=source.size)
    return True


def staged_in(listing: dict[str, ObjectInfo], sidecar: dict) -> bool:
    """Whether the listing holds any of the sidecar's staging objects (so a repair may work)."""
    staging = (sidecar.get("commit") or {}).get("staging") or {}
    return any(key in listing for key in staging.values())


def outputs_present(listing: dict[str, ObjectInfo], job_name: str, item_id: str, sidecar: dict) -> bool:
    """Both outputs listed with the sizes the sidecar records (the free check: no request)."""
    return listing_problem(listing, job_name, item_id, sidecar) is None


def listing_problem(listing: dict[str, ObjectInfo], job_name: str, item_id: str, sidecar: dict) -> str | None:
    """Why the listing shows an output missing or of the wrong size, or None."""
    final = item_keys(job_name, item_id)
    for name in OUTPUTS:
        info = listing.get(final[name])
        problem = f"{name} is missing" if info is None else size_problem(name, info.size, sidecar)
        if problem:
            return problem
    return None


def outputs_problem(
    store: OutputStore, listing: dict[str, ObjectInfo], job_name: str, item_id: str, sidecar: dict
) -> str | None:
    """Why the committed outputs do not match the sidecar (size, then content), or None."""
    final = item_keys(job_name, item_id)
    for name in OUTPUTS:
        problem = output_problem(store, listing.get(final[name]), sidecar, name)
        if problem:
            return problem
    return None


def output_problem(store: OutputStore, info: ObjectInfo | None, sidecar: dict, name: str) -> str | None:
    """Size first; then, when the sidecar has digests, content: an ETag equal to the recorded
    md5 proves it without a request, anything else is read and its sha256 compared."""
    if info is None:
        return f"{name} is missing"
    problem = size_problem(name, info.size, sidecar)
    if problem or recorded(sidecar, "sha256", name) is None or etag_proves_intact(info.etag, sidecar, name):
        return problem
    return sha256_problem(name, store.sha256(info.key), sidecar)


def _forget(store: OutputStore, key: str) -> None:
    try:
        store.delete(key)
    except Exception:  # best effort: a leftover staging object is harmless
        pass
