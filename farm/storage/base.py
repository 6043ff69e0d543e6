"""The interface every output backend implements, and the layout of a job's results.

Layout under the output URI:
    JOB/ITEM.mp4, JOB/ITEM.jpg      the video and its thumbnail
    JOB/ITEM.json                   the sidecar: written last, the item's commit marker
    JOB/job.json                    the job record, rewritten as the job runs
    JOB/spec.json                   the validated job (what `farm resume` runs again)
    JOB/contact.jpg                 a job with takes: their first frames side by side (farm.post.contact)
    JOB/manifest.EXT                the manifest as submitted
    JOB/.staging/ITEM.TOKEN.*       uploads in progress (promoted to their final keys on commit)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

CONTENT_TYPES = {"video": "video/mp4", "thumbnail": "image/jpeg", "sidecar": "application/json"}
JOB_FILES = ("job.json", "spec.json", "manifest.json")

STAGING = ".staging"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int


class OutputStore(Protocol):
    """Keyed blob storage for results. Keys use `/` and never start with it.

    Transient failures raise `TransientStorageError` (after the backend's own retries);
    permanent ones `StorageError`; a lost conditional write `CommitConflict`.
    """

    uri: str

    def put_file(self, key: str, local_path: str, content_type: str) -> ObjectInfo: ...

    def put_bytes(
        self, key: str, data: bytes, content_type: str, *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo: ...

    def get_bytes(self, key: str) -> bytes | None: ...

    def get_object(self, key: str) -> tuple[bytes, ObjectInfo] | None:
        """The bytes and the etag of one and the same version (for compare-and-swap), or None."""
        ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def sha256(self, key: str) -> str | None:
        """The hex sha256 of the object's bytes, streamed in chunks; None when it does not exist."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def promote(self, source: str, target: str, *, size: int | None = None) -> ObjectInfo:
        """Move `source` to `target` (replacing it), as atomically as the backend allows.
        `size`, when the caller knows it, lets a backend skip inspecting the source."""
        ...

    def delete(self, key: str) -> None: ...

    def location(self, key: str) -> str:
        """Where a user finds `key` (a path or a URI)."""
        ...

    def presigned_url(self, key: str, expiry_s: int | None = None) -> str: ...

    def check_access(self, prefix: str) -> None:
        """Fail early, with a clear message, if results cannot be written under `prefix`."""
        ...


def item_keys(job_name: str, item_id: str) -> dict[str, str]:
    """The keys of one item's results; the sidecar is written last and marks the item committed."""
    return {
        "video": f"{job_name}/{item_id}.mp4",
        "thumbnail": f"{job_name}/{item_id}.jpg",
        "sidecar": f"{job_name}/{item_id}.json",
    }


def staging_keys(job_name: str, item_id: str, token: str) -> dict[str, str]:
    return {
        "video": f"{job_name}/{STAGING}/{item_id}.{token}.mp4",
        "thumbnail": f"{job_name}/{STAGING}/{item_id}.{token}.jpg",
    }


def job_record_key(job_name: str) -> str:
    return f"{job_name}/job.json"


def job_spec_key(job_name: str) -> str:
    return f"{job_name}/spec.json"


def sidecar_item_id(job_name: str, key: str) -> str | None:
    """The item id of a sidecar key directly under the job, or None for anything else."""
    prefix = f"{job_name}/"
    if not key.startswith(prefix) or not key.endswith(".json"):
        return None
    name = key[len(prefix) :]
    if "/" in name or name in JOB_FILES:
        return None
    return name[: -len(".json")]
