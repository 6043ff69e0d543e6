"""Big jobs stay cheap (issue 16): the job record is written incrementally and is byte for byte
the whole rebuild, the item list pages from its cursor without sorting, and a status answer
never reads per-item data."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import farm.core.job as job_module
import farm.runtime.coordinator as coordinator_module
from farm.core.contracts import ItemOutcome
from farm.core.job import FAILED, QUEUED, RUNNING, SUCCEEDED, JobState
from farm.core.manifest import parse_manifest
from farm.runtime.coordinator import Coordinator
from farm.runtime.jobs import JobRecorder


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def big_job(tmp_path: Path, count: int, clock=None, *, invalid_every: int = 0) -> JobState:
    """`count` items; every `invalid_every`-th one is invalid (a rejected item keeps its index,
    so rejected and valid items interleave in index order while JobState lists them apart)."""
    items = []
    for n in range(count):
        item = {"id": f"i{n:05d}", "image": f"s3://in/{n}.png", "prompt": f"p {n}"}
        if invalid_every and n % invalid_every == invalid_every - 1:
            item["frames"] = 9999
        items.append(item)
    spec = parse_manifest(json.dumps({"version": 1, "name": "big", "items": items}), "json", base_dir=tmp_path,
                          skip_invalid=True)
    state = JobState(spec, clock=clock or Clock())
    state.start()
    return state


class Store:
    """A store that keeps every record written; `hold` makes the writer wait before each write."""

    def __init__(self):
        self.bodies: list[bytes] = []
        self.written = threading.Condition()
        self.hold = threading.Event()
        self.hold.set()

    def put_bytes(self, key, body, content_type):
        self.hold.wait(10)
        with self.written:
            self.bodies.append(body)
            self.written.notify_all()

    def wait_for(self, count: int) -> bytes:
        with self.written:
            assert self.written.wait_for(lambda: len(self.bodies) >= count, timeout=10), "the record was not written"
            return self.bodies[-1]

    def location(self, key):
        return key


def whole(state: JobState) -> bytes:
    """The record as it was written before: the whole record, encoded at once."""
    return json.dumps(state.to_record()).encode()


def test_a_record_written_after_one_change_equals_the_whole_rebuild(tmp_path):
    clock = Clock()
    state = big_job(tmp_path, 2000, clock, invalid_every=7)
    store = Store()
    recorder = JobRecorder(state, store, interval_s=3600)
    try:
        recorder.write(force=True)
        assert store.wait_for(1) == whole(state)
        assert recorder.stats()["encoded_items"] == 2000  # the first write encodes every item

        state.mark_running("i00003", "cpu-0", "cpu")
        clock.now += 1.5
        recorder.write(force=True)
        body = store.wait_for(2)
        assert body == whole(state)
        assert json.loads(body) == state.to_record()
        assert json.loads(body)["items"]["i00003"]["state"] == RUNNING
        assert recorder.stats()["encoded_items"] == 2001  # only the changed item was encoded again

        recorder.write(force=True)  # nothing changed: the header only
        assert store.wait_for(3) == whole(state) and recorder.stats()["encoded_items"] == 2001
    finally:
        recorder.close(final=False)


def test_every_change_of_an_item_reaches_the_incremental_record(tmp_path):
    """Random transitions through every JobState mutator; after each batch the incremental
    record is byte for byte the whole rebuild (a mutator that forgot to mark its item fails)."""
    rng = random.Random(16)
    clock = Clock()
    state = big_job(tmp_path, 600, clock, invalid_every=11)
    store = Store()
    recorder = JobRecorder(state, store, interval_s=3600)
    ids = [item.id for item in state.spec.items]
    writes = 0
    for batch in range(40):
        for _ in range(rng.randint(1, 25)):
            item_id = rng.choice(ids)
            current = state.items[item_id].state
            clock.now += rng.random()
            if current == QUEUED:
                action = rng.choice(["run", "plan", "cancel", "fail"])
                if action == "run":
                    state.mark_running(item_id, f"w{rng.randint(0, 3)}", rng.choice(["12g", "24g", None]))
                elif action == "plan":
                    state.mark_planned(item_id, rng.choice(["12g", "24g", "80g"]))
                elif action == "cancel":
                    state.mark_cancelled(item_id)
                else:
                    state.fail(item_id, "no_fitting_tier", "too big")
            elif current == RUNNING:
                action = rng.choice(["ok", "degraded", "failed", "lost", "back", "move"])
                if action == "ok":
                    state.record(ItemOutcome(item_id, SUCCEEDED, seconds=rng.random() * 9, worker="w1",
                                             warnings=["slow"] if rng.random() < 0.3 else []))
                elif action == "degraded":
                    state.record(ItemOutcome(item_id, SUCCEEDED, seconds=1.0,
                                             degradations=[{"step": "frames", "before": 32, "after": 16}]))
                elif action == "failed":
                    state.record(ItemOutcome.failure(item_id, "render_error", "boom"))
                elif action == "lost":
                    state.worker_lost(item_id, "the worker died")
                elif action == "back":
                    state.hand_back(item_id)
                else:
                    state.mark_running(item_id, "w9", "80g", new_attempt=False)
        if batch == 30:
            state.cancelled = True
        if batch % 3 == 0:  # sometimes two snapshots before the writer writes: they merge
            store.hold.clear()
            recorder.write(force=True)
            item_id = rng.choice(ids)
            if state.items[item_id].state == QUEUED:
                state.mark_running(item_id, "late", None)
            recorder.write(force=True)
            store.hold.set()
        else:
            recorder.write(force=True)
        writes += 1
        body = store.wait_for(writes)
        with store.written:  # the merged snapshots may have been one write or two
            writes = len(store.bodies)
        assert body == whole(state), f"batch {batch}"
    state.fail_remaining("worker_lost", "every render worker is gone")
    state.finish()
    recorder.close(final=True)
    assert store.bodies[-1] == whole(state)
    record = json.loads(store.bodies[-1])
    assert list(record["items"]) == sorted(record["items"], key=lambda i: record["items"][i]["index"])
    assert record["counts"][QUEUED] == record["counts"][RUNNING] == 0


def test_snapshots_not_yet_written_merge_instead_of_replacing_each_other(tmp_path):
    state = big_job(tmp_path, 50)
    store = Store()
    recorder = JobRecorder(state, store, interval_s=3600)
    recorder.write(force=True)
    store.wait_for(1)
    store.hold.clear()  # storage is slow: the next snapshots wait
    state.mark_running("i00001", "w0")
    recorder.write(force=True)  # taken by the writer, which now waits on storage
    time.sleep(0.2)
    state.mark_running("i00002", "w0")
    recorder.write(force=True)
    state.mark_running("i00003", "w0")
    recorder.write(force=True)  # merges with the one before it, not written yet
    store.hold.set()
    recorder.close(final=False)
    items = json.loads(store.bodies[-1])["items"]
    assert [items[f"i0000{n}"]["state"] for n in (1, 2, 3)] == [RUNNING] * 3
    assert store.bodies[-1] == whole(state)
    stats = recorder.stats()
    assert stats["snapshots"] == 4 and stats["writes"] == 3 and stats["encoded_items"] == 53
    assert set(stats["median_ms"]) == {"snapshot_s", "encode_s", "store_s"}


def test_an_empty_job_record_is_the_whole_rebuild(tmp_path):
    spec = parse_manifest(json.dumps({"version": 1, "name": "none", "items": [
        {"id": "bad", "image": "s3://in/x.png", "prompt": "p", "frames": 9999}]}), "json", base_dir=tmp_path,
        skip_invalid=True)
    state = JobState(spec, clock=Clock())
    store = Store()
    recorder = JobRecorder(state, store, interval_s=3600)
    recorder.close(final=True)
    assert store.bodies[-1] == whole(state) and json.loads(store.bodies[-1])["items"]["bad"]["state"] == FAILED


def random_states(state: JobState, seed: int) -> None:
    rng = random.Random(seed)
    for item in state.spec.items:
        roll = rng.random()
        if roll < 0.5:
            continue
        state.mark_running(item.id, "w0")
        if roll < 0.9:
            state.record(ItemOutcome(item.id, SUCCEEDED, seconds=1.0))
        elif roll < 0.95:
            state.record(ItemOutcome.failure(item.id, "render_error", "boom"))


@pytest.fixture
def no_sorting(monkeypatch):
    """Paging must not sort the items: `sorted` raises in the modules that page."""

    def refuse(*args, **kwargs):
        raise AssertionError("paging sorted the items")

    def start() -> None:
        monkeypatch.setattr(job_module, "sorted", refuse, raising=False)
        monkeypatch.setattr(coordinator_module, "sorted", refuse, raising=False)

    return start


def coordinator_view(state: JobState, entry_state: str = "running") -> SimpleNamespace:
    entry = {"id": "j-000000000001", "name": state.spec.name, "output": "/tmp/x", "state": entry_state,
             "submitted_at": 1.0, "items": len(state.items)}
    return SimpleNamespace(lock=threading.RLock(), entries={entry["id"]: entry}, states={entry["id"]: state},
                           engine=SimpleNamespace(unprovidable={}))


def pages(view, state_filter: str | None, limit: int) -> list[dict]:
    rows, cursor, seen = [], None, 0
    while True:
        page = Coordinator.items(view, "j-000000000001", state_filter, cursor, limit)
        assert set(page) == {"items", "next_cursor"}
        assert len(page["items"]) <= limit
        rows += page["items"]
        seen += 1
        if page["next_cursor"] is None:
            return rows
        assert page["next_cursor"] == page["items"][-1]["index"] and len(page["items"]) == limit
        cursor = page["next_cursor"]
        assert seen < 10_000


@pytest.mark.parametrize("state_filter", [None, SUCCEEDED, FAILED, QUEUED, "cancelled"])
def test_cursor_pages_cover_every_item_once_in_index_order_without_sorting(tmp_path, no_sorting, state_filter):
    state = big_job(tmp_path, 10_000, invalid_every=13)
    random_states(state, seed=7)
    view = coordinator_view(state)
    no_sorting()  # from here on
    rows = pages(view, state_filter, limit=97)
    # (sorted is refused here too: the expectation is built from the indices directly)
    by_index = {status.index: item_id for item_id, status in state.items.items()
                if state_filter is None or status.state == state_filter}
    expected = [by_index[index] for index in range(10_000) if index in by_index]
    assert [row["id"] for row in rows] == expected
    assert len({row["id"] for row in rows}) == len(rows)
    if state_filter == "cancelled":
        assert rows == []
    for row in rows[:50]:
        assert row == {"id": row["id"], **state.items[row["id"]].to_dict()}


def test_a_page_deep_in_the_job_reads_only_its_own_items(tmp_path):
    state = big_job(tmp_path, 10_000)

    state.items = counted = CountingItems(state.items)
    rows, more = state.page(None, 9_000, 100)
    assert [row["index"] for row in rows] == list(range(9_001, 9_101)) and more
    assert counted.reads <= 101
    rows, more = state.page(None, 9_949, 100)  # the last page
    assert [row["index"] for row in rows] == list(range(9_950, 10_000)) and not more
    rows, more = state.page(None, -1, 3)  # the API's cursor -1 is "from the start"
    assert [row["index"] for row in rows] == [0, 1, 2] and more


class CountingItems(dict):
    """A job's items that count how many are read."""

    reads = 0

    def __getitem__(self, key):
        self.reads += 1
        return super().__getitem__(key)


class NoItemReads(dict):
    """The items of a job whose status must not read them: only their number is allowed."""

    def _refuse(self, *args, **kwargs):
        raise AssertionError("a status answer read per-item data")

    __getitem__ = __iter__ = values = items = keys = get = __contains__ = _refuse


def test_a_status_answer_reads_no_per_item_data(tmp_path):
    clock = Clock()
    state = big_job(tmp_path, 20_000, clock)
    random_states(state, seed=3)
    clock.now += 60
    recount = {s: sum(1 for status in state.items.values() if status.state == s) for s in (QUEUED, SUCCEEDED, FAILED)}
    state.items = NoItemReads(state.items)
    view = coordinator_view(state)
    status = Coordinator.status(view, "j-000000000001")
    assert status["state"] == "running" and status["counts"]["total"] == 20_000
    assert {s: status["counts"][s] for s in recount} == recount
    assert status["items_per_minute"] == pytest.approx(recount[SUCCEEDED] / 60 * 60, rel=1e-3)
    assert status["eta_seconds"] is not None


def test_the_engine_counts_its_steps(tmp_path):
    from farm.core.tiers import load_tier_table
    from farm.runtime.engine import Engine
    from farm.runtime.handles import LocalCallPool

    engine = Engine([], load_tier_table(None), pool=LocalCallPool())
    for _ in range(3):
        engine.step(0.01)
    assert engine.loop_stats["steps"] == 3 and engine.loop_stats["step_s"] > 0 and engine.loop_stats["record_s"] == 0


def test_a_page_of_a_sparse_state_reads_only_the_items_of_that_state(tmp_path):
    state = big_job(tmp_path, 10_000)
    for n in (17, 4_242, 9_998):
        state.fail(f"i{n:05d}", "render_error", "boom")
    state.restore("i00100", SUCCEEDED)  # as an earlier run's record says
    assert state.counts()[FAILED] == 3 and state.counts()[SUCCEEDED] == 1 and state.counts()[QUEUED] == 9_996

    state.items = counted = CountingItems(state.items)
    rows, more = state.page(FAILED, None, 2)
    assert [row["id"] for row in rows] == ["i00017", "i04242"] and more
    rows, more = state.page(FAILED, rows[-1]["index"], 2)
    assert [row["id"] for row in rows] == ["i09998"] and not more
    assert [row["id"] for row in state.page(SUCCEEDED)[0]] == ["i00100"]
    assert state.page(RUNNING) == ([], False)
    assert counted.reads <= 4
