"""The dispatch state machine (farm/core/dispatch.py), event by event, without Ray or workers."""

import json
from pathlib import Path

import pytest

from farm.core import dispatch as d
from farm.core.contracts import Escalation
from farm.core.job import FAILED, SUCCEEDED, ItemOutcome, JobState
from farm.core.ladder import Degradation, OomRecord, RenderSettings
from farm.core.manifest import parse_manifest
from farm.core.planner import plan_job
from farm.core.tiers import TierTable

TABLE = TierTable()


def spec_of(items, name="job", **header):
    document = {"version": 1, "name": name, "model": "tiny", "defaults": {"steps": 10}, "items": items, **header}
    return parse_manifest(json.dumps(document), "json", base_dir=Path("/tmp"))


def item(id, resolution=256, frames=8, **extra):
    return {"id": id, "image": "a.png", "prompt": "p", "resolution": resolution, "frames": frames, **extra}


class Farm:
    """A DispatchState with workers, and helpers that feed it events and keep its instructions."""

    def __init__(self, *workers: tuple[str, str]):
        self.state = d.DispatchState(TABLE, workers)
        self.out: list = []

    def handle(self, *events):
        self.out = self.state.handle(*events)
        return self.out

    def admit(self, job_id, items, priority=0, **header):
        spec = spec_of(items, name=job_id, **header)
        job = JobState(spec)
        plan = plan_job(spec, self.state.shape, TABLE)
        self.handle(d.JobAdmitted(job_id, job, plan, priority))
        return job

    def sent(self, out=None):
        """worker -> (job, item) of the SendTask instructions."""
        return {i.worker: (i.task.job_id, i.task.item_id) for i in (out or self.out) if isinstance(i, d.SendTask)}

    def tasks(self):
        return {i.worker: i.task for i in self.out if isinstance(i, d.SendTask)}

    def reply(self, worker, *outcomes, pending=()):
        escalations = [o for o in outcomes if isinstance(o, Escalation)]
        outcomes = tuple(o for o in outcomes if not isinstance(o, Escalation))
        return self.handle(d.WorkerReplied(worker, outcomes, tuple(pending), escalation=(escalations or [None])[0]))

    def finished_jobs(self):
        return [i.job_id for i in self.out if isinstance(i, d.JobFinished)]


def done(job_id, item_id, status=SUCCEEDED, **extra):
    return ItemOutcome(item_id=item_id, status=status, job_id=job_id, **extra)


def commits(farm, worker, *outcomes, pending=(), sequence):
    """A worker's open commits call returned (it may be rendering meanwhile)."""
    return farm.handle(d.WorkerReplied(worker, tuple(outcomes), tuple(pending), d.COMMITS, sequence))


def test_admitted_items_go_to_idle_workers_and_the_job_ends_with_its_last_outcome():
    farm = Farm(("cpu-0", "cpu"))
    job = farm.admit("j", [item("a"), item("b")])
    assert farm.sent() == {"cpu-0": ("j", "a")} and job.items["a"].state == "running"
    farm.handle(d.WorkerReplied("cpu-0", (), (("j", "a"),), d.RENDER, 1))  # encoded, uploading: still running
    assert farm.sent() == {"cpu-0": ("j", "b")} and job.items["a"].state == "running"
    assert d.WatchCommits("cpu-0") in farm.out  # one open call reports its commits
    commits(farm, "cpu-0", done("j", "a"), sequence=2)  # a commits while b renders: progress at once
    assert job.items["a"].state == SUCCEEDED and job.items["b"].state == "running"
    assert not farm.finished_jobs() and not farm.state.workers["cpu-0"].uploading
    farm.handle(d.WorkerReplied("cpu-0", (), (("j", "b"),), d.RENDER, 3))
    assert d.WatchCommits("cpu-0") in farm.out and not farm.finished_jobs()
    commits(farm, "cpu-0", done("j", "b"), sequence=4)
    assert farm.finished_jobs() == ["j"] and job.counts()[SUCCEEDED] == 2 and not farm.state.busy()


def test_a_stale_report_does_not_bring_back_or_lose_pending_uploads():
    farm = Farm(("cpu-0", "cpu"))
    job = farm.admit("j", [item("a"), item("b"), item("c")])
    farm.handle(d.WorkerReplied("cpu-0", (), (("j", "a"),), d.RENDER, 1))
    # The render reply for b (report 3: a committed, b uploads) is handled before the commits
    # call's reply (report 2: a committed, nothing of b yet) that was taken earlier.
    farm.handle(d.WorkerReplied("cpu-0", (), (("j", "b"),), d.RENDER, 3))
    commits(farm, "cpu-0", done("j", "a"), sequence=2)
    assert farm.state.workers["cpu-0"].uploading == {("j", "b")}
    assert job.items["a"].state == SUCCEEDED and not farm.finished_jobs()


def test_items_rejected_at_plan_time_fail_and_an_empty_job_finishes_at_once():
    farm = Farm(("12g-0", "12g"))
    job = farm.admit("j", [item("huge", 1024, 32)], unfit="reject")
    assert job.items["huge"].state == FAILED and job.items["huge"].reason == "no_fitting_tier"
    assert farm.finished_jobs() == ["j"]


def test_smallest_workers_choose_first_and_big_ones_steal():
    farm = Farm(("24g-0", "24g"), ("12g-0", "12g"))
    farm.admit("j", [item("s1"), item("s2"), item("s3")])
    assert farm.sent() == {"12g-0": ("j", "s1"), "24g-0": ("j", "s2")}  # the 24g card steals a 12g item


def test_idle_workers_of_a_tier_with_nothing_to_take_cost_one_look_per_event():
    # 50 idle 12g cards, work only a 24g card may take: each event asks the queue once for 12g
    # (queues only shrink while idle workers are served), not once per idle card; the 24g card
    # still gets its next item.
    farm = Farm(("24g-0", "24g"), *[(f"12g-{n}", "12g") for n in range(50)])
    farm.admit("j", [item("big1", 1024, 16), item("big2", 1024, 16)])
    assert farm.sent() == {"24g-0": ("j", "big1")}
    takes = []
    take = farm.state.queue.take
    farm.state.queue.take = lambda tier, model=None: takes.append(tier) or take(tier, model)
    farm.reply("24g-0", done("j", "big1"))
    assert farm.sent() == {"24g-0": ("j", "big2")} and takes.count("12g") == 1


def test_priority_first_then_jobs_of_one_priority_take_turns():
    farm = Farm(("cpu-0", "cpu"))
    farm.admit("low", [item("l1"), item("l2")], priority=0)
    farm.admit("high-a", [item("a1"), item("a2")], priority=5)
    farm.admit("high-b", [item("b1")], priority=5)
    order, current = [], ("low", "l1")  # the worker was given l1 before the others came
    for _ in range(4):
        farm.reply("cpu-0", done(*current))
        current = farm.sent()["cpu-0"]
        order.append(current)
    assert order == [("high-a", "a1"), ("high-b", "b1"), ("high-a", "a2"), ("low", "l2")]


def test_longest_estimated_item_first_within_a_job_and_jobs_still_take_turns():
    farm = Farm(("12g-0", "12g"))
    farm.admit("a", [item("short", frames=8), item("long", frames=24), item("mid", frames=16)])
    order = [farm.sent()["12g-0"]]  # the worker took the longest of the first job at once
    farm.admit("b", [item("b-short", frames=8), item("b-long", frames=16)])
    for _ in range(4):
        farm.reply("12g-0", done(*order[-1]))
        order.append(farm.sent()["12g-0"])
    assert order == [("a", "long"), ("b", "b-long"), ("a", "mid"), ("b", "b-short"), ("a", "short")]


def test_a_retry_goes_before_longer_items():
    farm = Farm(("12g-0", "12g"), ("12g-1", "12g"))
    farm.admit("j", [item("s1", frames=8), item("l1", frames=24), item("l2", frames=24)])
    assert set(farm.sent().values()) == {("j", "l1"), ("j", "l2")}
    lost = next(w for w, pair in farm.sent().items() if pair == ("j", "l1"))
    other = next(w for w in ("12g-0", "12g-1") if w != lost)
    farm.handle(d.WorkerLost(lost, "gone"))
    farm.reply(other, done("j", "l2"))
    assert farm.sent() == {other: ("j", "l1")}  # the lost item first, then the short one


@pytest.mark.parametrize("where", ["rendering", "uploading"])
def test_a_worker_lost_mid_item_requeues_what_it_held_at_the_front_and_is_probed(where):
    farm = Farm(("cpu-0", "cpu"), ("cpu-1", "cpu"))
    job = farm.admit("j", [item("a"), item("b"), item("c")])
    if where == "uploading":
        farm.reply("cpu-0", pending=[("j", "a")])  # a uploads while cpu-0 renders c
        commits(farm, "cpu-0", pending=[("j", "a")], sequence=5)  # no commit yet: reopened
        assert farm.out == [d.WatchCommits("cpu-0")]
    out = farm.handle(d.WorkerLost("cpu-0", "node died"))
    assert d.ProbeWorker("cpu-0") in out
    lost = ["a"] if where == "rendering" else ["a", "c"]
    assert all(job.items[i].state == "queued" for i in lost)
    assert farm.state.queue.take("cpu")[1] == "a"  # at the front
    farm.handle(d.WorkerProbed("cpu-0", ok=True))
    assert "cpu-0" in farm.sent()  # back, and given work at once


def test_an_item_whose_workers_keep_dying_fails_after_its_attempts():
    farm = Farm(("cpu-0", "cpu"))
    job = farm.admit("j", [item("a")])
    finished = []
    for attempt in range(3):
        finished += farm.handle(d.WorkerLost("cpu-0", "segfault"))
        finished += farm.handle(d.WorkerProbed("cpu-0", ok=True))
    assert job.items["a"].state == FAILED and job.items["a"].reason == "worker_lost"
    assert "segfault" in job.items["a"].message and d.JobFinished("j") in finished


def test_the_last_worker_of_a_tier_gone_replans_its_queued_items_on_the_tiers_left():
    farm = Farm(("12g-0", "12g"), ("24g-0", "24g"))
    job = farm.admit("j", [item("a", 768, 24), item("b", 768, 24), item("c", 768, 24), item("s")])
    assert job.items["a"].planned_tier == "24g" or job.items["s"].planned_tier == "12g"
    farm.handle(d.WorkerLost("24g-0", "spot reclaim"))
    out = farm.handle(d.WorkerProbed("24g-0", ok=False))
    assert d.StopWorker("24g-0") in out and farm.state.live_counts() == {"12g": 1}
    for item_id in ("b", "c"):
        status = job.items[item_id]
        assert status.state == "queued" and status.planned_tier == "12g"  # degraded to fit the 12g card


def test_every_worker_gone_fails_what_is_left():
    farm = Farm(("cpu-0", "cpu"))
    job = farm.admit("j", [item("a"), item("b")])
    farm.handle(d.WorkerLost("cpu-0", "gone"))
    assert job.items["a"].state == "queued"  # requeued, its worker probed
    farm.handle(d.WorkerProbed("cpu-0", ok=False))
    for item_id in ("a", "b"):
        assert job.items[item_id].state == FAILED and "every render worker is gone" in job.items[item_id].message
    assert farm.finished_jobs() == ["j"]


def oom(job_id, item_id, degradations=(), ooms=(), tier="12g"):
    """The escalation a worker's ladder returns: the task's degradations and its own step."""
    tried = RenderSettings(256, "1:1", 8, 3)
    step = Degradation("memory_savers", [], list(tried.savers), "oom")
    failed = OomRecord("denoise", tier, tried, "CUDA out of memory")
    return Escalation(item_id, job_id, "out of memory at 256x256x8", tried, (*degradations, step), (*ooms, failed))


def test_escalation_moves_to_an_idle_bigger_worker():
    farm = Farm(("12g-0", "12g"), ("24g-0", "24g"))
    farm.admit("j", [item("a")])
    assert farm.tasks()["12g-0"].bigger_tier_available
    out = farm.reply("12g-0", oom("j", "a"))
    task = {i.worker: i.task for i in out if isinstance(i, d.SendTask)}["24g-0"]
    assert task.item_id == "a" and task.degradations[-1].step == "bigger_tier"
    assert (task.degradations[-1].before, task.degradations[-1].after) == ("12g", "24g")
    assert farm.state.jobs["j"].state.items["a"].attempts == 1  # a move, not a new attempt
    assert task.settings.saver_level == 0  # planned afresh for the 24g card: none of the 12g savers
    assert [o.tier for o in task.ooms] == ["12g"]  # what failed travels with the item


def test_an_escalated_item_skips_what_already_ran_out_of_memory_on_that_tier():
    farm = Farm(("12g-0", "12g"), ("24g-0", "24g"))
    farm.admit("j", [item("a"), item("b")])
    farm.reply("24g-0", done("j", "b"))  # the 24g card is idle again
    failed_there = OomRecord("denoise", "24g", RenderSettings(256, "1:1", 8), "CUDA out of memory")
    out = farm.reply("12g-0", oom("j", "a", ooms=[failed_there]))
    task = {i.worker: i.task for i in out if isinstance(i, d.SendTask)}["24g-0"]
    assert task.settings.saver_level == 1
    assert task.degradations[-1].step == "memory_savers" and "ran out of memory there" in task.degradations[-1].why


def test_escalation_when_the_bigger_worker_is_busy_goes_back_to_the_same_worker():
    farm = Farm(("12g-0", "12g"), ("24g-0", "24g"))
    farm.admit("j", [item("a"), item("b")])
    assert farm.sent() == {"12g-0": ("j", "a"), "24g-0": ("j", "b")}
    farm.reply("12g-0", oom("j", "a"))
    task = farm.tasks()["12g-0"]
    assert task.item_id == "a" and not task.bigger_tier_available  # its ladder goes on without moving
    assert task.settings == RenderSettings(256, "1:1", 8, 3) and task.ooms[-1].tier == "12g"  # blocked there


def test_no_bigger_tier_alive_means_the_ladder_is_not_offered_one():
    farm = Farm(("12g-0", "12g"), ("24g-0", "24g"))
    farm.admit("j", [item("a"), item("b"), item("c")])
    assert farm.tasks()["12g-0"].bigger_tier_available
    farm.handle(d.WorkerLost("24g-0", "gone"))
    farm.handle(d.WorkerProbed("24g-0", ok=False))
    farm.reply("12g-0", done("j", "a"))
    assert farm.sent()["12g-0"][0] == "j" and not farm.tasks()["12g-0"].bigger_tier_available


def test_a_second_escalation_after_the_bigger_card_also_fails_stays_there():
    farm = Farm(("12g-0", "12g"), ("24g-0", "24g"), ("80g-0", "80g"))
    farm.admit("j", [item("a")])
    farm.reply("12g-0", oom("j", "a"))
    assert "24g-0" in farm.sent()
    first = farm.tasks()["24g-0"]
    farm.reply("24g-0", oom("j", "a", degradations=first.degradations, ooms=first.ooms, tier="24g"))
    task = farm.tasks()["80g-0"]
    steps = [(s.before, s.after) for s in task.degradations if s.step == "bigger_tier"]
    assert steps == [("12g", "24g"), ("24g", "80g")]
    assert [o.tier for o in task.ooms] == ["12g", "24g"] and task.settings.saver_level == 0


def test_cancel_before_anything_started_drops_everything():
    farm = Farm(("cpu-0", "cpu"))
    farm.admit("other", [item("x")])
    job = farm.admit("j", [item("a"), item("b")])
    out = farm.handle(d.JobCancelled("j"))
    assert d.ItemsCancelled("j", 2) in out and farm.finished_jobs() == ["j"]
    assert job.final_state == "cancelled"


def test_cancel_during_a_render_stops_it_and_keeps_it_when_it_committed_first():
    farm = Farm(("cpu-0", "cpu"))
    job = farm.admit("j", [item("a"), item("b"), item("c")])
    out = farm.handle(d.JobCancelled("j"))
    assert d.ItemsCancelled("j", 2) in out and not farm.finished_jobs()
    assert d.CancelRunning("cpu-0", "j", "a") in out  # stopped at its next denoise step
    assert job.items["b"].state == "cancelled" and job.items["a"].state == "running"
    farm.reply("cpu-0", done("j", "a"))  # it committed before the cancel reached it
    assert job.items["a"].state == SUCCEEDED and farm.finished_jobs() == ["j"]
    assert job.final_state == "cancelled"


def test_a_worker_bug_fails_its_item_and_the_worker_goes_on():
    farm = Farm(("cpu-0", "cpu"))
    job = farm.admit("j", [item("a"), item("b")])
    farm.handle(d.WorkerCallFailed("cpu-0", "ZeroDivisionError: division by zero"))
    assert job.items["a"].state == FAILED and job.items["a"].reason == "render_error"
    assert farm.sent() == {"cpu-0": ("j", "b")}


def test_a_drain_sends_nothing_new_and_hands_back_what_is_held():
    farm = Farm(("cpu-0", "cpu"))
    job = farm.admit("j", [item("a"), item("b")])
    farm.handle(d.DrainRequested())
    farm.reply("cpu-0", pending=[("j", "a")])
    assert farm.out == [d.WatchCommits("cpu-0")] and not farm.state.settled()
    out = farm.handle(d.HandBackHeld())
    assert d.HandedBack((("j", "a"),)) in out
    assert job.items["a"].state == "queued" and job.items["b"].state == "queued"


def test_an_escalation_while_draining_is_handed_back():
    farm = Farm(("12g-0", "12g"), ("24g-0", "24g"))
    job = farm.admit("j", [item("a")])
    farm.handle(d.DrainRequested())
    farm.reply("12g-0", oom("j", "a"))
    assert not farm.sent() and job.items["a"].state == "queued"


def test_illegal_worker_transitions_raise():
    starting = d.WorkerSlot("s", "cpu", d.WorkerPhase.STARTING)
    with pytest.raises(d.IllegalTransition, match="starting -> rendering"):
        starting.move(d.WorkerPhase.RENDERING)
    slot = d.WorkerSlot("w", "cpu")
    slot.move(d.WorkerPhase.RENDERING)
    with pytest.raises(d.IllegalTransition, match="rendering -> gone"):
        slot.move(d.WorkerPhase.GONE)
    slot.move(d.WorkerPhase.PROBING)
    slot.move(d.WorkerPhase.GONE)
    with pytest.raises(d.IllegalTransition):
        slot.move(d.WorkerPhase.IDLE)


def test_outcomes_for_a_job_that_is_gone_are_ignored():
    farm = Farm(("cpu-0", "cpu"))
    farm.admit("j", [item("a")])
    farm.reply("cpu-0", done("finished-earlier", "x"), done("j", "a"))  # a commit of a job already ended
    assert farm.finished_jobs() == ["j"]
    assert [i for i in farm.out if isinstance(i, d.ItemFinished)] == [d.ItemFinished("j", done("j", "a"))]


def test_gauges_count_queued_in_flight_and_worker_states():
    farm = Farm(("12g-0", "12g"), ("24g-0", "24g"))
    farm.admit("j", [item("a"), item("b"), item("c")])
    farm.reply("12g-0", pending=[("j", "a")])
    gauges = farm.state.gauges()
    assert gauges["in_flight"] == {"12g": 2, "24g": 1}
    assert gauges["workers"] == {("12g", "busy"): 1, ("24g", "busy"): 1}
    assert sum(gauges["queued"].values()) == 0


# --- workers that come and go with the cluster ---------------------------------------------------


def test_a_worker_that_joins_mid_job_takes_queued_work():
    farm = Farm(("12g-0", "12g"))
    job = farm.admit("j", [item("a"), item("b"), item("c")])
    farm.handle(d.WorkerStarting("12g-1", "12g"))
    assert not farm.sent()  # still loading its model
    out = farm.handle(d.WorkerJoined("12g-1", "12g"))
    assert farm.sent(out) == {"12g-1": ("j", "b")} and job.items["b"].worker == "12g-1"


def test_queued_work_is_not_failed_while_a_worker_starts():
    farm = Farm(("24g-0", "24g"))
    farm.handle(d.WorkerLost("24g-0", "node left"))
    farm.handle(d.WorkerProbed("24g-0", ok=False))
    farm.handle(d.WorkerStarting("24g-1", "24g"))
    job = farm.admit("j", [item("a")])
    farm.handle(d.Tick())
    assert job.items["a"].state == "queued"  # a worker is on its way
    assert farm.sent(farm.handle(d.WorkerJoined("24g-1", "24g"))) == {"24g-1": ("j", "a")}


def test_a_start_that_fails_leaves_the_work_to_the_others_or_fails_it():
    farm = Farm(("cpu-0", "cpu"))
    farm.handle(d.WorkerLost("cpu-0", "gone"))
    farm.handle(d.WorkerProbed("cpu-0", ok=False))
    farm.handle(d.WorkerStarting("cpu-1", "cpu"))
    job = farm.admit("j", [item("a")])
    farm.handle(d.WorkerStartFailed("cpu-1", "out of memory while loading"))
    farm.handle(d.Tick())
    assert job.items["a"].state == FAILED and job.items["a"].reason == "worker_lost"


def test_a_new_bigger_tier_takes_over_what_was_degraded_for_its_absence():
    farm = Farm(("12g-0", "12g"))
    farm.admit("warm", [item("w")])  # the 12g card is busy
    job = farm.admit("j", [item("small"), item("big", 1024, 24)])  # big: degraded to fit the 12g card
    assert farm.state.jobs["j"].items["big"].plan.degradations
    farm.handle(d.WorkerStarting("80g-0", "80g"))
    out = farm.handle(d.WorkerJoined("80g-0", "80g"))
    task = farm.tasks()["80g-0"] if farm.sent(out) else None
    assert task is not None and task.item_id == "big" and task.degradations == ()
    assert task.settings.resolution == 1024 and job.items["big"].planned_tier == "80g"


def test_an_idle_worker_retires_and_a_busy_one_does_not():
    farm = Farm(("cpu-0", "cpu"), ("cpu-1", "cpu"))
    farm.admit("j", [item("a")])
    busy = farm.sent()
    idle = next(w for w in ("cpu-0", "cpu-1") if w not in busy)
    assert d.StopWorker(idle) in farm.handle(d.WorkerRetired(idle))
    assert farm.handle(d.WorkerRetired(next(iter(busy)))) == [] and farm.state.live_counts() == {"cpu": 1}


def test_a_tier_whose_only_worker_fails_to_start_has_its_queue_planned_on_the_others():
    farm = Farm(("12g-0", "12g"))
    farm.handle(d.WorkerStarting("24g-0", "24g"))
    farm.admit("warm", [item("w")])  # the 12g card is busy
    job = farm.admit("j", [item("mid", 768, 16)])  # planned for the 24g card on its way
    assert job.items["mid"].planned_tier == "24g"
    farm.handle(d.WorkerStartFailed("24g-0", "its model did not fit"))
    assert job.items["mid"].state == "queued" and job.items["mid"].planned_tier == "12g"  # degraded to fit
    farm.reply("12g-0", done("warm", "w"))
    assert farm.sent() == {"12g-0": ("j", "mid")}


def test_work_for_a_tier_asked_of_the_autoscaler_waits_for_its_nodes():
    farm = Farm(("12g-0", "12g"))
    farm.handle(d.CapacityAwaited({"80g": 2}))
    assert farm.state.shape.workers["80g"] == 2  # plans count on the nodes that were asked for
    job = farm.admit("j", [item("big", resolution=1024, frames=24)])
    assert job.items["big"].planned_tier == "80g" and job.items["big"].state == "queued"
    farm.handle(d.Tick())
    assert job.items["big"].state == "queued", "not failed as 'nobody can take it' while its node is on its way"
    farm.handle(d.WorkerStarting("80g-0", "80g"), d.WorkerJoined("80g-0", "80g"))
    assert farm.sent() == {"80g-0": ("j", "big")}


def test_a_tier_that_never_came_has_its_queue_planned_on_the_tiers_there_are():
    farm = Farm(("24g-0", "24g"))
    farm.handle(d.CapacityAwaited({"80g": 1}))
    job = farm.admit("j", [item("a", resolution=1024, frames=24), item("b", resolution=1024, frames=24)])
    assert {s.planned_tier for s in job.items.values()} == {"80g"} and not farm.sent()
    farm.handle(d.TierUnprovided("80g"))
    assert "80g" not in farm.state.shape.workers
    assert {s.planned_tier for s in job.items.values()} == {"24g"}, "planned (degraded) for the 24g card"
    assert farm.sent() == {"24g-0": ("j", "a")}
    assert job.items["b"].degradations or farm.state.jobs["j"].items["b"].plan.degradations
    assert job.to_record()["unprovidable_tiers"] == ["80g"], "the job's record says which tier never came"

# --- a worker's node being drained (issue 16: graceful drain) ------------------------------------


def returned(job_id, item_id, message="its node is being drained"):
    from farm.core.contracts import ReturnedItem

    return ReturnedItem(item_id, job_id, "node_draining", message, steps_done=3)


def test_an_idle_worker_on_a_draining_node_is_stopped_and_gets_no_task():
    farm = Farm(("cpu-0", "cpu"), ("cpu-1", "cpu"))
    job = farm.admit("j", [item("a")])
    idle = next(w for w in ("cpu-0", "cpu-1") if w not in farm.sent())
    out = farm.handle(d.WorkerDraining(idle, deadline_s=1000.0))
    assert d.StopWorker(idle) in out and not farm.sent(out)
    assert farm.state.workers[idle].phase is d.WorkerPhase.GONE and farm.state.live_counts() == {"cpu": 1}
    assert job.items["a"].state == "running"


def test_a_busy_worker_on_a_draining_node_takes_nothing_new_and_a_returned_item_goes_to_another_at_once():
    farm = Farm(("12g-0", "12g"), ("12g-1", "12g"))
    job = farm.admit("j", [item("a"), item("b"), item("c")])
    drained = next(w for w, pair in farm.sent().items() if pair == ("j", "a"))
    other = next(w for w in ("12g-0", "12g-1") if w != drained)
    out = farm.handle(d.WorkerDraining(drained, deadline_s=1000.0))
    assert out == [] and farm.state.workers[drained].phase is d.WorkerPhase.DRAINING
    assert farm.state.expected_counts() == {"12g": 1} and farm.state.shape.workers == {"12g": 1}  # not capacity
    assert job.items["a"].attempts == 1
    # The drained worker hands "a" back unfinished: queued again at the front, its attempt taken back.
    out = farm.handle(d.WorkerReplied(drained, (), (), returned=returned("j", "a")))
    assert d.StopWorker(drained) in out and not farm.sent(out)
    assert d.ItemRequeued("j", "a", drained, "12g", "node_draining", "its node is being drained") in out
    assert job.items["a"].state == "queued" and job.items["a"].attempts == 0
    farm.reply(other, done("j", "b"))
    assert farm.sent() == {other: ("j", "a")}  # before c: the front of the queue
    assert farm.tasks()[other].attempt == 1 and job.items["a"].attempts == 1
    farm.reply(other, done("j", "a"))
    farm.reply(other, done("j", "c"))
    assert job.final_state == "succeeded" and farm.finished_jobs() == ["j"]


def test_a_worker_that_finds_its_node_draining_itself_returns_the_task_and_drains():
    """The runtime had not seen the drain yet: the worker's reply is enough."""
    farm = Farm(("cpu-0", "cpu"), ("cpu-1", "cpu"))
    job = farm.admit("j", [item("a"), item("b"), item("c")])
    farm.reply("cpu-0", done("j", "a"))  # cpu-0 takes c
    assert farm.sent() == {"cpu-0": ("j", "c")}
    out = farm.handle(d.WorkerReplied("cpu-0", (), (), returned=returned("j", "c", "not started")))
    assert d.StopWorker("cpu-0") in out and job.items["c"].state == "queued" and job.items["c"].attempts == 0
    farm.reply("cpu-1", done("j", "b"))
    assert farm.sent() == {"cpu-1": ("j", "c")}


def test_a_draining_worker_that_finishes_its_item_is_stopped_once_its_upload_is_committed():
    farm = Farm(("cpu-0", "cpu"), ("cpu-1", "cpu"))
    job = farm.admit("j", [item("a"), item("b"), item("c")])
    farm.handle(d.WorkerDraining("cpu-0"))
    out = farm.handle(d.WorkerReplied("cpu-0", (), (("j", "a"),), d.RENDER, 1))  # finished, uploading
    assert d.WatchCommits("cpu-0") in out and not any(isinstance(i, (d.SendTask, d.StopWorker)) for i in out)
    out = commits(farm, "cpu-0", done("j", "a"), sequence=2)
    assert d.StopWorker("cpu-0") in out and job.items["a"].state == SUCCEEDED and job.items["a"].attempts == 1
    assert farm.state.workers["cpu-0"].phase is d.WorkerPhase.GONE


def test_draining_the_last_worker_of_a_tier_plans_its_queue_on_the_tiers_left_at_once():
    farm = Farm(("12g-0", "12g"), ("24g-0", "24g"))
    job = farm.admit("j", [item("a", 768, 24), item("b", 768, 24), item("s1"), item("s2")])
    running = farm.sent()["12g-0"][1]
    other = "s2" if running == "s1" else "s1"
    assert job.items[other].planned_tier == "12g" and job.items[other].state == "queued"
    farm.handle(d.WorkerDraining("12g-0"))
    assert farm.state.queue.queued_by_tier()["12g"] == 0 and job.items[other].planned_tier == "24g"  # planned again
    out = farm.handle(d.WorkerReplied("12g-0", (), (), returned=returned("j", running)))
    assert d.StopWorker("12g-0") in out
    assert job.items[running].state == "queued" and job.items[running].planned_tier == "24g"


def test_a_draining_worker_that_dies_requeues_what_it_held_and_is_not_probed():
    farm = Farm(("cpu-0", "cpu"), ("cpu-1", "cpu"))
    job = farm.admit("j", [item("a"), item("b")])
    farm.handle(d.WorkerDraining("cpu-0"))
    out = farm.handle(d.WorkerLost("cpu-0", "the node went at its deadline"))
    assert d.StopWorker("cpu-0") in out and d.ProbeWorker("cpu-0") not in out
    assert job.items["a"].state == "queued" and farm.state.workers["cpu-0"].phase is d.WorkerPhase.GONE


def test_an_escalation_on_a_draining_worker_is_queued_for_another_worker_not_sent_back():
    farm = Farm(("12g-0", "12g"), ("12g-1", "12g"), ("24g-0", "24g"))
    job = farm.admit("j", [item("a"), item("b"), item("c")])
    drained = next(w for w, pair in farm.sent().items() if pair == ("j", "a"))
    farm.handle(d.WorkerDraining(drained))
    out = farm.reply(drained, oom("j", "a", tier="12g"))  # the 24g worker is busy
    assert d.StopWorker(drained) in out and not farm.sent(out)
    assert job.items["a"].state == "queued" and job.items["a"].attempts == 0
    other = next(w for w in ("12g-0", "12g-1") if w != drained)
    farm.reply(other, done("j", farm.state.workers[other].item_id))
    task = farm.tasks()[other]
    assert task.item_id == "a" and task.ooms and task.attempt == 1  # its ladder goes on from the OOM


def test_a_drained_worker_can_not_go_back_to_work():
    slot = d.WorkerSlot("w", "cpu")
    slot.move(d.WorkerPhase.RENDERING)
    slot.job_id, slot.item_id = "j", "a"
    slot.move(d.WorkerPhase.DRAINING)
    assert slot.in_render and (slot.job_id, slot.item_id) == ("j", "a")  # it still renders its item
    for phase in (d.WorkerPhase.IDLE, d.WorkerPhase.RENDERING, d.WorkerPhase.PROBING):
        with pytest.raises(d.IllegalTransition):
            slot.move(phase)


def test_gauges_show_draining_workers():
    farm = Farm(("cpu-0", "cpu"), ("cpu-1", "cpu"))
    farm.admit("j", [item("a"), item("b")])
    farm.handle(d.WorkerDraining("cpu-0"))
    gauges = farm.state.gauges()
    assert gauges["workers"] == {("cpu", "draining"): 1, ("cpu", "busy"): 1} and gauges["in_flight"] == {"cpu": 2}
