"""`JobReleased` (farm/core/dispatch.py): a job whose lease went to another coordinator sends
nothing more; its queued items stay queued in its record (for the new holder), what is running
finishes and is recorded, and nothing of it is sent again (no requeue, no escalation)."""

from farm.core import dispatch as d
from farm.core.job import SUCCEEDED

from .test_dispatch import Farm, done, item, oom


def test_a_released_job_sends_nothing_more_and_ends_when_its_running_item_does():
    farm = Farm(("cpu-0", "cpu"))
    job = farm.admit("j", [item("a"), item("b"), item("c")])
    other = farm.admit("k", [item("x")])
    out = farm.handle(d.JobReleased("j"))
    assert not [i for i in out if isinstance(i, (d.ItemsCancelled, d.JobFinished))]
    assert job.items["b"].state == job.items["c"].state == "queued"  # untouched: the new holder runs them
    assert not job.cancelled and "j" not in farm.state.queue.jobs
    farm.reply("cpu-0", done("j", "a"))  # the running item finishes here and is kept
    assert job.items["a"].state == SUCCEEDED and "j" in farm.finished_jobs()
    assert farm.sent() == {"cpu-0": ("k", "x")}  # the worker goes on with other jobs
    assert other.items["x"].state == "running"


def test_a_released_jobs_item_whose_worker_died_is_not_queued_again():
    farm = Farm(("cpu-0", "cpu"), ("cpu-1", "cpu"))
    job = farm.admit("j", [item("a"), item("b"), item("c")])
    farm.handle(d.JobReleased("j"))
    out = farm.handle(d.WorkerLost("cpu-0", "node died"))
    assert not farm.sent(out) and job.items["a"].state == "queued"
    farm.handle(d.WorkerProbed("cpu-0", ok=True))
    assert not farm.sent()
    farm.reply("cpu-1", done("j", "b"))
    assert farm.finished_jobs() == ["j"]


def test_a_released_jobs_escalation_is_not_moved_on():
    farm = Farm(("12g-0", "12g"), ("24g-0", "24g"))
    job = farm.admit("j", [item("a")])
    farm.handle(d.JobReleased("j"))
    out = farm.reply("12g-0", oom("j", "a"))
    assert not farm.sent(out) and job.items["a"].state == "queued" and farm.finished_jobs() == ["j"]


def test_releasing_a_job_with_nothing_running_ends_it_at_once():
    farm = Farm()
    job = farm.admit("j", [item("a")])
    out = farm.handle(d.JobReleased("j"))
    assert [i.job_id for i in out if isinstance(i, d.JobFinished)] == ["j"] and job.items["a"].state == "queued"
    assert farm.handle(d.JobReleased("gone")) == []
