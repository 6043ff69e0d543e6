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
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from farm.core.errors import CommitConflict
from farm.storage.base import CONTENT_TYPES, ObjectInfo, OutputStore, item_keys, staging_keys

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
    """Complete step 3 for a committed sidecar whose outputs are still in staging."""
    staging = (sidecar.get("commit") or {}).get("staging") or {}
    final = item_keys(job_name, item_id)
    for name in OUTPUTS:
        if store.head(final[name]) is not None and _matches(store.head(final[name]), sidecar, name):
            continue
        source = staging.get(name)
        if not source or store.head(source) is None:
            return False
        store.promote(source, final[name])
    return True


def outputs_present(listing: dict[str, ObjectInfo], job_name: str, item_id: str, sidecar: dict) -> bool:
    final = item_keys(job_name, item_id)
    return all(name_key in listing and _matches(listing[name_key], sidecar, name) for name, name_key in
               ((n, final[n]) for n in OUTPUTS))


def _matches(info: ObjectInfo | None, sidecar: dict, name: str) -> bool:
    sizes = (sidecar.get("outputs") or {}).get("bytes") or {}
    return info is not None and (name not in sizes or sizes[name] == info.size)


def _forget(store: OutputStore, key: str) -> None:
    try:
        store.delete(key)
    except Exception:  # best effort: a leftover staging object is harmless
        pass
