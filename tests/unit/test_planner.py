import json
import subprocess
import sys
from pathlib import Path

from farm.core.manifest import parse_manifest
from farm.core.planner import plan_job
from farm.core.tiers import ClusterShape, TierTable

TABLE = TierTable()


def spec_of(items, **header):
    document = {"version": 1, "name": "plan", "model": "tiny", "defaults": {"steps": 10}, "items": items, **header}
    return parse_manifest(json.dumps(document), "json", base_dir=Path("/tmp"))


def item(id, resolution, frames, **extra):
    return {"id": id, "image": "a.png", "prompt": "p", "resolution": resolution, "frames": frames, **extra}


MIXED = [
    item("r256", 256, 8),
    item("r512", 512, 16),
    item("r512x24", 512, 24),
    item("r768", 768, 24),
    item("r1024x16", 1024, 16),
    item("r1024x32", 1024, 32),
]


def test_each_item_goes_to_the_smallest_present_tier_that_fits():
    plan = plan_job(spec_of(MIXED), ClusterShape({"12g": 2, "24g": 1, "80g": 1}), TABLE)
    tiers = {p.item_id: p.tier for p in plan.items}
    assert tiers == {"r256": "12g", "r512": "12g", "r512x24": "24g", "r768": "24g", "r1024x16": "24g", "r1024x32": "80g"}
    assert all(p.fits and not p.degradations for p in plan.items)
    full = plan_job(spec_of(MIXED), ClusterShape({n: 1 for n in TABLE.names()}), TABLE)
    assert {p.item_id: p.tier for p in full.items}["r512x24"] == "16g"
    assert {p.item_id: p.tier for p in full.items}["r1024x32"] == "40g"


def test_items_that_fit_no_tier_are_planned_down_the_ladder_on_the_largest():
    plan = plan_job(spec_of(MIXED), ClusterShape({"12g": 2, "24g": 1}), TABLE)
    big = plan.by_id["r1024x32"]
    assert big.tier == "24g" and big.fits
    assert [d.step for d in big.degradations] == ["memory_savers"]  # quality kept
    assert big.settings.resolution == 1024 and big.settings.frames == 32
    assert "exceeds the 21.8 GiB budget of the largest tier present (24g)" in big.degradations[0].why


def test_on_small_cards_resolution_goes_before_frames_by_default():
    plan = plan_job(spec_of([item("big", 1024, 32)]), ClusterShape({"12g": 2}), TABLE)
    big = plan.by_id["big"]
    assert big.fits and big.tier == "12g"
    assert [d.step for d in big.degradations][:2] == ["memory_savers", "resolution"]
    assert big.settings.frames == 32 and big.settings.resolution < 1024
    frames_first = plan_job(
        spec_of([item("big", 1024, 32)], degrade_order=["memory_savers", "bigger_tier", "frames", "resolution"]),
        ClusterShape({"12g": 2}),
        TABLE,
    ).by_id["big"]
    assert frames_first.degradations[1].step == "frames"


def test_degrade_modes_limit_planned_degradation():
    items = [item("never", 1024, 32, degrade="never"), item("savers", 1024, 32, degrade="memory_savers")]
    plan = plan_job(spec_of(items), ClusterShape({"12g": 2}), TABLE)
    never, savers = plan.by_id["never"], plan.by_id["savers"]
    assert never.degradations == () and not never.fits and never.tier == "12g"
    assert [d.step for d in savers.degradations] == ["memory_savers"] and not savers.fits


def test_reject_policy_fails_unfit_items_at_plan_time_with_advice():
    plan = plan_job(spec_of(MIXED, unfit="reject"), ClusterShape({"12g": 2, "24g": 1}), TABLE)
    rejected = [p for p in plan.items if p.rejected]
    assert [p.item_id for p in rejected] == ["r1024x32"]
    assert "largest GPU tier present (24g)" in rejected[0].rejected and "add a bigger GPU" in rejected[0].rejected


def test_cpu_only_clusters_run_everything_as_requested():
    plan = plan_job(spec_of(MIXED), ClusterShape({"cpu": 1}), TABLE)
    assert {p.tier for p in plan.items} == {"cpu"} and plan.makespan_seconds is None
    assert all(not p.degradations for p in plan.items)


def test_makespan_simulation_uses_stealing_and_is_close_to_ideal_for_many_items():
    items = [item(f"i{n}", 256 if n % 3 else 512, 8 if n % 2 else 16) for n in range(300)]
    plan = plan_job(spec_of(items), ClusterShape({"12g": 4, "24g": 2, "80g": 1}), TABLE)
    assert plan.tiers["12g"].items == 300 and "24g" in plan.tiers
    assert plan.ideal_seconds <= plan.makespan_seconds <= 1.15 * plan.ideal_seconds
    alone = plan_job(spec_of(items), ClusterShape({"12g": 4}), TABLE)
    assert plan.makespan_seconds < alone.makespan_seconds / 2  # the bigger GPUs took small items


def test_farm_plan_command_runs_without_ray_or_torch(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")  # plan checks that local images exist, not what they hold
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"version": 1, "model": "tiny", "items": MIXED}))
    code = (
        "import sys, io, contextlib\n"
        "from farm.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    code = main(['plan', {str(path)!r}, '--gpus', '12g:2,24g:1', '--json'])\n"
        "heavy = [m for m in ('torch', 'ray', 'diffusers', 'boto3') if m in sys.modules]\n"
        "print(code, ','.join(heavy))\n"
        "print(out.getvalue())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, rest = result.stdout.split("\n", 1)
    assert first.strip() == "0"
    document = json.loads(rest)
    assert document["cluster"] == {"12g": 2, "24g": 1}
    assert {i["item_id"]: i["tier"] for i in document["items"]}["r1024x32"] == "24g"
    assert document["makespan_seconds"] > 0


def test_farm_plan_table_output(tmp_path, capsys):
    from farm.cli import main

    (tmp_path / "a.png").write_bytes(b"x")
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"version": 1, "model": "tiny", "items": MIXED}))
    assert main(["plan", str(path), "--gpus", "12g:2,24g:1"]) == 0
    out = capsys.readouterr().out
    assert "r1024x32" in out and "memory_savers" in out and "estimated makespan" in out
    assert main(["plan", str(path), "--gpus", "13g:1"]) == 2
