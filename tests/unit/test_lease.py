"""The job lease's state machine (farm.core.lease), pure: no storage, clocks passed in."""

from __future__ import annotations

import pytest

from farm.core.lease import Do, Holder, LeasePolicy, LeaseRecord, LeaseTracker, Phase, ProcessId

POLICY = LeasePolicy(ttl_s=60.0)
ME, OTHER = Holder("me/1/aaaa"), Holder("other/2/bbbb")
WALL = 1_700_000_000.0


def tracker(me: Holder = ME) -> LeaseTracker:
    return LeaseTracker("j-000000000001", me, POLICY)


def others_record(wall: float = WALL, ttl: float = 60.0, token: str = "t-other") -> LeaseRecord:
    return LeaseRecord("j-000000000001", OTHER.id, token, wall, wall, wall + ttl, ttl)


def acquire(t: LeaseTracker, now: float = 0.0) -> LeaseRecord:
    """Read (none there), create, won: the lease is held from `now`."""
    assert t.next(now, WALL).do is Do.READ
    t.saw(None, None, now, WALL)
    action = t.next(now, WALL)
    assert action.do is Do.CREATE and action.record.holder == ME.id
    assert t.won(action.record, "e1", started_at=now) is True
    return action.record


def test_the_timings_follow_the_ttl():
    assert (POLICY.renew_every_s, POLICY.valid_s, POLICY.poll_s) == (20.0, 50.0, 20.0)
    assert POLICY.valid_s < POLICY.ttl_s  # the holder stops before any watcher may take over
    with pytest.raises(ValueError):
        LeasePolicy(0)


def test_a_free_lease_is_created_and_then_renewed_every_third_of_the_ttl():
    t = tracker()
    record = acquire(t, now=100.0)
    assert t.phase is Phase.HELD and t.holds(100.0) and record.expires_at == WALL + 60
    wait = t.next(110.0, WALL + 10)
    assert wait.do is Do.WAIT and wait.at == 120.0
    renew = t.next(120.0, WALL + 20)
    assert renew.do is Do.REPLACE and renew.etag == "e1"
    assert renew.record.token == record.token and renew.record.acquired_at == WALL  # the same lease, renewed
    assert renew.record.renewed_at == WALL + 20 and renew.record.expires_at == WALL + 80
    assert t.won(renew.record, "e2", started_at=120.0) is False  # not newly gained
    assert t.etag == "e2" and t.holds(169.9) and not t.holds(170.0)


def test_a_holder_that_cannot_renew_stops_before_anyone_may_take_over():
    t = tracker()
    acquire(t, now=0.0)
    for now in (20.0, 24.0, 29.0, 35.0, 44.0):  # storage down: every renewal fails
        action = t.next(now, WALL + now)
        assert action.do in (Do.REPLACE, Do.WAIT)
        if action.do is Do.REPLACE:
            t.failed(now)
    assert t.holds(49.0)
    stop = t.next(50.0, WALL + 50)
    assert stop.do is Do.STOP and "not renewed" in stop.reason
    assert t.phase is Phase.WATCHING and not t.holds(50.0) and t.lost_reason == stop.reason
    assert t.next(50.0, WALL + 50).do is Do.READ  # it goes on watching, to take it back when free


def test_expire_loses_an_overdue_lease_without_any_io():
    t = tracker()
    acquire(t, now=0.0)
    assert t.expire(49.0) is None and t.holds(49.0)
    assert "not renewed" in t.expire(50.0) and t.phase is Phase.WATCHING
    assert t.expire(51.0) is None  # reported once


def test_a_renewal_that_finds_the_record_changed_reads_it_and_loses_to_the_new_holder():
    t = tracker()
    acquire(t, now=0.0)
    renew = t.next(20.0, WALL + 20)
    t.beaten(20.0)  # If-Match failed
    assert t.next(20.0, WALL + 20).do is Do.READ
    t.saw(others_record(WALL + 19), "e-other", 20.0, WALL + 20)
    stop = t.next(20.0, WALL + 20)
    assert stop.do is Do.STOP and OTHER.id in stop.reason
    assert t.held_elsewhere().holder == OTHER.id
    assert renew.do is Do.REPLACE


def test_a_renewal_whose_answer_was_lost_but_landed_is_recognised_as_ours():
    t = tracker()
    record = acquire(t, now=0.0)
    renew = t.next(20.0, WALL + 20)
    t.failed(20.0)  # the answer never came; the write landed
    retry = t.next(25.0, WALL + 25)
    assert retry.do is Do.REPLACE and retry.etag == "e1"
    t.beaten(25.0)  # 412: the record is our own newer write
    assert t.next(25.0, WALL + 25).do is Do.READ
    t.saw(renew.record, "e2", 25.0, WALL + 25)
    again = t.next(25.0, WALL + 25)
    assert again.do is Do.REPLACE and again.etag == "e2" and again.record.token == record.token
    t.won(again.record, "e3", started_at=25.0)
    assert t.holds(74.0)


def test_a_record_that_is_gone_while_held_is_a_loss():
    t = tracker()
    acquire(t, now=0.0)
    t.next(20.0, WALL + 20)
    t.beaten(20.0)
    t.next(20.0, WALL + 20)
    t.saw(None, None, 20.0, WALL + 20)
    stop = t.next(20.0, WALL + 20)
    assert stop.do is Do.STOP and "removed" in stop.reason


def test_a_lease_held_elsewhere_is_taken_over_only_after_a_whole_ttl_unchanged_here():
    t = tracker()
    assert t.next(0.0, WALL).do is Do.READ
    t.saw(others_record(), "e1", 0.0, WALL)
    assert t.held_elsewhere().holder == OTHER.id
    wait = t.next(1.0, WALL + 1)
    assert wait.do is Do.WAIT and wait.at == 20.0  # the poll
    t.saw(others_record(WALL + 20), "e2", 20.0, WALL + 20)  # renewed: the count starts again
    t.next(40.0, WALL + 40)
    t.saw(others_record(WALL + 20), "e2", 40.0, WALL + 40)
    t.next(60.0, WALL + 60)
    t.saw(others_record(WALL + 20), "e2", 60.0, WALL + 60)
    assert t.next(60.0, WALL + 60).at == 80.0  # unchanged for 40 s: not yet (the TTL is 60)
    t.saw(others_record(WALL + 20), "e2", 80.0, WALL + 80)
    take = t.next(80.0, WALL + 80)
    assert take.do is Do.REPLACE and take.etag == "e2"  # If-Match the stale record
    assert take.record.holder == ME.id and take.record.token != "t-other"
    assert t.won(take.record, "e3", started_at=80.0) is True and t.holds(80.0)


def test_the_watch_reads_again_when_the_ttl_it_watches_runs_out():
    t = tracker()
    t.next(0.0, WALL)
    t.saw(others_record(), "e1", 0.0, WALL)
    t.next(20.0, WALL + 20)
    t.saw(others_record(), "e1", 50.0, WALL + 50)  # a late read
    assert t.next(51.0, WALL + 51).at == 60.0  # not 70: seen at 0, stale at 60


def test_the_watchers_clock_decides_not_the_holders():
    """A record whose wall-clock expiry is past (a holder with a fast clock, or a slow watcher)
    is not taken over while it keeps changing."""
    t = tracker()
    for n in range(5):
        now = 20.0 * n
        t.next(now, WALL + 500 + now)
        t.saw(others_record(WALL + now), f"e{n}", now, WALL + 500 + now)  # expires_at far behind our wall clock
        if n == 0:
            continue
        assert t.next(now, WALL + 500 + now).do is Do.WAIT
    assert t.phase is Phase.WATCHING


def test_a_record_whose_expiry_is_long_past_is_still_watched_for_a_ttl():
    """Wall clocks of two machines need not agree: only the watcher's own clock counts."""
    t = tracker()
    t.next(0.0, WALL)
    t.saw(others_record(WALL - 1000), "e1", 0.0, WALL)  # by our wall clock it expired long ago
    assert t.next(0.0, WALL).do is Do.WAIT
    t.next(60.0, WALL + 60)
    t.saw(others_record(WALL - 1000), "e1", 60.0, WALL + 60)
    assert t.next(60.0, WALL + 60).do is Do.REPLACE


def test_a_holder_known_dead_is_taken_over_at_once():
    t = tracker()
    t.next(0.0, WALL)
    t.saw(others_record(), "e1", 0.0, WALL, holder_dead=True)
    assert t.next(0.0, WALL).do is Do.REPLACE


def test_a_damaged_record_is_taken_over_after_a_ttl_unchanged():
    t = tracker()
    t.next(0.0, WALL)
    t.saw(None, "e-bad", 0.0, WALL)
    assert t.next(0.0, WALL).do is Do.WAIT
    t.next(60.0, WALL + 60)
    t.saw(None, "e-bad", 60.0, WALL + 60)
    assert t.next(60.0, WALL + 60).do is Do.REPLACE


def test_a_lost_race_to_acquire_reads_and_watches_the_winner():
    t = tracker()
    t.next(0.0, WALL)
    t.saw(None, None, 0.0, WALL)
    create = t.next(0.0, WALL)
    assert create.do is Do.CREATE
    t.beaten(0.0)  # another coordinator created it first
    assert t.next(0.0, WALL).do is Do.READ
    t.saw(others_record(), "e1", 0.0, WALL)
    assert t.next(0.0, WALL).do is Do.WAIT and t.held_elsewhere() is not None and not t.holds(0.0)


def test_a_shorter_ttl_in_the_record_is_the_holders_promise():
    t = tracker()
    t.next(0.0, WALL)
    t.saw(others_record(ttl=6.0), "e1", 0.0, WALL)
    assert t.next(1.0, WALL + 1).at == 6.0
    t.next(6.0, WALL + 6)
    t.saw(others_record(ttl=6.0), "e1", 6.0, WALL + 6)
    assert t.next(6.0, WALL + 6).do is Do.REPLACE


def test_records_round_trip_and_damaged_bytes_are_none():
    process = ProcessId("boot", "pid:[1]", 42, 1234)
    record = LeaseRecord("j-000000000001", ME.id, "tok", WALL, WALL + 1, WALL + 61, 60.0, process)
    assert LeaseRecord.from_bytes(record.to_bytes()) == record
    assert record.summary() == {"holder": ME.id, "acquired_at": WALL, "renewed_at": WALL + 1, "expires_at": WALL + 61}
    for bad in (b"", b"{", b"[]", b'{"job_id": "x"}', record.to_bytes().replace(b'"ttl_s": 60.0', b'"ttl_s": 0')):
        assert LeaseRecord.from_bytes(bad) is None
    assert process.same_machine(ProcessId("boot", "pid:[1]", 7, 1)) and not process.same_machine(ProcessId("b2", "pid:[1]", 7, 1))


def test_every_write_has_other_bytes_so_an_s3_etag_never_repeats():
    """S3's etag is the MD5 of the bytes: a renewal equal to the last write would keep its etag
    and let a stale If-Match pass."""
    t = tracker()
    record = acquire(t, now=0.0)
    first = t.next(20.0, WALL)  # the same wall time as the create
    t.won(first.record, "e2", started_at=20.0)
    second = t.next(40.0, WALL)
    assert len({record.to_bytes(), first.record.to_bytes(), second.record.to_bytes()}) == 3
