"""A `farm run` job (CLI subprocess, embedded Ray, tiny model) whose manifest holds every bad image
of the corpus (tests/bad_inputs.py): it finishes its good items and fails each bad one with the
right reason."""

import json
import subprocess
import sys

import pytest
from bad_inputs import IMAGES
from conftest import subprocess_env
from helpers import encode, pattern

pytestmark = pytest.mark.integration


def test_a_job_full_of_bad_images_still_renders_its_good_ones(tmp_path, tiny_model_dir):
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
