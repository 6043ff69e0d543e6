import pytest
from pydantic import ValidationError

from farm.core.params import PRESETS, ParamOverrides, frame_size, resolve_params


def test_default_is_the_standard_preset_of_the_seeds():
    params = resolve_params()
    assert (params.resolution, params.frames, params.fps, params.steps, params.guidance_scale) == (512, 16, 8, 50, 9.0)
    assert params.aspect == "1:1" and params.negative_prompt == "" and params.seed is None


@pytest.mark.parametrize(
    "preset, expected",
    [("quick", (512, 8, 8, 30, 9.0)), ("standard", (512, 16, 8, 50, 9.0)), ("high", (768, 24, 12, 80, 10.0))],
)
def test_presets(preset, expected):
    params = resolve_params(ParamOverrides(preset=preset))
    assert (params.resolution, params.frames, params.fps, params.steps, params.guidance_scale) == expected
    assert set(PRESETS) == {"quick", "standard", "high", "portrait", "landscape", "animal"}


def test_layers_resolve_lowest_first_and_an_item_preset_beats_job_values():
    job = ParamOverrides(preset="high", frames=16, fps=10)
    cli = ParamOverrides(steps=20)
    item = ParamOverrides(preset="quick", seed=7)
    params = resolve_params(job, cli, item)
    assert params.resolution == 512 and params.frames == 8 and params.fps == 8  # the item's preset
    assert params.steps == 30  # the item's preset beats the CLI's explicit value
    assert params.seed == 7
    params = resolve_params(job, cli, ParamOverrides(guidance_scale=3))
    assert (params.resolution, params.frames, params.fps, params.steps, params.guidance_scale) == (768, 16, 10, 20, 3.0)


@pytest.mark.parametrize("resolution", [256, 512, 768, 1024])
@pytest.mark.parametrize("aspect", ["1:1", "16:9", "9:16"])
def test_frame_sizes_are_multiples_of_64_with_the_requested_short_side(resolution, aspect):
    width, height = frame_size(resolution, aspect)
    assert width % 64 == 0 and height % 64 == 0
    assert min(width, height) == resolution
    if aspect != "1:1":
        ratio = max(width, height) / min(width, height)
        assert abs(ratio - 16 / 9) < 0.06
        assert (width > height) == (aspect == "16:9")


def test_known_sizes():
    assert frame_size(512, "16:9") == (896, 512)
    assert frame_size(256, "9:16") == (256, 448)
    assert frame_size(1024, "16:9") == (1792, 1024)


@pytest.mark.parametrize("value", [512, "512", "512p", "512P"])
def test_resolution_accepts_the_p_suffix(value):
    assert ParamOverrides(resolution=value).resolution == 512


@pytest.mark.parametrize(
    "field, value",
    [
        ("resolution", 500),
        ("resolution", "4k"),
        ("frames", 1),
        ("frames", 258),
        ("frames", 16.5),
        ("frames", True),
        ("fps", 3),
        ("fps", 25),
        ("steps", 9),
        ("steps", 101),
        ("guidance_scale", 0.5),
        ("guidance_scale", 20.5),
        ("guidance_scale", "high"),
        ("seed", -1),
        ("seed", 2**32),
        ("aspect", "4:3"),
        ("preset", "ultra"),
        ("negative_prompt", "x" * 2001),
    ],
)
def test_out_of_range_values_are_rejected(field, value):
    with pytest.raises(ValidationError) as caught:
        ParamOverrides(**{field: value})
    assert caught.value.errors()[0]["loc"][0] == field


def test_unknown_parameters_are_rejected():
    with pytest.raises(ValidationError):
        ParamOverrides(frame=16)


@pytest.mark.parametrize("name, values", [
    ("portrait", (512, 8, 8, 40, 8.0)),
    ("landscape", (768, 16, 12, 60, 9.5)),
    ("animal", (512, 24, 10, 70, 10.0)),
])
def test_the_seeds_scene_templates_are_presets(name, values):
    from farm.core.params import PRESETS, ParamOverrides, resolve_params

    params = resolve_params(ParamOverrides(preset=name))
    assert (params.resolution, params.frames, params.fps, params.steps, params.guidance_scale) == values
    assert set(PRESETS[name]) == {"resolution", "frames", "fps", "steps", "guidance_scale"}
