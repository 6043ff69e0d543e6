"""The CPU stage's queue: first in first out, at most `concurrency` calls, per-job pending counts
that a cancel's drop and each finished call keep right."""

from farm.post.item import PostTask
from farm.post.stage import PostStage


def task(job, item):
    return PostTask(job, job or "detached", "/out", item, ())


def test_at_most_concurrency_calls_run_in_commit_order_and_pending_counts_follow():
    started = []
    stage = PostStage(lambda t: started.append(t.item_id) or f"call-{t.item_id}", concurrency=2)
    for job, item in (("a", "1"), ("b", "2"), ("a", "3"), ("a", "4")):
        stage.enqueue(task(job, item))
    assert [t.item_id for _, t in stage.start_ready()] == ["1", "2"] and started == ["1", "2"]
    assert stage.start_ready() == [] and stage.counts() == (2, 2)
    assert (stage.pending("a"), stage.pending("b"), stage.pending("c")) == (3, 1, 0)
    assert stage.finished("call-1").item_id == "1"
    assert [t.item_id for _, t in stage.start_ready()] == ["3"]
    assert [t.item_id for t in stage.drop("a")] == ["4"]  # queued: dropped; running ("3") finishes
    assert stage.pending("a") == 1 and stage.busy()
    stage.finished("call-2")
    stage.finished("call-3")
    assert not stage.busy() and stage.pending("a") == stage.pending("b") == 0


def test_a_detached_task_counts_under_no_job():
    stage = PostStage(lambda t: "call", concurrency=1)
    stage.enqueue(task(None, "x"))
    assert stage.pending(None) == 1
    stage.start_ready()
    stage.finished("call")
    assert stage.pending(None) == 0 and not stage.busy()
