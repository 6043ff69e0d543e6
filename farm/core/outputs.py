"""Where a job submitted over the API may write: output URIs compared as paths, not strings.

A job writes under OUTPUT/NAME. The service confines OUTPUT to the prefixes its operator allows
(by default its own default output only) and keeps it apart from its state folder, so a token
holder can neither write elsewhere on the server nor plant files the job registry would read.
Comparisons are made on normalised forms at path-segment boundaries (`s3://renders/api` holds
`s3://renders/api/x`, not `s3://renders/api2`). Local paths are resolved (symlinks, `..`) by
the caller before they get here (`farm.storage.canonical_output`); this module is pure.
"""

from __future__ import annotations

import posixpath
import re

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class OutputRefused(ValueError):
    """An output URI that is malformed or outside what is allowed; the message says why."""


def normalise_s3(uri: str) -> str:
    """`s3://bucket/prefix` with the prefix's empty and trailing segments dropped; `.` and
    `..` segments are refused (S3 keeps them literally, some S3-compatible servers resolve them)."""
    rest = uri[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.fullmatch(bucket or "") or ".." in bucket:
        raise OutputRefused(f"{bucket!r} is not a valid bucket name")
    segments = [segment for segment in prefix.split("/") if segment]
    if any(segment in (".", "..") for segment in segments):
        raise OutputRefused("`.` and `..` are not allowed in an s3:// output")
    if any(ord(ch) < 32 for ch in prefix):
        raise OutputRefused("control characters are not allowed in an output")
    return "/".join(["s3:/", bucket, *segments])


def normalise_local(path: str) -> str:
    """An absolute local path, lexically normalised (the caller resolves symlinks first)."""
    if not posixpath.isabs(path):
        raise OutputRefused("a local output must be an absolute path")
    if "\x00" in path:
        raise OutputRefused("NUL is not allowed in an output")
    return posixpath.normpath(path)


def normalise(uri: str) -> str:
    if uri.startswith("s3://"):
        return normalise_s3(uri)
    if "://" in uri and not uri.startswith("file://"):
        raise OutputRefused(f"{uri.split('://', 1)[0]}:// outputs are not supported; use a folder or s3://BUCKET/PREFIX")
    return normalise_local(uri.removeprefix("file://"))


def contains(prefix: str, uri: str) -> bool:
    """Whether normalised `uri` is `prefix` or lies under it (segment boundary)."""
    return uri == prefix or uri.startswith(prefix.rstrip("/") + "/")


def overlaps(a: str, b: str) -> bool:
    """Whether one normalised location holds the other."""
    return contains(a, b) or contains(b, a)


def check_allowed(output: str, allowed: list[str]) -> None:
    """Raise OutputRefused unless normalised `output` lies under one of the normalised `allowed`."""
    if not any(contains(prefix, output) for prefix in allowed):
        raise OutputRefused(f"it is outside the outputs this farm allows ({', '.join(allowed) or 'none'})")
