"""Manifest v1: parse YAML, JSON, JSONL or CSV into a validated `JobSpec`, reporting every error.

YAML/JSON hold a whole job (`version: 1`, `name`, `model`, `output`, `defaults`, `items`);
JSONL and CSV hold one item per line or row, and the job-level settings come from the caller
(CLI flags). Unknown fields are errors; every error names the item (index, line, id), the
field, the value and what to do. Problems with one item never hide problems with another.

Hostile input is expected: duplicate keys, non-finite numbers (NaN, Infinity, 1e400) and lone
surrogates are errors of the field that holds them; values echoed in messages are cut to an
excerpt. Local image paths are stored canonical (symbolic links resolved at validation), and
`open_image_file` later opens exactly that path without following any link, so a link swapped
in after validation is refused rather than followed.

Image files are not decoded here: a missing or corrupt image fails its item at render time
without stopping the job (see `farm.media.images`); `check_files=True` (`farm validate`, `farm
plan`) reports missing local images as errors of their items up front.

The modules:

    spec       the types (ItemSpec, ManifestHeader, JobItem, RejectedItem, JobSpec, JobOverrides),
               the constants, and the job's `spec.json` form
    formats    reading YAML, JSON, JSONL and CSV into raw items (duplicate keys, nesting, NaN, ...)
    items      validating items one by one; pydantic errors as issues
    images     checking image references (local, s3://, http(s)://)
    parse      parse_manifest, which puts them together

This package reads no files of its own: `farm.storage.manifest_file.load_manifest` reads a
manifest file (a regular file of bounded size; a FIFO, a device or a directory is refused,
never read) and passes its bytes to `parse_manifest`.
"""

from farm.core.manifest.formats import FORMATS, MAX_NESTING_DEPTH, Format, detect_format, item_rows
from farm.core.manifest.images import REMOTE_SCHEMES
from farm.core.manifest.items import issues_from_validation
from farm.core.manifest.parse import parse_manifest
from farm.core.manifest.spec import (
    DEFAULT_MODEL,
    DEFAULT_OUTPUT,
    HEADER_FIELDS,
    ITEM_FIELDS,
    ITEM_HELP,
    MANIFEST_VERSION,
    PROMPT_MAX_CHARS,
    SPEC_VERSION,
    ItemSpec,
    JobItem,
    JobOverrides,
    JobSpec,
    ManifestHeader,
    RejectedItem,
)

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_OUTPUT",
    "FORMATS",
    "HEADER_FIELDS",
    "ITEM_FIELDS",
    "ITEM_HELP",
    "MANIFEST_VERSION",
    "MAX_NESTING_DEPTH",
    "PROMPT_MAX_CHARS",
    "REMOTE_SCHEMES",
    "SPEC_VERSION",
    "Format",
    "ItemSpec",
    "JobItem",
    "JobOverrides",
    "JobSpec",
    "ManifestHeader",
    "RejectedItem",
    "detect_format",
    "issues_from_validation",
    "item_rows",
    "parse_manifest",
]
