"""The model-switch policy: a worker changes models only when that shortens the waiting queue's finish."""

from farm.core.switching import QueueView, SwitchPolicy, WorkerView, decide_switches


def q(model, items, seconds_each=10.0, load=30.0):
    return QueueView(model, items, items * seconds_each, load)


def test_a_worker_with_work_of_its_own_model_never_switches():
    workers = [WorkerView("w0", "a", idle=True)]
    assert decide_switches(workers, [q("a", 1), q("b", 100)]) == []


def test_an_idle_worker_switches_to_a_model_nobody_holds():
    (decision,) = decide_switches([WorkerView("w0", "a", idle=True)], [q("a", 0), q("b", 3)])
    assert (decision.worker, decision.from_model, decision.to_model) == ("w0", "a", "b")
    assert decision.finish_before_s == float("inf") and "no worker holds it" in decision.reason


def test_no_switch_when_loading_costs_more_than_it_saves():
    workers = [WorkerView("w0", "a", idle=True), WorkerView("w1", "b", idle=False)]
    # b: 2 items x 10 s on one worker = 20 s; a switch would cost 30 s of loading first.
    assert decide_switches(workers, [q("a", 0), q("b", 2)]) == []
    # b: 60 items = 600 s; with a second worker 30 + 300 s.
    (decision,) = decide_switches(workers, [q("a", 0), q("b", 60)])
    assert decision.finish_after_s == 330.0


def test_the_gain_must_exceed_the_margin():
    workers = [WorkerView("w0", "a", idle=True), WorkerView("w1", "b", idle=False)]
    # 70 s alone vs 30 + 35 = 65 s: a 5 s gain is not more than the 5 s margin.
    assert decide_switches(workers, [q("b", 7)], SwitchPolicy(min_gain_s=5.0)) == []
    assert len(decide_switches(workers, [q("b", 7)], SwitchPolicy(min_gain_s=1.0))) == 1


def test_idle_workers_spread_over_the_waiting_models():
    workers = [WorkerView("w0", "a", idle=True), WorkerView("w1", "a", idle=True)]
    decisions = decide_switches(workers, [q("a", 0), q("b", 50), q("c", 40)])
    assert sorted(d.to_model for d in decisions) == ["b", "c"]


def test_a_worker_that_just_switched_does_not_switch_back():
    workers = [WorkerView("w0", "b", idle=True, items_since_switch=0)]
    assert decide_switches(workers, [q("a", 100), q("b", 0)]) == []
    workers = [WorkerView("w0", "b", idle=True, items_since_switch=1)]
    assert [d.to_model for d in decide_switches(workers, [q("a", 100), q("b", 0)])] == ["a"]


def test_a_worker_without_a_model_loads_the_one_that_waits_longest():
    (decision,) = decide_switches([WorkerView("w0", None, idle=True)], [q("a", 5), q("b", 20)])
    assert decision.to_model == "b"


def simulate(models_items: dict[str, int], workers: list[str], seconds_each=10.0, load=30.0):
    """A discrete-event run of the policy: each worker takes its model's items, idles, or switches.
    Returns (makespan, switches)."""
    remaining = dict(models_items)
    state = {w: {"model": m, "free_at": 0.0, "since": 10**6} for w, m in zip(["w%d" % i for i in range(len(workers))], workers)}
    switches, now = 0, 0.0
    for _ in range(10_000):
        if not any(remaining.values()):
            break
        free = sorted((s["free_at"], name) for name, s in state.items())
        now, name = free[0]
        worker = state[name]
        if remaining.get(worker["model"], 0) > 0:
            remaining[worker["model"]] -= 1
            worker["free_at"] = now + seconds_each
            worker["since"] += 1
            continue
        views = [WorkerView(n, s["model"], idle=(n == name), items_since_switch=s["since"]) for n, s in state.items()]
        queues = [QueueView(m, c, c * seconds_each, load) for m, c in remaining.items()]
        decisions = [d for d in decide_switches(views, queues) if d.worker == name]
        if decisions:
            worker["model"], worker["since"] = decisions[0].to_model, 0
            worker["free_at"] = now + load
            switches += 1
        else:
            worker["free_at"] = min(s["free_at"] for n, s in state.items() if n != name and s["free_at"] > now) \
                if any(s["free_at"] > now for n, s in state.items() if n != name) else now + seconds_each
    makespan = max(s["free_at"] for s in state.values())
    return makespan, switches


def test_two_models_on_two_workers_never_thrash():
    # Both start on a; each keeps to a while a has work, then both move to b (the second only
    # because it still shortens b's finish), and nobody moves back.
    makespan, switches = simulate({"a": 20, "b": 20}, ["a", "a"])
    assert switches == 2
    assert makespan == 100 + 30 + 100  # a done at 100 s, one load, b shared


def test_a_worker_moves_to_a_long_queue_but_not_to_a_short_one():
    _, switches = simulate({"a": 40, "b": 1}, ["a", "b"])
    assert switches == 1  # b's worker ends b's one item, then helps with a's long queue
    _, switches = simulate({"a": 3, "b": 1}, ["a", "b"])
    assert switches == 0  # a's 2 items left (20 s) are not worth a 30 s load
