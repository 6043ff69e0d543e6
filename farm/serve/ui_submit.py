"""What the web UI submits, built as manifests so that the API's validation and limits apply:
an uploaded manifest, a folder of images with a prompt template and a preset, and a new job of
a finished job's failed items (with the parameters the user changed). No HTTP here.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from farm.core.errors import ManifestIssue
from farm.core.params import PRESETS
from farm.serve.ui_views import fill_prompt

# The parameters the Submit and re-render forms offer (every one optional).
FORM_PARAMS = ("resolution", "frames", "fps", "steps", "guidance_scale", "seed")
NUMBER_PARAMS = {"frames": int, "fps": int, "steps": int, "guidance_scale": float, "seed": int}
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")


def manifest_format(file_name: str | None, text: bytes) -> str:
    """The manifest's format from its file name, else from its first character."""
    name = (file_name or "").lower()
    for suffix, fmt in ((".yaml", "yaml"), (".yml", "yaml"), (".jsonl", "jsonl"), (".json", "json"), (".csv", "csv")):
        if name.endswith(suffix):
            return fmt
    return "json" if text.lstrip()[:1] in (b"{", b"[") else "yaml"


def form_params(form) -> tuple[dict[str, Any], list[ManifestIssue]]:
    """The parameter fields a user filled in (blank: unchanged), as manifest values."""
    values: dict[str, Any] = {}
    issues = []
    preset = (form.get("preset") or "").strip()
    if preset:
        values["preset"] = preset  # validated with the manifest (it names the presets)
    for name in FORM_PARAMS:
        raw = (form.get(name) or "").strip()
        if not raw:
            continue
        convert = NUMBER_PARAMS.get(name)
        if convert is None:
            values[name] = raw
            continue
        try:
            values[name] = convert(raw)
        except ValueError:
            issues.append(ManifestIssue(f"{raw[:40]!r} is not a number", field=name, value=raw[:40]))
    negative = (form.get("negative_prompt") or "").strip()
    if negative:
        values["negative_prompt"] = negative
    return values, issues


def with_overrides(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """An item's parameters with the user's changes; a new preset replaces the values it
    defines (explicit values would win over it)."""
    result = dict(params)
    if "preset" in overrides and overrides["preset"] in PRESETS:
        for name in PRESETS[overrides["preset"]]:
            result.pop(name, None)
    result.update(overrides)
    return result


def rerender_document(spec: dict[str, Any], failed: list[str], overrides: dict[str, Any]) -> tuple[dict, list[str]]:
    """A manifest of the failed items of a job (`spec`: its spec.json form) and the ids that
    cannot be rendered again from it (rejected at validation: they have no valid definition).
    Each item keeps the parameters it was validated with (`params`: the manifest's defaults
    and preset applied; `requested` holds only what the item itself said)."""
    by_id = {item["id"]: item for item in spec["items"]}
    items, missing = [], []
    for item_id in failed:
        item = by_id.get(item_id)
        if item is None:
            missing.append(item_id)
            continue
        params = {name: value for name, value in (item.get("params") or {}).items() if value is not None}
        items.append({"id": item_id, "image": item["image"], "prompt": item["prompt"],
                      **({"model": item["model"]} if item.get("model") else {}),
                      **with_overrides(params, overrides)})
    document = {
        "version": 1,
        "name": f"{spec['name']}-rerender-{uuid.uuid4().hex[:6]}",
        "model": spec["model"],
        "output": spec["output"],
        "priority": spec.get("priority", 0),
        "items": items,
    }
    return document, missing


def images_document(names: list[str], template: str, params: dict[str, Any], name: str | None) -> dict:
    """A manifest of uploaded images (`names`: their file names), each prompt from `template`;
    the images' locations are filled in once they are stored."""
    items = []
    for index, file_name in enumerate(names, start=1):
        items.append({"id": _item_id(file_name, index), "image": f"s3://check/{index}",
                      "prompt": fill_prompt(template, file_name, index), **params})
    return {"version": 1, "name": name or "upload-" + uuid.uuid4().hex[:8], "items": items}


def _item_id(file_name: str, index: int) -> str:
    from farm.core.ids import sanitize_id

    stem = file_name.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return sanitize_id(stem) if stem else f"image-{index}"


def problem_issues(response) -> tuple[str, list[dict]]:
    """(detail, errors) of one of the API's problem responses (a JSONResponse)."""
    body = json.loads(bytes(response.body))
    return body.get("detail", ""), body.get("errors") or []
