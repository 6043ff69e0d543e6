"""Output storage: where videos, thumbnails, sidecars and job records go (a folder or S3)."""

from __future__ import annotations

from farm.core.errors import StorageError
from farm.storage.base import ObjectInfo, OutputStore
from farm.storage.local import LocalStore


def open_store(uri: str, config=None) -> OutputStore:
    """The store behind an output URI: `s3://bucket/prefix`, or a local folder (`file://` ok)."""
    if uri.startswith("s3://"):
        from farm.storage.s3 import S3Store

        return S3Store(uri, config)
    if "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://", 1)[0]
        raise StorageError(f"output {uri!r}: {scheme}:// is not supported; use a local folder or s3://BUCKET/PREFIX")
    return LocalStore(uri.removeprefix("file://"))


def canonical_output(uri: str) -> str:
    """An output URI in the form that confinement checks compare (`farm.core.outputs`): an
    s3:// URI normalised, a local folder made absolute with its symlinks and `..` resolved.
    Raises `OutputRefused` (a ValueError) for malformed URIs."""
    import os

    from farm.core.outputs import normalise

    if uri.startswith("s3://") or ("://" in uri and not uri.startswith("file://")):
        return normalise(uri)
    path = uri.removeprefix("file://")
    return normalise(os.path.realpath(os.path.expanduser(path)) if os.path.isabs(os.path.expanduser(path)) else path)


__all__ = ["LocalStore", "ObjectInfo", "OutputStore", "canonical_output", "open_store"]
