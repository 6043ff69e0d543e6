"""Output storage: where videos, thumbnails, sidecars and job records go."""

from __future__ import annotations

from farm.storage.base import OutputStore
from farm.storage.local import LocalStore


def open_store(uri: str) -> OutputStore:
    """The store behind an output URI (a local folder; `file://` prefixes are accepted)."""
    if "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://", 1)[0]
        raise ValueError(f"output {uri!r}: {scheme}:// outputs are not supported; use a local folder")
    return LocalStore(uri.removeprefix("file://"))


__all__ = ["LocalStore", "OutputStore", "open_store"]
