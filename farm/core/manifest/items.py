"""Validating items, one by one: each raw item becomes a `JobItem` or a `RejectedItem` listing
every problem found in it (its fields, its image reference, a reserved or repeated id).

Also how pydantic's validation errors become `ManifestIssue`s that name the field, the value and
what to write instead (`issues_from_validation`, used for the header and the CLI's flags too).
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from typing import Any, Callable

from pydantic import ValidationError

from farm.core.deliverables import FIELD_HELP as DELIVERABLE_HELP
from farm.core.deliverables import Deliverable, DeliverableError, DeliverableSpec, check_for_clip, missing_encoders, resolve_all
from farm.core.errors import FarmError, ManifestIssue, excerpt
from farm.core.families import FamilyRules, UnknownFamilyError, adapt_params, check_params, known_family, rules_for
from farm.core.ids import RESERVED_ITEM_IDS, derive_item_id, derive_seed, sanitize_id
from farm.core.manifest.images import _ImageContext, _locate_image
from farm.core.manifest.spec import DEFAULTS_FIELDS, ITEM_FIELDS, ITEM_HELP, ItemSpec, JobItem, RejectedItem
from farm.core.params import SEED_MAX
from farm.core.params import ParamOverrides, RenderParams, frame_size, resolve_params

ItemIssues = dict[int, list[ManifestIssue]]  # an item's index -> the problems found in it
FamilyResolver = Callable[[str], "FamilyRules | None"]  # a model reference -> its family (None: unknown yet)


def _merge(first: list[ManifestIssue], more: list[ManifestIssue]) -> list[ManifestIssue]:
    """`first` and those of `more` about other fields (a NaN is reported once, by the walk)."""
    fields = {issue.field for issue in first if issue.field is not None}
    return first + [issue for issue in more if issue.field is None or issue.field not in fields]


def _validate_items(
    raw_items: list[Any],
    lines: list[int | None],
    defaults: ParamOverrides,
    cli_params: ParamOverrides,
    images: _ImageContext,
    item_issues: ItemIssues | None = None,
    *,
    job_model: str | None = None,
    family_of: FamilyResolver = known_family,
    deliverables: tuple[Deliverable, ...] = (),
    takes: int | None = None,
    encoders: set[str] | None = None,
) -> tuple[list[JobItem], list[RejectedItem]]:
    """`deliverables` and `takes`: every item's unless it sets its own (the caller settled the
    CLI's over the manifest's defaults); `encoders`: the ffmpeg encoders there are (None: not checked)."""
    items: list[JobItem] = []
    resolved: dict[tuple, tuple[Deliverable, ...] | DeliverableError] = {}

    def item_deliverables(entries: list[DeliverableSpec] | None) -> tuple[Deliverable, ...] | DeliverableError:
        if entries is None:
            return deliverables
        key = tuple(entries)
        if key not in resolved:
            try:
                resolved[key] = resolve_all(entries)
            except DeliverableError as exc:
                resolved[key] = exc
        return resolved[key]

    families: dict[str, FamilyRules | None | str] = {}  # model ref -> family, or why it is unusable

    def family(ref: str) -> FamilyRules | None | str:
        if ref not in families:
            try:
                found = family_of(ref)
                families[ref] = rules_for(ref, found) if found is not None else None
            except (UnknownFamilyError, FarmError) as exc:
                families[ref] = str(exc)
        return families[ref]

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
            issues.extend(replace(i, item_index=index, item_id=raw_id, line=line)
                          for i in _family_issues_of_raw(raw, issues, job_model, family))
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
        model = spec.model.strip() if spec.model else None
        rules = family(model or job_model) if (model or job_model) else None
        if isinstance(rules, str):  # the model names no family farm has an adapter for
            issues.append(ManifestIssue(rules, field="model", value=model or job_model))
            rules = None
        cache_key = (tuple(requested.items()), rules.title if rules else None)  # a model's rules may narrow its family's
        params = params_cache.get(cache_key)
        if params is None:
            params = resolve_params(defaults, cli_params, spec)
            if rules is not None:
                params = _for_family(params, rules, defaults, cli_params, spec)
            params_cache[cache_key] = params
        if rules is not None:
            width, height = frame_size(params.resolution, params.aspect)
            checked = check_params(rules, width=width, height=height, frames=params.frames, prompt=None)
            issues.extend(ManifestIssue(i.message, field=i.field, value=i.value) for i in checked.issues)
        outputs = item_deliverables(spec.deliverables)
        if isinstance(outputs, DeliverableError):
            issues.append(ManifestIssue(str(outputs), field=outputs.field, value=outputs.value))
            outputs = ()
        problems = check_for_clip(outputs, frames=params.frames, fps=params.fps)
        problems += missing_encoders(outputs, encoders) if encoders is not None else []
        where = "deliverables" if spec.deliverables is not None else "defaults.deliverables"
        issues.extend(ManifestIssue(str(p), field=p.field.replace("deliverables", where, 1), value=p.value)
                      for p in problems)
        seeds, takes_issue = _take_seeds(spec, takes, params.seed)
        if takes_issue:
            issues.append(takes_issue)
        # The id derives from the path as written, so it does not change with where links point.
        id_content = {**requested, "model": model} if model else requested
        item_id = sanitize_id(spec.id) if spec.id is not None else derive_item_id(spec.image, spec.prompt, id_content)
        if item_id in RESERVED_ITEM_IDS:
            issues.append(
                ManifestIssue(
                    f"id {item_id!r} is reserved for the job's own files (JOB/{item_id}.*); choose another id",
                    field="id",
                    value=spec.id,
                )
            )
        elif item_id in first_index_of or any(take_id in first_index_of for take_id in _take_ids(item_id, seeds)):
            first = first_index_of.get(item_id, next((first_index_of[t] for t in _take_ids(item_id, seeds)
                                                      if t in first_index_of), index))
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
        item = JobItem(
            index=index,
            id=item_id,
            image=location,
            prompt=spec.prompt,
            params=params,
            requested=requested,
            line=line,
            given_id=spec.id,
            model=model,
            family=rules.name if rules else None,
            deliverables=outputs,
        )
        if seeds is None:
            items.append(item)
            continue
        for take, (take_id, seed) in enumerate(zip(_take_ids(item_id, seeds), seeds), start=1):
            first_index_of[take_id] = index
            seed = seed if seed is not None else derive_seed(take_id)
            items.append(replace(item, id=take_id, params=params.model_copy(update={"seed": seed}),
                                 requested={**requested, "seed": seed}, take=take, take_of=item_id))
    return items, rejected


def _take_seeds(spec: ItemSpec, default_takes: int | None, seed: int | None) -> tuple[list[int | None] | None, ManifestIssue | None]:
    """The seeds of an item's takes (None entries: derived from the take's id), or None for an
    item of one take; with the issue when `takes` and `seeds` disagree."""
    if spec.seeds is not None:
        if spec.takes is not None and spec.takes != len(spec.seeds):
            return None, ManifestIssue(f"takes {spec.takes} but {len(spec.seeds)} seeds are given; set one of them",
                                       field="takes", value=spec.takes)
        return list(spec.seeds), None
    count = spec.takes if spec.takes is not None else default_takes
    if not count or count == 1:
        return None, None
    if seed is not None:  # the item's seed starts the run of its takes' seeds
        return [(seed + k) % (SEED_MAX + 1) for k in range(count)], None
    return [None] * count, None


def _take_ids(item_id: str, seeds: list[int | None] | None) -> list[str]:
    return [f"{item_id}.take-{k}" for k in range(1, len(seeds) + 1)] if seeds else []


def _family_issues_of_raw(raw: dict, found: list[ManifestIssue], job_model: str | None, family) -> list[ManifestIssue]:
    """The family's frame rule for an item that failed validation elsewhere: every error at once."""
    frames, ref = raw.get("frames"), raw.get("model") if isinstance(raw.get("model"), str) else job_model
    if not ref or type(frames) is not int or any((i.field or "").split(".")[0] == "frames" for i in found):
        return []
    rules = family(ref.strip())
    if not isinstance(rules, FamilyRules) or frames in rules.allowed_frames():
        return []
    checked = check_params(rules, width=rules.size_multiple, height=rules.size_multiple, frames=frames, prompt=None)
    return [ManifestIssue(i.message, field=i.field, item_index=None, value=i.value)
            for i in checked.issues if i.field == "frames"]


def _for_family(params: RenderParams, rules: FamilyRules, *layers: ParamOverrides) -> RenderParams:
    """`params` with what no layer set explicitly moved to what `rules`' family renders."""
    explicit: set[str] = set()
    for layer in layers:
        explicit |= set(layer.explicit())
    values, _ = adapt_params(rules, params.model_dump(), explicit)
    return RenderParams.model_construct(**values) if values != params.model_dump() else params


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
        in_deliverable = "deliverables" in loc and loc[-1] != "deliverables"
        if in_deliverable:  # deliverables.N.FIELD: the deliverable's own help
            named = [part for part in loc[loc.index("deliverables") + 1:] if part in DELIVERABLE_HELP]
            name = named[0] if named else "deliverables"
        if kind == "extra_forbidden" and in_deliverable:
            message = _unknown_field_message(loc[-1], tuple(DELIVERABLE_HELP))
        elif kind == "extra_forbidden":
            allowed = DEFAULTS_FIELDS if loc and loc[0] == "defaults" else known
            message = _unknown_field_message(name or "?", allowed)
        elif kind == "missing":
            message = f"required; set it to {ITEM_HELP.get(name or '', 'a value')}"
        else:
            help_text = (DELIVERABLE_HELP if in_deliverable and name != "deliverables" else ITEM_HELP).get(name or "")
            reason = error["msg"].replace("Input should", "it should").replace("String should", "it should")
            message = f"{excerpt(value)} is not allowed: {reason[:200]}"
            if help_text:
                message += f"; use {help_text}"
        issues.append(
            ManifestIssue(message, field=field_path, item_index=item_index, item_id=item_id, value=value, line=line)
        )
    return issues
