"""Checking an item's image reference: a local path, s3://BUCKET/KEY, or an http(s):// URL.

A local path is made absolute (relative to the manifest's folder) and stored canonical, its
symbolic links resolved now, so the worker later opens exactly that path without following any
link. Where local images are confined to a folder (the API's), a path that leaves it is refused.
With `check_files` (`farm validate`, `farm plan`) each local image is opened once, through
`farm.core.localfiles`, and one that cannot be is an error of its item; images are not decoded.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from farm.core.errors import ImageFileError, ManifestIssue, clip, excerpt
from farm.core.localfiles import FolderFds, canonical_path, inside_folder, open_file_checked

REMOTE_SCHEMES = ("s3", "https", "http")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CONTROL = re.compile("[\x00-\x1f]")


@dataclass
class _ImageContext:
    """How local image paths are resolved and checked during one validation."""

    base_dir: Path | None
    local_images: bool
    root: str | None
    check_files: bool
    folders: dict[str, str] = field(default_factory=dict)  # folder -> its real path
    folder_fds: FolderFds = field(default_factory=lambda: FolderFds())  # for check_files

    def __post_init__(self) -> None:
        self.base = os.fspath(self.base_dir) if self.base_dir is not None else "/"

    def absolute(self, value: str) -> str:
        """A local reference as an absolute path: relative to the manifest's folder, `~` and
        file:// understood (as `_absolute`, without its per-call costs: this runs per item)."""
        if value[:7].lower() == "file://":
            value = value[7:]
        if value.startswith("~"):
            value = os.path.expanduser(value)
        return value if value.startswith("/") else os.path.join(self.base, value)

    def canonical(self, path: str) -> str:
        """`path` with every symbolic link resolved (as `os.path.realpath`), resolving each folder
        once: a 100,000-item manifest usually names a handful of folders."""
        folder, _, name = path.rpartition("/")
        if name in ("", ".", "..") or not folder:
            return canonical_path(path)
        real_folder = self.folders.get(folder)
        if real_folder is None:
            real_folder = self.folders[folder] = canonical_path(folder)
        joined = real_folder + name if real_folder.endswith("/") else f"{real_folder}/{name}"
        try:
            is_link = stat.S_ISLNK(os.lstat(joined).st_mode)
        except (OSError, ValueError):  # missing (reported later or at render time), or unencodable
            return joined
        return canonical_path(joined) if is_link else joined


def _is_remote(value: str) -> bool:
    return bool(_SCHEME.match(value)) and value[:7].lower() != "file://"


def _locate_image(value: str, images: _ImageContext) -> tuple[str, ManifestIssue | None]:
    """Where the worker will read the image (a local path canonical, symbolic links resolved
    now), and what is wrong with the reference, if anything."""
    issue = _check_image_reference(value)
    if issue is not None or _is_remote(value):
        return value, issue
    if not images.local_images and images.root is None:
        return value, ManifestIssue(
            "local paths are not accepted here; use s3://BUCKET/KEY or an https:// URL", field="image", value=value
        )
    location = images.canonical(images.absolute(value))
    if images.root is not None and not inside_folder(location, images.root):
        # The folder itself is not named: over the API it is the server's business.
        return location, ManifestIssue(
            "the path leaves the folder this farm reads local images from; " + _path_advice(images),
            field="image",
            value=value,
        )
    if images.check_files:
        try:
            os.close(open_file_checked(location, images.root, images.folder_fds)[0])
        except ImageFileError as error:
            return location, ManifestIssue(_file_issue_message(value, error, images), field="image", value=value)
    return location, None


def _path_advice(images: _ImageContext) -> str:
    if images.root is not None and not images.local_images:
        return "name a file inside it (relative paths are relative to that folder, FARM_API_LOCAL_BASE)"
    return "check the path (relative paths are relative to the manifest's folder)"


def _file_issue_message(value: str, error: ImageFileError, images: _ImageContext) -> str:
    problem = error.problem
    if images.root is not None and not images.local_images:
        problem = problem.replace(images.root.rstrip("/") + "/", "")  # paths inside the image folder, as named
    if problem == "not found":
        return f"image file not found: {excerpt(value)}; {_path_advice(images)}"
    return f"image {excerpt(value)} {problem}; {_path_advice(images)}"


def _check_image_reference(value: str) -> ManifestIssue | None:
    """Check the image reference's form: a local path, s3://BUCKET/KEY, or an http(s) URL."""
    if _CONTROL.search(value):
        return ManifestIssue("the reference contains control characters; fix it", field="image", value=value)
    match = _SCHEME.match(value)
    if not match:
        return None
    scheme = match.group(1).lower()
    if scheme == "file":
        return None
    if scheme not in REMOTE_SCHEMES:
        return ManifestIssue(
            f"{clip(scheme, 40)}:// images are not supported; use a local path, s3://BUCKET/KEY or an https:// URL",
            field="image",
            value=value,
        )
    rest = value[len(match.group(0)) :]
    host, _, path = rest.partition("/")
    if not host or not path:
        what = "s3://BUCKET/KEY" if scheme == "s3" else f"{scheme}://HOST/PATH"
        return ManifestIssue(f"incomplete {scheme}:// reference; write {what}", field="image", value=value)
    return None
