"""A local folder as output storage.

Every write lands atomically (temp file, fsync, rename), so a crash never leaves a half-written
video or sidecar under its final name. Conditional writes are real: `if_none_match` links the
temp file into place (which fails if the name exists), `if_match` compares and replaces under a
lock. An object's etag is its size, modification time in nanoseconds and inode (every write
renames a new file into place, so a rewrite within one clock tick still changes the etag).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from farm.core.errors import CommitConflict, StorageError
from farm.storage.base import ObjectInfo
from farm.storage.digests import sha256_of_reader


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class LocalStore:
    def __init__(self, root: str):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)
        self._file_mode = _default_file_mode()  # mkstemp creates 0600; results should be readable

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise StorageError(f"key {key!r} escapes the output folder {self.root}")
        return path

    @staticmethod
    def _info(key: str, path: Path) -> ObjectInfo:
        return LocalStore._info_of(key, path.stat())

    @staticmethod
    def _info_of(key: str, stat: os.stat_result) -> ObjectInfo:
        return ObjectInfo(key, f"{stat.st_size:x}-{stat.st_mtime_ns:x}-{stat.st_ino:x}", stat.st_size)

    def _error(self, target: Path, exc: OSError) -> StorageError:
        if exc.errno == errno.ENOSPC:
            return StorageError(f"no space left on the device holding {target}; free space or use another output")
        return StorageError(f"cannot write {target}: {exc.strerror or exc}; check free space and permissions")

    @contextmanager
    def _staged(self, target: Path):
        """A temp file next to `target`, written and fsynced by the caller; removed on failure."""
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                yield handle, tmp
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _write(self, key: str, fill, *, if_none_match: bool = False, if_match: str | None = None) -> ObjectInfo:
        target = self._path(key)
        try:
            with self._staged(target) as (handle, tmp):
                fill(handle)
                handle.flush()
                os.fsync(handle.fileno())
                os.chmod(tmp, self._file_mode)
                if if_none_match:
                    try:
                        os.link(tmp, target)  # atomic, and fails if the name exists
                    except FileExistsError:
                        raise CommitConflict(f"{target} already exists (committed by another render)") from None
                elif if_match is not None:
                    with self._lock(target):
                        current = self.head(key)
                        if current is None or current.etag != if_match:
                            raise CommitConflict(f"{target} changed since it was read (another render replaced it)")
                        os.replace(tmp, target)
                else:
                    os.replace(tmp, target)
        except OSError as exc:
            raise self._error(target, exc) from exc
        return self._info(key, target)

    @contextmanager
    def _lock(self, target: Path):
        with open(target.parent / f".{target.name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def put_file(self, key: str, local_path: str, content_type: str = "") -> ObjectInfo:
        def fill(handle):
            with open(local_path, "rb") as source:
                shutil.copyfileobj(source, handle, 1024 * 1024)

        return self._write(key, fill)

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "", *, if_none_match: bool = False, if_match: str | None = None
    ) -> ObjectInfo:
        return self._write(key, lambda handle: handle.write(data), if_none_match=if_none_match, if_match=if_match)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def get_object(self, key: str) -> tuple[bytes, ObjectInfo] | None:
        """The bytes and the etag of the same version (read from one open file), or None."""
        try:
            with open(self._path(key), "rb") as handle:
                return handle.read(), self._info_of(key, os.fstat(handle.fileno()))
        except (FileNotFoundError, IsADirectoryError):
            return None

    def sha256(self, key: str) -> str | None:
        try:
            with open(self._path(key), "rb") as handle:
                return sha256_of_reader(handle.read)
        except (FileNotFoundError, IsADirectoryError):
            return None

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            return self._info(key, path) if path.is_file() else None
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.endswith((".tmp", ".lock")):
                yield self._info(path.relative_to(self.root).as_posix(), path)

    def promote(self, source: str, target: str, *, size: int | None = None) -> ObjectInfo:
        destination = self._path(target)
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)  # deliverables/NAME/ on first use
            os.replace(self._path(source), destination)
        except OSError as exc:
            raise self._error(destination, exc) from exc
        return self._info(target, destination)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def location(self, key: str) -> str:
        return str(self._path(key))

    def presigned_url(self, key: str, expiry_s: int | None = None) -> str:
        return self._path(key).as_uri()

    def check_access(self, prefix: str) -> None:
        probe = f"{prefix.rstrip('/')}/.farm-write-check"
        self.put_bytes(probe, b"ok")
        self.delete(probe)
