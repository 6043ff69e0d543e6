"""Deliverable specs: presets, the rules between fields, hostile values refused with the field
and the value, and the ffmpeg argv built only from settled values."""

import json
import re
from pathlib import Path

import pytest

from farm.core.deliverables import (
    ENCODERS,
    PRESETS,
    Deliverable,
    DeliverableError,
    SourceClip,
    capped_attempts,
    ffmpeg_args,
    output_frames,
    parse_encoders,
    parse_entries,
)
from farm.core.errors import ManifestError
from farm.core.manifest import parse_manifest

SOURCE = SourceClip(512, 512, 8, 16)
ALL_ENCODERS = {encoder for names in ENCODERS.values() for encoder in names}


def manifest_issues(tmp_path: Path, deliverables, **item) -> list:
    (tmp_path / "a.png").write_bytes(b"")
    document = {"version": 1, "items": [{"image": "a.png", "prompt": "p", "deliverables": deliverables, **item}]}
    with pytest.raises(ManifestError) as caught:
        parse_manifest(json.dumps(document), "json", base_dir=tmp_path, encoders=ALL_ENCODERS)
    return caught.value.issues


def test_the_presets_follow_the_seeds_recipes():
    vertical, web, fps30, gif, poster = parse_entries(["vertical", "web", "fps30", "gif", "poster"])
    assert (vertical.size, vertical.fit, vertical.codec, vertical.crf) == ((1080, 1920), "pad", "h264", 23)
    args = ffmpeg_args(vertical, SOURCE, "in.mp4", "out.mp4", encoder="libx264")
    chain = args[args.index("-vf") + 1]
    assert "scale=1080:1920:force_original_aspect_ratio=decrease" in chain and "pad=1080:1920:(ow-iw)/2:(oh-ih)/2" in chain
    assert args[args.index("-preset") + 1] == "fast" and "+faststart" in args
    assert (web.size, web.crf, web.container) == (None, 23, "mp4")
    assert fps30.fps == 30 and "fps=30" in ffmpeg_args(fps30, SOURCE, "i", "o", encoder="libx264")
    assert output_frames(fps30, SOURCE) == 60  # 2 s at 30 fps, frames duplicated
    assert (gif.container, gif.fps, gif.max_bytes, gif.kind) == ("gif", 10, 8 * 1024**2, "animation")
    assert (poster.container, poster.kind, output_frames(poster, SOURCE)) == ("png", "image", 1)
    assert set(PRESETS) == {"vertical", "square", "landscape", "web", "fps30", "fade", "gif", "webp", "poster"}


def test_a_custom_deliverable_starts_from_a_preset_and_its_digest_follows_its_fields():
    reel, = parse_entries([{"name": "reel", "preset": "vertical", "fps": 30, "interpolate": True, "fade_in_s": 0.5}])
    assert (reel.name, reel.size, reel.fps, reel.interpolate, reel.fade_in_s) == ("reel", (1080, 1920), 30, True, 0.5)
    chain = " ".join(ffmpeg_args(reel, SOURCE, "i", "o", encoder="libx264"))
    assert "minterpolate=fps=30:mi_mode=mci" in chain and "fade=t=in:st=0:d=0.500" in chain
    assert Deliverable.from_dict(reel.to_dict()) == reel
    other, = parse_entries([{"name": "reel", "preset": "vertical", "fps": 30, "interpolate": True, "fade_in_s": 0.6}])
    assert other.digest != reel.digest and parse_entries(["vertical"])[0].digest == parse_entries(["vertical"])[0].digest


@pytest.mark.parametrize("entry, field, value", [
    ("-vf scale=1:1", "deliverables.0.preset", "-vf scale=1:1"),  # option injection as a preset name
    ({"name": "x", "codec": "libx264 -y /etc/passwd"}, "deliverables.0.codec", "libx264 -y /etc/passwd"),
    ({"name": "x", "container": "mp4; rm -rf /"}, "deliverables.0.container", "mp4; rm -rf /"),
    ({"name": "../../etc", "preset": "web"}, "deliverables.0.name", "../../etc"),  # a path as the output folder
    ({"name": "a/b", "preset": "web"}, "deliverables.0.name", "a/b"),
    ({"name": "-y", "preset": "web"}, "deliverables.0.name", "-y"),
    ({"name": "x", "size": "100000x100000"}, "deliverables.0.size.0", 100000),  # huge sizes
    ({"name": "x", "size": "4096x4096"}, "deliverables.0.size", "4096x4096"),  # each side allowed, not the area
    ({"name": "x", "size": "1081x1920"}, "deliverables.0.size.0", 1081),  # odd: yuv420p cannot
    ({"name": "x", "size": "1080x1920:flags=neighbor"}, "deliverables.0.size", "1080x1920:flags=neighbor"),
    ({"name": "x", "fps": 100000}, "deliverables.0.fps", 100000),  # absurd fps
    ({"name": "x", "fps": 0}, "deliverables.0.fps", 0),
    ({"name": "x", "fps": 29.97}, "deliverables.0.fps", 29.97),
    ({"name": "x", "fade_in_s": float("inf")}, "deliverables.0.fade_in_s", float("inf")),
    ({"name": "x", "fade_out_s": -1}, "deliverables.0.fade_out_s", -1),
    ({"name": "x", "crf": 99}, "deliverables.0.crf", 99),
    ({"name": "x", "pad_color": "black:x=1"}, "deliverables.0.pad_color", "black:x=1"),
    ({"name": "x", "max_bytes": 10**15}, "deliverables.0.max_bytes", 10**15),
    ({"name": "x", "vf": "scale=1:1"}, "deliverables.0.vf", "scale=1:1"),  # no raw ffmpeg options
    ({"name": "x", "args": ["-f", "rawvideo"]}, "deliverables.0.args", ["-f", "rawvideo"]),
    ({"name": "x", "codec": "vp9"}, "deliverables.0.codec", "vp9"),  # vp9 in mp4
    ({"name": "x", "container": "gif", "crf": 20}, "deliverables.0.crf", 20),
    ({"name": "x", "container": "png", "fps": 30}, "deliverables.0.fps", 30),
    ({"name": "x", "interpolate": True}, "deliverables.0.interpolate", True),
    ({"preset": "web", "fade_in_s": 1}, "deliverables.0.name", None),  # a changed preset needs its own name
])
def test_hostile_and_impossible_values_are_refused_with_the_field_and_the_value(tmp_path, entry, field, value):
    issues = manifest_issues(tmp_path, [entry])
    found = {(issue.field, json.dumps(issue.value, default=str)) for issue in issues}
    assert (field, json.dumps(value, default=str)) in found or (field in {i.field for i in issues} and value is None), issues
    assert all(issue.item_index == 0 for issue in issues)


def test_names_used_twice_fades_longer_than_the_clip_and_missing_encoders_are_refused(tmp_path):
    issues = manifest_issues(tmp_path, ["web", "web"])
    assert [(i.field, i.value) for i in issues] == [("deliverables.1.name", "web")]
    issues = manifest_issues(tmp_path, [{"name": "f", "fade_in_s": 1.5, "fade_out_s": 1.5}], frames=16, fps=8)
    assert issues[0].field == "deliverables.0.fade_in_s" and "longer than the 2 s clip" in issues[0].message
    (tmp_path / "a.png").write_bytes(b"")
    document = {"version": 1, "items": [{"image": "a.png", "prompt": "p", "deliverables": [{"name": "a", "codec": "av1"}]}]}
    with pytest.raises(ManifestError) as caught:
        parse_manifest(json.dumps(document), "json", base_dir=tmp_path, encoders={"libx264"})
    issue, = caught.value.issues
    assert issue.field == "deliverables.0.codec" and "no av1 encoder" in issue.message


def test_a_defaults_list_applies_to_every_item_and_an_item_list_replaces_it(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    document = {"version": 1, "defaults": {"deliverables": ["vertical", "gif"]},
                "items": [{"id": "a", "image": "a.png", "prompt": "p"},
                          {"id": "b", "image": "a.png", "prompt": "p", "deliverables": "poster web"}]}
    spec = parse_manifest(json.dumps(document), "json", base_dir=tmp_path)
    assert [[d.name for d in item.deliverables] for item in spec.items] == [["vertical", "gif"], ["poster", "web"]]
    from farm.core.manifest import JobSpec

    again = JobSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert [item.deliverables for item in again.items] == [item.deliverables for item in spec.items]
    document["defaults"]["deliverables"] = ["vertical", {"name": "bad", "fps": 500}]
    with pytest.raises(ManifestError) as caught:
        parse_manifest(json.dumps(document), "json", base_dir=tmp_path)
    assert caught.value.issues[0].field == "defaults.deliverables.1.fps" and caught.value.issues[0].value == 500


# Every word of an argv that is not a path: options ffmpeg knows and values built from numbers
# and Literals. Nothing a manifest wrote as text can appear, so checking the shapes is enough.
_WORD = re.compile(r"-[a-z:_]+|\+faststart|[0-9.]+|[a-z0-9_-]+|\[0:v\].*|[a-z=:0-9.,()/_\-\[\];+*]+")


def test_every_argv_word_is_an_option_or_a_value_built_from_settled_fields():
    entries = list(PRESETS) + [
        {"name": "a", "preset": "vertical", "fit": "crop", "pad_color": "#12abEF", "fps": 24, "interpolate": True,
         "crf": 30, "fade_in_s": 0.25, "fade_out_s": 0.75},
        {"name": "b", "container": "webm", "codec": "vp9", "size": [640, 360], "fit": "scale"},
        {"name": "c", "container": "mkv", "codec": "av1", "max_bytes": 100000},
    ]
    for deliverable in parse_entries(entries):
        for encoder in ENCODERS[deliverable.codec or deliverable.container]:
            for attempt in capped_attempts(deliverable):
                args = ffmpeg_args(deliverable, SOURCE, "/scratch/in.mp4", "/scratch/out", encoder=encoder, threads=2, **attempt)
                paths = [i for i, word in enumerate(args) if word.startswith("/scratch/")]
                assert [args[i - 1] for i in paths][:1] == ["-i"] and len(paths) == 2 and paths[-1] == len(args) - 1
                for word in (w for i, w in enumerate(args) if i not in paths):
                    assert _WORD.fullmatch(word), (deliverable.name, word)


def test_encoders_are_read_from_ffmpegs_listing():
    listing = " V....D libx264              libx264 H.264\n A....D aac   AAC\n V..... libsvtav1  SVT-AV1\n"
    assert parse_encoders(listing) == {"libx264", "aac", "libsvtav1"}


def test_resolving_names_the_field_of_a_rule_between_fields():
    with pytest.raises(DeliverableError) as caught:
        parse_entries([{"name": "x", "container": "webm", "codec": "h264"}])
    assert caught.value.field == "deliverables.0.codec" and "cannot go in a webm file" in str(caught.value)


def test_an_embedded_cluster_always_has_cpus_for_the_cpu_stage_beside_the_render_workers(monkeypatch):
    import os

    from farm.runtime.cluster import embedded_cpus
    from farm.settings import load_settings

    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # a 1-core laptop: the worker holds its one CPU
    assert embedded_cpus(load_settings({}), gpus=0) == 2
    assert embedded_cpus(load_settings({"FARM_POST_CONCURRENCY": "3"}), gpus=4) == 7
    assert embedded_cpus(load_settings({"FARM_POST_NUM_CPUS": "0"}), gpus=0, cpu_workers=2) == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert embedded_cpus(load_settings({}), gpus=1) == 16
