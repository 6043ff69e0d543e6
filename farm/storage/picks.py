"""A finished job's picks in its record (`JOB/job.json`'s `picks`), changed by compare-and-swap:
two pickers (`farm pick` on the output, the service's pick route) never lose each other's choice.

A running job's picks live in its JobState, which the job recorder writes (unconditionally) with
every record; a pick written here while a run of the job still records is overwritten by it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping

from farm.core.errors import CommitConflict, StorageError
from farm.storage.base import job_record_key

log = logging.getLogger(__name__)

TRIES = 8


def _parsed(store, key: str, data: bytes) -> dict:
    try:
        record = json.loads(data)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise StorageError(f"{store.location(key)} is not a job record (damaged?); run the job again "
                           "(`farm resume`) to rewrite it")
    return record


def read_record(store, job_name: str) -> dict | None:
    """The job record, or None where there is none. StorageError when it is not JSON."""
    key = job_record_key(job_name)
    data = store.get_bytes(key)
    return None if data is None else _parsed(store, key, data)


def update_record(store, job_name: str, change: Callable[[dict], bool], what: str = "the change") -> dict:
    """Change the job record in place by compare-and-swap: each try reads the record and its
    etag, calls `change(record)` (False: nothing to write) and writes only if the record is still
    that version (`if_match`); a lost race (CommitConflict) reads again. The record after;
    StorageError when there is none."""
    key = job_record_key(job_name)
    for attempt in range(TRIES):
        found = store.get_object(key)
        if found is None:
            raise StorageError(f"no job record {store.location(key)}; check the job's location (OUTPUT/JOB)")
        data, info = found
        record = _parsed(store, key, data)
        if not change(record):
            return record
        try:
            store.put_bytes(key, json.dumps(record).encode(), "application/json", if_match=info.etag)
            return record
        except CommitConflict:
            time.sleep(min(0.05 * 2**attempt, 1.0))  # the recorder or another writer wrote: read again
    raise CommitConflict(f"{store.location(key)} kept changing while {what} was written ({TRIES} tries); "
                         "try again")


def record_picks(store, job_name: str, picks: Mapping[str, str]) -> dict[str, str]:
    """Merge `picks` into the record's (a new choice for an image replaces the old one); the
    record's picks after (no write when nothing is new). StorageError when there is no record."""

    def merge(record: dict) -> bool:
        had = "picks" in record
        before = record.get("picks") if isinstance(record.get("picks"), dict) else {}
        record["picks"] = {**before, **picks}
        return record["picks"] != before or not had

    return update_record(store, job_name, merge, "the pick")["picks"]


def recorded_picks(store, spec) -> dict[str, str]:
    """The picks an earlier run's record holds that still name takes of `spec` (a run of the job
    again, `farm resume`, a restarted coordinator keep them); none when it has none or cannot be
    read (logged: the job runs anyway)."""
    from farm.core.takes import valid_picks

    try:
        record = read_record(store, spec.name) or {}
    except StorageError as error:
        log.warning("job %s: the picks of its earlier record are not kept: %s", spec.name, error)
        return {}
    return valid_picks(spec, record.get("picks"))
