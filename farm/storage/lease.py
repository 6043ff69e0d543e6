"""Job lease records in the state store (`leases/JOB_ID.json`): the I/O of `farm.core.lease`.

Every write is conditional, so of two coordinators racing for a lease exactly one wins:
`create` sends `If-None-Match: *` (a local folder links a temp file into place, which fails when
the name exists), `replace` sends `If-Match: <etag>` of the record read (a local folder compares
and renames under a lock). A lost race raises `CommitConflict`.

On S3 this needs conditional writes (AWS S3, MinIO and most current servers have them); with
FARM_S3_CONDITIONAL_WRITES=false they are not sent and a lease is not exclusive (`exclusive`
says so; the coordinator warns at start).
"""

from __future__ import annotations

from farm.core.lease import LeaseRecord
from farm.storage.config import StorageConfig

PREFIX = "leases/"
CANCELS = "cancels/"


def lease_key(job_id: str) -> str:
    return f"{PREFIX}{job_id}.json"


def cancel_key(job_id: str) -> str:
    return f"{CANCELS}{job_id}.json"


def lease_storage_config(config: StorageConfig, ttl_s: float) -> StorageConfig:
    """S3 settings for lease I/O: requests and retries short next to the TTL, so that a storage
    outage shows as a failed renewal in time (not as a call stuck for the whole retry window)."""
    limit = max(ttl_s / 6, 0.5)
    return config.model_copy(update={
        "retry_window_s": min(config.retry_window_s, limit),
        "connect_timeout_s": min(config.connect_timeout_s, limit),
        "read_timeout_s": min(config.read_timeout_s, limit),
        "max_attempts": min(config.max_attempts, 2),
    })


class LeaseStore:
    """Lease records (and cancel requests for jobs held elsewhere) in one state store."""

    def __init__(self, store):
        self.store = store

    @property
    def exclusive(self) -> bool:
        """False when the backend does not send conditional writes (see the module text)."""
        config = getattr(self.store, "config", None)
        return bool(getattr(config, "conditional_writes", True))

    def read(self, job_id: str) -> tuple[LeaseRecord | None, str | None]:
        """(record, etag): (None, None) when there is none; (None, etag) when it is damaged."""
        found = self.store.get_object(lease_key(job_id))
        if found is None:
            return None, None
        data, info = found
        record = LeaseRecord.from_bytes(data)
        return (record if record is not None and record.job_id == job_id else None), info.etag

    def create(self, record: LeaseRecord) -> str:
        """Write a record where there is none; its etag. Raises CommitConflict if there is one."""
        return self.store.put_bytes(lease_key(record.job_id), record.to_bytes(), "application/json",
                                    if_none_match=True).etag

    def replace(self, record: LeaseRecord, etag: str) -> str:
        """Replace the record whose etag is `etag`; the new etag. Raises CommitConflict if the
        record changed (or is gone)."""
        return self.store.put_bytes(lease_key(record.job_id), record.to_bytes(), "application/json",
                                    if_match=etag).etag

    def delete(self, job_id: str) -> None:
        self.store.delete(lease_key(job_id))

    # --- cancel requests: a coordinator asked to cancel a job that another one runs -------------

    def request_cancel(self, job_id: str, by: str, at: float) -> None:
        import json

        self.store.put_bytes(cancel_key(job_id), json.dumps({"job_id": job_id, "by": by, "at": at}).encode(),
                             "application/json")

    def cancel_requests(self) -> set[str]:
        """Job ids with a cancel request (one listing)."""
        found = set()
        for info in self.store.list(CANCELS):
            name = info.key[len(CANCELS):]
            if name.endswith(".json") and "/" not in name:
                found.add(name[: -len(".json")])
        return found

    def clear_cancel(self, job_id: str) -> None:
        self.store.delete(cancel_key(job_id))
