"""The interface every output backend implements, and the layout of a job's results."""

from __future__ import annotations

from typing import Protocol


class OutputStore(Protocol):
    """Keyed blob storage for results. Keys use `/` and never start with it."""

    uri: str

    def put_file(self, key: str, local_path: str, content_type: str) -> None: ...

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...

    def get_bytes(self, key: str) -> bytes | None: ...

    def exists(self, key: str) -> bool: ...

    def location(self, key: str) -> str:
        """Where a user finds `key` (a path or a URI)."""
        ...


def item_keys(job_name: str, item_id: str) -> dict[str, str]:
    """The keys of one item's results; the sidecar is written last and marks the item committed."""
    return {
        "video": f"{job_name}/{item_id}.mp4",
        "thumbnail": f"{job_name}/{item_id}.jpg",
        "sidecar": f"{job_name}/{item_id}.json",
    }


def job_record_key(job_name: str) -> str:
    return f"{job_name}/job.json"


CONTENT_TYPES = {"video": "video/mp4", "thumbnail": "image/jpeg", "sidecar": "application/json"}
