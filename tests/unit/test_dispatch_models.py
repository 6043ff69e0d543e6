"""Several models on one farm, in the dispatch state machine: workers take their model's items,
switch only as `farm.core.switching` allows, and a model nobody can load fails its items."""

from farm.core import dispatch as d
from farm.core.errors import FailureReason
from farm.core.job import FAILED, QUEUED, SUCCEEDED, JobState
from tests.unit.test_dispatch import TABLE, done, item, plan_job, spec_of


class Farm:
    def __init__(self, workers, models, **options):
        options.setdefault("default_load_seconds", 5.0)
        self.state = d.DispatchState(TABLE, workers, worker_models=models, **options)
        self.out, self.log = [], []

    def handle(self, *events):
        self.out = self.state.handle(*events)
        self.log += self.out
        return self.out

    def admit(self, job_id, items):
        spec = spec_of(items, name=job_id)
        job = JobState(spec)
        self.handle(d.JobAdmitted(job_id, job, plan_job(spec, self.state.shape, TABLE)))
        return job

    def sent(self):
        return {i.worker: i.task for i in self.out if isinstance(i, d.SendTask)}

    def switches(self, everything=False):
        return [i for i in (self.log if everything else self.out) if isinstance(i, d.SwitchModel)]

    def finish(self, worker, task):
        return self.handle(d.WorkerReplied(worker, (done(task.job_id, task.item_id),), ()))


def mixed(n_tiny, n_wan):
    return ([item(f"t{k}") for k in range(n_tiny)]
            + [item(f"w{k}", frames=9, model="tiny:wan") for k in range(n_wan)])


def test_a_worker_takes_only_its_model_s_items_then_switches_to_the_waiting_model():
    farm = Farm([("a", "24g")], {"a": "tiny"})
    job = farm.admit("j", mixed(2, 2))
    task = farm.sent()["a"]
    assert task.model == "tiny" and task.item_id.startswith("t")
    farm.finish("a", task)
    task = farm.sent()["a"]
    assert task.item_id.startswith("t")
    farm.finish("a", task)
    (switch,) = farm.switches()  # tiny is done; nobody holds wan
    assert (switch.worker, switch.from_model, switch.model) == ("a", "tiny", "tiny:wan")
    assert "no worker holds it" in switch.reason and not farm.sent()
    assert farm.state.workers["a"].phase is d.WorkerPhase.SWITCHING
    farm.handle(d.Tick())
    assert not farm.sent() and not farm.switches()  # nothing is sent to a worker while it switches
    farm.handle(d.WorkerSwitched("a", "tiny:wan", True, seconds=3.0))
    task = farm.sent()["a"]
    assert task.model == "tiny:wan" and task.item_id.startswith("w")
    assert farm.state.load_seconds == {"tiny:wan": 3.0}
    farm.finish("a", task)
    farm.finish("a", farm.sent()["a"])
    assert [job.items[i].state for i in ("t0", "t1", "w0", "w1")] == [SUCCEEDED] * 4
    assert any(isinstance(i, d.JobFinished) for i in farm.out)


def test_workers_keep_to_their_model_while_it_has_work():
    farm = Farm([("a", "24g"), ("b", "24g")], {"a": "tiny", "b": "tiny"})
    farm.admit("j", mixed(6, 6))
    current = dict(farm.sent())
    order = [t.model for t in current.values()]
    while current:
        worker, task = sorted(current.items())[0]
        del current[worker]
        farm.finish(worker, task)
        order += [t.model for t in farm.sent().values()]
        current.update(farm.sent())
        for switch in farm.switches():
            assert order.count("tiny") == 6  # a switch only once no tiny item is left queued
            farm.handle(d.WorkerSwitched(switch.worker, switch.model, True, seconds=5.0))
            order += [t.model for t in farm.sent().values()]
            current.update(farm.sent())
    assert order[:6] == ["tiny"] * 6 and order.count("tiny:wan") == 6
    assert 1 <= len(farm.switches(everything=True)) <= 2  # each worker switches at most once


def test_a_worker_that_just_switched_does_not_switch_back_before_it_renders_one_item():
    # Loading is dear here (1000 s), so b never follows a to wan; then wan's only item is
    # cancelled while a switches: a holds wan with nothing to do while tiny's queue is long, and
    # still does not switch back before it has rendered an item of wan.
    farm = Farm([("a", "24g"), ("b", "24g")], {"a": "tiny", "b": "tiny"}, default_load_seconds=1000.0)
    farm.admit("j", [item("w0", frames=9, model="tiny:wan")])
    assert [(s.worker, s.model) for s in farm.switches()] == [("a", "tiny:wan")]
    farm.admit("k", [item(f"t{n}") for n in range(10)])
    assert farm.sent()["b"].model == "tiny"
    farm.handle(d.JobCancelled("j"))
    farm.handle(d.WorkerSwitched("a", "tiny:wan", True, seconds=5.0))
    assert farm.state.workers["a"].items_since_switch == 0 and not farm.switches() and "a" not in farm.sent()
    farm.handle(d.Tick())
    assert not farm.switches()


def test_a_model_no_worker_can_load_fails_its_items_and_the_job_ends():
    farm = Farm([("a", "24g")], {"a": "tiny"})
    job = farm.admit("j", mixed(0, 2))
    (switch,) = farm.switches()
    farm.handle(d.WorkerSwitched("a", "tiny:wan", False, message="no weights", holds="tiny"))
    assert farm.state.workers["a"].model == "tiny"
    states = {i: job.items[i].state for i in ("w0", "w1")}
    assert states == {"w0": FAILED, "w1": FAILED}
    assert job.items["w0"].reason == FailureReason.MODEL_UNAVAILABLE
    assert any(isinstance(i, d.JobFinished) for i in farm.out)


def test_a_worker_lost_while_switching_is_probed_and_comes_back_with_its_model():
    farm = Farm([("a", "24g")], {"a": "tiny"})
    job = farm.admit("j", mixed(0, 1))
    assert farm.switches()
    farm.handle(d.WorkerLost("a", "killed"))
    assert any(isinstance(i, d.ProbeWorker) for i in farm.out)
    assert job.items["w0"].state == QUEUED  # nothing of it was held
    farm.handle(d.WorkerProbed("a", True, model="tiny"))
    assert farm.switches()  # it tries again: still nobody holds wan
