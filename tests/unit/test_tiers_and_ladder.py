import pytest

from farm.core.ladder import (
    BIGGER_TIER,
    DEFAULT_ORDER,
    FRAMES,
    MEMORY_SAVERS,
    RESOLUTION,
    RenderSettings,
    next_step,
    validate_order,
)
from farm.core.scheduler import TierScheduler
from farm.core.tiers import GIB, TierTable, load_tier_table, parse_gpus, tier_resources, tiers_in_resources


def test_default_tiers_and_budgets():
    table = TierTable()
    assert table.names() == ["12g", "16g", "24g", "40g", "48g", "80g"]
    budgets = {t.name: round(t.budget_gib, 1) for t in table.tiers}
    assert budgets == {"12g": 10.4, "16g": 14.2, "24g": 21.8, "40g": 37.0, "48g": 44.6, "80g": 75.0}
    assert table["24g"].resource == "farm_tier_24g"


@pytest.mark.parametrize(
    "card_gib, tier",
    [(11.9, "12g"), (12, "12g"), (15.6, "16g"), (23.6, "24g"), (39.4, "40g"), (47.5, "48g"), (79.3, "80g"), (141, "80g"), (8, None)],
)
def test_a_card_maps_to_the_largest_tier_it_holds(card_gib, tier):
    found = TierTable().tier_for_memory(int(card_gib * GIB))
    assert (found.name if found else None) == tier


def test_parse_gpus():
    table = TierTable()
    assert parse_gpus("12g:4, 24g:2,80g", table).workers == {"12g": 4, "24g": 2, "80g": 1}
    with pytest.raises(ValueError, match="unknown tier '20g'"):
        parse_gpus("20g:1", table)
    with pytest.raises(ValueError, match="TIER:COUNT"):
        parse_gpus("24g=2", table)


def test_tier_resources_round_trip():
    resources = {"CPU": 4.0, "GPU": 3.0, **tier_resources("24g", 2), **tier_resources("80g", 1)}
    assert tiers_in_resources(resources) == {"24g": 2, "80g": 1}


def test_tier_table_from_a_file(tmp_path):
    path = tmp_path / "tiers.yaml"
    path.write_text("tiers:\n  - {name: 24g, card_gib: 24, headroom_gib: 2, peak_tflops: 165}\n  - {name: 94g, card_gib: 94, peak_tflops: 989}\n")
    table = load_tier_table(str(path))
    assert table.names() == ["24g", "94g"] and table["24g"].budget_gib == 22


S = RenderSettings(1024, "1:1", 32)


def walk(settings, **kwargs):
    steps = []
    while (option := next_step(settings, **kwargs)) is not None:
        step, settings = option
        steps.append((step, settings.resolution, settings.frames, settings.saver_level))
        if step == BIGGER_TIER:
            break
    return steps


def test_default_ladder_savers_then_resolution_then_frames():
    steps = walk(S, mode="allowed")
    assert [s[0] for s in steps] == [MEMORY_SAVERS] * 3 + [RESOLUTION] * 3 + [FRAMES] * 3
    assert steps[-1][1:] == (256, 8, 3)
    assert [s[1] for s in steps if s[0] == RESOLUTION] == [768, 512, 256]
    assert [s[2] for s in steps if s[0] == FRAMES] == [24, 16, 8]


def test_frames_first_order():
    order = validate_order([MEMORY_SAVERS, BIGGER_TIER, FRAMES, RESOLUTION])
    steps = walk(S, mode="allowed", order=order)
    assert [s[0] for s in steps[3:6]] == [FRAMES] * 3


def test_bigger_tier_comes_after_savers_when_available():
    steps = walk(S, mode="allowed", bigger_tier_available=True)
    assert [s[0] for s in steps] == [MEMORY_SAVERS] * 3 + [BIGGER_TIER]


def test_modes_limit_the_ladder():
    assert [s[0] for s in walk(S, mode="memory_savers", bigger_tier_available=True)] == [MEMORY_SAVERS] * 3
    assert walk(S, mode="never", bigger_tier_available=True) == []


def test_odd_frame_counts_step_to_the_next_lower_standard_count():
    option = next_step(RenderSettings(256, "1:1", 20, 3), mode="allowed")
    assert option[0] == FRAMES and option[1].frames == 16


def test_exhaustion():
    assert next_step(RenderSettings(256, "16:9", 8, 3), mode="allowed", bigger_tier_available=False) is None


def test_invalid_orders():
    with pytest.raises(ValueError):
        validate_order(["memory_savers", "memory_savers"])
    with pytest.raises(ValueError):
        validate_order(["colour"])
    assert validate_order(DEFAULT_ORDER) == DEFAULT_ORDER


def test_scheduler_own_tier_first_then_steal_from_smaller_never_bigger():
    scheduler = TierScheduler(["12g", "24g", "80g"], {"12g": 2, "24g": 1, "80g": 1})
    for n in range(4):
        scheduler.push(f"s{n}", "12g")
    scheduler.push("m0", "24g")
    scheduler.push("b0", "80g")
    assert scheduler.take("80g") == ("b0", "80g")
    assert scheduler.take("80g") == ("s0", "12g")  # 12g is the most backlogged smaller tier
    assert scheduler.take("12g") == ("s1", "12g")
    assert scheduler.take("24g") == ("m0", "24g")
    assert scheduler.take("24g") == ("s2", "12g")
    scheduler.push("m1", "24g")
    assert scheduler.take("12g") == ("s3", "12g")
    assert scheduler.take("12g") is None  # never takes a bigger tier's item
    assert scheduler.take("80g") == ("m1", "24g")
    assert len(scheduler) == 0


def test_scheduler_orphans_when_the_last_worker_of_a_tier_goes():
    scheduler = TierScheduler(["12g", "24g"], {"12g": 2, "24g": 1})
    scheduler.push("a", "12g")
    assert scheduler.worker_gone("12g") == []
    assert scheduler.worker_gone("12g") == ["a"] and len(scheduler) == 0
