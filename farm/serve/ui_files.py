"""The web UI's file access: a job's thumbnails and sidecars read from its output, and its
outputs as one streamed zip or a list of presigned URLs. Blocking (storage I/O): callers run
these on a thread.
"""

from __future__ import annotations

import functools
import io
import json
import zipfile
from collections.abc import Iterator

from farm.storage import open_store
from farm.storage.base import STAGING, item_keys

ZIP_CHUNK_BYTES = 1024 * 1024


@functools.lru_cache(maxsize=32)
def store_for(output: str):
    """One store per output (an S3 store holds a boto3 client: seconds of CPU to make each time)."""
    return open_store(output)


def item_file(output: str, job_name: str, item_id: str, kind: str) -> bytes | None:
    """An item's `thumbnail` or `sidecar` bytes (None: not there, i.e. not committed yet)."""
    return store_for(output).get_bytes(item_keys(job_name, item_id)[kind])


def sidecar(output: str, job_name: str, item_id: str) -> dict | None:
    """The item's sidecar, if it is a committed item's own (a damaged or foreign one: None)."""
    data = item_file(output, job_name, item_id, "sidecar")
    try:
        value = json.loads(data) if data else None
    except ValueError:
        return None
    return value if isinstance(value, dict) and value.get("item_id") == item_id else None


def output_keys(output: str, job_name: str) -> list[str]:
    """Every file of the job's folder (results, records, deliverables), not its staging area."""
    prefix = f"{job_name}/"
    return sorted(info.key for info in store_for(output).list(prefix)
                  if not info.key[len(prefix):].startswith(STAGING + "/"))


class _Chunks(io.RawIOBase):
    """A write-only, unseekable sink whose bytes are taken out as they come (zipfile then writes
    data descriptors instead of seeking back)."""

    def __init__(self):
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def zip_stream(output: str, job_name: str, keys: list[str]) -> Iterator[bytes]:
    """The job's files as a zip (stored, not compressed: MP4 and JPEG are compressed already),
    produced file by file so that memory holds one file at a time."""
    sink = _Chunks()
    store = store_for(output)
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key in keys:
            data = store.get_bytes(key)
            if data is None:  # deleted since the listing
                continue
            archive.writestr(key, data)
            if sum(map(len, sink.parts)) >= ZIP_CHUNK_BYTES:
                yield sink.take()
    yield sink.take()


def url_list(output: str, keys: list[str]) -> str:
    """One presigned URL per line (`wget -i FILE` fetches them all), for an S3 output."""
    store = store_for(output)
    return "".join(store.presigned_url(key) + "\n" for key in keys)
