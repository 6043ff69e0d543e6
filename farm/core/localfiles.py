"""Local files opened as they were validated, never through a link swapped in later.

A manifest's local image paths are made canonical (links resolved) when it is validated; the
worker opens them here with every path component opened from "/" with O_NOFOLLOW, so a symbolic
link placed afterwards (in a shared folder, after an API submission) is refused, not followed.
Only regular files are opened (a FIFO could block, a device never ends), sizes come from fstat
of the open descriptor, and reads are bounded. Stdlib only, like the rest of farm/core.
"""

from __future__ import annotations

import os
import stat

from farm.core.errors import ImageFileError


def open_nonblocking(path: str) -> int:
    """A read descriptor for `path` that cannot block on a FIFO or become a controlling tty."""
    return os.open(path, os.O_RDONLY | _O_NONBLOCK | _O_CLOEXEC | _O_NOCTTY)


def canonical_path(path: str) -> str:
    """`path` with its links and `..` resolved (absolute when it cannot be resolved)."""
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):  # a NUL or a lone surrogate: reported elsewhere
        return os.path.abspath(path)


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOCTTY = getattr(os, "O_NOCTTY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


def file_kind(mode: int) -> str:
    """What a file is, in words: "a directory", "a named pipe (FIFO)", "a character device"..."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def inside_folder(path: str, root: str) -> bool:
    """Whether canonical `path` is `root` or below it (on a path-segment boundary: /base2 is not
    inside /base)."""
    root = root.rstrip("/") or "/"
    return root == "/" or path == root or path.startswith(root + "/")


def read_at_most(fd: int, limit: int, size_hint: int = 0) -> bytes:
    """Up to `limit` bytes from `fd` (fewer at end of file). `size_hint` (fstat's size) sizes the
    first read, so a small file costs two reads and no big buffer."""
    chunks: list[bytes] = []
    total = 0
    want = min(limit, max(size_hint, 0) + 1)
    while total < limit:
        chunk = os.read(fd, min(limit - total, max(want - total, 1 << 16)))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def open_image_file(path: str, root: str | None = None) -> tuple[int, os.stat_result]:
    """Open a local image for reading without following any symbolic link; returns the
    descriptor (the caller closes it) and its fstat. Raises `ImageFileError`.

    `path` is canonical (validation resolved its links): every component is opened from "/"
    with O_NOFOLLOW, so a link placed after validation is refused instead of followed, and what
    is opened is what was checked. Only a regular file is opened (never a FIFO, which could
    block, or a device); with `root`, the path must lie inside that folder.
    """
    return open_file_checked(path, root, None)


class FolderFds:
    """Descriptors of folders already walked (without following links) during one validation,
    so that checking 100,000 images in a handful of folders does not walk each path again."""

    LIMIT = 64  # descriptors kept open at most

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}

    def get(self, folder: str) -> int | None:
        return self.fds.get(folder)

    def keep(self, folder: str, fd: int) -> bool:
        """Take `fd` over (True), or leave it to the caller when full."""
        if len(self.fds) >= self.LIMIT:
            return False
        self.fds[folder] = fd
        return True

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def open_file_checked(path: str, root: str | None, folders: FolderFds | None) -> tuple[int, os.stat_result]:
    path = os.path.abspath(path)
    if root is not None:
        real_root = canonical_path(os.fspath(root))
        if not inside_folder(path, real_root):
            raise ImageFileError(
                f"image {path} is outside the allowed folder {real_root}; images must stay inside it",
                "image_refused",
                f"is outside the allowed folder {real_root}",
            )
    parts = [part for part in path.split("/") if part]
    if not parts:
        raise _not_a_file(path, "a directory")
    try:
        folder_path = "/" + "/".join(parts[:-1])
        folder = folders.get(folder_path) if folders is not None else None
        owned = folder is None
        if folder is None:
            folder = _open_folder(path, parts)
            owned = not (folders is not None and folders.keep(folder_path, folder))
        try:
            fd = _open_leaf(path, parts, folder)
        finally:
            if owned:
                os.close(folder)
    except ValueError:  # a NUL or an unencodable character in the path
        message = f"image file not found: {path!r}; check the image path"
        raise ImageFileError(message, "image_not_found", "not found") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # swapped between the look and the open
        os.close(fd)
        raise _not_a_regular_file(path, parts, info.st_mode)
    return fd, info


def _open_folder(path: str, parts: list[str]) -> int:
    """The descriptor of the folder holding `path`, each component opened with O_NOFOLLOW."""
    folder = os.open("/", os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    try:
        for depth, part in enumerate(parts[:-1]):
            try:
                inner = os.open(part, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=folder)
            except OSError as exc:
                raise _open_failure(path, parts, depth, folder, exc) from None
            os.close(folder)
            folder = inner
    except BaseException:
        os.close(folder)
        raise
    return folder


def _open_leaf(path: str, parts: list[str], folder: int) -> int:
    name = parts[-1]
    try:
        # Look before opening: a FIFO or a device is refused without being opened at all.
        mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
        if not stat.S_ISREG(mode):
            raise _not_a_regular_file(path, parts, mode)
        return os.open(name, os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC | _O_NOCTTY, dir_fd=folder)
    except OSError as exc:
        raise _open_failure(path, parts, len(parts) - 1, folder, exc) from None


def _open_failure(path: str, parts: list[str], depth: int, folder: int, exc: OSError) -> ImageFileError:
    """Why component `depth` of `path` did not open: a symbolic link, missing, or unreadable."""
    try:
        mode = os.stat(parts[depth], dir_fd=folder, follow_symlinks=False).st_mode
    except (OSError, ValueError):
        mode = None
    if mode is not None and stat.S_ISLNK(mode):
        return _not_a_regular_file(path, parts[: depth + 1], mode)
    if isinstance(exc, PermissionError):
        return ImageFileError(
            f"cannot read image {path}: permission denied; check the file's permissions",
            "image_not_found",
            "cannot be read: permission denied",
        )
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)) or mode is None:
        return ImageFileError(f"image file not found: {path}; check the image path", "image_not_found", "not found")
    reason = exc.strerror or str(exc)
    return ImageFileError(f"cannot read image {path}: {reason}", "image_not_found", f"cannot be read: {reason}")


def _not_a_regular_file(path: str, parts: list[str], mode: int) -> ImageFileError:
    if stat.S_ISLNK(mode):
        link = "/" + "/".join(parts)
        where = "is" if link == path else f"goes through {link}, which is"
        return ImageFileError(
            f"image path {path} {where} a symbolic link, which is not followed when the image is read "
            "(links are resolved when the manifest is validated); validate the manifest again or name the real file",
            "image_refused",
            f"{where} a symbolic link, which is not followed when the image is read",
        )
    return _not_a_file(path, file_kind(mode))


def _not_a_file(path: str, kind: str) -> ImageFileError:
    return ImageFileError(
        f"image path is not a file: {path} is {kind}; name a JPEG, PNG or WEBP file",
        "image_not_found",
        f"is {kind}, not a file",
    )
