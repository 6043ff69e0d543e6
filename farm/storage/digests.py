"""Content digests of results: what a sidecar records at commit, and the checks a re-run makes.

At commit the worker reads each local output once and records its size, sha256 and md5 in the
sidecar (`outputs.bytes`, `outputs.sha256`, `outputs.md5`). A later run keeps a committed output
only when it matches: its size first (free, from the listing), then its content. The sha256 is
the proof; the md5 exists because an S3 single-part object's ETag is the md5 of its bytes, so a
listing alone proves such an object intact. Any other ETag (multipart, SSE-KMS, SSE-C, a local
file's size-mtime) proves nothing either way, so the object is read and its sha256 compared:
damage is never declared from an ETag alone.

The functions below that take values, not a store, are the pure part of these checks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterable

CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FileDigests:
    size: int
    sha256: str
    md5: str


def _md5():
    # Not for security (the sha256 is the proof): allowed where FIPS mode forbids plain md5.
    return hashlib.md5(usedforsecurity=False)


def file_digests(path: str) -> FileDigests:
    """Size, sha256 and md5 of a local file, in one read of 1 MiB chunks."""
    sha, md5, size = hashlib.sha256(), _md5(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return FileDigests(size, sha.hexdigest(), md5.hexdigest())


def sha256_of_chunks(chunks: Iterable[bytes]) -> str:
    sha = hashlib.sha256()
    for chunk in chunks:
        sha.update(chunk)
    return sha.hexdigest()


def sha256_of_reader(read: Callable[[int], bytes]) -> str:
    """The sha256 of everything `read(CHUNK_BYTES)` returns until it returns nothing."""
    return sha256_of_chunks(iter(lambda: read(CHUNK_BYTES), b""))


def record(outputs: dict, name: str, digests: FileDigests) -> None:
    """Write one output's digests into a sidecar's `outputs` (sizes the caller set are kept)."""
    outputs.setdefault("bytes", {}).setdefault(name, digests.size)
    outputs.setdefault("sha256", {})[name] = digests.sha256
    outputs.setdefault("md5", {})[name] = digests.md5


def recorded(sidecar: dict, field: str, name: str):
    """The sidecar's `outputs.FIELD.NAME`, or None (old sidecars have no digests)."""
    return ((sidecar.get("outputs") or {}).get(field) or {}).get(name)


def size_problem(name: str, size: int, sidecar: dict) -> str | None:
    expected = recorded(sidecar, "bytes", name)
    if expected is not None and expected != size:
        return f"{name} is {size} bytes, the sidecar says {expected}"
    return None


def etag_proves_intact(etag: str, sidecar: dict, name: str) -> bool:
    """True when the ETag is the recorded md5 (an S3 single-part object); False proves nothing."""
    md5 = recorded(sidecar, "md5", name)
    return bool(md5) and etag.strip('"').lower() == md5.lower()


def sha256_problem(name: str, actual: str | None, sidecar: dict) -> str | None:
    expected = recorded(sidecar, "sha256", name)
    if actual is None:
        return f"{name} is missing"
    if expected is not None and actual != expected:
        return f"{name} sha256 differs from the sidecar's"
    return None
