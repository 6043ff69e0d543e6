import pytest

from farm.core.ids import MAX_ID_LENGTH, derive_item_id, derive_seed, is_safe_id, sanitize_id


@pytest.mark.parametrize("value", ["cat", "cat-01", "Cat_01.v2", "0001", "a.b-c_d"])
def test_safe_ids_are_kept(value):
    assert sanitize_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "../../etc/passwd",
        "/abs/path",
        "..",
        ".hidden",
        "-rf",
        "a/b",
        "a\\b",
        "tab\tand\nnewline",
        "nul\x00byte",
        "space in name",
        "猫の動画",
        "x" * 300,
        "",
        "a..b",
    ],
)
def test_hostile_ids_become_safe(value):
    result = sanitize_id(value)
    assert is_safe_id(result), result
    assert "/" not in result and "\\" not in result and ".." not in result
    assert not result.startswith((".", "-"))
    assert len(result) <= MAX_ID_LENGTH
    assert all(32 < ord(ch) < 127 for ch in result)


def test_sanitizing_never_merges_different_ids():
    values = ["a/b", "a b", "a:b", "a?b", "a*b", "猫", "犬"]
    assert len({sanitize_id(v) for v in values}) == len(values)


def test_sanitizing_is_stable():
    assert sanitize_id("a b") == sanitize_id("a b")
    assert sanitize_id(sanitize_id("a b")) == sanitize_id("a b")


def test_derived_ids_are_stable_and_content_based():
    first = derive_item_id("imgs/cat.png", "a cat", {"frames": 8})
    assert first == derive_item_id("imgs/cat.png", "a cat", {"frames": 8})
    assert first.startswith("cat-")
    assert first != derive_item_id("imgs/cat.png", "a dog", {"frames": 8})
    assert first != derive_item_id("imgs/cat.png", "a cat", {"frames": 16})
    assert is_safe_id(derive_item_id("../x/../../weird name?.png", "p", {}))


def test_derived_seeds_are_stable_32_bit():
    assert derive_seed("cat") == derive_seed("cat")
    assert derive_seed("cat") != derive_seed("dog")
    assert 0 <= derive_seed("cat") < 2**32
