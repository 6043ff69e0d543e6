"""Server-sent job progress that cannot starve the API.

One `StatusFeed` per API replica polls the coordinator once a second per *job* that someone is
watching, however many clients watch it, and wakes every stream of that job when its status
changes. A stream is an awaiting coroutine, not a request slot held in a thread pool, so
hundreds of open streams cost a few kilobytes each and leave status requests and `/healthz`
alone (the replica's `max_ongoing_requests` is raised to match, see `farm.serve.app`).

`StreamLimits` bounds the streams one client (its address) and the whole replica may hold
open; past either bound a new stream gets a 429 that says which limit and what to do.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

POLL_INTERVAL_S = 1.0
KEEPALIVE_S = 15.0  # a comment line now and then, so proxies do not close an idle stream


class StreamLimitError(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class StreamLimits:
    per_client: int
    total: int
    open_by_client: dict[str, int] = field(default_factory=dict)

    @property
    def open(self) -> int:
        return sum(self.open_by_client.values())

    def acquire(self, client: str) -> None:
        if self.open >= self.total:
            raise StreamLimitError(
                f"this server already has {self.open} event streams open (the limit is {self.total}, "
                "FARM_API_MAX_STREAMS); retry later or poll GET /v1/jobs/{id}"
            )
        mine = self.open_by_client.get(client, 0)
        if mine >= self.per_client:
            raise StreamLimitError(
                f"{mine} event streams are already open from this client (the limit is {self.per_client}, "
                "FARM_API_MAX_STREAMS_PER_CLIENT); close one or poll GET /v1/jobs/{id}"
            )
        self.open_by_client[client] = mine + 1

    def release(self, client: str) -> None:
        left = self.open_by_client.get(client, 0) - 1
        if left > 0:
            self.open_by_client[client] = left
        else:
            self.open_by_client.pop(client, None)


class _Watched:
    """One job's latest status and the streams waiting for the next one."""

    def __init__(self):
        self.status: dict | None = None
        self.version = 0
        self.error: BaseException | None = None
        self.watchers = 0
        self.changed = asyncio.Condition()
        self.poller: asyncio.Task | None = None


class StatusFeed:
    def __init__(self, fetch: Callable[[str], Awaitable[dict | None]], *, interval_s: float = POLL_INTERVAL_S,
                 final_states: tuple[str, ...] = ()):
        self.fetch = fetch  # job id -> its status (public form), or None once it is unknown
        self.interval_s = interval_s
        self.final_states = final_states
        self._jobs: dict[str, _Watched] = {}

    @property
    def polled_jobs(self) -> int:
        return sum(1 for watched in self._jobs.values() if watched.poller is not None)

    async def follow(self, job_id: str, *, keepalive_s: float = KEEPALIVE_S) -> AsyncIterator[str]:
        """SSE lines for `job_id`: a `progress` event on every change, then one `end`."""
        watched = self._jobs.setdefault(job_id, _Watched())
        watched.watchers += 1
        if watched.poller is None:
            watched.poller = asyncio.create_task(self._poll(job_id, watched))
        seen = 0
        try:
            while True:
                waited_out = False
                async with watched.changed:  # never yield while holding it
                    if watched.version == seen and watched.error is None:
                        try:
                            await asyncio.wait_for(watched.changed.wait(), keepalive_s)
                        except asyncio.TimeoutError:
                            waited_out = True
                    error, status, version = watched.error, watched.status, watched.version
                if error is not None:  # the coordinator is unreachable: say so, the client may reconnect
                    detail = getattr(error, "detail", None) or "the job's status is unavailable; retry in a few seconds"
                    yield f"event: error\ndata: {json.dumps({'detail': str(detail)})}\n\n"
                    return
                if version == seen:
                    if waited_out:
                        yield ": keep-alive\n\n"
                    continue
                seen = version
                if status is None:  # the job vanished (it cannot, but a stream must end)
                    return
                final = status.get("state") in self.final_states
                yield f"event: {'end' if final else 'progress'}\ndata: {json.dumps(status)}\n\n"
                if final:
                    return
        finally:
            watched.watchers -= 1
            if watched.watchers == 0:
                if watched.poller is not None:
                    watched.poller.cancel()
                self._jobs.pop(job_id, None)

    async def _poll(self, job_id: str, watched: _Watched) -> None:
        last: Any = object()
        while True:
            try:
                status = await self.fetch(job_id)
                error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # told to every stream of the job, which then ends
                status, error = None, exc
            async with watched.changed:
                if error is not None or status != last:
                    watched.status, watched.error, last = status, error, status
                    watched.version += 1
                    watched.changed.notify_all()
            if error is not None or status is None or status.get("state") in self.final_states:
                watched.poller = None
                return
            await asyncio.sleep(self.interval_s)
