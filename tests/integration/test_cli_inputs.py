"""`farm validate` and `farm plan` on hostile inputs, as a user runs them: a subprocess each.

Every case must end fast with exit 2 (or 0 for `plan`, which reports invalid items and plans the
rest), say what is wrong, and never print a traceback. Neither command starts Ray.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import subprocess_env

pytestmark = pytest.mark.integration

EXIT_INVALID = 2


def farm(*args, env=None, timeout=60):
    result = subprocess.run(
        [sys.executable, "-m", "farm", *map(str, args)],
        capture_output=True, text=True, env=subprocess_env(**(env or {})), timeout=timeout,
    )
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def invalid(*args, **kwargs):
    result = farm(*args, **kwargs)
    assert result.returncode == EXIT_INVALID, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    return result.stderr


def write(path, document):
    path.write_text(json.dumps(document))
    return path


def test_validate_refuses_a_directory(tmp_path):
    (tmp_path / "jobs.yaml").mkdir()
    assert "is a directory; a manifest must be a regular file" in invalid("validate", tmp_path / "jobs.yaml")
    assert "is a directory" in invalid("validate", tmp_path)


def test_validate_refuses_a_fifo_at_once(tmp_path):
    os.mkfifo(tmp_path / "m.json")
    assert "a named pipe (FIFO)" in invalid("validate", tmp_path / "m.json", timeout=30)


def test_validate_refuses_a_symlink_to_dev_zero(tmp_path):
    (tmp_path / "m.yaml").symlink_to("/dev/zero")
    assert "a character device" in invalid("validate", tmp_path / "m.yaml", timeout=30)


def test_validate_refuses_an_oversized_manifest(tmp_path):
    path = write(tmp_path / "m.json", {"version": 1, "items": [{"image": "a.png", "prompt": "p" * 500}]})
    stderr = invalid("validate", path, env={"FARM_MAX_MANIFEST_BYTES": "100"})
    assert "over the 100-byte limit" in stderr


def test_validate_refuses_duplicate_keys(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nitems:\n  - image: a.png\n    prompt: p\n    prompt: q\n")
    assert "key 'prompt' appears twice in this mapping (lines 4 and 5)" in invalid("validate", path)
    result = farm("validate", path, "--json")
    (error,) = json.loads(result.stdout)["errors"]
    assert (error["field"], error["item_index"], error["line"]) == ("prompt", 0, 5)


def test_validate_refuses_nan_with_strict_json(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{"version": 1, "items": [{"image": "a.png", "prompt": "p\\ud800", "guidance_scale": NaN}]}')
    result = farm("validate", path, "--json")
    assert result.returncode == EXIT_INVALID
    errors = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} in the answer"))["errors"]
    assert {e["field"] for e in errors} == {"prompt", "guidance_scale", "image"}  # a.png is missing too


def test_validate_reports_missing_images_as_errors_of_their_items(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    items = [{"id": "a", "image": "a.png", "prompt": "p"}, {"id": "b", "image": "photos/b.png", "prompt": "p"}]
    path = write(tmp_path / "m.json", {"version": 1, "items": items})
    stderr = invalid("validate", path)
    assert "items[1] (id 'b'), field 'image': image file not found: 'photos/b.png'" in stderr
    assert "relative to the manifest's folder" in stderr and "items[0]" not in stderr
    result = farm("validate", path, "--json")
    (error,) = json.loads(result.stdout)["errors"]
    assert (error["item_index"], error["item_id"], error["field"], error["value"]) == (1, "b", "image", "photos/b.png")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "b.png").write_bytes(b"x")
    result = farm("validate", path)
    assert result.returncode == 0 and "valid, 2 items" in result.stdout


def test_plan_names_the_invalid_items(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    items = [
        {"id": "good", "image": "a.png", "prompt": "p"},
        {"id": "lost", "image": "gone.png", "prompt": "p"},
        {"id": "fast", "image": "a.png", "prompt": "q", "fps": 99},
    ]
    path = write(tmp_path / "m.json", {"version": 1, "model": "tiny", "items": items})
    result = farm("plan", path, "--gpus", "24g:1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 items, 0 with planned degradations, 0 rejected, 2 invalid" in result.stdout
    assert "items[1] (id 'lost'): image: image file not found: 'gone.png'" in result.stdout
    assert "items[2] (id 'fast'): fps:" in result.stdout
    document = json.loads(farm("plan", path, "--gpus", "24g:1", "--json").stdout)
    assert [(i["index"], i["id"]) for i in document["invalid_items"]] == [(1, "lost"), (2, "fast")]
    assert [i["item_id"] for i in document["items"]] == ["good"]


def test_a_huge_jsonl_line_gets_a_short_answer(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"image": "a.png", "prompt": "x" * (8 * 1024 * 1024), "k" * 100_000: 1}) + "\n")
    result = farm("validate", path, "--json")
    assert result.returncode == EXIT_INVALID
    assert len(result.stdout) < 64 * 1024 and len(result.stderr) < 64 * 1024
    fields = {e["field"] for e in json.loads(result.stdout)["errors"]}
    assert {"prompt", "image"} < fields and len(fields) == 3  # and the unknown field, cut


def test_the_output_is_normalised(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    path = write(tmp_path / "m.json", {"version": 1, "items": [{"image": "a.png", "prompt": "p"}]})
    result = farm("validate", path, "--json", "--output", str(tmp_path / "renders") + "//")
    assert json.loads(result.stdout)["output"] == str(tmp_path / "renders")
