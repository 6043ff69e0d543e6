"""What the web UI's templates show, computed from the API's plain dicts: no I/O, no Jinja.

Durations and times in words, a job's progress, a sidecar turned into readable sections
(requested against effective parameters, what the degrade ladder changed, OOMs, timings, tier,
node), and, for a failed item, what to do about its reason.
"""

from __future__ import annotations

import re
import time
from typing import Any

# The item filters of the job page: an item state, or `degraded` (committed with cheaper settings).
ITEM_FILTERS = ("failed", "degraded", "running", "queued", "succeeded")
DONE_STATES = ("succeeded", "failed", "skipped", "cancelled")
COMMITTED_STATES = ("succeeded", "skipped")
FINAL_JOB_STATES = ("succeeded", "partial", "failed", "cancelled")

# What to do about each failure reason (farm.core.errors.FailureReason); the item's own message
# says what went wrong, with the value.
FAILURE_ADVICE = {
    "image_not_found": "Check the image's location (path, bucket and key, or URL) and that the farm may read it; "
                       "fix the manifest and re-render the failed items.",
    "image_invalid": "The file is not a readable JPEG, PNG or WEBP image: export it again and re-render.",
    "image_too_large": "Make the image smaller (bytes or pixels) than the farm's limit, then re-render.",
    "image_refused": "The farm may not read that location (a host or folder the operator does not allow): "
                     "use an allowed input, or ask the operator.",
    "invalid_item": "The item did not validate: correct the field named in the message and submit it again.",
    "oom": "Every cheaper setting still ran out of GPU memory: re-render with a lower resolution or fewer "
           "frames, or on a bigger tier.",
    "nan_output": "The model produced NaNs: re-render with another seed, fewer steps or a lower guidance scale.",
    "no_fitting_tier": "No GPU tier of this farm fits the item even degraded: lower its resolution or frames.",
    "render_error": "The render raised an error: the message has it; re-render once, and report it if it repeats.",
    "storage_error": "The output could not be written (permissions, quota, network): fix the storage and re-render.",
    "worker_lost": "The worker rendering it died more than once (a node lost or reclaimed): re-render it.",
    "model_unavailable": "The model could not be loaded on the worker: check the weights and FARM_MODEL.",
}

# Sidecar parameter rows, in this order; the rest of `effective` follows.
PARAM_ORDER = ("resolution", "width", "height", "aspect", "frames", "fps", "steps", "guidance_scale",
               "seed", "negative_prompt", "memory_savers", "preset", "degrade")


def _number(value) -> bool:
    """A real number (not None, nor a template's undefined value for a field the job lacks)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def ago(epoch_s: float | None, now: float | None = None) -> str:
    if not _number(epoch_s) or not epoch_s:
        return ""
    return duration(max(0.0, (now if now is not None else time.time()) - epoch_s)) + " ago"


def duration(seconds: float | None) -> str:
    """12 s, 3 min 5 s, 2 h 10 min; empty for unknown."""
    if not _number(seconds):
        return ""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def clock(epoch_s: float | None) -> str:
    """A UTC time the way people read it (the browser's zone is unknown to the server)."""
    if not _number(epoch_s) or not epoch_s:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch_s))


def progress(status: dict) -> dict[str, Any]:
    """Done and total items, the percentage, and the counts worth showing (non-zero)."""
    counts = dict(status.get("counts") or {})
    total = counts.pop("total", None) or status.get("items") or 0
    degraded = counts.pop("degraded", 0)
    done = sum(counts.get(state, 0) for state in DONE_STATES)
    shown = {state: n for state, n in counts.items() if n}
    if degraded:
        shown["degraded"] = degraded
    return {"done": done, "total": total, "percent": round(100 * done / total) if total else 0, "counts": shown}


def is_final(status: dict) -> bool:
    return status.get("state") in FINAL_JOB_STATES


def advice(reason: str | None) -> str:
    return FAILURE_ADVICE.get(reason or "", "See the message; fix what it names and re-render the failed items.")


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _brief(value: Any) -> str:
    """A value for a facts list: a long hash or id cut to its start (the sidecar JSON has it whole)."""
    text = _show(value)
    return text[:12] + "…" if len(text) > 24 and " " not in text else text


def parameter_rows(sidecar: dict) -> list[dict[str, Any]]:
    """One row per parameter: what was asked (blank: the default), what ran, and whether they differ."""
    requested = sidecar.get("requested") or {}
    effective = sidecar.get("effective") or {}
    names = [n for n in PARAM_ORDER if n in effective or n in requested]
    names += sorted(n for n in {*effective, *requested} if n not in names)
    rows = []
    for name in names:
        asked, ran = requested.get(name), effective.get(name)
        changed = name in requested and _show(asked) != _show(ran) and not (
            name == "resolution" and _show(asked).rstrip("p") == _show(ran))
        rows.append({"name": name, "requested": _show(asked), "effective": _show(ran), "changed": changed})
    return rows


def sidecar_view(sidecar: dict) -> dict[str, Any]:
    """The sections of the item panel, from a committed item's sidecar."""
    outputs = sidecar.get("outputs") or {}
    tier = sidecar.get("tier") or {}
    device = sidecar.get("device") or {}
    model = sidecar.get("model") or {}
    frames, fps = outputs.get("frames"), outputs.get("fps")
    timings = sidecar.get("timings_seconds") or {}
    return {
        "parameters": parameter_rows(sidecar),
        "degradations": sidecar.get("degradations") or [],
        "ooms": sidecar.get("ooms") or [],
        "warnings": sidecar.get("warnings") or [],
        "timings": [(name.replace("_", " "), duration(value)) for name, value in timings.items()],
        "tier": [(k.replace("_", " "), _brief(v)) for k, v in tier.items() if v is not None],
        "node": [(k.replace("_", " "), _brief(v)) for k, v in device.items() if v is not None],
        "model": [(k.replace("_", " "), _brief(v)) for k, v in model.items() if v is not None and not isinstance(v, dict)],
        "clip": {
            "frames": frames, "fps": fps, "width": outputs.get("width"), "height": outputs.get("height"),
            "seconds": round(frames / fps, 3) if frames and fps else None,
            "video_bytes": outputs.get("video_bytes"),
        },
        "seed": sidecar.get("seed"),
        "seed_source": sidecar.get("seed_source"),
        "peak_memory_bytes": sidecar.get("peak_memory_bytes"),
        "memory_kind": sidecar.get("memory_kind"),
        "created_at": sidecar.get("created_at"),
        "attempt": sidecar.get("attempt"),
    }


def size(value: float | None) -> str:
    """Bytes in words (1.5 GiB)."""
    if not _number(value):
        return ""
    value = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


_TEMPLATE_FIELD = re.compile(r"\{(name|stem|index|file)\}")


def fill_prompt(template: str, file_name: str, index: int) -> str:
    """A prompt from the Submit page's template: {name} or {stem} (the file name without its
    extension), {file} (with it), {index} (from 1). No other formatting (a template is user
    input: no attribute lookups as str.format would do)."""
    stem = file_name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    values = {"name": stem, "stem": stem, "file": file_name.rsplit("/", 1)[-1], "index": str(index)}
    return _TEMPLATE_FIELD.sub(lambda m: values[m.group(1)], template)
