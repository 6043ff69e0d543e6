"""Bad manifests (see tests/bad_inputs.py): each is rejected with an issue that names the field
and says what is wrong, short enough and strict JSON, as `farm validate --json` and the API send it."""

import json
from pathlib import Path

import pytest
from bad_inputs import HTTP, IMAGES, MANIFESTS, doc, item

from farm.core.errors import ManifestError
from farm.core.ids import is_safe_id
from farm.core.manifest import parse_manifest


@pytest.mark.parametrize("case, fmt, content, field, fragment", MANIFESTS, ids=[m[0] for m in MANIFESTS])
def test_bad_manifests_are_rejected_with_a_clear_error(case, fmt, content, field, fragment):
    with pytest.raises(ManifestError) as caught:
        parse_manifest(content, fmt, base_dir=Path("/data"))
    issues = caught.value.issues
    assert issues, case
    text = "\n".join(str(i) for i in issues)
    if field is not None:
        assert any((i.field or "").split(".")[0] == field for i in issues), text
    assert fragment in text, text
    assert all(i.message for i in issues)


def test_every_issue_of_the_corpus_is_short_and_strict_json():
    """What `farm validate --json` and the HTTP API send back: never NaN, never a lone surrogate
    (it cannot be encoded), never a megabyte echoed back."""
    for case, fmt, content, _field, _fragment in MANIFESTS:
        with pytest.raises(ManifestError) as caught:
            parse_manifest(content, fmt, base_dir=Path("/data"))
        for issue in caught.value.issues:
            text = json.dumps(issue.to_dict(), allow_nan=False, ensure_ascii=False)
            text.encode("utf-8")
            str(issue).encode("utf-8")
            assert len(text) < 2000 and len(str(issue)) < 2000, (case, len(text))
        str(caught.value).encode("utf-8")


def test_path_traversal_in_ids_never_escapes_the_output():
    spec = parse_manifest(
        doc(item(id="../../etc/passwd"), item(id="/abs/x", image="b.png"), item(id="a\\b", image="c.png")),
        "json",
        base_dir=Path("/data"),
    )
    for job_item in spec.items:
        assert is_safe_id(job_item.id) and "/" not in job_item.id and not job_item.id.startswith(".")


def test_the_corpus_is_big_enough():
    assert len(MANIFESTS) + len(IMAGES) + len(HTTP) >= 30
