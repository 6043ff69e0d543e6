import json
from pathlib import Path

import pytest
import yaml

from farm.core.errors import ManifestError
from farm.core.manifest import JobOverrides, load_manifest, parse_manifest
from farm.core.params import ParamOverrides


def parse(document, fmt="yaml", **kwargs):
    text = yaml.safe_dump(document) if fmt == "yaml" and not isinstance(document, str) else document
    if fmt == "json" and not isinstance(document, str):
        text = json.dumps(document)
    return parse_manifest(text, fmt, base_dir=Path("/data/manifests"), **kwargs)


def errors_of(document, fmt="yaml", **kwargs):
    with pytest.raises(ManifestError) as caught:
        parse(document, fmt, **kwargs)
    return caught.value.issues


BASIC = {
    "version": 1,
    "name": "spring",
    "model": "tiny",
    "output": "out",
    "defaults": {"preset": "quick", "fps": 12},
    "items": [
        {"id": "cat", "image": "cat.png", "prompt": "a cat turns its head"},
        {"image": "/abs/dog.jpg", "prompt": "a dog runs", "frames": 24, "aspect": "16:9"},
    ],
}


def test_yaml_manifest_resolves_paths_defaults_and_ids():
    spec = parse(BASIC)
    assert spec.name == "spring" and spec.model == "tiny"
    assert spec.output == "/data/manifests/out"
    cat, dog = spec.items
    assert cat.id == "cat" and cat.image == "/data/manifests/cat.png"
    assert (cat.params.resolution, cat.params.frames, cat.params.fps, cat.params.steps) == (512, 8, 12, 30)
    assert dog.image == "/abs/dog.jpg" and dog.params.frames == 24 and dog.params.size == (896, 512)
    assert dog.id.startswith("dog-")
    assert dog.requested == {"frames": 24, "aspect": "16:9"}


def test_an_s3_output_in_the_manifest_is_kept_as_written():
    assert parse({**BASIC, "output": "s3://renders/spring"}).output == "s3://renders/spring"
    assert parse({**BASIC, "output": "out/./x"}).output == "/data/manifests/out/x"


def test_json_manifest_is_equivalent():
    assert [i.id for i in parse(BASIC, "json").items] == [i.id for i in parse(BASIC).items]


def test_derived_ids_are_stable_across_parses():
    assert parse(BASIC).items[1].id == parse(BASIC).items[1].id


def test_jsonl_takes_job_settings_from_the_caller():
    text = "\n".join(json.dumps(i) for i in BASIC["items"]) + "\n\n"
    overrides = JobOverrides(name="batch", model="tiny", output="/tmp/o", params=ParamOverrides(steps=20))
    spec = parse(text, "jsonl", overrides=overrides)
    assert spec.name == "batch" and spec.output == "/tmp/o" and len(spec.items) == 2
    assert all(item.params.steps == 20 for item in spec.items)


def test_csv_rows_are_items_and_numbers_are_parsed():
    text = 'id,image,prompt,frames,guidance_scale,resolution\ncat,cat.png,"a cat, slowly",24,7.5,256p\ndog,dog.png,a dog,,,\n'
    spec = parse(text, "csv")
    cat, dog = spec.items
    assert cat.prompt == "a cat, slowly" and cat.params.frames == 24 and cat.params.guidance_scale == 7.5
    assert cat.params.resolution == 256
    assert dog.params.frames == 16  # empty cells inherit


def test_every_error_is_reported_with_item_field_value_and_advice():
    document = {
        "version": 1,
        "defaults": {"frame": 8},
        "items": [
            {"id": "a", "image": "a.png", "prompt": "ok", "frames": 40, "colour": "red"},
            {"id": "b", "image": "b.png", "prompt": "ok"},
            {"id": "c", "image": "c.png", "prompt": "ok", "steps": 5, "guidance_scale": "high"},
            {"id": "b", "image": "d.png", "prompt": "ok"},
            {"image": "e.png"},
        ],
    }
    issues = errors_of(document)
    text = "\n".join(str(i) for i in issues)
    assert "field 'defaults.frame': unknown field 'frame'; did you mean 'frames'?" in text
    assert "items[0] (id 'a'), field 'frames': 40 is not allowed" in text and "from 8 to 32" in text
    assert "items[0] (id 'a'), field 'colour': unknown field" in text
    assert "items[2] (id 'c'), field 'steps': 5" in text and "from 10 to 100" in text
    assert "items[2] (id 'c'), field 'guidance_scale': 'high'" in text
    assert "items[3] (id 'b'), field 'id'" in text and "duplicates the id of items[1]" in text
    assert "items[4], field 'prompt': required" in text
    assert len(issues) == 7
    by_field = {(i.item_index, i.field): i for i in issues}
    assert by_field[(0, "frames")].value == 40


def test_duplicate_ids_after_sanitizing_are_errors():
    items = [{"id": "a b", "image": "x.png", "prompt": "p"}, {"id": "a b", "image": "y.png", "prompt": "p"}]
    issues = errors_of({"version": 1, "items": items})
    assert len(issues) == 1 and issues[0].item_index == 1


@pytest.mark.parametrize("reserved", ["job", "spec", "manifest"])
def test_ids_of_the_job_files_are_reserved(reserved):
    items = [{"id": reserved, "image": "x.png", "prompt": "p"}, {"id": "fine", "image": "y.png", "prompt": "p"}]
    issues = errors_of({"version": 1, "items": items})
    assert len(issues) == 1 and issues[0].item_index == 0 and issues[0].field == "id"
    assert f"{reserved!r} is reserved" in issues[0].message and "choose another id" in issues[0].message


def test_identical_items_without_ids_are_duplicates():
    items = [{"image": "x.png", "prompt": "p"}, {"image": "x.png", "prompt": "p"}]
    issues = errors_of({"version": 1, "items": items})
    assert "same derived id" in issues[0].message


def test_hostile_ids_are_sanitized_and_the_given_id_is_kept():
    spec = parse({"version": 1, "items": [{"id": "../../etc/passwd", "image": "x.png", "prompt": "p"}]})
    item = spec.items[0]
    assert "/" not in item.id and not item.id.startswith(".") and item.given_id == "../../etc/passwd"


def test_skip_invalid_keeps_the_valid_items():
    document = {
        "version": 1,
        "items": [{"id": "good", "image": "a.png", "prompt": "p"}, {"id": "bad", "image": "b.png", "prompt": "p", "fps": 99}],
    }
    spec = parse(document, skip_invalid=True)
    assert [i.id for i in spec.items] == ["good"]
    assert [r.id for r in spec.rejected] == ["bad"] and "fps" in spec.rejected[0].message
    assert spec.total == 2


def test_header_errors_cannot_be_skipped():
    with pytest.raises(ManifestError):
        parse({"version": 2, "items": [{"image": "a.png", "prompt": "p"}]}, skip_invalid=True)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("version: 1\nitems: [\n", "invalid YAML at line"),
        ("- 1\n- 2\n", "top level is list"),
        ("", "top level is empty"),
        ("version: 1\nitems: []\n", "items"),
        ("version: 1\n", "items"),
        ("a: &x [1, 2]\nb: *x\nversion: 1\nitems: []\n", "anchors and aliases"),
        ("version: 1\nitems:\n" + "  " + "[" * 40 + "]" * 40 + "\n", "nested"),
    ],
)
def test_broken_yaml_documents(text, fragment):
    issues = errors_of(text)
    assert any(fragment in str(issue) for issue in issues), issues


def test_billion_laughs_is_refused_quickly():
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 9):
        prev = chr(ord("a") + level - 1)
        name = chr(ord("a") + level)
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    lines += ["version: 1", "items: *i"]
    issues = errors_of("\n".join(lines))
    assert "anchors and aliases" in issues[0].message


def test_invalid_json_names_the_line():
    issues = errors_of('{"version": 1,\n "items": [}', "json")
    assert issues[0].line == 2


def test_jsonl_bad_lines_are_reported_with_their_line_numbers():
    text = '{"image": "a.png", "prompt": "p"}\nnot json\n{"image": "b.png", "prompt": "p", "fps": 1}\n'
    issues = errors_of(text, "jsonl")
    assert {(i.line, i.field) for i in issues} == {(2, None), (3, "fps")}


def test_csv_unknown_columns_are_reported_once():
    text = "image,prompt,colour\n" + "".join(f"{i}.png,p{i},red\n" for i in range(50))
    issues = errors_of(text, "csv")
    assert len(issues) == 1 and issues[0].field == "colour" and issues[0].line == 1


def test_non_utf8_is_refused_with_advice():
    with pytest.raises(ManifestError) as caught:
        parse_manifest(b"version: 1\nitems:\n - image: \xff\xfe.png\n", "yaml", base_dir=Path("."))
    assert "UTF-8" in str(caught.value) and caught.value.issues[0].line == 3


def test_remote_image_references():
    ok = parse({"version": 1, "items": [
        {"id": "a", "image": "s3://bucket/in/a.png", "prompt": "p"},
        {"id": "b", "image": "https://cdn.example.com/b.jpg", "prompt": "p"},
    ]})
    assert [i.image for i in ok.items] == ["s3://bucket/in/a.png", "https://cdn.example.com/b.jpg"]
    bad = [{"image": u, "prompt": "p", "id": str(n)} for n, u in enumerate(["ftp://x/a.png", "s3://bucket", "https:///a.png", "a\nb.png"])]
    issues = errors_of({"version": 1, "items": bad})
    assert [i.item_index for i in issues] == [0, 1, 2, 3] and all(i.field == "image" for i in issues)
    assert "ftp:// images are not supported" in issues[0].message and "s3://BUCKET/KEY" in issues[1].message


def test_wrong_types_and_oversized_prompts():
    items = [
        {"image": 5, "prompt": "p"},
        {"image": "a.png", "prompt": ["list"]},
        {"image": "b.png", "prompt": "x" * 5000},
        {"image": "c.png", "prompt": ""},
    ]
    issues = errors_of({"version": 1, "items": items})
    assert [(i.item_index, i.field) for i in issues] == [(0, "image"), (1, "prompt"), (2, "prompt"), (3, "prompt")]


def test_model_precedence(tmp_path):
    document = dict(BASIC)
    assert parse(document, env_model="env-model").model == "tiny"
    del document["model"]
    assert parse(document, env_model="env/model").model == "env/model"
    assert parse(document).model == "ali-vilab/i2vgen-xl"
    assert parse(document, overrides=JobOverrides(model="cli/model"), env_model="env/model").model == "cli/model"


def test_load_manifest_detects_format_and_refuses_unknown_extensions(tmp_path):
    path = tmp_path / "job.yml"
    path.write_text(yaml.safe_dump(BASIC))
    assert load_manifest(path).items[0].image == str(tmp_path / "cat.png")
    with pytest.raises(ManifestError, match="unknown manifest extension"):
        load_manifest(tmp_path / "job.txt")
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "missing.yaml")


def test_job_name_defaults_to_file_name_and_is_sanitized(tmp_path):
    path = tmp_path / "My Batch.jsonl"
    path.write_text('{"image": "a.png", "prompt": "p"}\n')
    name = load_manifest(path).name
    assert name.startswith("My-Batch-") and "/" not in name
