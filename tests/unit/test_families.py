"""Each family's parameter rules, at manifest time: the item, the field, the value and the nearest allowed."""

import pytest

from farm.core.families import (
    COGVIDEOX,
    FAMILIES,
    I2VGEN_XL,
    LTX_VIDEO,
    SVD,
    WAN,
    UnknownFamilyError,
    adapt_params,
    check_params,
    family_for_pipeline_class,
    known_family,
)
from farm.core.manifest import JobSpec
from farm.core.vram import PROFILES, estimate_vram, profile_for_model
from tests.unit.test_manifest import errors_of, parse


def item(**fields):
    return {"image": "a.png", "prompt": "waves roll in", **fields}


def test_every_family_has_a_profile_a_tiny_variant_and_an_allowed_default():
    for name, rules in FAMILIES.items():
        assert name in PROFILES
        assert rules.tiny and known_family(rules.tiny) is rules
        assert rules.default_frames in rules.allowed_frames()
        assert family_for_pipeline_class(rules.pipeline_classes[0]) is rules


def test_frame_rules_name_the_value_and_the_nearest_allowed():
    assert WAN.allowed_frames()[:3] == [5, 9, 13]
    assert LTX_VIDEO.allowed_frames()[:3] == [9, 17, 25]
    (issue,) = check_params(WAN, width=832, height=480, frames=16, prompt="x").issues
    assert (issue.field, issue.value, issue.nearest) == ("frames", 16, 17)
    assert "4k+1" in issue.message and "the nearest allowed is 17" in issue.message
    (issue,) = check_params(LTX_VIDEO, width=704, height=480, frames=24, prompt="x").issues
    assert issue.nearest == 25 and "8k+1" in issue.message
    assert not check_params(I2VGEN_XL, width=512, height=512, frames=16, prompt="x").issues


def test_size_rules_give_the_nearest_size():
    (issue,) = check_params(LTX_VIDEO, width=720, height=480, frames=25, prompt="x").issues
    assert issue.field == "resolution" and issue.nearest == (704, 480) and "multiples of 32" in issue.message


def test_an_image_only_family_records_that_the_prompt_is_unused():
    check = check_params(SVD, width=1024, height=576, frames=14, prompt="a dog runs")
    assert not check.issues and "image only" in check.warnings[0]


def test_values_an_item_did_not_set_move_to_what_the_family_renders():
    values = {"resolution": 512, "aspect": "1:1", "frames": 16, "fps": 8, "steps": 50, "guidance_scale": 9.0}
    adapted, notes = adapt_params(WAN, values, explicit=set())
    assert adapted["frames"] == 17 and adapted["fps"] == WAN.native_fps and adapted["guidance_scale"] == 5.0
    assert "16 -> 17" in notes[0]
    kept, _ = adapt_params(WAN, values, explicit={"frames", "fps", "guidance_scale", "steps"})
    assert kept == values  # explicit values are checked, never changed


def test_a_mixed_manifest_validates_each_item_against_its_own_family():
    spec = parse({"version": 1, "model": "tiny", "items": [
        item(id="i2v"),
        item(id="wan", model="tiny:wan"),
        item(id="ltx", model="tiny:ltx", frames=25, resolution=512, aspect="16:9"),
    ]}, "json")
    by_id = {i.id: i for i in spec.items}
    assert by_id["i2v"].model is None and by_id["i2v"].family == "i2vgen-xl" and by_id["i2v"].params.frames == 16
    assert by_id["wan"].family == "wan" and by_id["wan"].params.frames == 17  # the preset's 16, moved
    assert by_id["ltx"].params.frames == 25
    again = JobSpec.from_dict(spec.to_dict())
    assert [(i.model, i.family) for i in again.items] == [(i.model, i.family) for i in spec.items]


def test_an_explicit_value_a_family_refuses_is_an_error_of_that_item():
    issues = errors_of({"version": 1, "items": [
        item(id="ok"),
        item(id="w", model="tiny:wan", frames=16),
        item(id="l", model="tiny:ltx", resolution=720, aspect="3:2", frames=25),
        item(id="x", model="tiny:nope"),
    ]}, "json")
    text = "\n".join(map(str, issues))
    assert "items[1] (id 'w'), field 'frames': 16 is not allowed for Wan" in text and "nearest allowed is 17" in text
    assert "items[2] (id 'l'), field 'resolution': 1088x720 is not allowed for LTX-Video" in text
    assert "items[3] (id 'x'), field 'model'" in text and "tiny:wan" in text
    assert "items[0]" not in text


def test_i2vgen_xl_keeps_its_frame_range_under_the_wider_generic_one():
    issues = errors_of({"version": 1, "items": [item(id="a", frames=40)]}, "json")
    assert "field 'frames': 40 is not allowed for I2VGen-XL" in str(issues[0]) and "from 8 to 32" in str(issues[0])


def test_the_same_image_and_prompt_on_two_models_are_two_items():
    spec = parse({"version": 1, "items": [item(), item(model="tiny:svd")]}, "json")
    assert len({i.id for i in spec.items}) == 2


def test_cogvideox_3_2_gives_its_trained_size():
    spec = parse({"version": 1, "model": "tiny:cogvideox",
                  "items": [item(resolution=480, aspect="3:2", frames=COGVIDEOX.default_frames)]}, "json")
    assert spec.items[0].params.size == (720, 480)


def test_profiles_follow_the_reference_and_the_estimate_grows_with_tokens():
    assert profile_for_model("tiny:wan").name == "wan"
    assert profile_for_model("Lightricks/LTX-Video").name == "ltx-video"
    assert profile_for_model("/some/folder").name == "i2vgen-xl"
    wan = PROFILES["wan"]
    small, large = (estimate_vram(wan, w, h, 81).total_bytes for w, h in ((832, 480), (1280, 720)))
    assert small < large
    with pytest.raises(UnknownFamilyError):
        known_family("tiny:nope")


def test_each_family_degrades_frames_only_to_counts_it_accepts():
    from farm.core.ladder import FRAMES, RenderSettings, next_step

    for rules in FAMILIES.values():
        assert all(f in rules.allowed_frames() for f in rules.frame_ladder), rules.name
        assert list(rules.frame_ladder) == sorted(rules.frame_ladder, reverse=True)
    settings = RenderSettings(480, "16:9", 81, frame_steps=WAN.frame_ladder)
    step, lower = next_step(settings, mode="allowed", order=(FRAMES,))
    assert lower.frames == 61 and lower.frames in WAN.allowed_frames()


def test_a_mixed_job_is_planned_per_item_with_each_family_s_profile():
    from farm.core.planner import plan_job
    from farm.core.tiers import ClusterShape, load_tier_table

    spec = parse({"version": 1, "items": [
        item(id="i2v"), item(id="wan", model="tiny:wan", resolution=480, aspect="16:9", frames=81),
        item(id="svd", model="tiny:svd", resolution=576, aspect="16:9", frames=14),
    ]}, "json")
    table = load_tier_table()
    plan = plan_job(spec, ClusterShape({name: 1 for name in table.names()}), table)
    by_id = {p.item_id: p for p in plan.items}
    assert {k: p.family for k, p in by_id.items()} == {"i2v": "i2vgen-xl", "wan": "wan", "svd": "svd"}
    assert by_id["wan"].estimate.total_bytes > by_id["i2v"].estimate.total_bytes


def test_a_model_with_narrower_rules_than_its_family_is_held_to_them():
    issues = errors_of({"version": 1, "model": "THUDM/CogVideoX-5b-I2V", "items": [
        item(id="short", resolution=480, aspect="3:2", frames=33),
        item(id="square", resolution=512, frames=49),
    ]}, "json")
    text = "\n".join(map(str, issues))
    assert "(id 'short'), field 'frames': 33 is not allowed for CogVideoX-5b-I2V" in text and "49" in text
    assert "(id 'square'), field 'resolution': 512x512 is not allowed for CogVideoX-5b-I2V" in text
    assert "only 720x480" in text and "aspect 3:2" in text
    spec = parse({"version": 1, "model": "tiny:cogvideox", "items": [item(resolution=512, frames=33)]}, "json")
    assert spec.items[0].params.frames == 33  # the tiny variant takes the family's wider rules


def test_each_family_climbs_its_own_saver_levels_and_each_level_saves_memory():
    from farm.core.ladder import MEMORY_SAVERS, RenderSettings, next_decode_step, next_step
    from farm.core.planner import Planner
    from farm.core.tiers import ClusterShape, load_tier_table

    table = load_tier_table()
    for name, rules in FAMILIES.items():
        assert rules.saver_levels[0] == () and set(rules.saver_levels[-1]) <= set(rules.savers) | {"ff_chunking"}
        planner = Planner(table, ClusterShape({"80g": 1}), PROFILES[name])
        assert planner.saver_levels == rules.saver_levels
        settings = RenderSettings(480, "16:9", rules.default_frames, saver_levels=rules.saver_levels)
        sizes = []
        while True:
            sizes.append(planner.estimate(settings, True).total_bytes)
            option = next_step(settings, mode="memory_savers", order=(MEMORY_SAVERS,))
            if option is None:
                break
            settings = option[1]
        assert settings.savers == rules.saver_levels[-1]
        assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0], (name, sizes)
    wan = RenderSettings(480, "16:9", 81, saver_levels=WAN.saver_levels)
    assert "group_offload" in WAN.saver_levels[-1] and "fp8_layerwise" in WAN.saver_levels[-1]
    assert next_decode_step(wan, mode="allowed")[1].savers == ("vae_slicing", "vae_tiling")
