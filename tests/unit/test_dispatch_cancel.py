"""Stopping running renders in the dispatch state machine (farm/core/dispatch.py): a job's cancel
and one item's (`ItemCancelRequested`), each as a sequence of events and the instructions they
give, without Ray or workers. An item ends cancelled or committed, never both."""

from farm.core import dispatch as d
from farm.core.job import CANCELLED, FAILED, SUCCEEDED, ItemOutcome

from .test_dispatch import Farm, commits, done, item, oom


def cancelled(job_id, item_id, steps_done=3):
    """The outcome a worker answers once a cancel stopped its render."""
    return ItemOutcome.cancelled(item_id, f"stopped after denoise step {steps_done}", steps_done, job_id=job_id)


def stops(out):
    return [(i.worker, i.job_id, i.item_id) for i in out if isinstance(i, d.CancelRunning)]


def test_cancelling_a_job_stops_its_rendering_items_cancels_its_queued_ones_and_frees_the_workers():
    farm = Farm(("cpu-0", "cpu"), ("cpu-1", "cpu"))
    job = farm.admit("j", [item("a"), item("b"), item("c"), item("d")])
    assert farm.sent() == {"cpu-0": ("j", "a"), "cpu-1": ("j", "b")}
    other = farm.admit("k", [item("x")])  # the job that goes on
    out = farm.handle(d.JobCancelled("j"))
    assert d.ItemsCancelled("j", 2) in out
    assert sorted(stops(out)) == [("cpu-0", "j", "a"), ("cpu-1", "j", "b")]
    assert [job.items[i].state for i in "abcd"] == ["running", "running", CANCELLED, CANCELLED]
    assert job.state_for(job.counts()) == "cancelling" and not farm.finished_jobs()
    farm.reply("cpu-0", cancelled("j", "a"))  # stopped at its next step: the worker takes the next item
    assert job.items["a"].state == CANCELLED and farm.sent() == {"cpu-0": ("k", "x")}
    assert [i.outcome.status for i in farm.out if isinstance(i, d.ItemFinished)] == [CANCELLED]  # for the metrics
    farm.reply("cpu-1", cancelled("j", "b", steps_done=0))
    assert farm.finished_jobs() == ["j"] and job.final_state == "cancelled"
    assert job.counts()[CANCELLED] == 4 and job.counts()["succeeded"] == 0
    assert other.items["x"].state == "running"


def test_a_queued_item_is_cancelled_at_once_and_never_sent():
    farm = Farm(("cpu-0", "cpu"))
    job = farm.admit("j", [item("a"), item("b"), item("c")])
    out = farm.handle(d.ItemCancelRequested("j", "c"))
    assert d.ItemsCancelled("j", 1) in out and not stops(out)
    assert job.items["c"].state == CANCELLED and "cancelled before it started" in job.items["c"].message
    farm.reply("cpu-0", done("j", "a"))
    assert farm.sent() == {"cpu-0": ("j", "b")}  # c is not in the queue any more
    farm.reply("cpu-0", done("j", "b"))
    assert farm.finished_jobs() == ["j"] and not job.cancelled
    assert job.final_state == "partial"  # not every item: one was cancelled


def test_a_rendering_item_is_stopped_and_its_worker_takes_the_next_item():
    farm = Farm(("cpu-0", "cpu"))
    job = farm.admit("j", [item("a"), item("b")])
    out = farm.handle(d.ItemCancelRequested("j", "a"))
    assert stops(out) == [("cpu-0", "j", "a")] and not [i for i in out if isinstance(i, d.ItemsCancelled)]
    assert job.items["a"].state == "running"  # until its worker's reply says it stopped
    farm.reply("cpu-0", cancelled("j", "a"))
    assert job.items["a"].state == CANCELLED and farm.sent() == {"cpu-0": ("j", "b")}
    farm.reply("cpu-0", done("j", "b"))
    assert farm.finished_jobs() == ["j"] and job.counts()[CANCELLED] == 1 and job.counts()[SUCCEEDED] == 1


def test_a_job_with_queued_and_rendering_items_cancelled_one_by_one_ends_cancelled():
    farm = Farm(("cpu-0", "cpu"))
    job = farm.admit("j", [item("a"), item("b")])
    farm.handle(d.ItemCancelRequested("j", "b"))
    farm.handle(d.ItemCancelRequested("j", "a"))
    farm.reply("cpu-0", cancelled("j", "a"))
    assert farm.finished_jobs() == ["j"] and job.final_state == "cancelled"


def test_a_render_that_committed_before_its_cancel_arrived_stays_succeeded():
    farm = Farm(("cpu-0", "cpu"))
    job = farm.admit("j", [item("a"), item("b")])
    assert stops(farm.handle(d.ItemCancelRequested("j", "a"))) == [("cpu-0", "j", "a")]
    farm.reply("cpu-0", done("j", "a"))  # the cancel came after its render: it committed
    assert job.items["a"].state == SUCCEEDED
    farm.reply("cpu-0", cancelled("j", "a"))  # a late word of a stop cannot undo the commit
    assert job.items["a"].state == SUCCEEDED and job.counts()[CANCELLED] == 0


def test_an_item_that_is_committing_is_not_stopped_and_its_commit_stands():
    farm = Farm(("cpu-0", "cpu"))
    job = farm.admit("j", [item("a"), item("b")])
    farm.handle(d.WorkerReplied("cpu-0", (), (("j", "a"),), d.RENDER, 1))  # a uploads, b renders
    out = farm.handle(d.ItemCancelRequested("j", "a"))
    assert not stops(out) and job.items["a"].state == "running"
    out = farm.handle(d.JobCancelled("j"))  # the job's cancel stops only what renders: b
    assert stops(out) == [("cpu-0", "j", "b")]
    commits(farm, "cpu-0", done("j", "a"), pending=(), sequence=2)
    assert job.items["a"].state == SUCCEEDED
    farm.reply("cpu-0", cancelled("j", "b"))
    assert farm.finished_jobs() == ["j"] and (job.counts()[SUCCEEDED], job.counts()[CANCELLED]) == (1, 1)
    assert job.final_state == "cancelled"


def test_an_item_cancelled_while_it_rendered_is_not_moved_to_a_bigger_card_when_it_runs_out_of_memory():
    farm = Farm(("12g-0", "12g"), ("24g-0", "24g"))
    job = farm.admit("j", [item("a")])
    farm.handle(d.ItemCancelRequested("j", "a"))
    out = farm.reply("12g-0", oom("j", "a"))  # the OOM came before the stop: it asks for a bigger GPU
    assert not farm.sent(out) and job.items["a"].state == CANCELLED
    assert d.ItemsCancelled("j", 1) in out and farm.finished_jobs() == ["j"]


def test_a_cancelled_item_whose_worker_is_lost_is_not_rendered_again():
    farm = Farm(("cpu-0", "cpu"), ("cpu-1", "cpu"))
    job = farm.admit("j", [item("a"), item("b")])
    farm.handle(d.ItemCancelRequested("j", "a"))
    out = farm.handle(d.WorkerLost("cpu-0", "segfault"))
    assert job.items["a"].state == CANCELLED and ("j", "a") not in farm.sent(out).values()
    farm.handle(d.JobCancelled("j"))
    out = farm.handle(d.WorkerLost("cpu-1", "node died"))
    assert job.items["b"].state == CANCELLED and farm.finished_jobs() == ["j"]
    assert job.final_state == "cancelled" and job.counts()[FAILED] == 0


def test_a_stop_nobody_asked_for_sends_the_item_again_without_counting_an_attempt():
    farm = Farm(("cpu-0", "cpu"))
    job = farm.admit("j", [item("a")])
    farm.reply("cpu-0", cancelled("j", "a"))  # a stale request on the worker stopped it
    assert farm.sent() == {"cpu-0": ("j", "a")} and job.items["a"].attempts == 1
    farm.reply("cpu-0", done("j", "a"))
    assert job.final_state == "succeeded"


def test_a_cancel_of_an_ended_or_unknown_item_or_job_changes_nothing():
    farm = Farm(("cpu-0", "cpu"))
    job = farm.admit("j", [item("a"), item("b")])
    farm.reply("cpu-0", done("j", "a"))
    for event in (d.ItemCancelRequested("j", "a"), d.ItemCancelRequested("j", "nope"), d.ItemCancelRequested("x", "a")):
        assert farm.handle(event) == []
    assert job.items["a"].state == SUCCEEDED and job.items["b"].state == "running"
