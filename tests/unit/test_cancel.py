"""A render worker's cancel requests (farm/core/cancel.py): a request reaches the render it names,
running or on its way, and never a later one; and a job's state while and after it is cancelled."""

import json
import threading
from pathlib import Path

from farm.core.cancel import CancelRequests
from farm.core.job import ItemOutcome, JobState
from farm.core.manifest import parse_manifest


def test_a_request_for_the_running_render_stops_it_and_one_for_another_item_does_not():
    box = CancelRequests()
    assert box.begin("j", "a") is None and box.why() is None
    assert not box.request("j", "b") and box.why() is None  # another item of the job
    assert not box.request("k", None) and box.why() is None  # another job
    assert box.request("j", "a") and box.why() == "item a was cancelled"
    box.end()
    assert box.why() is None


def test_a_job_request_stops_whichever_item_of_the_job_renders():
    box = CancelRequests()
    box.begin("j", "c")
    assert box.request("j") and box.why() == "job j was cancelled"


def test_a_request_that_comes_before_its_render_begins_stops_it_at_once():
    box = CancelRequests()
    assert not box.request("j", "a")  # the render call is on its way
    assert box.begin("j", "a") == "item a was cancelled"


def test_a_request_whose_render_ended_never_stops_a_later_render():
    box = CancelRequests()
    box.begin("j", "a")
    box.end()
    box.request("j", "a")  # lost the race with the render's end
    assert box.begin("j", "b") is None and box.why() is None
    box.end()
    assert box.begin("j", "a") is None  # dropped at the last begin, even for the same item


def test_requests_while_nothing_renders_are_bounded_and_cleared_by_a_takeover():
    box = CancelRequests()
    for n in range(100):
        box.request("j", f"i{n}")
    assert len(box._early) <= 16
    box.clear()
    assert box.begin("j", "i99") is None


def test_a_request_from_another_thread_is_seen_by_the_render_thread():
    box = CancelRequests()
    box.begin("j", "a")
    seen = threading.Event()

    def render():
        for _ in range(10_000):
            if box.why() is not None:
                seen.set()
                return
            threading.Event().wait(0.001)

    thread = threading.Thread(target=render)
    thread.start()
    box.request("j", "a")
    thread.join(10)
    assert seen.is_set()


def job(tmp_path: Path, count: int) -> JobState:
    items = [{"id": f"i{n}", "image": f"s3://in/{n}.png", "prompt": "p"} for n in range(count)]
    state = JobState(parse_manifest(json.dumps({"version": 1, "items": items}), "json", base_dir=tmp_path))
    state.start()
    return state


def test_a_cancelled_job_is_cancelling_until_its_running_items_stop(tmp_path):
    state = job(tmp_path, 3)
    state.mark_running("i0", "cpu-0")
    state.cancelled = True
    state.mark_cancelled("i1")
    state.mark_cancelled("i2")
    assert state.final_state == "cancelling"
    state.record(ItemOutcome.cancelled("i0", "stopped after denoise step 2 of 10", 2))
    assert state.final_state == "cancelled"
    assert state.items["i0"].state == "cancelled" and "step 2" in state.items["i0"].message
    assert state.counts()["cancelled"] == 3 and state.to_record()["counts"]["cancelled"] == 3


def test_a_job_with_items_cancelled_one_by_one_is_partial_or_cancelled(tmp_path):
    state = job(tmp_path, 2)
    state.mark_running("i0", "cpu-0")
    state.record(ItemOutcome("i0", "succeeded"))
    state.mark_cancelled("i1", "the item was cancelled before it started")
    assert state.final_state == "partial"  # not every item
    alone = job(tmp_path, 1)
    alone.mark_cancelled("i0", "the item was cancelled before it started")
    assert alone.final_state == "cancelled"
