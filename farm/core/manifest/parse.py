"""`parse_manifest`: manifest content (bytes or text, in one of the four formats) to a `JobSpec`.

It decodes and reads the format (`formats`), validates the header of a YAML/JSON job, settles
the job-level settings (the caller's overrides first, then the manifest's, then the defaults),
validates every item (`items`, `images`), and raises one `ManifestError` listing every problem.
Reading a manifest file is the edge's business: `farm.storage.manifest_file.load_manifest`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from farm.core.deliverables import DeliverableError, resolve_all
from farm.core.errors import ManifestError, ManifestIssue
from farm.core.families import known_family
from farm.core.ids import sanitize_id
from farm.core.ladder import DEFAULT_ORDER
from farm.core.localfiles import canonical_path
from farm.core.manifest.formats import Format, _decode, _load_csv, _load_document, _load_jsonl
from farm.core.manifest.images import _ImageContext
from farm.core.manifest.items import _WALKED_KINDS, _merge, _validate_items, issues_from_validation
from farm.core.manifest.spec import (
    DEFAULT_MODEL,
    DEFAULT_OUTPUT,
    HEADER_FIELDS,
    ITEM_HELP,
    ItemDefaults,
    JobOverrides,
    JobSpec,
    ManifestHeader,
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
    image_root: str | Path | None = None,
    check_files: bool = False,
    default_output: str | None = None,
    output_base: str | None = None,
    family_of=None,
    encoders: set[str] | None = None,
) -> JobSpec:
    """Validate manifest content. Model precedence: overrides, manifest, `env_model`, default.

    Output precedence: overrides, the manifest's (a relative one is relative to `output_base`,
    else to `base_dir`), `default_output`, ./farm-output.

    With `local_images=False` (the HTTP API) images must be s3:// or http(s):// references,
    unless `base_dir` is an operator-approved folder: then local paths must stay inside it, and
    it becomes the job's `image_root`, checked again when the worker opens the file. An explicit
    `image_root` confines local images the same way. With `check_files`, local images that cannot
    be opened are errors of their items. `encoders`: the ffmpeg encoders the farm has (the
    edge asks `farm.media.deliverables.available_encoders`); None skips that check. `family_of` maps a model reference to its family
    (`farm.models.registry.family_of_ref` also reads local folders); by default only the
    references `farm.core.families` knows are checked against a family's rules.
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

    defaults = header.defaults if header else ItemDefaults()
    deliverables = overrides.deliverables
    if deliverables is None and defaults.deliverables is not None:
        try:
            deliverables = resolve_all(defaults.deliverables)
        except DeliverableError as exc:
            issues.append(ManifestIssue(str(exc), field=f"defaults.{exc.field}", value=exc.value))
    takes = overrides.takes or defaults.takes
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
        items, rejected = _validate_items(raw_items, lines, defaults, overrides.params, images, item_issues,
                                          job_model=model, family_of=family_of or known_family,
                                          deliverables=deliverables or (), takes=takes, encoders=encoders)
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
        deliverables_for=(header.deliverables_for if header and header.deliverables_for else "all"),
    )


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
