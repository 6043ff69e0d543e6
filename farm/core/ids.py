"""Item ids and job names that are safe as file names and object keys, and stable derived values.

A safe id uses only ASCII letters, digits, `.`, `_` and `-`, never starts with `.` or `-`
(no `..`, no hidden files, no option-like names), and is at most `MAX_ID_LENGTH` characters.
When sanitizing changes an id, a short hash of the original is appended so that two different
ids never collapse into the same name.
"""

from __future__ import annotations

import hashlib
import json
import re

MAX_ID_LENGTH = 100
# A job's own files live beside its items' (JOB/job.json, JOB/spec.json, JOB/manifest.json, and
# JOB/contact.jpg, the takes' contact sheet, which an item `contact`'s thumbnail would be), so
# these names cannot be item ids. Derived ids always end in a hash and never collide.
RESERVED_ITEM_IDS = ("job", "spec", "manifest", "contact")
_HASH_CHARS = 8
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def short_hash(text: str, length: int = _HASH_CHARS) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def is_safe_id(value: str) -> bool:
    return len(value) <= MAX_ID_LENGTH and _SAFE.fullmatch(value) is not None and ".." not in value


def sanitize_id(raw: str) -> str:
    """A safe name for `raw`: unchanged when already safe, else cleaned plus a hash of `raw`."""
    if is_safe_id(raw):
        return raw
    cleaned = _UNSAFE.sub("-", raw)
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    cleaned = re.sub(r"-{2,}", "-", cleaned).strip(".-")
    suffix = short_hash(raw)
    cleaned = cleaned[: MAX_ID_LENGTH - _HASH_CHARS - 1].rstrip(".-")
    return f"{cleaned}-{suffix}" if cleaned else f"id-{suffix}"


def derive_item_id(image: str, prompt: str, params: dict) -> str:
    """A stable id for an item without one: the image's file stem plus a hash of the item's content."""
    stem = image.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0] or "item"
    content = json.dumps({"image": image, "prompt": prompt, "params": params}, sort_keys=True, default=str)
    cleaned = _UNSAFE.sub("-", stem).strip(".-")[:40] or "item"
    return f"{cleaned}-{short_hash(content)}"


def derive_seed(item_id: str) -> int:
    """The seed of an item that sets none: stable across runs and jobs, so a re-render reproduces it."""
    digest = hashlib.sha256(item_id.encode()).digest()
    return int.from_bytes(digest[:4], "big")
