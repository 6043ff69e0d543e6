"""What earlier runs of a job already committed, and what this run must still do.

For each item of the job: no sidecar -> render. A sidecar whose outputs are missing -> finish
its promotion from staging if the staged objects are there, else render again. A sidecar whose
`inputs_sha256` equals the hash of the current inputs (image bytes, prompt, parameters, model and
its config hash) -> skip. Anything else (changed, or `force`) -> render and replace that exact
sidecar (`If-Match` its etag), so a racing writer cannot be overwritten blindly.

The image is re-hashed only when its fingerprint (size and mtime, or S3 ETag) differs from the
one in the sidecar, so re-running a large unchanged job reads sidecars, not images.

A result is skipped only when its outputs match the sidecar: sizes from the listing, then content
against the recorded digests (a local file is re-hashed; an S3 object whose ETag is the recorded
md5 needs no request, any other is downloaded and its sha256 compared). Content is checked last,
only for items whose inputs are unchanged. Outputs that are missing or damaged and cannot be
promoted whole from staging make the item render again, replacing its sidecar like a changed
item; `ResumeDecision.damaged` says which and why.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

from farm.core.errors import ImageError
from farm.core.job import inputs_digest
from farm.core.manifest import JobItem, JobSpec
from farm.media.images import ImageLimits
from farm.storage.base import ObjectInfo, OutputStore, sidecar_item_id
from farm.storage.commit import finish_promotion, listing_problem, outputs_problem, staged_in
from farm.storage.deliverables import entry_intact
from farm.storage.inputs import local_fingerprint, read_input, s3_client

log = logging.getLogger(__name__)


@dataclass
class ResumeDecision:
    skip: dict[str, str] = field(default_factory=dict)  # item id -> why it is skipped
    replace: dict[str, str] = field(default_factory=dict)  # item id -> etag of the sidecar to replace
    repaired: list[str] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)  # item id -> what is wrong (also in `replace`)
    post: dict[str, list[str]] = field(default_factory=dict)  # skipped item id -> deliverables still to make


class Verdict(NamedTuple):
    action: str  # "skip" | "repaired" | "render"
    detail: str  # why it is skipped, or (render) the etag of the sidecar to replace
    damage: str | None = None  # (render) why the committed outputs could not be kept
    post: tuple[str, ...] = ()  # (skip) the item's deliverables not committed, or changed since


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
    model_config_sha256: str | None,
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

    def examine(item: JobItem) -> tuple[str, Verdict]:
        return item.id, _examine(store, spec, item, sidecars[item.id], listing, model_config_sha256)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for item_id, verdict in pool.map(examine, items):
            _apply(decision, item_id, verdict)
    return decision


def _apply(decision: ResumeDecision, item_id: str, verdict: Verdict) -> None:
    if verdict.action == "render":
        decision.replace[item_id] = verdict.detail
        if verdict.damage:
            decision.damaged[item_id] = verdict.damage
            log.warning("item %s: its committed result is damaged (%s); rendering it again", item_id, verdict.damage)
        return
    decision.skip[item_id] = verdict.detail
    if verdict.post:
        decision.post[item_id] = list(verdict.post)
    if verdict.action == "repaired":
        decision.repaired.append(item_id)


def _examine(store, spec, item, info: ObjectInfo, listing, model_config_sha256: str | None) -> Verdict:
    sidecar = _load_sidecar(store, info)
    if not sidecar or sidecar.get("status") != "succeeded":
        return Verdict("render", info.etag)
    repaired = False
    problem = listing_problem(listing, spec.name, item.id, sidecar)
    if problem:
        if not _repair(store, spec, item, sidecar, listing):
            return Verdict("render", info.etag, problem)
        repaired = True  # finish_promotion verified every output it kept or promoted
    why = _unchanged(spec, item, sidecar, model_config_sha256)
    if why is None:
        return Verdict("render", info.etag)  # changed inputs: no point hashing what gets replaced
    if not repaired:
        problem = outputs_problem(store, listing, spec.name, item.id, sidecar)
        if problem:
            # A replace interrupted before promotion leaves the old bytes at the final keys and
            # the sidecar's outputs in staging: promote those; otherwise the result is damaged.
            if not _repair(store, spec, item, sidecar, listing):
                return Verdict("render", info.etag, problem)
            repaired = True
    return Verdict("repaired" if repaired else "skip", why, post=missing_deliverables(item, sidecar, listing))


def missing_deliverables(item: JobItem, sidecar: dict, listing: dict[str, ObjectInfo]) -> tuple[str, ...]:
    """The item's deliverables whose sidecar entry is absent, of another spec, or whose file the
    listing lacks (an entry still in staging is repaired by the CPU stage, not re-made)."""
    entries = sidecar.get("deliverables") or {}
    missing = []
    for deliverable in item.deliverables:
        entry = entries.get(deliverable.name)
        if not entry_intact(None, entry, deliverable.digest, listing):
            missing.append(deliverable.name)
    return tuple(missing)


def _repair(store, spec, item, sidecar: dict, listing) -> bool:
    # Only with staged objects listed: without them nothing can be promoted, and checking the
    # final outputs again would download a damaged video a second time.
    return staged_in(listing, sidecar) and finish_promotion(store, spec.name, item.id, sidecar)


def _load_sidecar(store, info: ObjectInfo) -> dict | None:
    body = store.get_bytes(info.key)
    try:
        sidecar = json.loads(body) if body else None
    except ValueError:
        return None
    return sidecar if isinstance(sidecar, dict) else None


def _unchanged(spec, item, sidecar: dict, model_config_sha256: str | None) -> str | None:
    """Why the committed result may be kept as far as inputs go, or None when they changed.
    `model_config_sha256` None: no worker has loaded the model yet (a farm scaled to zero); the
    model is then taken as the one the sidecar names (its id is still compared)."""
    model = spec.model_of(item)
    if model_config_sha256 is None or model != spec.model:
        # No worker has loaded the model yet, or the item names its own model (the farm's hash
        # is that of the job's model): the model is taken as the one the sidecar names, whose id
        # the digest still compares.
        model_config_sha256 = str((sidecar.get("model") or {}).get("config_sha256"))
    recorded = sidecar.get("input") or {}
    fingerprint = current_fingerprint(item.image)
    if fingerprint is None:
        return "committed earlier; the input image is no longer readable, so the result is kept"
    if fingerprint == recorded.get("fingerprint"):
        image_sha256 = recorded.get("sha256")
    else:
        try:
            image_sha256 = hashlib.sha256(read_input(item.image, ImageLimits(), root=spec.image_root).data).hexdigest()
        except ImageError:
            return "committed earlier; the input image is no longer readable, so the result is kept"
    expected = inputs_digest(
        image_sha256=image_sha256,
        prompt=item.prompt,
        params=item.params.model_dump(),
        seed=item.seed,
        model=model,
        model_config_sha256=model_config_sha256,
    )
    if expected != sidecar.get("inputs_sha256"):
        return None
    return "committed earlier with the same inputs"
