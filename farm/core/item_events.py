"""A job's item events, numbered, for the event stream (`GET /v1/jobs/{id}/events`) and the UI:
queued, started (worker, tier, attempt), step (throttled), degraded (the rung), requeued,
committed, failed (reason, message), cancelled, skipped.

Pure: the engine adds events as its state machine decides (no I/O, no clock of its own: the
caller passes the time). Ids count up from 1 per job, so a client that reconnects with
`Last-Event-ID: N` gets exactly what came after N; the log keeps the last `capacity` events
(a reconnect after more than that is told it missed some: `since` returns `missed`).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

STEP_INTERVAL_S = 0.25  # step events of one item at most 4 a second (the last step always)
QUEUED_EACH_MAX = 2000  # a bigger job's admission is one `queued` event with the count


@dataclass(frozen=True)
class ItemEvent:
    id: int
    kind: str
    item: str | None
    at: float
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "item": self.item, "at": round(self.at, 3), **self.data}


class ItemEventLog:
    def __init__(self, capacity: int = 10_000):
        self._events: collections.deque[ItemEvent] = collections.deque(maxlen=capacity)
        self._next = 1
        self._last_step: dict[str, float] = {}

    @property
    def last_id(self) -> int:
        return self._next - 1

    def add(self, kind: str, item: str | None, at: float, **data: Any) -> ItemEvent:
        event = ItemEvent(self._next, kind, item, at, data)
        self._next += 1
        self._events.append(event)
        if kind in ("committed", "failed", "cancelled"):
            self._last_step.pop(item, None)  # its render is over: forget its throttle
        return event

    def queued(self, items: list[str], at: float, **data: Any) -> None:
        if len(items) <= QUEUED_EACH_MAX:
            for item in items:
                self.add("queued", item, at, **data)
        else:
            self.add("queued", None, at, items=len(items), **data)

    def step(self, item: str, done: int, total: int, at: float) -> ItemEvent | None:
        """A step event, unless one of the same item came less than STEP_INTERVAL_S ago."""
        last = self._last_step.get(item)
        if last is not None and at - last < STEP_INTERVAL_S and done < total:
            return None
        self._last_step[item] = at
        return self.add("step", item, at, done=done, total=total)

    def since(self, after: int, limit: int = 1000) -> tuple[list[ItemEvent], bool]:
        """Up to `limit` events with an id above `after`, and whether some after it were dropped
        from the log already (the client missed them: it should read the item list)."""
        oldest = self._events[0].id if self._events else self._next
        missed = after + 1 < oldest
        if not self._events or after >= self.last_id:
            return [], missed
        start = max(0, after + 1 - oldest)
        events = [self._events[i] for i in range(start, min(len(self._events), start + limit))]
        return events, missed
