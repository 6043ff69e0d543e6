"""The item event log: ids from 1, resumption after an id, throttled steps, a bounded log."""

from farm.core.item_events import QUEUED_EACH_MAX, ItemEventLog


def test_events_resume_after_the_last_id_seen():
    log = ItemEventLog()
    log.queued(["a", "b"], 0.0, tier="24g")
    log.add("started", "a", 1.0, worker="24g-0", tier="24g", attempt=1)
    log.add("committed", "a", 2.0)
    assert [e.kind for e in log.since(0)[0]] == ["queued", "queued", "started", "committed"]
    events, missed = log.since(2)
    assert [(e.id, e.kind, e.item) for e in events] == [(3, "started", "a"), (4, "committed", "a")] and not missed
    assert log.since(4) == ([], False) and log.last_id == 4
    assert events[0].to_dict() == {"id": 3, "kind": "started", "item": "a", "at": 1.0, "worker": "24g-0",
                                   "tier": "24g", "attempt": 1}


def test_steps_are_throttled_per_item_but_the_last_always_comes():
    log = ItemEventLog()
    kept = [log.step("a", n, 10, at=n * 0.1) for n in range(1, 11)]
    assert [e.data["done"] for e in kept if e is not None] == [1, 4, 7, 10]
    assert log.step("b", 1, 10, at=0.35) is not None  # another item is not held back


def test_a_bounded_log_says_what_a_late_reader_missed_and_big_admissions_are_one_event():
    log = ItemEventLog(capacity=3)
    for n in range(5):
        log.add("committed", f"i{n}", float(n))
    events, missed = log.since(0)
    assert [e.id for e in events] == [3, 4, 5] and missed
    assert log.since(2) == (events, False)
    big = ItemEventLog()
    big.queued([f"i{n}" for n in range(QUEUED_EACH_MAX + 1)], 0.0)
    (event,), _ = big.since(0)
    assert event.item is None and event.data == {"items": QUEUED_EACH_MAX + 1}
