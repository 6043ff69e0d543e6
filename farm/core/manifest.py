"""Manifest v1: parse YAML, JSON, JSONL or CSV into a validated `JobSpec`, reporting every error.

YAML/JSON hold a whole job (`version: 1`, `name`, `model`, `output`, `defaults`, `items`);
JSONL and CSV hold one item per line or row, and the job-level settings come from the caller
(CLI flags). Unknown fields are errors; every error names the item (index, line, id), the
field, the value and what to do. Problems with one item never hide problems with another.

Image files are not opened here: a missing or corrupt image fails its item at render time
without stopping the job (see `farm.media.images`).
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from farm.core.errors import ManifestError, ManifestIssue
from farm.core.ids import RESERVED_ITEM_IDS, derive_item_id, derive_seed, sanitize_id
from farm.core.ladder import DEFAULT_ORDER
from farm.core.params import FIELD_HELP, PARAM_FIELDS, ParamOverrides, RenderParams, resolve_params

MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
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

    @property
    def total(self) -> int:
        return len(self.items) + len(self.rejected)

    def to_dict(self) -> dict[str, Any]:
        """The validated job as stored in `spec.json` (what `farm resume` runs again)."""
        return {
            "spec_version": 1,
            "name": self.name,
            "model": self.model,
            "output": self.output,
            "source": self.source,
            "format": self.format,
            "degrade_order": list(self.degrade_order),
            "unfit": self.unfit,
            "priority": self.priority,
            "notify_url": self.notify_url,
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

        items = [
            JobItem(
                index=entry["index"],
                id=entry["id"],
                image=entry["image"],
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
            [ManifestIssue(f"unknown manifest extension {suffix or '(none)'!r}; use one of {known}")],
            source=str(path),
        )
    return FORMATS[suffix]  # type: ignore[return-value]


def load_manifest(
    path: str | Path,
    overrides: JobOverrides | None = None,
    *,
    skip_invalid: bool = False,
    env_model: str | None = None,
) -> JobSpec:
    """Read and validate a manifest file. Raises `ManifestError` listing every problem."""
    path = Path(path)
    fmt = detect_format(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ManifestError([ManifestIssue(f"cannot read the manifest: {exc.strerror}; check the path")], str(path))
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError(
            [ManifestIssue(f"the file is {size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit; split the job")],
            str(path),
        )
    data = path.read_bytes()
    return parse_manifest(
        data,
        fmt,
        base_dir=path.resolve().parent,
        default_name=path.stem,
        overrides=overrides,
        skip_invalid=skip_invalid,
        source=str(path),
        env_model=env_model,
    )


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
) -> JobSpec:
    """Validate manifest content. Model precedence: overrides, manifest, `env_model`, default.

    With `local_images=False` (the HTTP API) images must be s3:// or http(s):// references,
    unless `base_dir` is an operator-approved folder: then local paths must stay inside it.
    """
    overrides = overrides or JobOverrides()
    text = _decode(data, source)
    if fmt in ("yaml", "json"):
        document = _load_document(text, fmt, source)
        header, raw_items, issues = _validate_header(document)
        lines: list[int | None] = [None] * len(raw_items)
    elif fmt == "jsonl":
        raw_items, lines, issues = _load_jsonl(text)
        header = None
    else:
        raw_items, lines, issues = _load_csv(text)
        header = None
    if not raw_items and not issues:
        issues.append(ManifestIssue("the manifest has no items; add at least one", field="items"))

    defaults = header.defaults if header else ParamOverrides()
    name_raw = overrides.name or (header.name if header else None) or default_name
    name = sanitize_id(name_raw)
    model = overrides.model or (header.model if header else None) or env_model or DEFAULT_MODEL
    output = overrides.output or (header.output if header else None) or DEFAULT_OUTPUT
    if header and header.output and not overrides.output:
        output = _resolve_local(header.output, base_dir)

    degrade_order = overrides.degrade_order or (header.degrade_order if header else None) or DEFAULT_ORDER
    if len(set(degrade_order)) != len(degrade_order):
        issues.append(ManifestIssue(f"{list(degrade_order)} repeats a step; " + ITEM_HELP["degrade_order"], field="degrade_order"))
    unfit = overrides.unfit or (header.unfit if header else None) or "degrade"

    items, rejected = _validate_items(raw_items, lines, defaults, overrides.params, base_dir, local_images)
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
    )


def item_rows(text: str, fmt: Format) -> list[dict]:
    """The raw items of a JSONL or CSV manifest (to send them on as a JSON manifest)."""
    items, _, issues = _load_jsonl(text) if fmt == "jsonl" else _load_csv(text)
    if issues:
        raise ManifestError(issues)
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


def _load_document(text: str, fmt: str, source: str | None) -> Any:
    try:
        if fmt == "json":
            document = json.loads(text)
        else:
            import yaml

            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            document = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except RecursionError:
        raise ManifestError([ManifestIssue("the document is nested too deeply; flatten it")], source) from None
    except json.JSONDecodeError as exc:
        raise ManifestError(
            [ManifestIssue(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", line=exc.lineno)],
            source,
        ) from None
    except Exception as exc:  # yaml.YAMLError and its subclasses
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        where = f" at line {line} column {mark.column + 1}" if mark is not None else ""
        raise ManifestError([ManifestIssue(f"invalid YAML{where}: {problem}", line=line)], source) from None
    problem = _structure_problem(document)
    if problem:
        raise ManifestError([ManifestIssue(problem)], source)
    if not isinstance(document, dict):
        kind = type(document).__name__ if document is not None else "empty"
        raise ManifestError(
            [ManifestIssue(f"the top level is {kind}; it must be a mapping with `version: 1` and `items`")],
            source,
        )
    return document


def _structure_problem(document: Any) -> str | None:
    """Refuse YAML aliases (shared nodes: the 'billion laughs' bomb) and absurd nesting."""
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        if depth > MAX_NESTING_DEPTH:
            return f"the document is nested more than {MAX_NESTING_DEPTH} levels deep; flatten it"
        if id(node) in seen:
            return "YAML anchors and aliases (&name / *name) are not allowed in manifests; write values out"
        seen.add(id(node))
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children)
    return None


def _validate_header(document: dict) -> tuple[ManifestHeader | None, list[Any], list[ManifestIssue]]:
    issues: list[ManifestIssue] = []
    try:
        header = ManifestHeader.model_validate(document)
        return header, header.items, issues
    except ValidationError as exc:
        issues.extend(issues_from_validation(exc, known=HEADER_FIELDS))
    raw_items = document.get("items")
    if not isinstance(raw_items, list):
        raw_items = []
    return None, raw_items, issues


def _load_jsonl(text: str) -> tuple[list[Any], list[int | None], list[ManifestIssue]]:
    items: list[Any] = []
    lines: list[int | None] = []
    issues: list[ManifestIssue] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except (json.JSONDecodeError, RecursionError) as exc:
            message = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            issues.append(ManifestIssue(f"invalid JSON: {message}", item_index=len(items), line=number))
            items.append(None)
        lines.append(number)
    return items, lines, issues


# CSV cells are text; numbers are parsed here so that the strict types see real numbers.
_INT_FIELDS = ("frames", "fps", "steps", "seed")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _csv_value(name: str, cell: str) -> Any:
    cell = cell.strip()
    if name in _INT_FIELDS and re.fullmatch(r"[+-]?\d+", cell):
        return int(cell)
    if name == "guidance_scale" and _NUMBER.fullmatch(cell):
        return float(cell)
    return cell


def _load_csv(text: str) -> tuple[list[Any], list[int | None], list[ManifestIssue]]:
    issues: list[ManifestIssue] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return [], [], issues
    except csv.Error as exc:
        return [], [], [ManifestIssue(f"invalid CSV header: {exc}", line=1)]
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
            items.append({n: _csv_value(n, cell) for n, cell in zip(known, row) if n and cell.strip()})
            lines.append(line)
    except csv.Error as exc:
        issues.append(ManifestIssue(f"invalid CSV: {exc}", line=reader.line_num))
    return items, lines, issues


# --- validating items ------------------------------------------------------------------------


def _validate_items(
    raw_items: list[Any],
    lines: list[int | None],
    defaults: ParamOverrides,
    cli_params: ParamOverrides,
    base_dir: Path | None,
    local_images: bool = True,
) -> tuple[list[JobItem], list[RejectedItem]]:
    items: list[JobItem] = []
    rejected: list[RejectedItem] = []
    first_index_of: dict[str, int] = {}
    params_cache: dict[tuple, RenderParams] = {}  # many items share the same overrides
    for index, raw in enumerate(raw_items):
        line = lines[index] if index < len(lines) else None
        raw_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
        if raw is None:  # a line that was not JSON; already reported
            continue
        if not isinstance(raw, dict):
            issue = ManifestIssue(
                f"an item must be a mapping with `image` and `prompt`, not {type(raw).__name__}",
                item_index=index,
                line=line,
                value=raw,
            )
            rejected.append(RejectedItem(index, None, [issue]))
            continue
        try:
            spec = ItemSpec.model_validate(raw)
        except ValidationError as exc:
            issues = issues_from_validation(exc, known=ITEM_FIELDS, item_index=index, item_id=raw_id, line=line)
            image = raw.get("image")
            if isinstance(image, str) and not any(i.field == "image" for i in issues):
                extra = _check_image_reference(image) or _check_local(image, base_dir, local_images)
                if extra:  # report it now too: every error at once
                    issues.append(replace(extra, item_index=index, item_id=raw_id, line=line))
            rejected.append(RejectedItem(index, raw_id, issues))
            if raw_id:  # so that a later item reusing this id is still reported
                first_index_of.setdefault(sanitize_id(raw_id), index)
            continue
        issues = []
        image_issue = _check_image_reference(spec.image) or _check_local(spec.image, base_dir, local_images)
        if image_issue:
            issues.append(image_issue)
        requested = spec.explicit()
        if spec.preset is not None:
            requested = {"preset": spec.preset, **requested}
        cache_key = tuple(requested.items())
        params = params_cache.get(cache_key)
        if params is None:
            params = params_cache[cache_key] = resolve_params(defaults, cli_params, spec)
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
        if issues:
            located = [
                ManifestIssue(i.message, field=i.field or "image", item_index=index, item_id=raw_id, value=i.value, line=line)
                for i in issues
            ]
            rejected.append(RejectedItem(index, raw_id, located))
            continue
        first_index_of[item_id] = index
        items.append(
            JobItem(
                index=index,
                id=item_id,
                image=_absolute(spec.image, base_dir),
                prompt=spec.prompt,
                params=params,
                requested=requested,
                line=line,
                given_id=spec.id,
            )
        )
    return items, rejected


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


REMOTE_SCHEMES = ("s3", "https", "http")


def _check_image_reference(value: str) -> ManifestIssue | None:
    """Check the image reference's form: a local path, s3://BUCKET/KEY, or an http(s) URL."""
    if "\x00" in value or any(ord(ch) < 32 for ch in value):
        return ManifestIssue("the reference contains control characters; fix it", field="image", value=value)
    match = _SCHEME.match(value)
    if not match:
        return None
    scheme = match.group(1).lower()
    if scheme == "file":
        return None
    if scheme not in REMOTE_SCHEMES:
        return ManifestIssue(
            f"{scheme}:// images are not supported; use a local path, s3://BUCKET/KEY or an https:// URL",
            field="image",
            value=value,
        )
    rest = value[len(match.group(0)) :]
    host, _, path = rest.partition("/")
    if not host or not path:
        what = "s3://BUCKET/KEY" if scheme == "s3" else f"{scheme}://HOST/PATH"
        return ManifestIssue(f"incomplete {scheme}:// reference; write {what}", field="image", value=value)
    return None


def _check_local(value: str, base_dir: Path | None, local_images: bool) -> ManifestIssue | None:
    """Where local paths are restricted (the HTTP API), keep them inside the approved folder."""
    if local_images or (_SCHEME.match(value) and value[:7].lower() != "file://"):
        return None
    if base_dir is None:
        return ManifestIssue(
            "local paths are not accepted here; use s3://BUCKET/KEY or an https:// URL", field="image", value=value
        )
    resolved = os.path.realpath(_absolute(value, base_dir))
    if os.path.commonpath([resolved, os.path.realpath(base_dir)]) != os.path.realpath(base_dir):
        return ManifestIssue(f"the path leaves the allowed folder {base_dir}", field="image", value=value)
    return None


def _absolute(value: str, base_dir: Path | None) -> str:
    if _SCHEME.match(value) and value[:7].lower() != "file://":
        return value  # s3:// and http(s):// references are read by the worker as they are
    if value[:7].lower() == "file://":
        value = value[7:]
    if value.startswith("~"):
        value = os.path.expanduser(value)
    return os.path.join(base_dir or "/", value)  # an absolute `value` replaces base_dir


def _resolve_local(value: str, base_dir: Path) -> str:
    """A relative local path is relative to the manifest; URIs (s3://...) are kept as written."""
    if "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base_dir / path)


# --- error messages --------------------------------------------------------------------------


def _unknown_field_message(name: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown field {name!r}; {hint}allowed fields are {', '.join(known)}"


def issues_from_validation(
    exc: ValidationError,
    *,
    known: tuple[str, ...],
    item_index: int | None = None,
    item_id: str | None = None,
    line: int | None = None,
) -> list[ManifestIssue]:
    issues = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        name = loc[-1] if loc and loc[0] == "defaults" else (loc[0] if loc else None)
        field_path = ".".join(loc) or None
        value = error.get("input")
        kind = error["type"]
        if kind == "extra_forbidden":
            allowed = ("preset", *PARAM_FIELDS) if loc and loc[0] == "defaults" else known
            message = _unknown_field_message(name or "?", allowed)
        elif kind == "missing":
            message = f"required; set it to {ITEM_HELP.get(name or '', 'a value')}"
        else:
            help_text = ITEM_HELP.get(name or "")
            reason = error["msg"].replace("Input should", "it should").replace("String should", "it should")
            message = f"{_show(value)} is not allowed: {reason}"
            if help_text:
                message += f"; use {help_text}"
        issues.append(
            ManifestIssue(message, field=field_path, item_index=item_index, item_id=item_id, value=value, line=line)
        )
    return issues


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

