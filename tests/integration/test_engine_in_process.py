"""A whole job through the real engine, dispatch state machine, renderer and storage, without
Ray: workers are in-process objects behind `LocalWorkerHandle` (farm/runtime/handles.py), each
with its own tiny model and a simulated card. Admit, render, OOM, escalation, cancel (a running
render stopped at its next denoise step), drain."""

import json

import pytest
from helpers import engine_job

from farm.core.tiers import GIB, TierTable
from farm.models.faults import OomInjector, parse_faults
from farm.models.memory import CardInfo
from farm.runtime.engine import Engine, Worker
from farm.runtime.handles import LocalCallPool, LocalWorkerHandle
from farm.runtime.mailbox import LocalMailbox
from farm.runtime.workers import RenderWorkerImpl

pytestmark = pytest.mark.integration
TABLE = TierTable()


@pytest.fixture(scope="module")
def adapters(tiny_model_dir):
    """One tiny model per simulated card (fault rules attach to a pipeline)."""
    from farm.models.i2vgen import I2VGenXLAdapter

    return {tier: I2VGenXLAdapter.load("tiny", device="cpu") for tier in ("12g", "24g", "80g")}


def farm(adapters, faults: str | None = None, tiers=("12g", "24g", "80g")) -> Engine:
    workers, mailbox = [], LocalMailbox()
    for tier, adapter in ((t, adapters[t]) for t in tiers):
        spec = TABLE[tier]
        card = CardInfo(tier, int(spec.card_gib * GIB), spec.budget_bytes, "FARM_GPU_VRAM_GB", True)
        adapter.injector = None
        if faults:
            adapter.injector = OomInjector(parse_faults(faults), tier)
            adapter.injector.attach(adapter.pipeline)
        impl = RenderWorkerImpl.in_process(f"{tier}-0", adapter, card, mailbox=mailbox)
        workers.append(Worker(f"{tier}-0", LocalWorkerHandle(impl), tier, impl.info()))
    return Engine(workers, TABLE, pool=LocalCallPool(), mailbox=mailbox)


def job_of(tmp_path, name: str, count: int, engine: Engine, **params):
    return engine_job(tmp_path, name, count, engine, TABLE, **params)


def sidecars(folder):
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("i*.json")}


@pytest.fixture(autouse=True)
def detach(adapters):
    yield
    for adapter in adapters.values():
        if adapter.injector is not None:
            adapter.injector.detach()
            adapter.injector = None


def test_a_job_renders_and_an_oom_on_the_small_card_moves_to_a_bigger_one_without_ray(tmp_path, adapters):
    import ray

    engine = farm(adapters, faults="oom:denoise:2@12g")  # every render on the 12g card runs out of memory
    job, plan = job_of(tmp_path, "local", 2, engine)  # 12g and 24g take one each: the 80g card is idle
    engine.admit(job, plan)
    assert engine.run_until_done() and job.done.is_set()
    assert job.state.final_state == "succeeded", job.state.failures()
    assert not ray.is_initialized()
    written = sidecars(tmp_path / "out" / "local")
    assert set(written) == {"i0", "i1"} and all((tmp_path / "out" / "local" / f"{i}.mp4").stat().st_size
                                                      for i in written)
    moved = [s for s in written.values() if s["ooms"]]
    assert moved, "the 12g worker took an item first and ran out of memory"
    for sidecar in moved:
        hop = sidecar["degradations"][-1]
        assert [d["step"] for d in sidecar["degradations"]] == ["memory_savers"] * 3 + ["bigger_tier"]
        assert (hop["from"], hop["to"], sidecar["tier"]["ran_on"]) == ("12g", "80g", "80g")
        assert sidecar["effective"]["memory_savers"] == []  # none of the savers the 12g card needed


def test_an_item_escalated_from_12g_to_24g_runs_there_without_the_12g_savers(tmp_path, adapters):
    engine = farm(adapters, faults="oom:denoise:2@12g", tiers=("12g", "24g"))
    job, plan = job_of(tmp_path, "to24", 1, engine)  # planned on 12g (it fits there); the 24g card is idle
    engine.admit(job, plan)
    assert engine.run_until_done() and job.state.final_state == "succeeded", job.state.failures()
    sidecar = sidecars(tmp_path / "out" / "to24")["i0"]
    assert [(o["tier"], o["savers"]) for o in sidecar["ooms"]][-1] == ("12g", ["vae_slicing", "vae_tiling", "ff_chunking",
                                                                               "cpu_offload"])
    assert [d["step"] for d in sidecar["degradations"]] == ["memory_savers"] * 3 + ["bigger_tier"]
    assert sidecar["tier"]["planned"] == "12g" and sidecar["tier"]["ran_on"] == "24g"
    assert sidecar["effective"]["memory_savers"] == []  # planned afresh for 24g: none of the 12g savers


def test_cancelling_a_job_keeps_what_committed_and_cancels_the_rest(tmp_path, adapters):
    engine = farm(adapters)
    job, plan = job_of(tmp_path, "cancel", 8, engine)
    engine.admit(job, plan)
    engine.step()  # three items out to the three workers, five queued (a fast one may have committed)
    assert engine.cancel("cancel")
    engine.run_until_done()
    counts = job.state.counts()
    assert job.state.final_state == "cancelled" and counts["cancelled"] >= 5
    assert counts["succeeded"] + counts["cancelled"] == 8  # each ended one way: committed or cancelled
    assert len(sidecars(tmp_path / "out" / "cancel")) == counts["succeeded"]


def test_a_commit_reaches_the_progress_while_the_worker_renders_the_next_item(tmp_path, adapters):
    adapter = adapters["80g"]
    card = CardInfo("80g", 80 * GIB, TABLE["80g"].budget_bytes, "FARM_GPU_VRAM_GB", True)
    mailbox = LocalMailbox()
    impl = RenderWorkerImpl.in_process("80g-0", adapter, card, mailbox=mailbox)
    engine = Engine([Worker("80g-0", LocalWorkerHandle(impl), "80g", impl.info())], TABLE, pool=LocalCallPool(),
                    mailbox=mailbox)
    seen = []

    class Progress:
        def started(self, state, workers):
            pass

        def item_finished(self, state, item_id, outcome):
            renders = [call for call, (_, kind) in engine.calls.items() if kind == "render"]
            seen.append((item_id, state.counts()["succeeded"], [call.done() for call in renders]))

        def finished(self, state):
            pass

    job, plan = job_of(tmp_path, "progress", 2, engine)
    job.reporter = Progress()
    engine.admit(job, plan)
    engine.run_until_done()
    assert job.state.final_state == "succeeded"
    first, second = seen
    assert first[0] == "i0" and first[1] == 1
    assert first[2] == [False], "i0's commit was reported only after the render of i1 returned"
    assert second[0] == "i1" and second[1] == 2


def test_a_worker_whose_node_drains_mid_item_hands_it_back_and_another_renders_it(tmp_path, adapters, caplog):
    """Graceful drain (issue 16): the 12g worker's node starts draining with a deadline its
    render cannot make; at its next step check the worker stops the denoise and returns the item
    unfinished; the item is queued again at once, without an attempt counted, and the 24g
    worker renders it; the drained worker takes nothing new and is stopped."""
    import logging
    import time

    from farm.core.drain import NodeDrain
    from farm.metrics import FarmMetrics

    probes = []

    def probe():  # the node is fine when the render starts, and starts draining a moment later
        probes.append(time.monotonic())
        return None if probes[-1] - probes[0] < 0.4 else NodeDrain(time.time() + 2.0)

    mailbox, workers = LocalMailbox(), []
    for tier in ("12g", "24g"):
        spec = TABLE[tier]
        card = CardInfo(tier, int(spec.card_gib * GIB), spec.budget_bytes, "FARM_GPU_VRAM_GB", True)
        impl = RenderWorkerImpl.in_process(f"{tier}-0", adapters[tier], card, mailbox=mailbox,
                                           drain_probe=probe if tier == "12g" else None, drain_check_s=0.05)
        workers.append(Worker(f"{tier}-0", LocalWorkerHandle(impl), tier, impl.info()))
    metrics = FarmMetrics()
    engine = Engine(workers, TABLE, metrics, pool=LocalCallPool(), mailbox=mailbox)
    job, plan = job_of(tmp_path, "drain", 2, engine)
    engine.admit(job, plan)
    sent_to_12g = next(w for w in engine.state.workers.values() if w.name == "12g-0").item_id
    with caplog.at_level(logging.INFO, logger="farm"):
        assert engine.run_until_done()
    assert job.state.final_state == "succeeded", job.state.failures()
    written = sidecars(tmp_path / "out" / "drain")
    assert {s["device"]["worker"] for s in written.values()} == {"24g-0"}, "the drained worker committed nothing"
    assert job.state.items[sent_to_12g].attempts == 1, "the returned run was not counted as an attempt"
    assert workers[0].handle.killed and [w.name for w in engine.workers] == ["24g-0"]
    assert metrics.handed_back.labels("node_draining", "12g")._value.get() == 1
    handed = [r.getMessage() for r in caplog.records if "queued again at once" in r.getMessage()]
    assert len(handed) == 1 and "stopped after step" in handed[0] and "after step 0 " not in handed[0], handed
    assert all(b - a >= 0.05 for a, b in zip(probes, probes[1:]))  # asked at most every drain_check_s


def test_a_task_sent_to_a_worker_whose_node_is_already_draining_comes_back_unstarted(tmp_path, adapters):
    from farm.core.drain import NodeDrain

    mailbox, workers = LocalMailbox(), []
    for tier in ("12g", "24g"):
        spec = TABLE[tier]
        card = CardInfo(tier, int(spec.card_gib * GIB), spec.budget_bytes, "FARM_GPU_VRAM_GB", True)
        probe = (lambda: NodeDrain(None)) if tier == "12g" else None  # no deadline: still not started
        impl = RenderWorkerImpl.in_process(f"{tier}-0", adapters[tier], card, mailbox=mailbox, drain_probe=probe)
        workers.append(Worker(f"{tier}-0", LocalWorkerHandle(impl), tier, impl.info()))
    engine = Engine(workers, TABLE, pool=LocalCallPool(), mailbox=mailbox)
    job, plan = job_of(tmp_path, "unstarted", 3, engine)
    engine.admit(job, plan)
    assert engine.run_until_done() and job.state.final_state == "succeeded", job.state.failures()
    assert {s["device"]["worker"] for s in sidecars(tmp_path / "out" / "unstarted").values()} == {"24g-0"}
    assert all(status.attempts == 1 for status in job.state.items.values())
    assert workers[0].handle.killed


class StepGate:
    """A UNet forward pre-hook (registered before the render's own step hook, so it runs first)
    that counts the denoise steps of the renders on one adapter; at step `at` of the first
    render it holds the render until the test has sent its cancel, so the cancel lands at a
    known step. It keeps a weak reference to that step's input (freed once the render stopped)."""

    def __init__(self, adapter, at: int):
        import threading

        self.at, self.calls, self.at_cancel = at, 0, None
        self.reached, self.sent = threading.Event(), threading.Event()
        self.tensor = None
        self.handle = adapter.pipeline.unet.register_forward_pre_hook(self)

    def __call__(self, module, args):
        import weakref

        self.calls += 1
        if self.calls == self.at:
            self.tensor = weakref.ref(args[0])
            self.reached.set()
            assert self.sent.wait(60), "the test never sent its cancel"

    def cancel(self, send) -> None:
        """Wait for step `at`, then `send()` the cancel and let the render go on."""
        assert self.reached.wait(120), "the render never reached the step"
        send()
        self.at_cancel = self.calls
        self.sent.set()

    def remove(self):
        self.sent.set()
        self.handle.remove()


def one_worker(adapters, tier="80g"):
    """An engine with one in-process worker (its calls on a thread of its own; its `cancel` on
    the caller's thread, as a Ray actor's runs in its own concurrency group)."""
    spec = TABLE[tier]
    card = CardInfo(tier, int(spec.card_gib * GIB), spec.budget_bytes, "FARM_GPU_VRAM_GB", True)
    mailbox = LocalMailbox()
    impl = RenderWorkerImpl.in_process(f"{tier}-0", adapters[tier], card, mailbox=mailbox)
    return Engine([Worker(f"{tier}-0", LocalWorkerHandle(impl), tier, impl.info())], TABLE, pool=LocalCallPool(),
                  mailbox=mailbox)


def released(monkeypatch):
    """Counts the renderer's calls to release_memory (on CUDA it empties the cache)."""
    import farm.renderer

    calls = []
    real = farm.renderer.release_memory
    monkeypatch.setattr(farm.renderer, "release_memory", lambda device: (calls.append(device), real(device)))
    return calls


def test_cancelling_a_job_stops_its_running_render_at_the_next_step_and_the_worker_renders_another_job(
        tmp_path, adapters, monkeypatch, caplog):
    """Issue 20: the cancel reaches the worker while it renders step 5 of 40; the denoise stops
    before the next UNet call, its tensors are freed, the item ends `cancelled` with nothing
    committed, the job's queued items are cancelled, and the worker takes the next job's item."""
    import logging
    import threading

    engine = one_worker(adapters)
    frees = released(monkeypatch)
    job, plan = job_of(tmp_path, "stop", 3, engine, steps=40)
    (tmp_path / "next").mkdir()
    other, other_plan = job_of(tmp_path / "next", "next", 1, engine)
    gate = StepGate(adapters["80g"], at=5)  # before the render starts (at the admission)
    engine.admit(job, plan)  # i0 goes to the worker, i1 and i2 wait
    engine.admit(other, other_plan)
    loop = threading.Thread(target=engine.run_until_done)
    try:
        with caplog.at_level(logging.INFO, logger="farm"):
            loop.start()
            gate.cancel(lambda: engine.cancel("stop"))
            loop.join(300)
    finally:
        gate.remove()
    assert not loop.is_alive() and job.done.is_set() and other.done.is_set()
    steps_after = gate.calls - gate.at_cancel - other_steps(other)
    assert steps_after <= 1, f"{steps_after} denoise steps ran after the cancel"  # measured: 0
    status = job.state.items["i0"]
    assert status.state == "cancelled" and "stopped after denoise step 4 of 40" in status.message, status.message
    assert job.state.final_state == "cancelled" and job.state.counts()["cancelled"] == 3
    assert not list((tmp_path / "out" / "stop").glob("i*")), "nothing was committed for the job"
    assert frees and adapters["80g"].phase == "idle"
    assert gate.tensor() is None, "the stopped denoise's tensors are still alive"
    assert other.state.final_state == "succeeded"
    assert sidecars(tmp_path / "next" / "out" / "next")["i0"]["device"]["worker"] == "80g-0"
    assert any("stops item i0 of job stop" in r.getMessage() for r in caplog.records)


def other_steps(job) -> int:
    """The UNet calls of the other job's render (its steps: one call each)."""
    return job.state.spec.items[0].params.steps


def test_cancelling_one_running_item_stops_it_and_the_job_goes_on(tmp_path, adapters):
    import threading

    engine = one_worker(adapters)
    job, plan = job_of(tmp_path, "one", 2, engine, steps=10)  # the fewest a manifest allows
    gate = StepGate(adapters["80g"], at=3)
    engine.admit(job, plan)
    answers = []
    loop = threading.Thread(target=engine.run_until_done)
    try:
        loop.start()
        gate.cancel(lambda: answers.append(engine.cancel_item("one", "i0")))
        loop.join(300)
    finally:
        gate.remove()
    assert answers == ["cancelling"]
    assert gate.calls - gate.at_cancel == 10  # none of i0's: all of them i1's
    assert job.state.items["i0"].state == "cancelled" and job.state.items["i1"].state == "succeeded"
    assert job.state.items["i0"].message == "item i0 was cancelled; stopped after denoise step 2 of 10"
    assert set(sidecars(tmp_path / "out" / "one")) == {"i1"}
    assert job.state.final_state == "partial" and not job.state.cancelled
    assert engine.cancel_item("one", "i1") is None  # the job has ended here: nothing to cancel
