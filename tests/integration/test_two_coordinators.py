"""Two job coordinators on one state folder (a RayService upgrade's old and new cluster), in
process and without Ray: each has its own engine and an in-process render worker (tiny model).
Only the lease holder renders a job's items; when it stops, the other takes the job over once the
lease lapses and renders the rest, and no item is rendered twice. Renders are counted at the
workers' handles (every task sent, by item)."""

from __future__ import annotations

import collections
import json
import threading
import time

import pytest
from helpers import encode, pattern

from farm.core.errors import StorageError
from farm.core.lease import Holder
from farm.core.manifest import parse_manifest
from farm.core.tiers import GIB, TierTable
from farm.models.memory import CardInfo
from farm.runtime.coordinator import Coordinator
from farm.runtime.engine import Engine, Worker
from farm.runtime.handles import LocalCallPool, LocalWorkerHandle
from farm.runtime.mailbox import LocalMailbox
from farm.runtime.workers import RenderWorkerImpl
from farm.settings import load_settings

pytestmark = pytest.mark.integration
TABLE = TierTable()
TTL_S = 2.0


@pytest.fixture(scope="module")
def adapters(tiny_model_dir):
    """A tiny model per coordinator (each farm has its own render worker)."""
    from farm.models.i2vgen import I2VGenXLAdapter

    return {name: I2VGenXLAdapter.load("tiny", device="cpu") for name in ("A", "B")}


class Renders:
    """Every render task sent, by whom, for which item and when."""

    def __init__(self):
        self.sent: list[tuple[str, str, float]] = []
        self.lock = threading.Lock()

    def by_item(self) -> collections.Counter:
        with self.lock:
            return collections.Counter(item for _, item, _ in self.sent)

    def of(self, farm: str) -> list[tuple[str, float]]:
        with self.lock:
            return [(item, at) for who, item, at in self.sent if who == farm]


class CountingHandle(LocalWorkerHandle):
    """Counts the renders sent; from the `hold_after`-th on, each waits (on the worker's own
    thread, as a slow render would) until `gate` is set, so a test decides when a farm stops."""

    def __init__(self, worker, farm: str, renders: Renders):
        super().__init__(worker)
        self.farm, self.renders = farm, renders
        self.hold_after: int | None = None
        self.gate = threading.Event()
        self.sent = 0

    def render(self, task):
        with self.renders.lock:
            self.renders.sent.append((self.farm, task.item_id, time.monotonic()))
        self.sent += 1
        if self.hold_after is not None and self.sent > self.hold_after:
            self._thread.submit(self.gate.wait, 60)  # runs before the render, on the same thread
        return super().render(task)


def hold(coordinator: Coordinator, after: int) -> CountingHandle:
    handle = coordinator.engine.workers[0].handle
    handle.hold_after = after
    return handle


def engine(adapter, farm: str, renders: Renders, settings) -> Engine:
    mailbox = LocalMailbox()
    spec = TABLE["80g"]
    card = CardInfo("80g", int(spec.card_gib * GIB), spec.budget_bytes, "FARM_GPU_VRAM_GB", True)
    adapter.injector = None
    impl = RenderWorkerImpl.in_process(f"{farm}-80g-0", adapter, card, mailbox=mailbox)
    worker = Worker(impl.name, CountingHandle(impl, farm, renders), "80g", impl.info())
    return Engine([worker], TABLE, settings=settings, pool=LocalCallPool(), mailbox=mailbox)


@pytest.fixture
def farm(tmp_path, adapters):
    """`start(name)`: a coordinator on the shared state folder; all are closed at the end."""
    settings = load_settings(environ={
        "FARM_MODEL": "tiny", "FARM_STATE_URI": str(tmp_path / "state"), "FARM_DEFAULT_OUTPUT": str(tmp_path / "out"),
        "FARM_JOB_LEASE_TTL_S": str(TTL_S), "FARM_RECORD_INTERVAL_S": "0.2", "FARM_CACHE_DIR": str(tmp_path / "cache"),
    })
    renders, started = Renders(), []

    def start(name: str) -> Coordinator:
        coordinator = Coordinator(settings, engine=engine(adapters[name], name, renders, settings), holder=Holder(name))
        started.append(coordinator)
        return coordinator

    start.renders = renders
    start.settings = settings
    yield start
    for coordinator in started:
        coordinator.close(release=False)


def spec_of(tmp_path, name: str, count: int) -> dict:
    (tmp_path / "a.png").write_bytes(encode(pattern(320, 240), "PNG"))
    items = [{"id": f"i{n}", "image": "a.png", "prompt": f"pan {n}", "seed": n} for n in range(count)]
    document = {"version": 1, "name": name, "model": "tiny", "output": str(tmp_path / "out"),
                "defaults": {"resolution": 256, "frames": 8, "steps": 10, "fps": 8}, "items": items}
    return parse_manifest(json.dumps(document), "json", base_dir=tmp_path).to_dict()


def sidecars(tmp_path, name: str) -> set[str]:
    return {p.stem for p in (tmp_path / "out" / name).glob("i*.json")}


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def registry(tmp_path, job_id: str) -> dict:
    return json.loads((tmp_path / "state" / "jobs" / f"{job_id}.json").read_text())


def lease_file(tmp_path, job_id: str):
    return tmp_path / "state" / "leases" / f"{job_id}.json"


def test_only_the_holder_renders_and_the_other_takes_over_when_it_stops(tmp_path, farm):
    a = farm("A")
    gate = hold(a, after=3)  # A's fourth render waits until A is to stop
    job_id = a.submit(spec_of(tmp_path, "handover", 6))["id"]
    assert json.loads(lease_file(tmp_path, job_id).read_text())["holder"] == "A"
    wait_for(lambda: len(sidecars(tmp_path, "handover")) >= 2, 120, "A's first commits")

    b = farm("B")  # the new cluster's coordinator: finds the unfinished job, held by A
    held = wait_for(lambda: (b.status(job_id) or {}).get("held_by"), 10, "B to see who holds the job")
    assert held == "A" and b.status(job_id)["state"] == "running"
    assert b.health()["leases"]["watched"] == 1 and a.health()["leases"]["held"] == 1
    time.sleep(TTL_S * 1.5)  # A keeps renewing: B takes nothing over
    assert farm.renders.of("B") == [] and b.status(job_id)["held_by"] == "A"
    assert not sidecars(tmp_path, "handover") >= {f"i{n}" for n in range(6)}, "A finished before it was stopped"

    # A's cluster goes away: nothing new is sent, what renders commits, then it stops without
    # releasing (its lease lapses as a deleted cluster's does).
    a.engine.begin_drain()
    gate.gate.set()
    wait_for(a.engine.settled, 60, "A's running item to commit")
    a.close(release=False)
    last_renewal = json.loads(lease_file(tmp_path, job_id).read_text())  # A's last write (wall clock)
    committed_by_a = sidecars(tmp_path, "handover")

    wait_for(lambda: registry(tmp_path, job_id)["state"] in ("succeeded", "partial", "failed"), 120,
             "B to finish the job")
    assert last_renewal["holder"] == "A"
    taken_over = json.loads((tmp_path / "state" / "jobs" / f"{job_id}.json").read_text())["started_at"]
    # B took it over when the lease had been unchanged for a TTL (plus its poll, plus slack for the test)
    assert TTL_S <= taken_over - last_renewal["renewed_at"] <= TTL_S * 4 / 3 + 1.5, (taken_over, last_renewal)
    assert registry(tmp_path, job_id)["state"] == "succeeded"
    assert sidecars(tmp_path, "handover") == {f"i{n}" for n in range(6)}
    counts = farm.renders.by_item()
    assert set(counts.values()) == {1}, f"rendered more than once: {counts}"
    assert {item for item, _ in farm.renders.of("A")} == committed_by_a
    assert {item for item, _ in farm.renders.of("B")} == {f"i{n}" for n in range(6)} - committed_by_a
    record = json.loads((tmp_path / "out" / "handover" / "job.json").read_text())
    assert record["counts"]["skipped"] == len(committed_by_a) and record["counts"]["succeeded"] == 6 - len(committed_by_a)
    assert b.status(job_id)["state"] == "succeeded" and "held_by" not in b.status(job_id)
    wait_for(lambda: not lease_file(tmp_path, job_id).exists(), 10, "the finished job's lease to be released")


@pytest.mark.slow  # default suite time; run with -m slow
def test_a_holder_that_cannot_renew_stops_dispatching_and_the_other_finishes(tmp_path, farm, monkeypatch):
    a = farm("A")
    gate = hold(a, after=1)  # A's second render waits until A lost the lease
    job_id = a.submit(spec_of(tmp_path, "lost", 4))["id"]
    b = farm("B")
    wait_for(lambda: (b.status(job_id) or {}).get("held_by") == "A", 10, "B to see A hold the job")
    wait_for(lambda: len(sidecars(tmp_path, "lost")) >= 1, 120, "A's first commit")

    lost_at = []

    def unreachable(*args, **kwargs):
        lost_at.append(time.monotonic()) if not lost_at else None
        raise StorageError("storage unreachable (test)")

    monkeypatch.setattr(a.leases.leases, "replace", unreachable)  # A's lease I/O fails from here on
    monkeypatch.setattr(a.leases.leases, "read", unreachable)
    wait_for(lambda: a.leases.losses, TTL_S * 2, "A to give the job up")
    given_up = time.monotonic()
    gate.gate.set()  # the render A had sent goes on and commits (commits are exactly-once)
    assert "not renewed" in a.leases.losses[0]["reason"]
    assert a.status(job_id).get("lease_lost")

    wait_for(lambda: registry(tmp_path, job_id)["state"] in ("succeeded", "partial", "failed"), 120,
             "B to finish the job")
    assert registry(tmp_path, job_id)["state"] == "succeeded"
    assert sidecars(tmp_path, "lost") == {f"i{n}" for n in range(4)}
    late = [item for item, at in farm.renders.of("A") if at > given_up]
    assert late == [], f"A sent renders after it lost the lease: {late}"
    counts = farm.renders.by_item()
    twice = [item for item, n in counts.items() if n > 1]
    # An item rendering on A when it gave up may finish there after B's scan: at most that one twice.
    assert len(twice) <= 1 and sum(counts.values()) <= 5, counts
    wait_for(lambda: a.engine.jobs == {}, 60, "A's last render to end")
    assert a.status(job_id)["state"] in ("running", "queued")  # A does not claim to have finished it
    assert not (tmp_path / "out" / "lost" / ".staging").exists() or not list((tmp_path / "out" / "lost" / ".staging").iterdir())


@pytest.mark.slow  # default suite time; run with -m slow
def test_a_cancel_sent_to_the_other_coordinator_reaches_the_holder(tmp_path, farm):
    a = farm("A")
    job_id = a.submit(spec_of(tmp_path, "cancelled", 8))["id"]
    b = farm("B")
    wait_for(lambda: (b.status(job_id) or {}).get("held_by") == "A", 10, "B to see A hold the job")
    answer = b.cancel(job_id)
    assert answer["held_by"] == "A" and answer.get("cancel_forwarded") is True
    wait_for(lambda: registry(tmp_path, job_id)["state"] == "cancelled", TTL_S * 3 + 30, "A to cancel the job")
    wait_for(lambda: b.status(job_id)["state"] == "cancelled", TTL_S * 2, "B to see the job cancelled")
    assert farm.renders.of("B") == []
    assert not (tmp_path / "state" / "cancels" / f"{job_id}.json").exists()
    wait_for(lambda: not lease_file(tmp_path, job_id).exists(), 10, "the cancelled job's lease to be released")
