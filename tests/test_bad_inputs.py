"""The bad-input corpus: hostile or broken manifests, images and HTTP requests.

Each case must get a clear error that names what is wrong (the item, the field or the file, and
the value or the problem), without a crash; and a job that contains bad items must finish its
good ones (`test_a_job_full_of_bad_images_still_renders_its_good_ones`). The inputs are built in
code, so the corpus documents itself.
"""

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from farm.core.errors import ImageError, ManifestError
from farm.core.ids import is_safe_id
from farm.core.manifest import parse_manifest
from farm.media.images import ImageLimits, prepare_image, read_image_file
from farm.storage.config import UrlFetchConfig
from farm.storage.inputs import fetch_url
from helpers import encode, noise, pattern, png_bomb

# --- manifests --------------------------------------------------------------------------------


def billion_laughs() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 9):
        prev, name = chr(ord("a") + level - 1), chr(ord("a") + level)
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    return "\n".join(lines + ["version: 1", "items: *i"])


def item(**fields) -> dict:
    return {"image": "a.png", "prompt": "p", **fields}


def doc(*items, **header) -> str:
    return json.dumps({"version": 1, "items": list(items), **header})


MANIFESTS = [
    # (case, format, content, field expected in an issue (or None), fragment of the message)
    ("yaml bomb (billion laughs)", "yaml", billion_laughs(), None, "anchors and aliases"),
    ("deep nesting", "yaml", "version: 1\nitems:\n  - " + "[" * 60 + "]" * 60, None, "nested"),
    ("yaml syntax error", "yaml", "version: 1\nitems: [\n  {image: a.png", None, "invalid YAML at line"),
    ("not UTF-8", "yaml", b"version: 1\nitems:\n  - {image: \xff\xfe.png, prompt: p}\n", None, "UTF-8"),
    ("binary garbage", "json", os.urandom(64).replace(b"{", b"").replace(b"[", b""), None, ""),
    ("top level is a list", "json", "[1, 2]", None, "mapping"),
    ("version 2", "json", json.dumps({"version": 2, "items": [item()]}), "version", "should be 1"),
    ("no items", "json", json.dumps({"version": 1, "items": []}), "items", ""),
    ("unknown field", "json", doc(item(motion="fast")), "motion", "unknown field 'motion'"),
    ("misspelled field", "json", doc(item(frame=16)), "frame", "did you mean 'frames'"),
    ("duplicate ids", "json", doc(item(id="x"), item(id="x", image="b.png")), "id", "duplicates the id of items[0]"),
    ("oversized prompt", "json", doc(item(prompt="x" * 5000)), "prompt", "at most 2000 characters"),
    ("empty prompt", "json", doc(item(prompt="")), "prompt", "at least 1 character"),
    ("wrong type: text for a number", "json", doc(item(frames="many")), "frames", "'many' is not allowed"),
    ("wrong type: list for a prompt", "json", doc(item(prompt=["a"])), "prompt", "valid string"),
    ("wrong type: boolean for a number", "json", doc(item(steps=True)), "steps", "true is not allowed"),
    ("negative number", "json", doc(item(steps=-5)), "steps", "from 10 to 100"),
    ("huge number", "json", doc(item(frames=10**30)), "frames", "from 8 to 32"),
    ("not a number (NaN)", "yaml", "version: 1\nitems:\n  - {image: a.png, prompt: p, guidance_scale: .nan}\n", "guidance_scale", "NaN is not a number; use a number from 1 to 20"),
    ("negative seed", "json", doc(item(seed=-1)), "seed", "from 0 to"),
    ("resolution not offered", "json", doc(item(resolution="4k")), "resolution", "256, 512, 768 or 1024"),
    ("NUL in an image path", "json", doc(item(image="a\u0000.png")), "image", "control characters"),
    ("unsupported image scheme", "json", doc(item(image="ftp://host/a.png")), "image", "ftp:// images are not supported"),
    ("csv with more cells than the header", "csv", "image,prompt\na.png,p,extra\n", None, "cells"),
    ("jsonl with a broken line", "jsonl", '{"image": "a.png", "prompt": "p"}\n{not json\n', None, "invalid JSON"),
    ("unknown degrade order step", "json", json.dumps({"version": 1, "degrade_order": ["teleport"], "items": [item()]}), "degrade_order", ""),
    # duplicate keys: YAML and JSON keep the last value silently; a manifest says which line repeats
    ("duplicate key (YAML)", "yaml", "version: 1\nitems:\n  - image: a.png\n    prompt: p\n    prompt: q\n", "prompt", "key 'prompt' appears twice in this mapping (lines 4 and 5); keep one"),
    ("duplicate key in defaults (YAML)", "yaml", "version: 1\ndefaults:\n  frames: 8\n  frames: 16\nitems: [{image: a.png, prompt: p}]\n", "defaults", "key 'frames' appears twice in this mapping (lines 3 and 4)"),
    ("duplicate key, nested deeper (YAML)", "yaml", "version: 1\nitems:\n  - image: a.png\n    prompt: p\n    extra:\n      a: 1\n      a: 2\n", "extra", "key 'a' appears twice in this mapping (lines 6 and 7)"),
    ("duplicate top-level key (YAML)", "yaml", "version: 1\nversion: 1\nitems: [{image: a.png, prompt: p}]\n", "version", "(lines 1 and 2)"),
    ("duplicate key (JSON)", "json", '{"version": 1,\n "items": [{"image": "a.png",\n  "prompt": "p",\n  "prompt": "q"}]}', "prompt", "key 'prompt' appears twice in this mapping (lines 3 and 4)"),
    ("duplicate top-level key (JSON)", "json", '{"version": 1, "items": [{"image": "a.png", "prompt": "p"}],\n"items": []}', "items", "key 'items' appears twice"),
    ("duplicate key in defaults (JSON)", "json", '{"version": 1, "defaults": {"steps": 20, "steps": 30}, "items": [{"image": "a.png", "prompt": "p"}]}', "defaults", "key 'steps' appears twice"),
    ("duplicate key (JSONL)", "jsonl", '{"image": "a.png", "prompt": "p"}\n{"image": "b.png", "prompt": "p", "prompt": "q"}\n', "prompt", "key 'prompt' appears twice"),
    ("duplicate key, nested (JSONL)", "jsonl", '{"image": "a.png", "prompt": "p", "x": {"k": 1, "k": 2}}\n', "x", "key 'k' appears twice"),
    # numbers that are not finite, in every spelling
    ("NaN (JSON)", "json", '{"version": 1, "items": [{"image": "a.png", "prompt": "p", "guidance_scale": NaN}]}', "guidance_scale", "NaN is not a number; use a number from 1 to 20"),
    ("Infinity (JSON)", "json", '{"version": 1, "items": [{"image": "a.png", "prompt": "p", "guidance_scale": Infinity}]}', "guidance_scale", "Infinity is not a finite number"),
    ("-Infinity (JSON)", "json", '{"version": 1, "items": [{"image": "a.png", "prompt": "p", "steps": -Infinity}]}', "steps", "-Infinity is not a finite number"),
    ("1e400 overflows to infinity (JSON)", "json", '{"version": 1, "items": [{"image": "a.png", "prompt": "p", "guidance_scale": 1e400}]}', "guidance_scale", "like 1e400"),
    ("NaN in defaults (JSON)", "json", '{"version": 1, "defaults": {"guidance_scale": NaN}, "items": [{"image": "a.png", "prompt": "p"}]}', "defaults", "NaN is not a number"),
    ("NaN in an unknown field (JSON)", "json", '{"version": 1, "items": [{"image": "a.png", "prompt": "p", "x": [NaN]}]}', "x", "NaN is not a number; use a finite number"),
    ("NaN (JSONL)", "jsonl", '{"image": "a.png", "prompt": "p", "guidance_scale": NaN}\n', "guidance_scale", "NaN is not a number"),
    (".inf (YAML)", "yaml", "version: 1\nitems:\n  - {image: a.png, prompt: p, guidance_scale: .inf}\n", "guidance_scale", "Infinity is not a finite number"),
    ("-.inf (YAML)", "yaml", "version: 1\nitems:\n  - {image: a.png, prompt: p, frames: -.inf}\n", "frames", "-Infinity is not a finite number"),
    ("big exponent (YAML)", "yaml", "version: 1\nitems:\n  - {image: a.png, prompt: p, guidance_scale: 1.0e+400}\n", "guidance_scale", "Infinity is not a finite number"),
    ("1e400 (CSV)", "csv", "image,prompt,guidance_scale\na.png,p,1e400\n", "guidance_scale", "Infinity is not a finite number"),
    ("integer too long to convert (JSON)", "json", '{"version": 1, "items": [{"image": "a.png", "prompt": "p", "frames": ' + "9" * 5000 + "}]}", None, "a number has 5000 digits"),
    ("integer too long to convert (JSONL)", "jsonl", '{"image": "a.png", "prompt": "p", "frames": ' + "9" * 5000 + "}\n", None, "a number has 5000 digits"),
    # lone surrogates: not valid Unicode, cannot be written as UTF-8
    ("lone surrogate in a value", "json", '{"version": 1, "items": [{"image": "a.png", "prompt": "p\\ud800"}]}', "prompt", "lone surrogate (\\ud800)"),
    ("lone surrogate in a key", "json", '{"version": 1, "items": [{"image": "a.png", "prompt": "p", "\\udc00": 1}]}', None, "the key '\\udc00' contains a lone surrogate"),
    ("lone surrogate in the job name", "json", '{"version": 1, "name": "n\\udfff", "items": [{"image": "a.png", "prompt": "p"}]}', "name", "lone surrogate"),
    ("lone surrogate in an image path", "json", '{"version": 1, "items": [{"image": "a\\ud800.png", "prompt": "p"}]}', "image", "lone surrogate"),
    ("lone surrogate (JSONL)", "jsonl", '{"image": "a.png", "prompt": "\\ud83d"}\n', "prompt", "lone surrogate"),
    ("lone surrogate in text (YAML)", "yaml", "version: 1\nitems:\n  - {image: a.png, prompt: p\ud800}\n", None, "lone surrogate"),
    # huge values are echoed as an excerpt
    ("huge prompt", "json", doc(item(prompt="x" * 1_000_000)), "prompt", "(1000000 characters)"),
    ("huge unknown field name", "json", doc(item(**{"k" * 1_000_000: 1})), None, "unknown field 'kkkk"),
    ("huge id", "json", doc(item(id="i" * 1_000_000)), "id", "(1000000 characters)"),
    ("huge image scheme", "json", doc(item(image="x" * 4000 + "://h/a.png")), "image", "(4000 characters):// images are not supported"),
    ("huge CSV header cell", "csv", "image,prompt," + "c" * 100_000 + "\na.png,p,x\n", None, "unknown field 'cccc"),
    # items that are not mappings, and YAML's other containers
    ("null item", "yaml", "version: 1\nitems: [~]\n", None, "not null"),
    ("aliases inside !!omap", "yaml", "a: &a [1, 2]\nversion: 1\nitems: !!omap [{x: *a}, {y: *a}]\n", None, "anchors and aliases"),
]


@pytest.mark.parametrize("case, fmt, content, field, fragment", MANIFESTS, ids=[m[0] for m in MANIFESTS])
def test_bad_manifests_are_rejected_with_a_clear_error(case, fmt, content, field, fragment):
    with pytest.raises(ManifestError) as caught:
        parse_manifest(content, fmt, base_dir=Path("/data"))
    issues = caught.value.issues
    assert issues, case
    text = "\n".join(str(i) for i in issues)
    if field is not None:
        assert any((i.field or "").split(".")[0] == field for i in issues), text
    assert fragment in text, text
    assert all(i.message for i in issues)


def test_every_issue_of_the_corpus_is_short_and_strict_json():
    """What `farm validate --json` and the HTTP API send back: never NaN, never a lone surrogate
    (it cannot be encoded), never a megabyte echoed back."""
    for case, fmt, content, _field, _fragment in MANIFESTS:
        with pytest.raises(ManifestError) as caught:
            parse_manifest(content, fmt, base_dir=Path("/data"))
        for issue in caught.value.issues:
            text = json.dumps(issue.to_dict(), allow_nan=False, ensure_ascii=False)
            text.encode("utf-8")
            str(issue).encode("utf-8")
            assert len(text) < 2000 and len(str(issue)) < 2000, (case, len(text))
        str(caught.value).encode("utf-8")


def test_path_traversal_in_ids_never_escapes_the_output():
    spec = parse_manifest(
        doc(item(id="../../etc/passwd"), item(id="/abs/x", image="b.png"), item(id="a\\b", image="c.png")),
        "json",
        base_dir=Path("/data"),
    )
    for job_item in spec.items:
        assert is_safe_id(job_item.id) and "/" not in job_item.id and not job_item.id.startswith(".")


def test_ssrf_urls_are_refused_when_the_worker_fetches_them():
    config = UrlFetchConfig(allowed_hosts="cdn.example.com,169.254.169.254", allow_http=True)
    for url, fragment in [
        ("http://169.254.169.254/latest/meta-data/iam", "link-local"),
        ("https://evil.example/x.png", "not in the allowed hosts"),
        ("http://metadata.google.internal/computeMetadata/v1/", "not in the allowed hosts"),
    ]:
        with pytest.raises(ImageError) as caught:
            fetch_url(url, config)
        assert caught.value.reason == "image_refused" and fragment in str(caught.value)


# --- images -----------------------------------------------------------------------------------


def animated_gif() -> bytes:
    frames = [Image.new("P", (64, 64), color) for color in (1, 2, 3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def multipage_tiff() -> bytes:
    frames = [pattern(64, 64), noise(64, 64)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "TIFF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def png_with_bad_crc() -> bytes:
    data = bytearray(encode(noise(64, 64), "PNG"))
    data[-20] ^= 0xFF  # inside the image data
    return bytes(data)


def huge_dimensions() -> bytes:
    """A real, fully decodable PNG of 8000 x 8000 (64 Mpx: under Pillow's guard, over farm's)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 8000, 8000, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (8001 * 8000), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


IMAGES = [
    # (case, file name, content, reason, fragment)
    ("zero bytes", "empty.png", b"", "image_invalid", "empty (0 bytes)"),
    ("truncated PNG", "cut.png", encode(noise(128, 128), "PNG")[:3000], "image_invalid", "corrupt or truncated"),
    ("truncated JPEG", "cut.jpg", encode(noise(256, 256), "JPEG")[:3000], "image_invalid", "corrupt or truncated"),
    ("PNG with a damaged chunk", "crc.png", png_with_bad_crc(), "image_invalid", "corrupt or truncated"),
    ("random bytes", "noise.png", os.urandom(4096), "image_invalid", "not a recognisable image"),
    ("text file", "notes.png", b"this is a text file, not a picture\n" * 20, "image_invalid", "not a recognisable image"),
    ("SVG", "vector.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>', "image_invalid", "not a recognisable image"),
    ("decompression bomb", "bomb.png", png_bomb(10_000, 10_000), "image_too_large", "over the 40000000-pixel limit"),
    ("decompression bomb past Pillow's own guard", "bigbomb.png", png_bomb(100_000, 100_000), "image_too_large", "decompression bomb"),
    ("huge dimensions", "huge.png", huge_dimensions(), "image_too_large", "8000x8000"),
    ("animated GIF", "anim.gif", animated_gif(), "image_invalid", "GIF, which is not supported"),
    ("multi-page TIFF", "pages.tif", multipage_tiff(), "image_invalid", "TIFF, which is not supported"),
    ("BMP", "old.bmp", encode(pattern(64, 64), "BMP"), "image_invalid", "BMP, which is not supported"),
]


@pytest.mark.parametrize("case, name, content, reason, fragment", IMAGES, ids=[i[0] for i in IMAGES])
def test_bad_images_fail_their_item_with_a_clear_reason(case, name, content, reason, fragment):
    with pytest.raises(ImageError) as caught:
        prepare_image(content, 256, 256, name=name)
    assert caught.value.reason == reason, str(caught.value)
    assert fragment in str(caught.value) and name in str(caught.value)


def test_files_that_are_not_regular_images(tmp_path):
    with pytest.raises(ImageError, match="not a file"):
        read_image_file(str(tmp_path))
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 2048)
    with pytest.raises(ImageError, match="2048 bytes"):
        read_image_file(str(big), ImageLimits(max_bytes=1024))


def test_odd_but_valid_images_render_with_a_warning():
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    animated = prepare_image(buffer.getvalue(), 64, 64, name="anim.webp")
    assert any("2 frames" in w for w in animated.warnings)
    renamed = prepare_image(encode(pattern(64, 64), "PNG"), 64, 64, name="photo.jpg")
    assert any("JPEG extension but contains PNG" in w for w in renamed.warnings)


# --- HTTP requests ----------------------------------------------------------------------------


class FakeCoordinator:
    """Stands in for the coordinator actor: the HTTP layer's validation is what is tested here."""

    def __init__(self):
        self.submitted = []

    async def call(self, method, *args, **kwargs):
        if method == "submit":
            self.submitted.append(args[0])
            return {"id": "j-fake"}
        if method in ("status", "cancel", "items", "video"):
            return None
        if method == "list_jobs":
            return {"jobs": [], "next_cursor": None}
        if method == "health":
            return {"ok": True}
        if method == "metrics_text":
            return b""
        raise AssertionError(method)


@pytest.fixture(scope="module")
def api():
    from fastapi.testclient import TestClient

    from farm.serve.app import ApiSettings, create_app

    settings = ApiSettings(token="t0ken", max_body_bytes=2 * 1024 * 1024, max_items=100, max_upload_bytes=1024 * 1024, max_upload_pixels=1_000_000)
    fake = FakeCoordinator()
    client = TestClient(create_app(fake, settings), raise_server_exceptions=False)
    client.headers["Authorization"] = "Bearer t0ken"
    client.fake = fake
    return client


S3_ITEM = {"image": "s3://in/a.png", "prompt": "p"}
HTTP = [
    # (case, method, path, kwargs, status, fragment)
    ("no token", "GET", "/v1/jobs", {"headers": {"Authorization": ""}}, 401, "bearer token"),
    ("wrong token", "GET", "/v1/jobs", {"headers": {"Authorization": "Bearer nope"}}, 401, "bearer token"),
    ("token without Bearer", "GET", "/v1/jobs", {"headers": {"Authorization": "t0ken"}}, 401, "bearer token"),
    ("malformed JSON", "POST", "/v1/jobs", {"content": b'{"version": 1, "items": [', "headers": {"Content-Type": "application/json"}}, 422, "invalid JSON"),
    ("YAML bomb over HTTP", "POST", "/v1/jobs", {"content": billion_laughs().encode(), "headers": {"Content-Type": "application/yaml"}}, 422, "anchors and aliases"),
    ("body over the limit", "POST", "/v1/jobs", {"content": b" " * (3 * 1024 * 1024), "headers": {"Content-Type": "application/json"}}, 413, "limit"),
    ("unsupported content type", "POST", "/v1/jobs", {"content": b"<x/>", "headers": {"Content-Type": "text/xml"}}, 415, "content type"),
    ("too many items", "POST", "/v1/jobs", {"json": {"version": 1, "items": [dict(S3_ITEM, id=str(n)) for n in range(101)]}}, 422, "at most 100"),
    ("local path over HTTP", "POST", "/v1/jobs", {"json": {"version": 1, "items": [{"image": "/etc/passwd", "prompt": "p"}]}}, 422, "local paths"),
    ("SSRF webhook", "POST", "/v1/jobs", {"json": {"version": 1, "notify_url": "http://169.254.169.254/x", "items": [S3_ITEM]}}, 422, "notify_url"),
    ("unknown job", "GET", "/v1/jobs/j-nope", {}, 404, "no job"),
    ("traversal in an item id", "GET", "/v1/jobs/j-x/items/..%2F..%2Fetc/video", {}, 404, ""),
    ("bad state filter", "GET", "/v1/jobs/j-x/items?state=exploded", {}, 422, "state"),
    ("negative limit", "GET", "/v1/jobs?limit=-3", {}, 422, "limit"),
    ("upload that is not an image", "POST", "/v1/renders", {"files": {"image": ("x.png", b"nope", "image/png")}, "data": {"prompt": "p"}}, 422, "not a recognisable image"),
    ("upload pixel bomb", "POST", "/v1/renders", {"files": {"image": ("b.png", png_bomb(2000, 2000), "image/png")}, "data": {"prompt": "p"}}, 422, "pixel limit"),
    ("upload with a bad parameter", "POST", "/v1/renders", {"files": {"image": ("a.png", encode(pattern(64, 64), "PNG"), "image/png")}, "data": {"prompt": "p", "fps": "99"}}, 422, "fps"),
    ("upload without a prompt", "POST", "/v1/renders", {"files": {"image": ("a.png", encode(pattern(64, 64), "PNG"), "image/png")}}, 422, "prompt"),
]


@pytest.mark.parametrize("case, method, path, kwargs, status, fragment", HTTP, ids=[h[0] for h in HTTP])
def test_bad_requests_get_a_4xx_that_says_why(api, case, method, path, kwargs, status, fragment):
    response = api.request(method, path, **kwargs)
    assert response.status_code == status, (case, response.status_code, response.text[:300])
    assert fragment in response.text, response.text[:500]


def test_the_corpus_is_big_enough():
    assert len(MANIFESTS) + len(IMAGES) + len(HTTP) >= 30


# --- a job around bad items -------------------------------------------------------------------


@pytest.mark.integration
def test_a_job_full_of_bad_images_still_renders_its_good_ones(tmp_path, tiny_model_dir):
    from conftest import subprocess_env

    items = []
    for n, (case, name, content, _reason, _fragment) in enumerate(IMAGES):
        (tmp_path / name).write_bytes(content)
        items.append({"id": f"bad-{n:02d}", "image": name, "prompt": case})
    for n in range(2):
        (tmp_path / f"good{n}.png").write_bytes(encode(pattern(320, 240), "PNG"))
        items.append({"id": f"good-{n}", "image": f"good{n}.png", "prompt": "fine"})
    items.append({"id": "invalid", "image": "good0.png", "prompt": "p", "frames": 99})
    manifest = tmp_path / "corpus.json"
    manifest.write_text(json.dumps({"version": 1, "name": "corpus", "model": "tiny",
                                    "defaults": {"resolution": 256, "frames": 8, "steps": 10}, "items": items}))
    result = subprocess.run(
        [sys.executable, "-m", "farm", "run", str(manifest), "--skip-invalid", "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, env=subprocess_env(),
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    record = json.loads((tmp_path / "out" / "corpus" / "job.json").read_text())
    assert record["counts"]["succeeded"] == 2 and record["counts"]["failed"] == len(IMAGES) + 1
    for n, (_case, name, _content, reason, _fragment) in enumerate(IMAGES):
        entry = record["items"][f"bad-{n:02d}"]
        assert entry["state"] == "failed" and entry["reason"] == reason and name in entry["message"]
    assert record["items"]["invalid"]["reason"] == "invalid_item"
