"""What earlier runs of a job already committed, and what this run must still do.

For each item of the job: no sidecar -> render. A sidecar whose outputs are missing -> finish
its promotion from staging if the staged objects are there, else render again. A sidecar whose
`inputs_sha256` equals the hash of the current inputs (image bytes, prompt, parameters, model and
its config hash) -> skip. Anything else (changed, or `force`) -> render and replace that exact
sidecar (`If-Match` its etag), so a racing writer cannot be overwritten blindly.

The image is re-hashed only when its fingerprint (size and mtime, or S3 ETag) differs from the
one in the sidecar, so re-running a large unchanged job reads sidecars, not images.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from farm.core.errors import ImageError
from farm.core.job import inputs_digest
from farm.core.manifest import JobItem, JobSpec
from farm.media.images import ImageLimits
from farm.storage.base import ObjectInfo, OutputStore, sidecar_item_id
from farm.storage.commit import finish_promotion, outputs_present
from farm.storage.inputs import local_fingerprint, read_input, s3_client

log = logging.getLogger(__name__)


@dataclass
class ResumeDecision:
    skip: dict[str, str] = field(default_factory=dict)  # item id -> why it is skipped
    replace: dict[str, str] = field(default_factory=dict)  # item id -> etag of the sidecar to replace
    repaired: list[str] = field(default_factory=list)


def current_fingerprint(location: str) -> str | None:
    try:
        if location.startswith("s3://"):
            from farm.storage.s3 import parse_s3_uri

            bucket, key = parse_s3_uri(location)
            return s3_client().head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        if location.startswith(("https://", "http://")):
            return location  # web images are taken as immutable
        return local_fingerprint(location)
    except Exception:  # missing or unreadable: decided by the caller
        return None


def scan_committed(
    store: OutputStore,
    spec: JobSpec,
    *,
    model_config_sha256: str,
    force: bool = False,
    threads: int = 16,
) -> ResumeDecision:
    decision = ResumeDecision()
    listing = {info.key: info for info in store.list(f"{spec.name}/")}
    sidecars: dict[str, ObjectInfo] = {}
    for key, info in listing.items():
        item_id = sidecar_item_id(spec.name, key)
        if item_id is not None:
            sidecars[item_id] = info
    items = [item for item in spec.items if item.id in sidecars]
    if not items:
        return decision
    if force:
        decision.replace = {item.id: sidecars[item.id].etag for item in items}
        return decision

    def examine(item: JobItem) -> tuple[str, str, str]:
        return (item.id, *_examine(store, spec, item, sidecars[item.id], listing, model_config_sha256))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for item_id, verdict, detail in pool.map(examine, items):
            if verdict == "skip":
                decision.skip[item_id] = detail
            elif verdict == "repaired":
                decision.skip[item_id] = detail
                decision.repaired.append(item_id)
            else:
                decision.replace[item_id] = detail
    return decision


def _examine(store, spec, item, info: ObjectInfo, listing, model_config_sha256: str) -> tuple[str, str]:
    """('skip' | 'repaired', why) or ('render', etag of the sidecar to replace)."""
    body = store.get_bytes(info.key)
    try:
        sidecar = json.loads(body) if body else None
    except ValueError:
        sidecar = None
    if not sidecar or sidecar.get("status") != "succeeded":
        return "render", info.etag
    repaired = False
    if not outputs_present(listing, spec.name, item.id, sidecar):
        if not finish_promotion(store, spec.name, item.id, sidecar):
            return "render", info.etag
        repaired = True
    recorded = sidecar.get("input") or {}
    fingerprint = current_fingerprint(item.image)
    if fingerprint is None:
        return "skip", "committed earlier; the input image is no longer readable, so the result is kept"
    if fingerprint == recorded.get("fingerprint"):
        image_sha256 = recorded.get("sha256")
    else:
        try:
            image_sha256 = hashlib.sha256(read_input(item.image, ImageLimits()).data).hexdigest()
        except ImageError:
            return "skip", "committed earlier; the input image is no longer readable, so the result is kept"
    expected = inputs_digest(
        image_sha256=image_sha256,
        prompt=item.prompt,
        params=item.params.model_dump(),
        seed=item.seed,
        model=spec.model,
        model_config_sha256=model_config_sha256,
    )
    if expected != sidecar.get("inputs_sha256"):
        return "render", info.etag
    verdict = "repaired" if repaired else "skip"
    return verdict, "committed earlier with the same inputs"
