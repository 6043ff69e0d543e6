"""Stopping a running render: the cancel requests one render worker holds, and the exception that
stops its denoise.

A cancel (of a job, or of one item) reaches a worker while it renders: the dispatcher's
`CancelRunning` instruction becomes a call that runs beside the render (a Ray concurrency group
of its own; in process, on the caller's thread) and lands here. The render's step hook asks
`requested()` before each denoise step and raises `RenderCancelled`; the renderer frees what the
stopped denoise held and answers a `cancelled` outcome. Nothing is committed for it.

A request names the render it is for (job, and item or None for any item of the job). The
dispatcher only cancels what it sent, and a worker renders one task at a time, so a request is
for the render running now, for the one on its way (the call may run a moment before the render
starts), or for one that ended already (a cancel that lost the race with the render's end):
that last kind is dropped when the next render begins, so it can never stop a later item.

Plain threading, no I/O: the render thread and the cancel call's thread share one lock.
"""

from __future__ import annotations

import threading

EARLY_KEPT = 16  # requests kept while nothing renders


class RenderCancelled(Exception):
    """Raised from a denoise step to stop a render whose job or item was cancelled (caught by the
    renderer, which answers a `cancelled` outcome; never an item failure)."""

    def __init__(self, message: str, steps_done: int = 0):
        super().__init__(message)
        self.steps_done = steps_done


class CancelRequests:
    """One worker's cancel requests (thread-safe): `request` from the cancel call, `begin`, `why`
    and `end` from the render."""

    def __init__(self):
        self._lock = threading.Lock()
        self._current: tuple[str, str] | None = None  # (job id, item id) of the render running now
        self._why: str | None = None  # set: the current render is to stop
        self._early: list[tuple[str, str | None, str]] = []  # requests that came before their render began

    def request(self, job_id: str, item_id: str | None = None, why: str | None = None) -> bool:
        """Stop the render of `item_id` of `job_id` (None: any item of the job). True when it
        is the render running now; a request while nothing renders waits for the next render
        (the one on its way), and one for another item than the running one is dropped."""
        why = why or (f"item {item_id} was cancelled" if item_id else f"job {job_id} was cancelled")
        with self._lock:
            if self._current is None:
                self._early.append((job_id, item_id, why))
                del self._early[:-EARLY_KEPT]  # stale ones (their render ended) are few; keep it bounded
                return False
            if _matches(self._current, job_id, item_id):
                self._why = self._why or why
                return True
            return False

    def begin(self, job_id: str, item_id: str) -> str | None:
        """A render of (job, item) starts: what stops it already (a request that came first), or
        None. Earlier requests for other renders are dropped here."""
        with self._lock:
            self._current = (job_id, item_id)
            early, self._early = self._early, []
            self._why = next((why for job, item, why in early if _matches(self._current, job, item)), None)
            return self._why

    def why(self) -> str | None:
        """Why the current render is to stop (None: it goes on). Cheap: read at every step."""
        return self._why

    def end(self) -> None:
        with self._lock:
            self._current, self._why = None, None

    def clear(self) -> None:
        """Forget every request (a new coordinator takes the worker over)."""
        with self._lock:
            self._early, self._why = [], None


def _matches(current: tuple[str, str], job_id: str, item_id: str | None) -> bool:
    return current[0] == job_id and (item_id is None or current[1] == item_id)
