"""`farm models`, and `farm validate`/`farm plan` on a manifest that mixes model families, as a
user runs them (a subprocess each; no Ray, no weights read)."""

import json

import pytest
from PIL import Image
from test_cli_inputs import farm, invalid, write

from farm.core.families import FAMILIES

pytestmark = pytest.mark.integration


def test_farm_models_lists_every_family_with_its_rules_and_fit():
    result = farm("models", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["family"]: row for row in json.loads(result.stdout)}
    assert set(rows) == set(FAMILIES)
    assert rows["wan"]["frames"].startswith("4k+1") and rows["wan"]["tiny"] == "tiny:wan"
    assert rows["svd"]["prompt"].startswith("not used")
    assert all(row["hub_ids"] and row["fits"]["all_savers"]["smallest_tier"] for row in rows.values())
    text = farm("models").stdout
    assert "hf download HUB_ID" in text and "ltx-video: LTX-Video" in text


def mixed(tmp_path, **wan_fields):
    Image.new("RGB", (64, 64), (20, 90, 160)).save(tmp_path / "a.png")
    items = [
        {"id": "i2v", "image": "a.png", "prompt": "waves"},
        {"id": "wan", "image": "a.png", "prompt": "waves", "model": "tiny:wan", "resolution": 480, "aspect": "16:9", **wan_fields},
        {"id": "ltx", "image": "a.png", "prompt": "waves", "model": "tiny:ltx", "frames": 25},
        {"id": "cog", "image": "a.png", "prompt": "waves", "model": "tiny:cogvideox", "frames": 49},
        {"id": "svd", "image": "a.png", "prompt": "waves", "model": "tiny:svd", "resolution": 576, "aspect": "16:9", "frames": 14},
    ]
    return write(tmp_path / "mixed.json", {"version": 1, "model": "tiny", "items": items})


def test_validate_shows_each_family_s_rules_and_plan_gives_a_tier_per_item(tmp_path):
    manifest = mixed(tmp_path, frames=81)
    result = farm("validate", manifest)
    assert result.returncode == 0, result.stderr
    assert "1 item(s) Wan 2.x image-to-video: 4k+1 frames" in result.stdout
    assert "1 item(s) Stable Video Diffusion" in result.stdout and "prompt not used" in result.stdout
    plan = json.loads(farm("plan", manifest, "--json").stdout)
    by_id = {p["item_id"]: p for p in plan["items"]}
    assert {k: p["family"] for k, p in by_id.items()} == {
        "i2v": "i2vgen-xl", "wan": "wan", "ltx": "ltx-video", "cog": "cogvideox", "svd": "svd"}
    assert all(p["tier"] for p in by_id.values())
    assert by_id["wan"]["estimate_gib"] > by_id["i2v"]["estimate_gib"]
    text = farm("plan", manifest).stdout
    assert "wan" in text and "ltx-video" in text


def test_validate_refuses_a_frame_count_the_item_s_family_does_not_render(tmp_path):
    stderr = invalid("validate", mixed(tmp_path, frames=80))
    assert "items[1] (id 'wan'), field 'frames': 80 is not allowed for Wan" in stderr
    assert "the nearest allowed is 81" in stderr
