"""Where an API job may write (farm.core.outputs, farm.storage.canonical_output), and the job
registry that skips what is not a job record instead of refusing to start."""

import json
import os

import pytest

from farm.core.outputs import OutputRefused, check_allowed, contains, normalise, overlaps
from farm.storage import canonical_output
from farm.storage.local import LocalStore


@pytest.mark.parametrize(
    "uri, normal",
    [
        ("s3://renders/api", "s3://renders/api"),
        ("s3://renders/api/", "s3://renders/api"),
        ("s3://renders//api///x/", "s3://renders/api/x"),
        ("s3://renders", "s3://renders"),
        ("/srv/out/", "/srv/out"),
        ("/srv/out/./a/../b", "/srv/out/b"),
        ("file:///srv/out", "/srv/out"),
    ],
)
def test_outputs_are_compared_in_normal_form(uri, normal):
    assert normalise(uri) == normal


@pytest.mark.parametrize(
    "uri, why",
    [
        ("s3://renders/api/../other", "`.` and `..`"),
        ("s3://renders/./api", "`.` and `..`"),
        ("s3://Bad_Bucket/x", "bucket"),
        ("s3:///x", "bucket"),
        ("s3://renders/a\nb", "control characters"),
        ("relative/folder", "absolute"),
        ("gs://bucket/x", "not supported"),
        ("/srv/\x00x", "NUL"),
    ],
)
def test_malformed_outputs_are_refused_with_the_reason(uri, why):
    with pytest.raises(OutputRefused, match=why):
        normalise(uri)


def test_containment_is_by_path_segment_not_by_string_prefix():
    assert contains("s3://renders/api", "s3://renders/api")
    assert contains("s3://renders/api", "s3://renders/api/job")
    assert not contains("s3://renders/api", "s3://renders/api2")
    assert not contains("s3://renders/api", "s3://renders")
    assert not contains("/srv/out", "/srv/outside")
    assert contains("/", "/anything")
    assert overlaps("/state", "/state/jobs") and overlaps("/state/jobs", "/state") and not overlaps("/a", "/b")
    check_allowed("s3://renders/api/x", ["/srv", "s3://renders/api"])
    with pytest.raises(OutputRefused, match="outside the outputs this farm allows"):
        check_allowed("s3://renders/other", ["s3://renders/api"])


def test_local_outputs_are_resolved_through_symlinks_and_dotdot(tmp_path):
    allowed = tmp_path / "allowed"
    outside = tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "link").symlink_to(outside)
    prefix = canonical_output(str(allowed))
    assert contains(prefix, canonical_output(str(allowed / "job")))
    assert not contains(prefix, canonical_output(str(allowed / "link")))  # a symlink out
    assert not contains(prefix, canonical_output(str(allowed / "link" / "deeper")))
    assert not contains(prefix, canonical_output(str(allowed / ".." / "outside")))  # `..` out
    assert canonical_output(f"file://{allowed}/") == prefix
    assert canonical_output("s3://renders/api/") == "s3://renders/api"


def test_the_registry_skips_and_reports_what_is_not_a_job_record(tmp_path):
    from farm.runtime.coordinator import JobRegistry

    store = LocalStore(str(tmp_path))
    registry = JobRegistry(store)
    good = {"id": "j-0123456789ab", "name": "spring", "output": "s3://renders/api", "state": "succeeded",
            "submitted_at": 1.0, "items": 2}
    registry.put(good)
    jobs = tmp_path / "jobs"
    (jobs / "spec.json").write_text(json.dumps({"spec_version": 1, "name": "jobs", "items": []}))  # a job's own file
    (jobs / "broken.json").write_bytes(b"{not json")
    (jobs / "empty.json").write_bytes(b"")
    (jobs / "binary.json").write_bytes(os.urandom(64))
    (jobs / "j-aaaaaaaaaaaa.json").write_text(json.dumps({**good, "id": "j-bbbbbbbbbbbb"}))  # under another name
    (jobs / "j-cccccccccccc.json").write_text(json.dumps({**good, "id": "j-cccccccccccc", "state": "exploded"}))
    entries = registry.list()
    assert [e["id"] for e in entries] == ["j-0123456789ab"]
    assert entries[0]["items"] == 2
    skipped = {entry["key"]: entry["reason"] for entry in registry.skipped}
    assert set(skipped) == {f"jobs/{name}" for name in
                            ("spec.json", "broken.json", "empty.json", "binary.json", "j-aaaaaaaaaaaa.json", "j-cccccccccccc.json")}
    assert "not the one its name says" in skipped["jobs/j-aaaaaaaaaaaa.json"]
    assert all(reason for reason in skipped.values())
