"""A local folder as output storage. Every write lands atomically (temp file, fsync, rename),
so a crash never leaves a half-written video or sidecar under its final name."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from farm.core.errors import StorageError


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

    def _write(self, key: str, fill) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    fill(handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(tmp, self._file_mode)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc.strerror or exc}; check free space and permissions") from exc

    def put_file(self, key: str, local_path: str, content_type: str = "") -> None:
        def fill(handle):
            with open(local_path, "rb") as source:
                shutil.copyfileobj(source, handle, 1024 * 1024)

        self._write(key, fill)

    def put_bytes(self, key: str, data: bytes, content_type: str = "") -> None:
        self._write(key, lambda handle: handle.write(data))

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def location(self, key: str) -> str:
        return str(self._path(key))
