"""The bad-input corpus: hostile or broken manifests, images and HTTP requests, built in code so
the corpus documents itself.

Each case must get a clear error that names what is wrong (the item, the field or the file, and
the value or the problem), without a crash; and a job that contains bad items must finish its
good ones. The tests, by layer: tests/unit/test_bad_inputs_manifest.py (manifests, and the size of
the corpus), tests/unit/test_bad_inputs_images.py (image files and URLs),
tests/unit/test_bad_inputs_http.py (the HTTP API, in process with a fake coordinator) and
tests/integration/test_bad_inputs_job.py (a `farm run` job full of bad images).
"""

import io
import json
import os
import struct
import zlib

from helpers import encode, noise, pattern, png_bomb
from PIL import Image

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
    ("resolution not offered", "json", doc(item(resolution="4k")), "resolution", "256, 480, 512, 576, 720, 768 or 1024"),
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


# --- HTTP requests ----------------------------------------------------------------------------

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
