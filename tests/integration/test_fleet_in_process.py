"""Workers that follow the cluster, through the real engine, state machine, renderer and storage,
without Ray: a fake fleet (the GPU slots the test sets, workers made in this process) stands in
for `farm.runtime.fleet.RayFleet`. A GPU that joins mid-job takes work; idle workers stop after
the idle timeout, keeping the tier's minimum; work that comes later starts a worker again."""

import json
import time

import pytest
from helpers import engine_job

from farm.core.tiers import GIB, TierTable
from farm.models.memory import CardInfo
from farm.runtime.engine import Engine, Worker
from farm.runtime.handles import LocalCallPool, LocalWorkerHandle
from farm.runtime.mailbox import LocalMailbox
from farm.runtime.workers import RenderWorkerImpl
from farm.settings import load_settings

pytestmark = pytest.mark.integration
TABLE = TierTable()


@pytest.fixture(scope="module")
def adapters(tiny_model_dir):
    from farm.models.i2vgen import I2VGenXLAdapter

    return {tier: I2VGenXLAdapter.load("tiny", device="cpu") for tier in ("12g", "24g")}


def card(tier: str) -> CardInfo:
    return CardInfo(tier, int(TABLE[tier].card_gib * GIB), TABLE[tier].budget_bytes, "FARM_GPU_VRAM_GB", True)


class LocalFleet:
    """RayFleet's interface over in-process workers: `slot_counts` is what the cluster offers."""

    def __init__(self, adapters, mailbox):
        self.adapters, self.mailbox = adapters, mailbox
        self.slot_counts: dict[str, int] = {}
        self.draining_nodes: dict[str, float | None] = {}  # node id -> deadline, as RayFleet.draining()
        self.made: list[Worker] = []
        self.requests: list[dict[str, int]] = []  # what the autoscaler was asked for, in order

    def slots(self) -> dict[str, int]:
        return dict(self.slot_counts)

    def draining(self) -> dict[str, float | None]:
        return dict(self.draining_nodes)

    def start(self, tier: str) -> Worker:
        name = f"{tier}-new{len(self.made)}"
        impl = RenderWorkerImpl.in_process(name, self.adapters[tier], card(tier), mailbox=self.mailbox)
        worker = Worker(name, LocalWorkerHandle(impl), tier)
        self.made.append(worker)
        return worker

    def start_failed(self, tier: str) -> None:
        raise AssertionError(f"a start on {tier} failed")

    def started(self, names) -> None:
        pass

    def request(self, demand: dict[str, int]) -> None:
        self.requests.append(dict(demand))


def farm(adapters, tiers, **settings):
    mailbox = LocalMailbox()
    fleet = LocalFleet(adapters, mailbox)
    workers = []
    for tier in tiers:
        impl = RenderWorkerImpl.in_process(f"{tier}-0", adapters[tier], card(tier), mailbox=mailbox)
        workers.append(Worker(f"{tier}-0", LocalWorkerHandle(impl), tier, impl.info()))
        fleet.slot_counts[tier] = fleet.slot_counts.get(tier, 0) + 1
    env = {"FARM_CLUSTER_POLL_S": "0.05", **{f"FARM_{k.upper()}": str(v) for k, v in settings.items()}}
    engine = Engine(workers, TABLE, pool=LocalCallPool(), mailbox=mailbox, fleet=fleet, settings=load_settings(env))
    return engine, fleet


def job_of(tmp_path, name: str, count: int, engine: Engine, **params):
    return engine_job(tmp_path, name, count, engine, TABLE, **params)


def ran_on(tmp_path, name):
    return {p.stem: json.loads(p.read_text())["device"]["worker"] for p in (tmp_path / "out" / name).glob("i*.json")}


def test_a_gpu_that_joins_mid_job_gets_a_worker_that_takes_queued_work(tmp_path, adapters):
    engine, fleet = farm(adapters, ["12g"])
    job, plan = job_of(tmp_path, "grow", 6, engine)
    engine.admit(job, plan)
    engine.step()
    fleet.slot_counts["24g"] = 1  # a 24g node joined the cluster
    assert engine.run_until_done() and job.state.final_state == "succeeded", job.state.failures()
    assert [w.name for w in fleet.made] == ["24g-new0"]
    workers = ran_on(tmp_path, "grow")
    assert len(workers) == 6 and "24g-new0" in workers.values(), workers
    assert "24g-new0" in engine.worker_infos()


def test_idle_workers_stop_after_the_timeout_and_later_work_starts_one_again(tmp_path, adapters):
    engine, fleet = farm(adapters, ["12g", "24g"], worker_idle_timeout_s=0.3, min_workers_per_tier="12g=1")
    job, plan = job_of(tmp_path, "first", 2, engine)
    engine.admit(job, plan)
    assert engine.run_until_done()
    twelve, twenty_four = (w.handle for w in engine.workers)
    deadline = time.monotonic() + 10
    while not twenty_four.killed and time.monotonic() < deadline:
        engine.step(0.05)
        time.sleep(0.05)
    assert twenty_four.killed, "the idle 24g worker released its GPU"
    assert not twelve.killed and [w.name for w in engine.workers] == ["12g-0"]  # the 12g minimum stays
    assert engine.state.live_counts() == {"12g": 1}
    # More work than the 12g worker absorbs: a worker is started on the free 24g GPU.
    later, plan = job_of(tmp_path, "later", 3, engine)
    assert plan.shape.workers == {"12g": 1, "24g": 1}  # planned for the GPUs there are, not only the workers
    engine.admit(later, plan)
    assert engine.run_until_done() and later.state.final_state == "succeeded"
    assert [w.name for w in fleet.made] == ["24g-new0"]


def test_work_asks_the_autoscaler_for_a_node_which_renders_it_and_is_released_after(tmp_path, adapters):
    # Head only: no GPU, no worker; the 12g group may grow to 2 nodes.
    engine, fleet = farm(adapters, [], autoscale_max_workers="12g=2", worker_idle_timeout_s=0.3)
    job, plan = job_of(tmp_path, "scale", 3, engine)
    assert plan.shape.workers == {"12g": 2}  # planned for what the autoscaler may bring
    engine.admit(job, plan)
    for _ in range(5):
        engine.step(0.05)
    assert fleet.requests == [{"12g": 2}], "3 items waiting, 2 at most"
    assert job.state.counts().get("queued") == 3, "waiting for the nodes, not failed"
    fleet.slot_counts["12g"] = 1  # the autoscaler's first node joined
    assert engine.run_until_done() and job.state.final_state == "succeeded", job.state.failures()
    assert set(ran_on(tmp_path, "scale").values()) == {"12g-new0"}
    deadline = time.monotonic() + 10
    while fleet.requests[-1] and time.monotonic() < deadline:
        engine.step(0.05)
        time.sleep(0.05)
    assert fleet.made[0].handle.killed, "the idle worker released its GPU"
    assert fleet.requests[-1] == {}, "and the request is cleared, so the autoscaler can remove the node"


@pytest.mark.slow  # a degraded 512p render on the CPU: about 20 s
def test_a_tier_the_autoscaler_never_brings_is_reported_and_its_work_rendered_elsewhere(tmp_path, adapters):
    engine, fleet = farm(adapters, ["12g"], autoscale_max_workers="24g=1", autoscale_wait_s=0.3)
    from farm.metrics import FarmMetrics

    engine.metrics = FarmMetrics()
    job, plan = job_of(tmp_path, "never", 1, engine, resolution=512, frames=24)
    assert {p.tier for p in plan.items} == {"24g"}
    engine.admit(job, plan)
    assert engine.run_until_done() and job.state.final_state == "succeeded", job.state.failures()
    assert set(engine.unprovidable) == {"24g"} and fleet.requests[0] == {"24g": 1}
    engine.publish()
    text = engine.metrics.text().decode()
    assert 'farm_tier_unprovidable{tier="24g"} 1.0' in text, text
    status = job.state.items["i0"]
    assert status.tier == "12g" and status.degradations, "degraded to fit the card there is, and says so"

def test_a_worker_on_a_draining_node_finishes_its_item_takes_no_new_one_and_stops(tmp_path, adapters):
    """Graceful drain, the engine's side (issue 16): the fleet reports the 12g worker's node as
    draining (its slot gone from the count, as RayFleet does): the worker's current item
    finishes and commits, it takes nothing new, it is stopped, no worker is started in its place,
    and the 24g worker renders the rest."""
    engine, fleet = farm(adapters, ["12g", "24g"])
    for worker in engine.workers:
        worker.info["node_id"] = f"node-{worker.tier}"
    job, plan = job_of(tmp_path, "drained", 4, engine)
    engine.admit(job, plan)
    engine.step()  # one item out to each worker
    fleet.draining_nodes = {"node-12g": time.time() + 600}
    fleet.slot_counts["12g"] = 0
    time.sleep(0.1)  # the next step looks at the cluster before it waits on the renders
    engine.step()
    assert engine.state.workers["12g-0"].phase.value == "draining"
    assert engine.run_until_done() and job.state.final_state == "succeeded", job.state.failures()
    workers = ran_on(tmp_path, "drained")
    assert sorted(workers.values()) == ["12g-0", "24g-0", "24g-0", "24g-0"], workers
    assert fleet.made == [] and [w.name for w in engine.workers] == ["24g-0"]
    assert all(status.attempts == 1 for status in job.state.items.values())
