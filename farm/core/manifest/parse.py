"""Manifest v1: parse YAML, JSON, JSONL or CSV into a validated `JobSpec`, reporting every error.

YAML/JSON hold a whole job (`version: 1`, `name`, `model`, `output`, `defaults`, `items`);
JSONL and CSV hold one item per line or row, and the job-level settings come from the caller
(CLI flags). Unknown fields are errors; every error names the item (index, line, id), the
field, the value and what to do. Problems with one item never hide problems with another.

Hostile input is expected: a manifest must be a regular file of bounded size (a FIFO, a device
or a directory is refused, never read); duplicate keys, non-finite numbers (NaN, Infinity, 1e400)
and lone surrogates are errors of the field that holds them; values echoed in messages are cut
to an excerpt. Local image paths are stored canonical (symbolic links resolved at validation),
and `open_image_file` later opens exactly that path without following any link, so a link
swapped in after validation is refused rather than followed.

Image files are not decoded here: a missing or corrupt image fails its item at render time
without stopping the job (see `farm.media.images`); `check_files=True` (`farm validate`, `farm
plan`) reports missing local images as errors of their items up front.
"""

from __future__ import annotations

import bisect
import csv
import difflib
import functools
import io
import json
import json.scanner
import math
import os
import re
import stat
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from farm.core.errors import ImageFileError, ManifestError, ManifestIssue, clip, excerpt
from farm.core.ids import RESERVED_ITEM_IDS, derive_item_id, derive_seed, sanitize_id
from farm.core.localfiles import (
    FolderFds,
    canonical_path,
    file_kind,
    inside_folder,
    open_file_checked,
    open_nonblocking,
    read_at_most,
)
from farm.core.ladder import DEFAULT_ORDER
from farm.core.params import FIELD_HELP, PARAM_FIELDS, ParamOverrides, RenderParams, resolve_params

MANIFEST_VERSION = 1
SPEC_VERSION = 2  # spec.json: 2 since local image paths are stored canonical
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # the default of FARM_MAX_MANIFEST_BYTES
MAX_MANIFEST_BYTES_ENV = "FARM_MAX_MANIFEST_BYTES"
MAX_NESTING_DEPTH = 32
PROMPT_MAX_CHARS = 2000
DEFAULT_MODEL = "ali-vilab/i2vgen-xl"
DEFAULT_OUTPUT = "./farm-output"

FORMATS = {
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
}
Format = Literal["yaml", "json", "jsonl", "csv"]

ITEM_HELP = {
    "id": "a name for the item's outputs (letters, digits, '.', '_', '-'); optional",
    "image": "a JPEG, PNG or WEBP image: a path (relative to the manifest's folder, or absolute), "
    "s3://BUCKET/KEY, or an https:// URL on a host the operator allows",
    "prompt": f"a text of 1 to {PROMPT_MAX_CHARS} characters describing the motion",
    "version": f"the number {MANIFEST_VERSION}",
    "name": "the job's name, used as the output folder",
    "model": "a Hugging Face id, a local diffusers folder, or `tiny`",
    "output": "where results go: a local folder (relative to the manifest) or s3://BUCKET/PREFIX",
    "defaults": "a mapping of parameters applied to every item",
    "items": "a list of items, each with at least `image` and `prompt`",
    "degrade_order": "a list ordering memory_savers, bigger_tier, resolution, frames (each at most once)",
    "unfit": "degrade (plan cheaper settings on the largest GPU) or reject (fail the item at plan time)",
    "priority": "an integer from -100 to 100; higher runs first (default 0)",
    "notify_url": "an https:// URL called once when the job ends (on a host the operator allows)",
    **FIELD_HELP,
}


class ItemSpec(ParamOverrides):
    """One image to animate, as the user wrote it."""

    id: StrictStr | None = Field(default=None, min_length=1, max_length=256)
    image: StrictStr = Field(min_length=1, max_length=4096)
    prompt: StrictStr = Field(min_length=1, max_length=PROMPT_MAX_CHARS)


class ManifestHeader(BaseModel):
    """Job-level fields of a YAML/JSON manifest (items are validated one by one)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    name: StrictStr | None = Field(default=None, min_length=1, max_length=200)
    model: StrictStr | None = Field(default=None, min_length=1, max_length=4096)
    output: StrictStr | None = Field(default=None, min_length=1, max_length=4096)
    defaults: ParamOverrides = ParamOverrides()
    degrade_order: list[Literal["memory_savers", "bigger_tier", "resolution", "frames"]] | None = Field(
        default=None, min_length=1, max_length=4
    )
    unfit: Literal["degrade", "reject"] | None = None
    priority: StrictInt | None = Field(default=None, ge=-100, le=100)
    notify_url: StrictStr | None = Field(default=None, min_length=8, max_length=2048)
    items: list[Any] = Field(min_length=1)


ITEM_FIELDS = ("id", "image", "prompt", "preset", *PARAM_FIELDS)
HEADER_FIELDS = tuple(ManifestHeader.model_fields)


@dataclass(frozen=True)
class JobItem:
    """One validated item, ready to render: safe id, resolved image location and parameters."""

    index: int
    id: str
    image: str
    prompt: str
    params: RenderParams
    requested: dict[str, Any]
    line: int | None = None
    given_id: str | None = None

    @property
    def seed(self) -> int:
        return self.params.seed if self.params.seed is not None else derive_seed(self.id)


@dataclass(frozen=True)
class RejectedItem:
    """An item that failed validation (kept only with `skip_invalid`)."""

    index: int
    id: str | None
    issues: list[ManifestIssue]

    @property
    def message(self) -> str:
        return "; ".join(f"{i.field or 'item'}: {i.message}" for i in self.issues)


@dataclass
class JobSpec:
    """A validated job: what to render, with which model, and where the results go."""

    name: str
    model: str
    output: str
    items: list[JobItem]
    rejected: list[RejectedItem] = field(default_factory=list)
    source: str | None = None
    format: str | None = None
    degrade_order: tuple[str, ...] = DEFAULT_ORDER
    unfit: str = "degrade"
    priority: int = 0
    notify_url: str | None = None
    image_root: str | None = None  # local images must stay inside this folder (the API's); None: anywhere

    @property
    def total(self) -> int:
        return len(self.items) + len(self.rejected)

    def to_dict(self) -> dict[str, Any]:
        """The validated job as stored in `spec.json` (what `farm resume` runs again)."""
        return {
            "spec_version": SPEC_VERSION,
            "name": self.name,
            "model": self.model,
            "output": self.output,
            "source": self.source,
            "format": self.format,
            "degrade_order": list(self.degrade_order),
            "unfit": self.unfit,
            "priority": self.priority,
            "notify_url": self.notify_url,
            "image_root": self.image_root,
            "items": [
                {
                    "index": item.index,
                    "id": item.id,
                    "image": item.image,
                    "prompt": item.prompt,
                    "params": item.params.model_dump(),
                    "requested": item.requested,
                    "line": item.line,
                    "given_id": item.given_id,
                }
                for item in self.items
            ],
            "rejected": [
                {"index": r.index, "id": r.id, "issues": [i.to_dict() for i in r.issues]} for r in self.rejected
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, output: str | None = None) -> JobSpec:
        shared: dict[str, RenderParams] = {}  # items with equal parameters share one object

        def params(values: dict) -> RenderParams:
            key = json.dumps(values, sort_keys=True)
            if key not in shared:
                shared[key] = RenderParams.model_validate(values)
            return shared[key]

        # Version 1 stored local image paths as written; read them canonical, as validation now
        # does, since the worker opens them without following links.
        legacy = data.get("spec_version", 1) < 2

        def image(location: str) -> str:
            return canonical_path(location) if legacy and not _is_remote(location) else location

        items = [
            JobItem(
                index=entry["index"],
                id=entry["id"],
                image=image(entry["image"]),
                prompt=entry["prompt"],
                params=params(entry["params"]),
                requested=entry["requested"],
                line=entry.get("line"),
                given_id=entry.get("given_id"),
            )
            for entry in data["items"]
        ]
        rejected = [
            RejectedItem(
                r["index"],
                r["id"],
                [
                    ManifestIssue(
                        i["message"], field=i["field"], item_index=i["item_index"], item_id=i["item_id"],
                        value=i.get("value"), line=i["line"],
                    )
                    for i in r["issues"]
                ],
            )
            for r in data.get("rejected", [])
        ]
        return cls(
            name=data["name"],
            model=data["model"],
            output=output or data["output"],
            items=items,
            rejected=rejected,
            source=data.get("source"),
            format=data.get("format"),
            degrade_order=tuple(data.get("degrade_order") or DEFAULT_ORDER),
            unfit=data.get("unfit", "degrade"),
            priority=data.get("priority", 0),
            notify_url=data.get("notify_url"),
            image_root=data.get("image_root"),
        )


@dataclass(frozen=True)
class JobOverrides:
    """Job-level settings from the caller (CLI flags); they win over the manifest's own."""

    name: str | None = None
    model: str | None = None
    output: str | None = None
    params: ParamOverrides = ParamOverrides()
    degrade_order: tuple[str, ...] | None = None
    unfit: str | None = None


def detect_format(path: Path) -> Format:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        known = ", ".join(sorted(FORMATS))
        raise ManifestError(
            [ManifestIssue(f"unknown manifest extension {excerpt(suffix or '(none)', 20)}; use one of {known}")],
            source=str(path),
        )
    return FORMATS[suffix]  # type: ignore[return-value]


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
    )


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


def parse_manifest(
    data: bytes | str,
    fmt: Format,
    *,
    base_dir: Path,
    default_name: str = "job",
    overrides: JobOverrides | None = None,
    skip_invalid: bool = False,
    source: str | None = None,
    env_model: str | None = None,
    local_images: bool = True,
    image_root: str | Path | None = None,
    check_files: bool = False,
    default_output: str | None = None,
    output_base: str | None = None,
) -> JobSpec:
    """Validate manifest content. Model precedence: overrides, manifest, `env_model`, default.

    Output precedence: overrides, the manifest's (a relative one is relative to `output_base`,
    else to `base_dir`), `default_output`, ./farm-output.

    With `local_images=False` (the HTTP API) images must be s3:// or http(s):// references,
    unless `base_dir` is an operator-approved folder: then local paths must stay inside it, and
    it becomes the job's `image_root`, checked again when the worker opens the file. An explicit
    `image_root` confines local images the same way. With `check_files`, local images that cannot
    be opened are errors of their items.
    """
    overrides = overrides or JobOverrides()
    text = _decode(data, source)
    item_issues: dict[int, list[ManifestIssue]] = {}
    if fmt in ("yaml", "json"):
        document, issues, item_issues = _load_document(text, fmt, source)
        header, raw_items, header_issues = _validate_header(document)
        issues = _merge(issues, header_issues)
        lines: list[int | None] = [None] * len(raw_items)
    elif fmt == "jsonl":
        raw_items, lines, item_issues = _load_jsonl(text)
        header, issues = None, []
    else:
        raw_items, lines, issues, item_issues = _load_csv(text)
        header = None
    if not raw_items and not issues:
        issues.append(ManifestIssue("the manifest has no items; add at least one", field="items"))

    defaults = header.defaults if header else ParamOverrides()
    name_raw = overrides.name or (header.name if header else None) or default_name
    name = sanitize_id(name_raw)
    model = overrides.model or (header.model if header else None) or env_model or DEFAULT_MODEL
    output = _output_location(
        overrides.output, header.output if header else None, output_base or base_dir, default_output or DEFAULT_OUTPUT
    )

    degrade_order = overrides.degrade_order or (header.degrade_order if header else None) or DEFAULT_ORDER
    if len(set(degrade_order)) != len(degrade_order):
        issues.append(ManifestIssue(f"{list(degrade_order)} repeats a step; " + ITEM_HELP["degrade_order"], field="degrade_order"))
    unfit = overrides.unfit or (header.unfit if header else None) or "degrade"

    if image_root is None and not local_images and base_dir is not None:
        image_root = base_dir
    root = canonical_path(os.fspath(image_root)) if image_root is not None else None
    images = _ImageContext(base_dir, local_images, root, check_files)
    try:
        items, rejected = _validate_items(raw_items, lines, defaults, overrides.params, images, item_issues)
    finally:
        images.folder_fds.close()
    if issues or (rejected and not skip_invalid):
        issues.extend(issue for item in rejected for issue in item.issues)
        raise ManifestError(issues, source)
    return JobSpec(
        name=name,
        model=model,
        output=output,
        items=items,
        rejected=rejected,
        source=source,
        format=fmt,
        degrade_order=tuple(degrade_order),
        unfit=unfit,
        priority=(header.priority if header and header.priority is not None else 0),
        notify_url=header.notify_url if header else None,
        image_root=root,
    )


def item_rows(text: str, fmt: Format) -> list[dict]:
    """The raw items of a JSONL or CSV manifest (to send them on as a JSON manifest)."""
    if fmt == "jsonl":
        items, _, item_issues = _load_jsonl(text)
        issues: list[ManifestIssue] = []
    else:
        items, _, issues, item_issues = _load_csv(text)
    problems = issues + [issue for _, group in sorted(item_issues.items()) for issue in group]
    if problems:
        raise ManifestError(problems)
    return items


# --- reading the formats -------------------------------------------------------------------


def _decode(data: bytes | str, source: str | None) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ManifestError(
            [ManifestIssue(f"not valid UTF-8 (byte {exc.start}); save the manifest as UTF-8", line=line)],
            source,
        ) from None


ItemIssues = dict[int, list[ManifestIssue]]  # an item's index -> the problems found in it


def _load_document(text: str, fmt: str, source: str | None) -> tuple[Any, list[ManifestIssue], ItemIssues]:
    """Parse a YAML or JSON document and walk it once. Returns the document, the problems outside
    the items (fatal) and those inside each item (they reject only their item)."""
    try:
        document, duplicates = _load_json(text) if fmt == "json" else _load_yaml(text)
    except RecursionError:
        raise ManifestError([ManifestIssue("the document is nested too deeply; flatten it")], source) from None
    except json.JSONDecodeError as exc:
        raise ManifestError(
            [ManifestIssue(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", line=exc.lineno)],
            source,
        ) from None
    except UnicodeEncodeError as exc:  # the C YAML parser, given text with a lone surrogate
        line = text.count("\n", 0, exc.start) + 1
        issue = ManifestIssue(_SURROGATE_TEXT.format(where=f"at line {line}"), line=line)
        raise ManifestError([issue], source) from None
    except Exception as exc:  # yaml.YAMLError and its subclasses; ValueError for a number too long to convert
        raise ManifestError([_document_error(text, fmt, exc)], source) from None
    fatal, found = _scan(document, duplicates)
    if fatal:
        raise ManifestError([ManifestIssue(fatal)], source)
    if not isinstance(document, dict):
        kind = type(document).__name__ if document is not None else "empty"
        raise ManifestError(
            [ManifestIssue(f"the top level is {kind}; it must be a mapping with `version: 1` and `items`")],
            source,
        )
    issues: list[ManifestIssue] = []
    item_issues: dict[int, list[ManifestIssue]] = {}
    items_are_a_list = isinstance(document.get("items"), list)
    for problem in found:
        path = problem[0]
        if items_are_a_list and len(path) >= 2 and path[0] == "items" and type(path[1]) is int:
            if len(path) > 2:  # a bad item as a whole (`- .nan`) is reported as "not a mapping"
                item_issues.setdefault(path[1], []).append(_found_issue(problem, path[2:], item_index=path[1]))
        else:
            issues.append(_found_issue(problem, path))
    return document, issues, item_issues


def _document_error(text: str, fmt: str, exc: Exception) -> ManifestIssue:
    long_number = _LONG_NUMBER.search(text) if isinstance(exc, ValueError) else None
    if long_number:
        line = text.count("\n", 0, long_number.start()) + 1
        return ManifestIssue(_long_number_message(len(long_number.group())), line=line)
    if fmt == "json":
        return ManifestIssue(f"invalid JSON: {excerpt(str(exc), 200)}")
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(exc, "problem", None) or str(exc)
    where = f" at line {line} column {mark.column + 1}" if mark is not None else ""
    return ManifestIssue(f"invalid YAML{where}: {problem[:200]}", line=line)


def _long_number_message(digits: int) -> str:
    return f"a number has {digits} digits, more than can be read; use a number within the field's range"


# Python refuses to convert integers longer than this (a guard against quadratic conversions).
_LONG_NUMBER = re.compile(r"\d{%d,}" % (sys.get_int_max_str_digits() + 1))
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_TEXT = (
    "the text contains a lone surrogate {where}, which is not valid Unicode; "
    "fix the \\u escape or save the manifest as UTF-8"
)


@functools.cache
def _yaml_loader() -> type:
    """The C safe loader when PyYAML has it, noting repeated keys with their lines (YAML itself
    keeps the last value silently)."""
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class StrictLoader(base):  # type: ignore[misc, valid-type]
        def __init__(self, stream: str):
            super().__init__(stream)
            self.duplicates: dict[int, tuple[dict, list[tuple[Any, list[int | None]]]]] = {}

        def construct_yaml_map(self, node):  # noqa: ANN001 - PyYAML's protocol
            data: dict = {}
            yield data
            explicit = node.value  # merge keys (<<) are removed from this list in place, then prepended
            value = self.construct_mapping(node)
            data.update(value)
            if len(value) < len(explicit) or node.value is not explicit:
                repeated = self._repeated(explicit)
                if repeated:  # keep the mapping referenced: its id stays unique until the walk
                    self.duplicates[id(data)] = (data, repeated)

        def _repeated(self, pairs: list) -> list[tuple[Any, list[int | None]]]:
            lines: dict[Any, list[int | None]] = {}
            for key_node, _ in pairs:
                key = self.construct_object(key_node)  # already built: taken from the cache
                try:
                    lines.setdefault(key, []).append(key_node.start_mark.line + 1)
                except TypeError:  # unhashable; construct_mapping has refused it already
                    continue
            return [(key, found) for key, found in lines.items() if len(found) > 1]

    StrictLoader.add_constructor("tag:yaml.org,2002:map", StrictLoader.construct_yaml_map)
    return StrictLoader


def _load_yaml(text: str) -> tuple[Any, dict]:
    loader = _yaml_loader()(text)
    try:
        return loader.get_single_data(), loader.duplicates
    finally:
        loader.dispose()


def _pairs_hook(duplicates: dict) -> Callable[[list], dict]:
    """json's object_pairs_hook: builds each object as json would, and notes repeated keys (the
    parser stays the C one; the lines are found later, only when a key did repeat)."""

    def mapping_of(pairs: list) -> dict:
        mapping = dict(pairs)
        if len(mapping) < len(pairs):
            counts: dict[str, int] = {}
            for key, _ in pairs:
                counts[key] = counts.get(key, 0) + 1
            duplicates[id(mapping)] = (mapping, [(k, [None] * n) for k, n in counts.items() if n > 1])
        return mapping

    return mapping_of


def _load_json(text: str) -> tuple[Any, dict]:
    duplicates: dict = {}
    document = json.loads(text, object_pairs_hook=_pairs_hook(duplicates))
    if duplicates:
        return _json_with_key_lines(text)
    return document, duplicates


def _json_with_key_lines(text: str) -> tuple[Any, dict]:
    """Parse again with json's pure-Python scanner, noting where each key starts, to say on which
    lines a key repeats. Slower than the C parser: only done when a key did repeat."""
    duplicates: dict = {}
    newlines: list[int] = []
    whitespace = json.decoder.WHITESPACE.match
    scanstring = json.decoder.scanstring
    error = json.JSONDecodeError

    def line_of(position: int) -> int:
        if not newlines:
            newlines.extend(m.start() for m in re.finditer("\n", text))
            newlines.append(len(text))
        return bisect.bisect_left(newlines, position) + 1

    def parse_object(s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo=None):  # noqa: ANN001
        s, end = s_and_end
        pairs: list[tuple[str, Any]] = []
        starts: list[int] = []
        end = whitespace(s, end).end()
        if s[end : end + 1] == "}":
            return {}, end + 1
        while True:
            if s[end : end + 1] != '"':
                raise error("Expecting property name enclosed in double quotes", s, end)
            starts.append(end)
            key, end = scanstring(s, end + 1, strict)
            end = whitespace(s, end).end()
            if s[end : end + 1] != ":":
                raise error("Expecting ':' delimiter", s, end)
            end = whitespace(s, end + 1).end()
            try:
                value, end = scan_once(s, end)
            except StopIteration as stop:
                raise error("Expecting value", s, stop.value) from None
            pairs.append((key, value))
            end = whitespace(s, end).end()
            delimiter = s[end : end + 1]
            end += 1
            if delimiter == "}":
                break
            if delimiter != ",":
                raise error("Expecting ',' delimiter", s, end - 1)
            end = whitespace(s, end).end()
        mapping = dict(pairs)
        if len(mapping) < len(pairs):
            where: dict[str, list[int]] = {}
            for (key, _), start in zip(pairs, starts):
                where.setdefault(key, []).append(start)
            repeated = [(k, [line_of(p) for p in found]) for k, found in where.items() if len(found) > 1]
            duplicates[id(mapping)] = (mapping, repeated)
        return mapping, end

    decoder = json.JSONDecoder()
    decoder.parse_object = parse_object  # type: ignore[assignment]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    return decoder.decode(text), duplicates


_CONTAINERS = (dict, list, tuple, set, frozenset)  # tuples and sets: YAML's !!omap, !!pairs, !!set
_NESTING = f"the document is nested more than {MAX_NESTING_DEPTH} levels deep; flatten it"
_ALIASES = "YAML anchors and aliases (&name / *name) are not allowed in manifests; write values out"


def _scan(document: Any, duplicates: dict | None) -> tuple[str | None, list[tuple]]:
    """One walk of a loaded document, every node once, with an explicit stack (no recursion).

    Refuses (the first string) shared nodes, which YAML aliases make (the 'billion laughs' bomb),
    and absurd nesting. Finds, with their paths, what must not pass on: NaN and infinite numbers,
    lone surrogates in keys and strings (not valid Unicode: they cannot be written as UTF-8), and
    the repeated keys the parser noted in `duplicates`. Each finding is (path, kind, value, lines).
    """
    seen: set[int] = set()
    found: list[tuple] = []
    stack: list[tuple[Any, int, tuple]] = [(document, 0, ())]
    while stack:
        node, depth, path = stack.pop()
        if not isinstance(node, _CONTAINERS):
            continue
        if depth > MAX_NESTING_DEPTH:
            return _NESTING, found
        if id(node) in seen:
            return _ALIASES, found
        seen.add(id(node))
        if isinstance(node, dict):
            if duplicates and id(node) in duplicates:
                found.extend((path + (key,), "duplicate", key, lines) for key, lines in duplicates[id(node)][1])
            children: Any = node.items()
        elif isinstance(node, (list, tuple)):
            children = enumerate(node)
        else:
            children = (("?", child) for child in node)
        nested = []
        for key, child in children:
            if type(key) is str and not key.isascii() and _SURROGATE.search(key):
                found.append((path + (key,), "surrogate key", key, None))
            kind = type(child)
            if kind is str:
                if not child.isascii() and _SURROGATE.search(child):
                    found.append((path + (key,), "surrogate", child, None))
            elif kind is float:
                if not math.isfinite(child):
                    found.append((path + (key,), "not finite", child, None))
            elif isinstance(child, _CONTAINERS):
                nested.append((child, depth + 1, path + (key,)))
        stack.extend(reversed(nested))  # depth first, in document order
    return None, found


def _plain(item: Any) -> bool:
    """Whether an item needs no walk: a flat mapping of ASCII keys and text, and finite numbers
    (most JSONL lines and every CSV row; checking this is twice as fast as the walk)."""
    if type(item) is not dict:
        return False
    for key, value in item.items():
        kind = type(value)
        if type(key) is not str or not key.isascii():
            return False
        if kind is str:
            if not value.isascii():
                return False
        elif kind is float:
            if not math.isfinite(value):
                return False
        elif kind is not int and kind is not bool and value is not None:
            return False
    return True


def _found_issue(
    problem: tuple, path: tuple, *, item_index: int | None = None, line: int | None = None
) -> ManifestIssue:
    """The issue for one finding of `_scan`; `path` is relative to the item when in one."""
    _, kind, value, lines = problem
    field_path = ".".join(str(part) for part in path) or None
    name = next((part for part in reversed(path) if isinstance(part, str)), "")
    if kind == "duplicate":
        count = len(lines)
        times = "twice" if count == 2 else f"{count} times"
        known = [n for n in lines if n is not None]
        distinct = sorted(set(known))
        where = ""
        if len(known) == count:  # JSONL lines say no more than the item's own line
            where = f" (line {distinct[0]})" if len(distinct) == 1 else f" (lines {_and(distinct)})"
        message = f"key {excerpt(value)} appears {times} in this mapping{where}; keep one"
        line = known[-1] if known else line
        return ManifestIssue(message, field=field_path, item_index=item_index, value=value, line=line)
    if kind == "not finite":
        help_text = ITEM_HELP.get(name, "a finite number")
        if math.isnan(value):
            message = f"NaN is not a number; use {help_text}"
        else:
            sign = "-" if value < 0 else ""
            message = (
                f"{sign}Infinity is not a finite number (a literal too big for a float, like 1e400, "
                f"becomes Infinity); use {help_text}"
            )
    else:
        surrogate = _SURROGATE.search(value).group().encode("utf-8", "backslashreplace").decode()
        what = f"the key {excerpt(value)}" if kind == "surrogate key" else excerpt(value)
        message = _SURROGATE_TEXT.format(where=f"({surrogate})").replace("the text", what, 1)
    return ManifestIssue(message, field=field_path, item_index=item_index, value=value, line=line)


def _and(numbers: list[int]) -> str:
    """"3, 7 and 9"; a long list keeps its first and last numbers ("1, 2, 3, 4, ... and 900")."""
    words = [str(n) for n in numbers]
    if len(words) > 6:
        words = [*words[:4], "...", words[-1]]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _merge(first: list[ManifestIssue], more: list[ManifestIssue]) -> list[ManifestIssue]:
    """`first` and those of `more` about other fields (a NaN is reported once, by the walk)."""
    fields = {issue.field for issue in first if issue.field is not None}
    return first + [issue for issue in more if issue.field is None or issue.field not in fields]


def _validate_header(document: dict) -> tuple[ManifestHeader | None, list[Any], list[ManifestIssue]]:
    issues: list[ManifestIssue] = []
    try:
        header = ManifestHeader.model_validate(document)
        return header, header.items, issues
    except ValidationError as exc:
        issues.extend(issues_from_validation(exc, known=HEADER_FIELDS, skip_kinds=_WALKED_KINDS))
    raw_items = document.get("items")
    if not isinstance(raw_items, list):
        raw_items = []
    return None, raw_items, issues


def _load_jsonl(text: str) -> tuple[list[Any], list[int | None], ItemIssues]:
    """One item per line; a line that is not valid (not JSON, a repeated key, a NaN) is an issue
    of its item only, so that `skip_invalid` still runs the others."""
    items: list[Any] = []
    lines: list[int | None] = []
    item_issues: dict[int, list[ManifestIssue]] = {}
    duplicates: dict = {}
    # One decoder for all lines (json.loads would build one per line). Only "\n" ends a line:
    # str.splitlines() would also split at U+2028 and other characters
    # that JSON allows inside strings.
    decoder = json.JSONDecoder(object_pairs_hook=_pairs_hook(duplicates))
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        index = len(items)
        duplicates.clear()
        try:
            item = decoder.decode(line)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            item = None
            problems = [ManifestIssue(_json_line_error(exc, line), item_index=index, line=number)]
        else:
            fatal, found = (None, []) if not duplicates and _plain(item) else _scan(item, duplicates)
            problems = [ManifestIssue(fatal, item_index=index, line=number)] if fatal else []
            problems += [_found_issue(f, f[0], item_index=index, line=number) for f in found]
        items.append(item)
        lines.append(number)
        if problems:
            item_issues[index] = problems
    return items, lines, item_issues


def _json_line_error(exc: Exception, line: str) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON at column {exc.colno}: {exc.msg}"
    if isinstance(exc, RecursionError):
        return "invalid JSON: nested too deeply; flatten it"
    long_number = _LONG_NUMBER.search(line)
    return _long_number_message(len(long_number.group())) if long_number else f"invalid JSON: {excerpt(str(exc), 200)}"


# CSV cells are text; numbers are parsed here so that the strict types see real numbers.
_INT_FIELDS = ("frames", "fps", "steps", "seed")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _csv_value(name: str, cell: str) -> Any:
    cell = cell.strip()
    if name in _INT_FIELDS and re.fullmatch(r"[+-]?\d+", cell) and len(cell) <= 20:
        return int(cell)
    if name == "guidance_scale" and _NUMBER.fullmatch(cell):
        return float(cell)  # 1e400 becomes inf: reported by the walk
    return cell


def _load_csv(text: str) -> tuple[list[Any], list[int | None], list[ManifestIssue], ItemIssues]:
    issues: list[ManifestIssue] = []
    item_issues: dict[int, list[ManifestIssue]] = {}
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return [], [], issues, item_issues
    except csv.Error as exc:
        return [], [], [ManifestIssue(f"invalid CSV header: {exc}", line=1)], item_issues
    for column in header:
        if column not in ITEM_FIELDS:
            issues.append(ManifestIssue(_unknown_field_message(column, ITEM_FIELDS), field=column, line=1))
    duplicates = sorted({c for c in header if header.count(c) > 1})
    for column in duplicates:
        issues.append(ManifestIssue("the column appears more than once in the header", field=column, line=1))
    known = [c if c in ITEM_FIELDS else None for c in header]
    items: list[Any] = []
    lines: list[int | None] = []
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(header):
                issues.append(
                    ManifestIssue(
                        f"the row has {len(row)} cells but the header has {len(header)}; quote cells with commas",
                        item_index=len(items),
                        line=line,
                    )
                )
            item = {n: _csv_value(n, cell) for n, cell in zip(known, row) if n and cell.strip()}
            found = [] if _plain(item) else _scan(item, None)[1]
            if found:
                item_issues[len(items)] = [_found_issue(f, f[0], item_index=len(items), line=line) for f in found]
            items.append(item)
            lines.append(line)
    except csv.Error as exc:
        issues.append(ManifestIssue(f"invalid CSV: {exc}", line=reader.line_num))
    return items, lines, issues, item_issues


# --- validating items ------------------------------------------------------------------------


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


def _validate_items(
    raw_items: list[Any],
    lines: list[int | None],
    defaults: ParamOverrides,
    cli_params: ParamOverrides,
    images: _ImageContext,
    item_issues: ItemIssues | None = None,
) -> tuple[list[JobItem], list[RejectedItem]]:
    items: list[JobItem] = []
    rejected: list[RejectedItem] = []
    first_index_of: dict[str, int] = {}
    params_cache: dict[tuple, RenderParams] = {}  # many items share the same overrides
    item_issues = item_issues or {}
    for index, raw in enumerate(raw_items):
        line = lines[index] if index < len(lines) else None
        raw_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
        found = item_issues.get(index)
        early = [replace(i, item_id=raw_id, line=line if i.line is None else i.line) for i in found or ()]
        if raw is None and early:  # a line that was not JSON
            rejected.append(RejectedItem(index, None, early))
            continue
        if not isinstance(raw, dict):
            issue = ManifestIssue(
                f"an item must be a mapping with `image` and `prompt`, not {_kind_of(raw)}",
                item_index=index,
                line=line,
                value=raw,
            )
            rejected.append(RejectedItem(index, None, [issue, *early]))
            continue
        try:
            spec = ItemSpec.model_validate(raw)
        except ValidationError as exc:
            issues = _merge(
                early,
                issues_from_validation(
                    exc, known=ITEM_FIELDS, item_index=index, item_id=raw_id, line=line, skip_kinds=_WALKED_KINDS
                ),
            )
            image = raw.get("image")
            if isinstance(image, str) and not any(i.field == "image" for i in issues):
                _, extra = _locate_image(image, images)
                if extra:  # report it now too: every error at once
                    issues.append(replace(extra, item_index=index, item_id=raw_id, line=line))
            rejected.append(RejectedItem(index, raw_id, issues))
            if raw_id:  # so that a later item reusing this id is still reported
                first_index_of.setdefault(sanitize_id(raw_id), index)
            continue
        issues = []
        location, image_issue = _locate_image(spec.image, images)
        if image_issue:
            issues.append(image_issue)
        requested = spec.explicit()
        if spec.preset is not None:
            requested = {"preset": spec.preset, **requested}
        cache_key = tuple(requested.items())
        params = params_cache.get(cache_key)
        if params is None:
            params = params_cache[cache_key] = resolve_params(defaults, cli_params, spec)
        # The id derives from the path as written, so it does not change with where links point.
        item_id = sanitize_id(spec.id) if spec.id is not None else derive_item_id(spec.image, spec.prompt, requested)
        if item_id in RESERVED_ITEM_IDS:
            issues.append(
                ManifestIssue(
                    f"id {item_id!r} is reserved for the job's own files ({item_id}.json); choose another id",
                    field="id",
                    value=spec.id,
                )
            )
        elif item_id in first_index_of:
            first = first_index_of[item_id]
            what = "id" if spec.id is not None else "image, prompt and parameters (so the same derived id)"
            issues.append(
                ManifestIssue(
                    f"duplicates the {what} of items[{first}]; give each item a unique id",
                    field="id",
                    value=spec.id,
                )
            )
        if issues or early:
            located = [
                replace(i, field=i.field or "image", item_index=index, item_id=raw_id, line=line) for i in issues
            ]
            rejected.append(RejectedItem(index, raw_id, _merge(early, located)))
            continue
        first_index_of[item_id] = index
        items.append(
            JobItem(
                index=index,
                id=item_id,
                image=location,
                prompt=spec.prompt,
                params=params,
                requested=requested,
                line=line,
                given_id=spec.id,
            )
        )
    return items, rejected


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CONTROL = re.compile("[\x00-\x1f]")


REMOTE_SCHEMES = ("s3", "https", "http")


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


def _output_location(from_caller: str | None, from_manifest: str | None, base: str | Path | None, default: str) -> str:
    """The job's output: the caller's (relative to the working folder), else the manifest's
    (relative to `base`: the manifest's folder, or for the API the farm's default output), else
    `default`. A local folder becomes absolute and normalised without a trailing slash
    (`renders/` must not give `renders//items`); an s3:// URI only loses its trailing slashes."""
    if from_caller:
        return _normalise_output(from_caller, os.getcwd())
    if from_manifest:
        return _normalise_output(from_manifest, os.fspath(base) if base is not None else os.getcwd())
    return _normalise_output(default, os.getcwd())


def _normalise_output(value: str, base: str) -> str:
    if value[:5].lower() == "s3://":
        return value[:5] + value[5:].rstrip("/")
    if "://" in value:
        return value  # another scheme: the storage layer says whether it knows it
    if base[:5].lower() == "s3://" and not os.path.isabs(os.path.expanduser(value)):
        return _normalise_output(f"{base.rstrip('/')}/{value}", base)  # `..` is refused later, not resolved
    return os.path.abspath(os.path.join(base, os.path.expanduser(value)))


# --- error messages --------------------------------------------------------------------------

# Validation errors the walk (`_scan`) reports better: lone surrogates, with their field.
_WALKED_KINDS = ("string_unicode",)


def _unknown_field_message(name: str, known: tuple[str, ...]) -> str:
    # difflib is quadratic in the worst case: no suggestions for absurdly long names.
    close = difflib.get_close_matches(name, known, n=1) if len(name) <= 64 else []
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown field {excerpt(name, 40)}; {hint}allowed fields are {', '.join(known)}"


def issues_from_validation(
    exc: ValidationError,
    *,
    known: tuple[str, ...],
    item_index: int | None = None,
    item_id: str | None = None,
    line: int | None = None,
    skip_kinds: tuple[str, ...] = (),
) -> list[ManifestIssue]:
    issues = []
    for error in exc.errors(include_url=False):
        kind = error["type"]
        if kind in skip_kinds:
            continue
        loc = [str(part) for part in error["loc"]]
        name = loc[-1] if loc and loc[0] == "defaults" else (loc[0] if loc else None)
        field_path = ".".join(loc) or None
        value = error.get("input")
        if kind == "extra_forbidden":
            allowed = ("preset", *PARAM_FIELDS) if loc and loc[0] == "defaults" else known
            message = _unknown_field_message(name or "?", allowed)
        elif kind == "missing":
            message = f"required; set it to {ITEM_HELP.get(name or '', 'a value')}"
        else:
            help_text = ITEM_HELP.get(name or "")
            reason = error["msg"].replace("Input should", "it should").replace("String should", "it should")
            message = f"{excerpt(value)} is not allowed: {reason[:200]}"
            if help_text:
                message += f"; use {help_text}"
        issues.append(
            ManifestIssue(message, field=field_path, item_index=item_index, item_id=item_id, value=value, line=line)
        )
    return issues
