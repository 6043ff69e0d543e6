"""Job leases: which coordinator runs a job, as pure logic (no I/O, no clock of its own).

A coordinator dispatches items of a job only while it holds the job's lease, a small record in
the state store (`leases/JOB_ID.json`, written by `farm.storage.lease`; the thread that keeps
leases is `farm.runtime.leases`). Two coordinators that share a state store (the old and the
new cluster of a RayService upgrade, a restarted `farm serve` next to one that still runs) so
never run the same job at the same time.

- Acquire: create the record if there is none (`If-None-Match: *`), or replace a stale one
  (`If-Match: <etag>` of the record read): of two contenders exactly one write succeeds.
- Renew: the holder rewrites its record every `renew_every_s` (TTL/3), `If-Match` the etag of
  its last write; a write that fails because the record changed means someone else took it.
- Stale: a record is taken over when the watcher has seen it unchanged (same etag) for the
  record's TTL on its *own* monotonic clock, so clocks of different machines never have to
  agree (the wall-clock times in the record are for people only: even a record whose
  `expires_at` is long past is watched for a TTL first); or at once when its holder is known
  to be dead (a process on this machine that is gone: the runtime checks).
- The holder stops dispatching the job when it could not renew for `valid_s` (5/6 of the TTL)
  counted from the *start* of its last successful renewal: before any watcher, which waits a
  whole TTL from when it first saw that renewal, can take the job over.
- Loss: a renewal that finds the record changed (taken over) or gone; or no successful
  renewal within `valid_s` (storage unreachable). The holder stops dispatching new items of
  the job at once; what is rendering may finish and commit (commits are exactly-once).
- Release: a finished or cancelled job's record is deleted by its holder.

Takeover time after a holder vanishes without releasing: between TTL - TTL/3 and TTL + TTL/3
after its last renewal (a watcher reads a lease held elsewhere every TTL/3, and once more when
the TTL it has been watching runs out).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field, replace
from enum import Enum

LEASE_FORMAT = 1


@dataclass(frozen=True)
class ProcessId:
    """Where a holder runs, precisely enough to tell on the same machine whether it is gone:
    the kernel's boot id, the PID namespace, the pid and the process's start time (a reused pid
    has another start time)."""

    boot_id: str
    pid_namespace: str
    pid: int
    start_ticks: int

    def same_machine(self, other: ProcessId | None) -> bool:
        return other is not None and (self.boot_id, self.pid_namespace) == (other.boot_id, other.pid_namespace)


@dataclass(frozen=True)
class Holder:
    """A coordinator instance: `id` names it in records and status answers (cluster or host,
    pid and a random part); `process` (when known) lets a coordinator on the same machine see
    that it is gone."""

    id: str
    process: ProcessId | None = None


@dataclass(frozen=True)
class LeaseRecord:
    """What `leases/JOB_ID.json` holds. Times are the holder's wall clock (epoch seconds), for
    people only: decisions use etags and each coordinator's own monotonic clock."""

    job_id: str
    holder: str
    token: str  # one per acquisition: a take-over, even by the same holder, gets a new one
    acquired_at: float
    renewed_at: float
    expires_at: float
    ttl_s: float
    process: ProcessId | None = None
    format: int = LEASE_FORMAT
    # New on every write: no two writes have the same bytes, so none has the same etag (S3's
    # etag is the content's MD5: a rewrite with equal bytes would let a stale If-Match pass).
    write: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseRecord | None:
        """The record, or None when the bytes are not a lease record (damaged, hand-edited)."""
        try:
            raw = json.loads(data)
            process = raw.get("process")
            record = cls(
                job_id=str(raw["job_id"]), holder=str(raw["holder"]), token=str(raw["token"]),
                acquired_at=float(raw["acquired_at"]), renewed_at=float(raw["renewed_at"]),
                expires_at=float(raw["expires_at"]), ttl_s=float(raw["ttl_s"]),
                process=ProcessId(str(process["boot_id"]), str(process["pid_namespace"]), int(process["pid"]),
                                  int(process["start_ticks"])) if isinstance(process, dict) else None,
                format=int(raw.get("format", LEASE_FORMAT)),
                write=str(raw.get("write", "")),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        return record if record.ttl_s > 0 else None

    def summary(self) -> dict:
        """For status answers: who holds it, since when and until when (holder's clock)."""
        return {"holder": self.holder, "acquired_at": self.acquired_at, "renewed_at": self.renewed_at,
                "expires_at": self.expires_at}


@dataclass(frozen=True)
class LeasePolicy:
    """The timings, all from the TTL (FARM_JOB_LEASE_TTL_S)."""

    ttl_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.ttl_s > 0:
            raise ValueError(f"a lease TTL must be positive, not {self.ttl_s}")

    @property
    def renew_every_s(self) -> float:
        return self.ttl_s / 3

    @property
    def valid_s(self) -> float:
        """How long after the start of its last successful renewal the holder may dispatch."""
        return self.ttl_s * 5 / 6

    @property
    def poll_s(self) -> float:
        """How often a lease held elsewhere is read."""
        return self.ttl_s / 3

    @property
    def retry_s(self) -> float:
        """After a storage error: when to try again."""
        return max(self.ttl_s / 12, 0.05)


class Phase(str, Enum):
    WATCHING = "watching"  # wanted, not held: read it, acquire it when free or stale
    HELD = "held"  # ours: renew it; dispatch while `holds(now)`


class Do(str, Enum):
    """What the runtime should do next for one lease."""

    WAIT = "wait"  # nothing before `Action.at`
    READ = "read"
    CREATE = "create"  # write `record` with If-None-Match: *
    REPLACE = "replace"  # write `record` with If-Match: `etag` (renew, or take over)
    STOP = "stop"  # the lease is lost: stop dispatching the job (`reason`)


@dataclass(frozen=True)
class Action:
    do: Do
    at: float = 0.0  # (WAIT) monotonic time of the next action
    record: LeaseRecord | None = None
    etag: str | None = None
    reason: str = ""


@dataclass
class LeaseTracker:
    """One job's lease as one coordinator sees it. The runtime asks `next(now, wall)` what to
    do, does it, and reports the outcome (`saw`, `won`, `beaten`, `failed`); `now` is a
    monotonic clock, `wall` epoch seconds (only written into records)."""

    job_id: str
    me: Holder
    policy: LeasePolicy
    phase: Phase = Phase.WATCHING
    record: LeaseRecord | None = None  # the last record read or written
    etag: str | None = None  # its etag (None: no record)
    seen_at: float | None = None  # (watching) when this etag was first seen here
    valid_until: float = 0.0  # (held) dispatch until then (monotonic)
    renew_at: float = 0.0  # (held) next renewal (monotonic)
    read_at: float = 0.0  # (watching) next read (monotonic)
    token: str | None = None  # ours, while we hold it (or believe a write of ours may have landed)
    lost_reason: str | None = None  # why we last lost it
    _pending: Action | None = field(default=None, repr=False)

    # --- views ---------------------------------------------------------------------------

    def holds(self, now: float) -> bool:
        return self.phase is Phase.HELD and now < self.valid_until

    def expire(self, now: float) -> str | None:
        """(Any thread, no I/O) A held lease not renewed in time is lost now: the reason, or None."""
        if self.phase is Phase.HELD and now >= self.valid_until:
            return self._lose(now, f"not renewed within {self.policy.valid_s:.0f} s (storage unreachable or slow)").reason
        return None

    def held_elsewhere(self) -> LeaseRecord | None:
        """The record of another holder, when that is what was last read."""
        if self.phase is Phase.WATCHING and self.record is not None and not self._mine(self.record):
            return self.record
        return None

    def _mine(self, record: LeaseRecord | None) -> bool:
        return record is not None and record.holder == self.me.id and record.token == self.token

    # --- decisions -----------------------------------------------------------------------

    def next(self, now: float, wall: float) -> Action:
        reason = self.expire(now)
        if reason is not None:
            return Action(Do.STOP, reason=reason)
        if self._pending is not None:
            action, self._pending = self._pending, None
            return action
        if self.phase is Phase.HELD:
            if now >= self.renew_at:
                return Action(Do.REPLACE, record=self._renewal(wall), etag=self.etag)
            return Action(Do.WAIT, at=min(self.renew_at, self.valid_until))
        if now >= self.read_at:
            return Action(Do.READ)
        return Action(Do.WAIT, at=self.read_at)

    def _renewal(self, wall: float) -> LeaseRecord:
        assert self.record is not None
        return replace(self.record, renewed_at=wall, expires_at=wall + self.policy.ttl_s, ttl_s=self.policy.ttl_s,
                       process=self.me.process, write=uuid.uuid4().hex)

    def fresh_record(self, wall: float) -> LeaseRecord:
        self.token = uuid.uuid4().hex
        return LeaseRecord(self.job_id, self.me.id, self.token, wall, wall, wall + self.policy.ttl_s,
                           self.policy.ttl_s, self.me.process)

    def _lose(self, now: float, reason: str) -> Action:
        self.phase = Phase.WATCHING
        self.lost_reason = reason
        self.read_at = now
        self.seen_at = None
        self._pending = None
        return Action(Do.STOP, reason=reason)

    # --- outcomes ------------------------------------------------------------------------

    def saw(self, record: LeaseRecord | None, etag: str | None, now: float, wall: float, *,
            holder_dead: bool = False) -> None:
        """A read: `etag` None means no record; `record` None with an etag, a damaged one."""
        changed = etag != self.etag
        self.record, self.etag = record, etag
        if self.phase is Phase.HELD:
            if etag is not None and self._mine(record):  # a write of ours landed after all: renew on it
                self._pending = Action(Do.REPLACE, record=self._renewal(wall), etag=etag)
                return
            holder = f"coordinator {record.holder}" if record is not None else "someone"
            why = "its lease record was removed" if etag is None else f"{holder} took its lease over"
            self._pending = self._lose(now, why)
            self.record, self.etag = record, etag
            self.seen_at = now
            self.read_at = now + self.policy.poll_s
            return
        if etag is None:
            self._pending = Action(Do.CREATE, record=self.fresh_record(wall))
            return
        if self._mine(record):  # ours from before a loss nobody acted on: renew it
            self._pending = Action(Do.REPLACE, record=self._renewal(wall), etag=etag)
            return
        if changed or self.seen_at is None:
            self.seen_at = now
        ttl = record.ttl_s if record is not None else self.policy.ttl_s
        stale = now - self.seen_at >= ttl or holder_dead
        if stale:
            self._pending = Action(Do.REPLACE, record=self.fresh_record(wall), etag=etag)
            return
        # Next look: the usual poll, or when the TTL it has been watching runs out.
        self.read_at = min(now + self.policy.poll_s, self.seen_at + ttl)

    def won(self, record: LeaseRecord, etag: str, started_at: float) -> bool:
        """Our create or replace succeeded (`started_at`: when the write was sent). True when
        the lease became ours by it (it was not held before)."""
        gained = self.phase is not Phase.HELD
        self.phase = Phase.HELD
        self.record, self.etag, self.token = record, etag, record.token
        self.valid_until = started_at + self.policy.valid_s
        self.renew_at = started_at + self.policy.renew_every_s
        self.seen_at, self.lost_reason = None, None if gained else self.lost_reason
        return gained

    def beaten(self, now: float) -> None:
        """Our conditional write failed: the record is not what we read. Look again at once
        (still holding it until then, if we did)."""
        self._pending = Action(Do.READ)

    def failed(self, now: float) -> None:
        """Storage failed: try again soon (a holder keeps its lease until `valid_until`)."""
        if self.phase is Phase.HELD:
            self.renew_at = now + self.policy.retry_s
        else:
            self.read_at = now + self.policy.retry_s


LOSS_KINDS = ("not_renewed", "removed", "taken_over")


def loss_kind(reason: str) -> str:
    """The metric label of a loss reason (the reason itself names holders and seconds)."""
    if reason.startswith("not renewed"):
        return "not_renewed"
    return "removed" if "removed" in reason else "taken_over"
