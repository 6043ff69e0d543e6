"""Takes: several renders of one image with distinct seeds (`ITEM.take-K`, K from 1), and the
one chosen of them (`farm pick`, `POST /v1/jobs/ID/items/ITEM/pick`).

Pure: the takes of an image, what a pick names, the takes listing the API answers, and the picks
kept from a job record. A job's picks map the takes' shared id (`take_of`) to the chosen take's
item id, in `JobState.picks` and in `job.json`'s `picks`; where they are written is the
callers' (farm.storage.picks, the coordinator). No I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from farm.core.errors import TakeError, clip, excerpt
from farm.core.manifest import JobItem, JobSpec
from farm.core.states import CANCELLED, FAILED

UNPICKABLE = (FAILED, CANCELLED)  # a take with no video to choose
MESSAGE_CHARS = 300  # a take's failure message in the listing, at most
LISTED_IDS = 4  # take ids quoted in an error message


def take_groups(spec: JobSpec) -> dict[str, list[JobItem]]:
    """Every image with takes: its shared id -> its takes in take order (manifest order of images)."""
    groups: dict[str, list[JobItem]] = {}
    for item in spec.items:
        if item.take_of is not None:
            groups.setdefault(item.take_of, []).append(item)
    for takes in groups.values():
        takes.sort(key=lambda item: item.take)
    return groups


def takes_of(spec: JobSpec, item_id: str) -> tuple[str, list[JobItem]]:
    """(the shared id, its takes in take order) of `item_id`, the shared id or one take's id.

    TakeError 404 for an id the job does not have, 422 for an item rendered once (no takes)."""
    found = next((item for item in spec.items if item.id == item_id), None)
    shared = found.take_of if found is not None and found.take_of is not None else item_id
    takes = sorted((item for item in spec.items if item.take_of == shared), key=lambda item: item.take)
    if takes:
        return shared, takes
    if found is not None:
        raise TakeError(f"item {item_id!r} has no takes: it renders one video; give it `takes: N` or `seeds: [...]` "
                        "in the manifest to render variants to choose from", 422, "item", item_id)
    if any(rejected.id == item_id for rejected in spec.rejected):
        raise TakeError(f"item {item_id!r} failed validation, so nothing of it was rendered; fix it in the "
                        "manifest and submit the job again", 422, "item", item_id)
    raise TakeError(f"no item {excerpt(item_id)} in job {spec.name!r}; the job's item list names its items "
                    "(an image's takes are ITEM.take-1, ITEM.take-2, ...)", 404, "item", item_id)


def resolve_pick(spec: JobSpec, item_id: str, take: Any, states: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(the shared id, the chosen take's id) for a pick of `take` (K from 1, or the take's full
    id; a string of digits is K) of `item_id` (the shared id or one of its takes' ids). `states`:
    item id -> state, to refuse a take that failed or was cancelled. TakeError otherwise."""
    shared, takes = takes_of(spec, item_id)
    count = len(takes)
    if isinstance(take, str) and re.fullmatch(r"[0-9]{1,3}", take.strip()):
        take = int(take)
    if isinstance(take, bool) or not isinstance(take, (int, str)):
        raise TakeError(f"take must be a take's number (1 to {count}) or its id (e.g. {takes[0].id!r})",
                        422, "take", take)
    if isinstance(take, int):
        chosen = next((item for item in takes if item.take == take), None)
        if chosen is None:
            raise TakeError(f"item {shared!r} has {count} takes: pick one from 1 to {count}", 422, "take", take)
    elif take == shared:
        raise TakeError(f"{shared!r} names the image, not one of its takes; give the take's number (1 to {count}) "
                        f"or its id (e.g. {takes[0].id!r})", 422, "take", take)
    else:
        chosen = next((item for item in takes if item.id == take), None)
        if chosen is None:
            named = ", ".join(item.id for item in takes[:LISTED_IDS]) + (", ..." if count > LISTED_IDS else "")
            raise TakeError(f"{excerpt(take)} is not a take of {shared!r}; pick one of {named} (or 1 to {count})",
                            422, "take", take)
    state = (states or {}).get(chosen.id)
    if state in UNPICKABLE:
        raise TakeError(f"take {chosen.take} of {shared!r} ({chosen.id}) {state}: it has no video to choose; pick "
                        "another take, or render it again (`farm resume`) and pick it then", 422, "take", take)
    return shared, chosen.id


def takes_listing(shared: str, takes: list[JobItem], records: Mapping[str, Mapping[str, Any]],
                  picks: Mapping[str, str]) -> dict[str, Any]:
    """The API's answer for one image: `{"item", "takes": [{"id", "take", "seed", "state",
    "picked", ("reason", "message")}], "picked"}`. `records`: item id -> its job record entry
    (`state`, and `reason` and `message` where it failed); an item without one is queued."""
    picked = picks.get(shared)
    rows = []
    for item in takes:
        record = records.get(item.id) or {}
        row = {"id": item.id, "take": item.take, "seed": item.seed, "state": str(record.get("state", "queued")),
               "picked": item.id == picked}
        if record.get("reason"):
            row["reason"] = str(record["reason"])
        if record.get("message"):
            row["message"] = clip(str(record["message"]), MESSAGE_CHARS)
        rows.append(row)
    return {"item": shared, "takes": rows, "picked": picked}


def valid_picks(spec: JobSpec, picks: object) -> dict[str, str]:
    """The picks of `picks` (a record's, read back: anything) that name a take of that image in
    this spec; the rest is dropped (a hand-edited record, or one of another version of the job)."""
    if not isinstance(picks, Mapping):
        return {}
    groups = {shared: {item.id for item in takes} for shared, takes in take_groups(spec).items()}
    return {shared: take_id for shared, take_id in picks.items()
            if isinstance(shared, str) and isinstance(take_id, str) and take_id in groups.get(shared, ())}
