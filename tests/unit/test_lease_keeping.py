"""Job leases on a local state folder: the records' atomic create / renew / take-over
(farm.storage.lease), and two LeaseKeepers (farm.runtime.leases) contending on one folder with
a fake clock: one holds, the other watches and takes over once the lease lapses."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from farm.core.errors import CommitConflict, StorageError
from helpers import race
from farm.core.lease import Holder, LeasePolicy, LeaseRecord, ProcessId
from farm.runtime.leases import LeaseKeeper, _start_ticks, process_gone, this_process
from farm.storage.lease import LeaseStore, lease_key
from farm.storage.local import LocalStore

JOB = "j-00000000000a"
WALL = 1_700_000_000.0


def record(holder: str, token: str = "t", wall: float = WALL) -> LeaseRecord:
    return LeaseRecord(JOB, holder, token, wall, wall, wall + 60, 60.0)


# --- the records ------------------------------------------------------------------------------


def test_create_is_exclusive_and_replace_needs_the_current_etag(tmp_path):
    leases = LeaseStore(LocalStore(str(tmp_path)))
    assert leases.read(JOB) == (None, None)
    first = leases.create(record("a"))
    with pytest.raises(CommitConflict):
        leases.create(record("b"))
    found, etag = leases.read(JOB)
    assert found.holder == "a" and etag == first
    renewed = leases.replace(record("a", wall=WALL + 20), first)
    assert renewed != first
    with pytest.raises(CommitConflict):
        leases.replace(record("b"), first)  # stale etag
    leases.delete(JOB)
    with pytest.raises(CommitConflict):
        leases.replace(record("b"), renewed)  # gone
    assert leases.exclusive


def test_a_damaged_record_reads_as_none_with_its_etag(tmp_path):
    store = LocalStore(str(tmp_path))
    store.put_bytes(lease_key(JOB), b"{not json")
    found, etag = LeaseStore(store).read(JOB)
    assert found is None and etag == store.head(lease_key(JOB)).etag
    store.put_bytes(lease_key(JOB), record("a").to_bytes().replace(JOB.encode(), b"j-0000000000ff"))
    assert LeaseStore(store).read(JOB)[0] is None  # a record of another job under this name


@pytest.mark.parametrize("rounds", [20])
def test_of_many_racing_creators_and_takers_exactly_one_wins(tmp_path, rounds):
    for n in range(rounds):
        leases = LeaseStore(LocalStore(str(tmp_path / f"r{n}")))
        assert len(race(6, lambda i, leases=leases: leases.create(record(f"c{i}")))) == 1
        _, etag = leases.read(JOB)
        winners = race(6, lambda i, leases=leases, etag=etag: leases.replace(record(f"t{i}", token=f"k{i}"), etag))
        assert len(winners) == 1
        assert leases.read(JOB)[0].holder == f"t{winners[0]}"


def test_two_processes_racing_to_create_one_lease_one_wins(tmp_path):
    code = (
        "import sys, time\n"
        "from farm.core.errors import CommitConflict\n"
        "from farm.core.lease import LeaseRecord\n"
        "from farm.storage.lease import LeaseStore\n"
        "from farm.storage.local import LocalStore\n"
        "leases = LeaseStore(LocalStore(sys.argv[1]))\n"
        "start = float(sys.argv[3])\n"
        "while time.time() < start: pass\n"
        "wins = 0\n"
        "for n in range(30):\n"
        "    try:\n"
        "        leases.create(LeaseRecord(f'j-{n:012x}', sys.argv[2], 't', 0, 0, 60, 60))\n"
        "        wins += 1\n"
        "    except CommitConflict:\n"
        "        pass\n"
        "print(wins)\n"
    )
    start = str(time.time() + 1.5)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), name, start], stdout=subprocess.PIPE, text=True)
             for name in ("p1", "p2")]
    wins = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(wins) == 30, wins
    holders = {LeaseStore(LocalStore(str(tmp_path))).read(f"j-{n:012x}")[0].holder for n in range(30)}
    assert holders <= {"p1", "p2"}


# --- two keepers, one folder, a fake clock ---------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Calls:
    def __init__(self, wanted=True):
        self.gained, self.lost, self.asked = [], [], []
        self.answer = wanted

    def wanted(self, job_id):
        self.asked.append(job_id)
        return self.answer


def keeper(store, name: str, clock: Clock, calls: Calls, ttl: float = 6.0, process=None) -> LeaseKeeper:
    return LeaseKeeper(
        LeaseStore(store), Holder(name, process), LeasePolicy(ttl), wanted=calls.wanted,
        gained=calls.gained.append, lost=lambda job_id, reason: calls.lost.append((job_id, reason)),
        clock=clock, wall=lambda: WALL + clock.now,
    )


def test_a_watcher_takes_over_only_once_the_holder_stops_renewing(tmp_path):
    store, clock, a_clock = LocalStore(str(tmp_path)), Clock(), Clock()
    a_calls, b_calls = Calls(), Calls()
    a, b = keeper(store, "A", a_clock, a_calls), keeper(store, "B", clock, b_calls)
    a.create(JOB)
    b.watch(JOB)
    b.run_once()
    assert b.held_elsewhere(JOB).holder == "A" and not b.holds(JOB) and a.holds(JOB)
    for _ in range(6):  # A renews every 2 s: B never takes over
        clock.now += 2.0
        a_clock.now += 2.0
        a.run_once()
        b.run_once()
    assert not b_calls.gained and a.holds(JOB)
    # A stops (its cluster is deleted): B takes over once the record was unchanged for a TTL.
    renewed_at = clock.now
    while not b_calls.gained:
        clock.now += 0.5
        b.run_once()
        assert clock.now - renewed_at < 6.0 + 2.0 + 0.5, "not taken over within TTL + TTL/3"
    assert clock.now - renewed_at >= 6.0
    assert b_calls.gained == [JOB] and b.holds(JOB) and b_calls.asked == [JOB]
    assert LeaseStore(store).read(JOB)[0].holder == "B"
    # A was frozen meanwhile (its clock stood still, as in a suspended VM): it wakes up and
    # renews; the renewal fails (If-Match), it reads who has the lease, and stops dispatching.
    assert a.holds(JOB)
    a_clock.now += 2.0
    a.run_once()
    assert a_calls.lost and a_calls.lost[0][0] == JOB and "B took its lease over" in a_calls.lost[0][1]
    assert not a.holds(JOB) and a.held_elsewhere(JOB).holder == "B"


def test_a_holder_that_cannot_reach_storage_stops_at_five_sixths_of_the_ttl(tmp_path, monkeypatch):
    store, clock, calls = LocalStore(str(tmp_path)), Clock(), Calls()
    a = keeper(store, "A", clock, calls)
    a.create(JOB)

    def down(*args, **kwargs):
        raise StorageError("storage unreachable")

    monkeypatch.setattr(a.leases, "replace", down)
    while a.holds(JOB):
        clock.now += 0.25
        a.run_once()
    assert clock.now == pytest.approx(5.0) and calls.lost[0][0] == JOB and "not renewed" in calls.lost[0][1]


def test_expire_overdue_needs_no_storage_call(tmp_path):
    store, clock, calls = LocalStore(str(tmp_path)), Clock(), Calls()
    a = keeper(store, "A", clock, calls)
    a.create(JOB)
    clock.now = 5.0  # the keeper thread is stuck in a storage call: the dispatch loop asks
    a.expire_overdue()
    assert calls.lost and not a.holds(JOB)


def test_a_released_lease_is_taken_at_once_if_the_job_is_still_wanted(tmp_path):
    store, clock = LocalStore(str(tmp_path)), Clock()
    b_calls = Calls()
    a, b = keeper(store, "A", clock, Calls()), keeper(store, "B", clock, b_calls)
    a.create(JOB)
    b.watch(JOB)
    b.run_once()
    a.release(JOB)  # A stopped cleanly (drain)
    assert LeaseStore(store).read(JOB) == (None, None)
    clock.now += 2.0  # B's next poll
    b.run_once()
    assert b_calls.gained == [JOB] and b.holds(JOB)


def test_a_job_finished_elsewhere_is_not_acquired(tmp_path):
    store, clock = LocalStore(str(tmp_path)), Clock()
    b_calls = Calls(wanted=False)
    b = keeper(store, "B", clock, b_calls)
    b.watch(JOB)
    b.run_once()
    assert b_calls.asked == [JOB] and not b_calls.gained and JOB not in b.trackers
    assert LeaseStore(store).read(JOB) == (None, None)


def test_release_leaves_a_lease_that_is_no_longer_ours(tmp_path):
    store, clock = LocalStore(str(tmp_path)), Clock()
    a = keeper(store, "A", clock, Calls())
    a.create(JOB)
    leases = LeaseStore(store)
    _, etag = leases.read(JOB)
    leases.replace(record("B", token="b"), etag)  # taken over meanwhile
    a.release(JOB)
    assert leases.read(JOB)[0].holder == "B"


def test_a_holder_that_was_a_process_of_this_machine_now_gone_is_taken_over_at_once(tmp_path):
    me = this_process()
    if me is None:
        pytest.skip("no /proc here")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        dead = ProcessId(me.boot_id, me.pid_namespace, child.pid, _start_ticks(child.pid))
        assert not process_gone(dead, me)
        child.kill()
        time.sleep(0.5)  # dead, not reaped yet: a zombie counts as gone
        assert process_gone(dead, me)
    finally:
        child.kill()
        child.wait()
    assert process_gone(dead, me)
    assert not process_gone(me, me)  # this very process (two coordinators in one, in tests)
    assert not process_gone(ProcessId("another-boot", me.pid_namespace, child.pid, 1), me)  # another machine
    assert process_gone(ProcessId(me.boot_id, me.pid_namespace, me.pid, me.start_ticks + 1), me)  # our pid, reused

    store, clock = LocalStore(str(tmp_path)), Clock()
    a = keeper(store, "A", clock, Calls(), process=dead)
    a.create(JOB)
    b_calls = Calls()
    b = keeper(store, "B", clock, b_calls, process=me)
    b.watch(JOB)
    b.run_once()
    assert b_calls.gained == [JOB]  # no TTL to wait


def test_the_keeper_thread_renews_on_its_own(tmp_path):
    store, calls = LocalStore(str(tmp_path)), Calls()
    a = LeaseKeeper(LeaseStore(store), Holder("A"), LeasePolicy(1.0), wanted=calls.wanted,
                    gained=calls.gained.append, lost=lambda j, r: calls.lost.append(j)).start()
    try:
        a.create(JOB)
        first = LeaseStore(store).read(JOB)[1]
        time.sleep(1.2)
        assert LeaseStore(store).read(JOB)[1] != first and a.holds(JOB) and not calls.lost
    finally:
        a.stop(release=True)
    assert LeaseStore(store).read(JOB) == (None, None)
