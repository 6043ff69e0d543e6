"""Reading a manifest file: the edge between the file system and `farm.core.manifest`.

A manifest must be a regular file (a symbolic link to one is fine) of bounded size
(`max_bytes`, the FARM_MAX_MANIFEST_BYTES setting, 64 MiB by default): a FIFO, a device, a
socket or a directory is refused and never read, and what is checked (fstat) is what is read.
`load_manifest` reads the file, names its format from the extension and hands the bytes to
`farm.core.manifest.parse_manifest`, with the manifest's folder as the base of relative paths.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from farm.core.errors import ManifestError, ManifestIssue, excerpt
from farm.core.localfiles import file_kind, open_nonblocking, read_at_most
from farm.core.manifest import FORMATS, JobOverrides, JobSpec, detect_format, parse_manifest
from farm.models.registry import family_of_ref

MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # the default of FARM_MAX_MANIFEST_BYTES
MAX_MANIFEST_BYTES_ENV = "FARM_MAX_MANIFEST_BYTES"


def load_manifest(
    path: str | Path,
    overrides: JobOverrides | None = None,
    *,
    skip_invalid: bool = False,
    env_model: str | None = None,
    max_bytes: int | None = None,
    check_files: bool = False,
) -> JobSpec:
    """Read and validate a manifest file. Raises `ManifestError` listing every problem.

    The file must be a regular file (a symbolic link to one is fine) of at most `max_bytes`
    (default FARM_MAX_MANIFEST_BYTES's, 64 MiB). With `check_files`, local images that cannot be opened are
    errors of their items (`farm validate`, `farm plan`); without, they fail at render time.
    """
    path = Path(path)
    try:
        fmt = detect_format(path)
    except ManifestError:
        _refuse_if_not_regular(path)  # "is a directory" says more than "unknown extension"
        raise
    data = read_manifest_file(path, MAX_MANIFEST_BYTES if max_bytes is None else max_bytes)
    return parse_manifest(
        data,
        fmt,
        base_dir=path.resolve().parent,
        default_name=path.stem,
        overrides=overrides,
        skip_invalid=skip_invalid,
        source=str(path),
        env_model=env_model,
        check_files=check_files,
        family_of=family_of_ref,  # local model folders are read for their family
        encoders=_encoders_when_needed(data, overrides),
    )


def _encoders_when_needed(data: bytes, overrides: JobOverrides | None) -> set[str] | None:
    """Ask ffmpeg for its encoders only when the manifest or the flags may name deliverables."""
    if b"deliverable" not in data and not (overrides and overrides.deliverables):
        return None
    from farm.media.deliverables import encoders_if_known

    return encoders_if_known()


def read_manifest_file(path: str | Path, limit: int) -> bytes:
    """The bytes of a manifest file, refused unless it is a regular file of at most `limit` bytes.

    One descriptor, opened without blocking (a FIFO would wait for a writer forever), checked
    with fstat, and read (at most limit + 1 bytes): what is checked is what is read, and a device
    such as /dev/zero, even behind a symbolic link, is never read at all.
    """
    source = str(path)
    try:
        fd = open_nonblocking(path)
    except OSError as exc:
        raise ManifestError([ManifestIssue(_manifest_open_failure(path, exc))], source) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ManifestError([ManifestIssue(_not_a_manifest_file(path, info.st_mode))], source)
        if info.st_size > limit:
            raise ManifestError([ManifestIssue(_manifest_too_big(info.st_size, limit))], source)
        data = read_at_most(fd, limit + 1, info.st_size)
    except OSError as exc:  # EIO and the like, while reading
        raise ManifestError([ManifestIssue(f"cannot read the manifest: {exc.strerror or exc}")], source) from None
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew after fstat, or reports no size (files under /proc)
        raise ManifestError([ManifestIssue(_manifest_too_big(None, limit))], source)
    return data


def _refuse_if_not_regular(path: Path) -> None:
    try:
        mode = os.stat(path).st_mode  # stat never blocks, not even on a FIFO
    except (OSError, ValueError):
        return
    if not stat.S_ISREG(mode):
        raise ManifestError([ManifestIssue(_not_a_manifest_file(path, mode))], str(path))


def _manifest_open_failure(path: str | Path, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "cannot read the manifest: no such file; check the path"
    if isinstance(exc, PermissionError):
        return "cannot read the manifest: permission denied; check the file's permissions"
    try:  # a socket cannot be opened (ENXIO): say what it is
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        return _not_a_manifest_file(path, mode)
    return f"cannot read the manifest: {exc.strerror or exc}; check the path"


def _not_a_manifest_file(path: str | Path, mode: int) -> str:
    return (
        f"{excerpt(str(path))} is {file_kind(mode)}; a manifest must be a regular file "
        f"({', '.join(sorted(FORMATS))})"
    )


def _manifest_too_big(size: int | None, limit: int) -> str:
    what = f"the file is {size} bytes" if size is not None else "the file is larger than it said"
    return f"{what}, over the {limit}-byte limit ({MAX_MANIFEST_BYTES_ENV}); split the job"
