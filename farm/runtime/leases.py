"""The coordinator's job leases, kept by one thread (the logic is `farm.core.lease`, the records
`farm.storage.lease`).

`LeaseKeeper` renews the leases this coordinator holds, reads those it wants but another holds,
and acquires each when it is free or stale. It tells the coordinator through three callbacks,
never called under its own lock:

    wanted(job_id) -> bool   before acquiring: is the job still unfinished? False: forget it
    gained(job_id)           the lease is ours: run the job
    lost(job_id, reason)     the lease is gone: stop dispatching the job's items at once

A renewal stuck in storage must not keep a coordinator dispatching past its lease, so
`expire_overdue()` (no I/O) is called from the dispatch loop as well as from the keeper's own.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from farm.core.errors import CommitConflict, StorageError
from farm.core.lease import Do, Holder, LeasePolicy, LeaseRecord, LeaseTracker, Phase, ProcessId
from farm.storage.lease import LeaseStore

log = logging.getLogger(__name__)

MAX_ACTIONS_PER_PASS = 6  # per lease and pass: read, write, read again after a lost race, ...


def this_process() -> ProcessId | None:
    """This process's identity for `ProcessId` (None where /proc does not tell)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
        return ProcessId(boot, namespace, os.getpid(), _start_ticks(os.getpid()))
    except (OSError, ValueError):
        return None


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat from field 3 (the state) on: the command in parentheses may hold spaces."""
    with open(f"/proc/{pid}/stat") as handle:
        text = handle.read()
    return text[text.rindex(")") + 2:].split()


def _start_ticks(pid: int) -> int:
    return int(_stat_fields(pid)[19])  # field 22


def process_gone(process: ProcessId | None, me: ProcessId | None) -> bool:
    """True only when `process` ran on this machine, in this PID namespace, and is gone."""
    if process is None or me is None or not me.same_machine(process) or process == me:
        return False  # elsewhere (or this very process: two coordinators in one, in tests)
    if process.pid == me.pid:
        return True  # its pid is ours now: it is gone
    try:
        os.kill(process.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    try:
        fields = _stat_fields(process.pid)
        # a zombie (dead, not yet reaped), or the pid reused by another process
        return fields[0] in ("Z", "X") or int(fields[19]) != process.start_ticks
    except (OSError, ValueError, IndexError):
        return True  # gone between the two looks


def coordinator_holder() -> Holder:
    """This coordinator instance: host (a pod's name on Kubernetes), pid and a random part."""
    return Holder(f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}", this_process())


class LeaseKeeper:
    def __init__(
        self,
        leases: LeaseStore,
        me: Holder,
        policy: LeasePolicy,
        *,
        wanted: Callable[[str], bool],
        gained: Callable[[str], None],
        lost: Callable[[str, str], None],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        gone: Callable[[ProcessId | None, ProcessId | None], bool] = process_gone,
    ):
        self.leases = leases
        self.me = me
        self.policy = policy
        self._wanted, self._gained, self._lost = wanted, gained, lost
        self.clock, self.wall, self.gone = clock, wall, gone
        self.trackers: dict[str, LeaseTracker] = {}
        self.lock = threading.Condition(threading.RLock())
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.losses: list[dict] = []  # the last leases lost (for /healthz), newest last

    # --- what the coordinator asks -------------------------------------------------------

    def create(self, job_id: str) -> None:
        """A new job's lease, taken at once (raises StorageError, CommitConflict)."""
        tracker = LeaseTracker(job_id, self.me, self.policy)
        record = tracker.fresh_record(self.wall())
        started = self.clock()
        etag = self.leases.create(record)
        with self.lock:
            tracker.won(record, etag, started)
            self.trackers[job_id] = tracker
            self.lock.notify_all()

    def watch(self, job_id: str) -> None:
        """Want the job: acquire its lease as soon as it is free or stale."""
        with self.lock:
            if job_id not in self.trackers:
                self.trackers[job_id] = LeaseTracker(job_id, self.me, self.policy)
                self.lock.notify_all()

    def forget(self, job_id: str) -> None:
        """Stop watching (the job finished elsewhere); a held lease is not deleted."""
        with self.lock:
            self.trackers.pop(job_id, None)

    def release(self, job_id: str) -> None:
        """The job finished or was cancelled here: delete its lease if it is still ours."""
        with self.lock:
            tracker = self.trackers.pop(job_id, None)
        if tracker is None or tracker.token is None:
            return
        try:
            record, _etag = self.leases.read(job_id)
            if record is not None and record.holder == self.me.id and record.token == tracker.token:
                self.leases.delete(job_id)
        except StorageError as error:  # it expires; whoever takes it over finds the job finished
            log.warning("job %s: lease not released: %s", job_id, error)

    def holds(self, job_id: str) -> bool:
        with self.lock:
            tracker = self.trackers.get(job_id)
            return tracker is not None and tracker.holds(self.clock())

    def held_elsewhere(self, job_id: str) -> LeaseRecord | None:
        with self.lock:
            tracker = self.trackers.get(job_id)
            return tracker.held_elsewhere() if tracker is not None else None

    def counts(self) -> dict[str, int]:
        with self.lock:
            now = self.clock()
            held = sum(1 for t in self.trackers.values() if t.holds(now))
            return {"held": held, "watched": len(self.trackers) - held}

    def expire_overdue(self) -> None:
        """Leases held but not renewed in time are lost now (no I/O; any thread)."""
        lost = []
        with self.lock:
            now = self.clock()
            for job_id, tracker in self.trackers.items():
                reason = tracker.expire(now)
                if reason is not None:
                    lost.append((job_id, reason))
        for job_id, reason in lost:
            self._report_loss(job_id, reason)

    # --- the thread ----------------------------------------------------------------------

    def start(self) -> LeaseKeeper:
        self._thread = threading.Thread(target=self._loop, name="farm-leases", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, release: bool = False) -> None:
        """Stop keeping leases; `release`: delete those held (a clean stop, so that another
        coordinator can take the jobs over at once)."""
        self._stopped.set()
        with self.lock:
            self.lock.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(self.policy.ttl_s, 5.0))
        if release:
            with self.lock:
                held = [job_id for job_id, t in self.trackers.items() if t.phase is Phase.HELD]
            for job_id in held:
                self.release(job_id)

    def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                due = self.run_once()
            except Exception:  # keep keeping: a bug here must not silently stop the renewals
                log.exception("lease keeping failed")
                due = self.clock() + self.policy.retry_s
            with self.lock:
                wait = max(min(due - self.clock(), self.policy.renew_every_s), 0.01)
                if not self._stopped.is_set():
                    self.lock.wait(wait)

    def run_once(self) -> float:
        """One pass over every lease (held ones first); the monotonic time of the next action."""
        self.expire_overdue()
        with self.lock:
            order = sorted(self.trackers.items(), key=lambda pair: pair[1].phase is not Phase.HELD)
        due = self.clock() + self.policy.renew_every_s
        for job_id, tracker in order:
            if self._stopped.is_set():
                break
            if tracker.phase is not Phase.HELD:  # reads of others' leases may be slow: renew ours first
                due = min(due, self._renew_due())
            due = min(due, self._advance(job_id, tracker))
        return due

    def _renew_due(self) -> float:
        with self.lock:
            held = [(job_id, t) for job_id, t in self.trackers.items() if t.phase is Phase.HELD]
        due = float("inf")
        for job_id, tracker in held:
            due = min(due, self._advance(job_id, tracker))
        return due

    def _current(self, job_id: str, tracker: LeaseTracker) -> bool:
        return self.trackers.get(job_id) is tracker

    def _advance(self, job_id: str, tracker: LeaseTracker) -> float:
        for _ in range(MAX_ACTIONS_PER_PASS):
            with self.lock:
                if not self._current(job_id, tracker):
                    return float("inf")
                acquiring = tracker.phase is Phase.WATCHING
                action = tracker.next(self.clock(), self.wall())
            if action.do is Do.WAIT:
                return action.at
            if action.do is Do.STOP:
                self._report_loss(job_id, action.reason)
                continue
            if action.do is Do.READ:
                try:
                    record, etag = self.leases.read(job_id)
                except StorageError as error:
                    log.warning("job %s: lease not read: %s", job_id, error)
                    with self.lock:
                        tracker.failed(self.clock())
                    continue
                dead = record is not None and record.holder != self.me.id and self.gone(record.process, self.me.process)
                with self.lock:
                    if self._current(job_id, tracker):
                        tracker.saw(record, etag, self.clock(), self.wall(), holder_dead=dead)
                continue
            # CREATE or REPLACE: a renewal, or an acquisition (ask first whether the job still runs)
            try:
                wanted = not acquiring or self._wanted(job_id)
            except StorageError as error:
                log.warning("job %s: its record not read: %s", job_id, error)
                with self.lock:
                    tracker.failed(self.clock())
                continue
            if not wanted:
                self.forget(job_id)
                return float("inf")
            previous = tracker.record.holder if tracker.record is not None else None
            started = self.clock()
            try:
                if action.do is Do.CREATE:
                    etag = self.leases.create(action.record)
                else:
                    etag = self.leases.replace(action.record, action.etag)
            except CommitConflict:
                with self.lock:
                    tracker.beaten(self.clock())
                continue
            except StorageError as error:
                log.warning("job %s: lease not %s: %s", job_id, "acquired" if acquiring else "renewed", error)
                with self.lock:
                    tracker.failed(self.clock())
                continue
            with self.lock:
                if not self._current(job_id, tracker):  # released meanwhile (the job ended)
                    return float("inf")
                gained = tracker.won(action.record, etag, started)
            if gained:
                taken = f", taken over from {previous}" if previous and previous != self.me.id else ""
                log.info("job %s: lease acquired by %s%s", job_id, self.me.id, taken)
                self._gained(job_id)
        return self.clock() + self.policy.retry_s

    def _report_loss(self, job_id: str, reason: str) -> None:
        log.warning("job %s: lease lost (%s): no new item of it is dispatched here", job_id, reason)
        with self.lock:
            self.losses.append({"job_id": job_id, "reason": reason, "at": self.wall()})
            del self.losses[:-20]
        self._lost(job_id, reason)
