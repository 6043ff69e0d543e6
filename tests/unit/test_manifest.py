import json
import os
import pickle
import threading
from pathlib import Path

import pytest
import yaml

from farm.core.errors import ManifestError, ManifestIssue, excerpt
from farm.core.ids import derive_item_id
from farm.core.job import RenderTask
from farm.core.manifest import JobOverrides, JobSpec, parse_manifest
from farm.core.params import ParamOverrides
from farm.storage.manifest_file import load_manifest


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


# --- hostile input (issue 13) ----------------------------------------------------------------


def returns_quickly(call, seconds=10.0):
    """Run `call` in a thread; fail (rather than hang the suite) if it blocks."""
    outcome = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed back to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{call} blocked for more than {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def manifest_error(call) -> ManifestError:
    with pytest.raises(ManifestError) as caught:
        returns_quickly(call)
    return caught.value


def test_a_directory_is_not_a_manifest(tmp_path):
    (tmp_path / "jobs.yaml").mkdir()
    for path in (tmp_path / "jobs.yaml", tmp_path):
        message = manifest_error(lambda: load_manifest(path)).issues[0].message
        assert "is a directory" in message and "must be a regular file" in message


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "m.json"
    os.mkfifo(fifo)
    message = manifest_error(lambda: load_manifest(fifo)).issues[0].message
    assert "a named pipe (FIFO)" in message and "regular file" in message


def test_a_symlink_to_a_device_is_never_read(tmp_path):
    link = tmp_path / "m.yaml"
    link.symlink_to("/dev/zero")
    message = manifest_error(lambda: load_manifest(link)).issues[0].message
    assert "a character device" in message


def test_a_symlink_to_a_regular_file_is_fine(tmp_path):
    real = tmp_path / "real.yml"
    real.write_text(yaml.safe_dump(BASIC))
    link = tmp_path / "link.yml"
    link.symlink_to(real)
    assert len(load_manifest(link).items) == 2


def test_the_size_limit_is_a_setting(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(BASIC))
    size = path.stat().st_size
    message = manifest_error(lambda: load_manifest(path, max_bytes=100)).issues[0].message
    assert f"{size} bytes, over the 100-byte limit" in message
    # The setting (FARM_MAX_MANIFEST_BYTES) is read once by the edge and passed as max_bytes.
    from farm.settings import SettingsError, load_settings

    limit = load_settings({"FARM_MAX_MANIFEST_BYTES": "50"}).max_manifest_bytes
    assert "over the 50-byte limit" in manifest_error(lambda: load_manifest(path, max_bytes=limit)).issues[0].message
    assert len(load_manifest(path, max_bytes=size).items) == 2
    with pytest.raises(SettingsError, match="FARM_MAX_MANIFEST_BYTES='lots'"):
        load_settings({"FARM_MAX_MANIFEST_BYTES": "lots"})


def test_a_file_without_a_size_is_still_read_bounded(tmp_path):
    # Files under /proc say they are 0 bytes long; the read stops at the limit all the same.
    error = manifest_error(lambda: load_manifest(Path("/proc/self/maps").resolve(), max_bytes=10))
    assert "unknown manifest extension" in error.issues[0].message  # refused by extension first
    from farm.storage.manifest_file import read_manifest_file

    with pytest.raises(ManifestError, match="over the 10-byte limit"):
        read_manifest_file("/proc/self/maps", 10)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_manifest_says_so(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("{}")
    path.chmod(0)
    assert "permission denied" in manifest_error(lambda: load_manifest(path)).issues[0].message


def test_duplicate_yaml_keys_name_the_key_and_lines_at_any_depth():
    text = (
        "version: 1\n"
        "defaults:\n"
        "  frames: 8\n"
        "  frames: 16\n"
        "items:\n"
        "  - image: a.png\n"
        "    prompt: p\n"
        "    prompt: q\n"
        "    prompt: r\n"
        "  - image: b.png\n"
        "    prompt: p\n"
    )
    issues = errors_of(text, skip_invalid=True)
    by_field = {i.field: i for i in issues}
    assert by_field["defaults.frames"].line == 4 and by_field["defaults.frames"].item_index is None
    assert "key 'frames' appears twice in this mapping (lines 3 and 4); keep one" in by_field["defaults.frames"].message
    prompt = by_field["prompt"]
    assert prompt.item_index == 0 and prompt.line == 9
    assert "appears 3 times in this mapping (lines 7, 8 and 9)" in prompt.message


def test_yaml_merge_keys_are_not_duplicates():
    text = "version: 1\nitems:\n  - <<: {image: a.png, prompt: p}\n    prompt: q\n"
    assert parse(text).items[0].prompt == "q"


def test_duplicate_json_keys_are_found_fast_and_located():
    text = '{\n "version": 1,\n "items": [\n  {"image": "a.png", "prompt": "p"},\n  {"image": "b.png",\n   "prompt": "p",\n   "prompt": "q"}\n ]\n}'
    spec = parse(text, "json", skip_invalid=True)
    assert [i.image for i in spec.items] == ["/data/manifests/a.png"]
    (issue,) = spec.rejected[0].issues
    assert (issue.field, issue.item_index, issue.line) == ("prompt", 1, 7)
    assert "key 'prompt' appears twice in this mapping (lines 6 and 7); keep one" in issue.message


def test_a_jsonl_line_with_a_repeated_key_rejects_only_its_item():
    text = '{"image": "a.png", "prompt": "p"}\n{"image": "b.png", "prompt": "p", "prompt": "q"}\n{"image": "c.png", "prompt": "p"}\n'
    spec = parse(text, "jsonl", skip_invalid=True)
    assert len(spec.items) == 2 and [r.index for r in spec.rejected] == [1]
    issue = spec.rejected[0].issues[0]
    assert (issue.field, issue.line) == ("prompt", 2) and "appears twice" in issue.message
    with pytest.raises(ManifestError):
        parse(text, "jsonl")


def test_a_broken_jsonl_line_no_longer_stops_the_others():
    spec = parse('{"image": "a.png", "prompt": "p"}\n{broken\n', "jsonl", skip_invalid=True)
    assert len(spec.items) == 1 and spec.rejected[0].issues[0].line == 2


def test_jsonl_lines_end_only_at_newlines():
    text = json.dumps({"image": "a.png", "prompt": "one\u2028two\x85three"}, ensure_ascii=False) + "\n"
    assert parse(text, "jsonl").items[0].prompt == "one\u2028two\x85three"


@pytest.mark.parametrize("literal, word", [("NaN", "NaN is not a number"), ("Infinity", "Infinity is not a finite"),
                                           ("-Infinity", "-Infinity is not a finite"), ("1e400", "Infinity is not a finite")])
def test_non_finite_json_numbers_are_errors_of_their_field(literal, word):
    text = '{"version": 1, "items": [{"image": "a.png", "prompt": "p", "guidance_scale": %s}]}' % literal
    issues = errors_of(text, "json")
    assert len(issues) == 1  # reported once: the walk's message replaces the range error
    assert (issues[0].field, issues[0].item_index) == ("guidance_scale", 0)
    assert word in issues[0].message and "from 1 to 20" in issues[0].message
    assert json.dumps(issues[0].to_dict(), allow_nan=False)


def test_every_non_finite_number_is_listed_at_once():
    text = (
        '{"version": 1, "defaults": {"guidance_scale": NaN}, "items": ['
        '{"image": "a.png", "prompt": "p", "frames": Infinity},'
        '{"image": "b.png", "prompt": "p", "extra": {"deep": [1, -Infinity]}}]}'
    )
    issues = errors_of(text, "json", skip_invalid=True)  # one in the defaults: the job cannot run
    assert {(i.item_index, i.field) for i in issues} == {
        (None, "defaults.guidance_scale"), (0, "frames"), (1, "extra.deep.1"), (1, "extra")
    }


def test_yaml_nan_and_inf_are_refused():
    issues = errors_of("version: 1\nitems:\n  - {image: a.png, prompt: p, steps: .nan, guidance_scale: -.inf}\n")
    assert {i.field for i in issues} == {"steps", "guidance_scale"}
    assert all(i.item_index == 0 for i in issues)


def test_lone_surrogates_are_refused_in_values_and_keys():
    text = '{"version": 1, "items": [{"image": "a.png", "prompt": "p\\udcff", "negative_prompt": "ok \\ud83d\\ude00"}, {"image": "b.png", "prompt": "p", "\\ud800": 1}]}'
    issues = errors_of(text, "json")
    assert [(i.item_index, i.field) for i in issues] == [(0, "prompt"), (1, "\\ud800")]
    assert "lone surrogate (\\udcff)" in issues[0].message and "the key '\\ud800'" in issues[1].message
    for issue in issues:
        json.dumps(issue.to_dict(), ensure_ascii=False).encode("utf-8")
        str(issue).encode("utf-8")


def test_a_valid_surrogate_pair_is_just_text():
    spec = parse('{"version": 1, "items": [{"image": "a.png", "prompt": "\\ud83d\\ude00"}]}', "json")
    assert spec.items[0].prompt == "\U0001f600"


def test_huge_values_are_echoed_as_an_excerpt():
    prompt = "x" * 1_000_000
    issues = errors_of({"version": 1, "items": [{"image": "a.png", "prompt": prompt, "k" * 1_000_000: 1}]}, "json")
    for issue in issues:
        assert len(issue.message) <= 500 and len(json.dumps(issue.to_dict())) < 2000
    assert any("(1000000 characters)" in i.message for i in issues)


def test_excerpt_and_issue_limits():
    assert excerpt("short") == "'short'"
    cut = excerpt("y" * 1000)
    assert cut.startswith("'yyy") and cut.endswith("... (1000 characters)") and len(cut) < 120
    assert excerpt("a\ud800") == "'a\\ud800'"
    assert excerpt(float("nan")) == "NaN" and excerpt(float("-inf")) == "-Infinity" and excerpt(True) == "true"
    assert len(excerpt(list(range(10**6)))) < 150
    issue = ManifestIssue("m" * 10_000, field="f" * 10_000, item_id="\ud800" * 5, value=float("inf"))
    assert len(issue.message) <= 500 and len(issue.field) <= 200
    data = issue.to_dict()
    assert data["value"] == "Infinity"
    json.dumps(data, allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert ManifestIssue("m", value="v" * 10_000).to_dict()["value"].endswith("(10000 characters)")
    assert ManifestIssue("m", value=10**40).to_dict()["value"] == str(10**40)


def test_local_images_are_stored_canonical_and_ids_use_the_path_as_written(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.png").write_bytes(b"x")
    (tmp_path / "photos").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "b.png").symlink_to(tmp_path / "real" / "a.png")
    document = {"version": 1, "items": [{"image": "photos/a.png", "prompt": "p"}, {"image": "photos/./b.png", "prompt": "p"}]}
    spec = parse_manifest(json.dumps(document), "json", base_dir=tmp_path)
    assert [i.image for i in spec.items] == [str(tmp_path / "real" / "a.png")] * 2
    assert spec.items[0].id == derive_item_id("photos/a.png", "p", {})


def test_the_api_folder_becomes_the_jobs_image_root(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    document = json.dumps({"version": 1, "items": [{"image": "a.png", "prompt": "p"}]})
    spec = parse_manifest(document, "json", base_dir=base, local_images=False)
    assert spec.image_root == str(base) and spec.items[0].image == str(base / "a.png")
    task = RenderTask.for_item(spec, spec.items[0])
    assert task.image_root == str(base) and pickle.loads(pickle.dumps(task)).image_root == str(base)  # as Ray sends it
    assert JobSpec.from_dict(spec.to_dict()).image_root == str(base)
    old = spec.to_dict()
    del old["image_root"]  # spec.json written before image_root existed
    assert JobSpec.from_dict(old).image_root is None
    assert parse_manifest(document, "json", base_dir=base).image_root is None  # CLI manifests: anywhere


def test_an_explicit_image_root_confines_local_images(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base2").mkdir()
    items = [{"image": str(tmp_path / "base2" / "a.png"), "prompt": "p"}, {"image": "../base/b.png", "prompt": "p"}]
    spec = parse_manifest(
        json.dumps({"version": 1, "items": items}), "json", base_dir=tmp_path / "base2", image_root=tmp_path / "base",
        skip_invalid=True,
    )
    assert [i.image for i in spec.items] == [str(tmp_path / "base" / "b.png")]
    assert "leaves the folder this farm reads local images from" in spec.rejected[0].issues[0].message
    assert spec.image_root == str(tmp_path / "base")


def test_check_files_makes_unopenable_local_images_errors_of_their_items(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()
    items = [
        {"id": "ok", "image": "a.png", "prompt": "p"},
        {"id": "missing", "image": "nope.png", "prompt": "p"},
        {"id": "dir", "image": "folder.png", "prompt": "p"},
        {"id": "remote", "image": "s3://bucket/x.png", "prompt": "p"},
        {"id": "both", "image": "gone.png", "prompt": "p", "fps": 99},
    ]
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"version": 1, "items": items}))
    assert len(load_manifest(path, skip_invalid=True).items) == 4  # without check_files: they fail at render time
    issues = manifest_error(lambda: load_manifest(path, check_files=True)).issues
    by_item = {(i.item_id, i.field): i for i in issues}
    assert set(by_item) == {("missing", "image"), ("dir", "image"), ("both", "fps"), ("both", "image")}
    missing = by_item[("missing", "image")]
    assert missing.item_index == 1 and missing.value == "nope.png"
    assert "image file not found: 'nope.png'; check the path (relative paths are relative to the manifest's folder)" in missing.message
    assert "is a directory" in by_item[("dir", "image")].message
    spec = load_manifest(path, check_files=True, skip_invalid=True)
    assert [i.id for i in spec.items] == ["ok", "remote"]


def test_outputs_are_normalised(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = {"version": 1, "items": [{"image": "a.png", "prompt": "p"}]}
    assert parse(text, overrides=JobOverrides(output="renders/")).output == str(tmp_path / "renders")
    assert parse(text, overrides=JobOverrides(output="renders//x/../y/")).output == str(tmp_path / "renders" / "y")
    assert parse(text).output == str(tmp_path / "farm-output")
    assert parse({**text, "output": "out/"}).output == "/data/manifests/out"
    assert parse({**text, "output": "s3://bucket/prefix//"}).output == "s3://bucket/prefix"
    assert parse(text, overrides=JobOverrides(output="s3://bucket/")).output == "s3://bucket"
    assert parse(text, overrides=JobOverrides(output="s3://bucket/a//b")).output == "s3://bucket/a//b"


def test_check_files_over_many_folders_leaks_no_descriptor(tmp_path):
    items = []
    for n in range(100):  # more folders than descriptors kept open
        (tmp_path / f"f{n}").mkdir()
        (tmp_path / f"f{n}" / "a.png").write_bytes(b"x")
        items.append({"image": f"f{n}/a.png", "prompt": f"p{n}"})
    items.append({"image": "f0/missing.png", "prompt": "p"})
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"version": 1, "items": items}))
    before = len(os.listdir("/proc/self/fd"))
    spec = load_manifest(path, check_files=True, skip_invalid=True)
    assert len(spec.items) == 100 and [r.index for r in spec.rejected] == [100]
    assert len(os.listdir("/proc/self/fd")) == before
