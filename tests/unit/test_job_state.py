"""A job's state as plain data (farm.core.job.JobState): rates and ETAs that stay sane for the
first items and for items that fail at once, and a stop that hands running items back."""

import json
from pathlib import Path

import pytest

from farm.core.job import ItemOutcome, JobState
from farm.core.manifest import parse_manifest


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def job(tmp_path: Path, count: int, clock: Clock) -> JobState:
    items = [{"id": f"i{n}", "image": f"s3://in/{n}.png", "prompt": "p"} for n in range(count)]
    spec = parse_manifest(json.dumps({"version": 1, "items": items}), "json", base_dir=tmp_path)
    state = JobState(spec, clock=clock)
    state.start()
    return state


def test_instant_failures_give_no_rate_instead_of_thousands_per_minute(tmp_path):
    clock = Clock()
    state = job(tmp_path, 10, clock)
    for n in range(5):  # five missing images fail within 2 ms
        clock.now += 0.0004
        state.record(ItemOutcome.failure(f"i{n}", "image_not_found", "missing"))
    assert state.throughput() == (None, None)
    assert state.to_record()["items_per_minute"] is None


def test_the_first_items_give_a_sane_rate_and_eta(tmp_path):
    clock = Clock()
    state = job(tmp_path, 10, clock)
    clock.now += 0.5  # the first render finishes half a second after the start
    state.mark_running("i0", "cpu-0")  # an outcome is of a running item (JobState raises otherwise)
    state.record(ItemOutcome("i0", "succeeded"))
    rate, eta = state.throughput()
    assert rate == pytest.approx(12.0)  # a window of at least 5 s: 1 item / 5 s, not 120/min
    assert eta == pytest.approx(45.0)
    for n in range(1, 5):
        clock.now += 10.0
        state.mark_running(f"i{n}", "cpu-0")
        state.record(ItemOutcome(f"i{n}", "succeeded"))
    rate, eta = state.throughput()
    assert rate == pytest.approx(5 / 40.5 * 60, rel=1e-3) and eta == pytest.approx(5 / (5 / 40.5), rel=1e-3)
    for n in range(5, 10):
        state.mark_running(f"i{n}", "cpu-0")
        state.record(ItemOutcome(f"i{n}", "succeeded"))
    state.finish()
    assert state.throughput()[1] is None  # nothing left


def test_a_stop_hands_running_items_back_and_the_job_says_interrupted(tmp_path):
    clock = Clock()
    state = job(tmp_path, 3, clock)
    state.mark_running("i0", "cpu-0")
    state.record(ItemOutcome("i0", "succeeded"))
    state.mark_running("i1", "cpu-0")
    state.hand_back("i1")
    state.hand_back("i0")  # only running items go back
    state.interrupted = True
    state.finish()
    counts = state.counts()
    assert (counts["succeeded"], counts["queued"], counts["running"]) == (1, 2, 0)
    assert state.final_state == "interrupted" and state.to_record()["state"] == "interrupted"
    assert state.items["i1"].attempts == 1  # the attempt happened; a resumed job counts afresh


def test_item_states_change_only_as_a_job_goes(tmp_path):
    from farm.core.job import IllegalItemTransition

    state = job(tmp_path, 2, Clock())
    with pytest.raises(IllegalItemTransition, match="'i0' of job 'job': queued -> succeeded"):
        state.record(ItemOutcome("i0", "succeeded"))
    state.mark_running("i0", "cpu-0")
    state.record(ItemOutcome("i0", "succeeded"))
    with pytest.raises(IllegalItemTransition, match="succeeded -> running"):
        state.mark_running("i0", "cpu-0")
    with pytest.raises(ValueError, match="'disk_full' is not a valid FailureReason"):
        state.fail("i1", "disk_full", "the reason is not one of farm's")
    state.fail("i1", "oom", "out of memory")
    assert state.items["i1"].reason == "oom" and state.final_state == "partial"


def test_counts_kept_incrementally_match_a_full_recount(tmp_path):
    """The counts a status answer reads are kept as items move; they equal counting every item."""
    import random

    from farm.core.job import ITEM_STATES

    state = job(tmp_path, 40, Clock())
    rng = random.Random(7)
    ids = [item.id for item in state.spec.items]
    for item_id in ids[:5]:
        state.mark_skipped(item_id, "committed earlier")
    for item_id in ids[5:]:
        state.mark_running(item_id, "w")
        roll = rng.random()
        if roll < 0.5:
            degradations = [{"step": "resolution", "from": 512, "to": 256, "why": "oom"}] if roll < 0.2 else []
            state.record(ItemOutcome(item_id=item_id, status="succeeded", degradations=degradations))
        elif roll < 0.7:
            state.record(ItemOutcome.failure(item_id, "oom", "out of memory"))
        elif roll < 0.85:
            state.worker_lost(item_id, "gone")
    recount = {s: sum(1 for st in state.items.values() if st.state == s) for s in ITEM_STATES}
    degraded = sum(1 for st in state.items.values() if st.state == "succeeded" and st.degradations)
    assert state.counts() == {**recount, "total": len(state.items), "degraded": degraded}
    assert state.done == all(st.state not in ("queued", "running") for st in state.items.values())
