"""The event-stream fan-out (farm.serve.events): one poll per watched job however many streams
follow it, streams that end on the job's end, and the per-client and total stream bounds."""

import asyncio
import json

import pytest

from farm.serve.events import StatusFeed, StreamLimitError, StreamLimits

FINAL = ("succeeded", "partial", "failed", "cancelled")


class FakeJobs:
    """Status of each job, advanced by the test; counts the coordinator calls it gets."""

    def __init__(self):
        self.states: dict[str, dict] = {}
        self.calls = 0
        self.fail = False

    async def fetch(self, job_id: str):
        self.calls += 1
        if self.fail:
            raise RuntimeError("coordinator gone")
        return dict(self.states[job_id]) if job_id in self.states else None


async def first_events(stream, count: int) -> list[str]:
    events = []
    async for chunk in stream:
        if chunk.startswith("event:"):
            events.append(chunk)
        if len(events) == count:
            break
    return events


def test_one_poll_per_job_however_many_streams_follow_it():
    async def scenario():
        jobs = FakeJobs()
        jobs.states["j1"] = {"state": "running", "done": 0}
        feed = StatusFeed(jobs.fetch, interval_s=0.05, final_states=FINAL)
        streams = [feed.follow("j1") for _ in range(200)]
        readers = [asyncio.create_task(first_events(s, 10)) for s in streams]
        for done in range(1, 6):
            await asyncio.sleep(0.12)
            jobs.states["j1"] = {"state": "running", "done": done}
        await asyncio.sleep(0.12)
        jobs.states["j1"] = {"state": "succeeded", "done": 6}
        results = await asyncio.wait_for(asyncio.gather(*readers), 5)
        return jobs, feed, results

    jobs, feed, results = asyncio.run(scenario())
    # ~0.8 s at a 0.05 s interval: one poller, not one per stream (200 streams would be ~3,000).
    assert jobs.calls < 40, jobs.calls
    assert feed.polled_jobs == 0
    for events in results:
        assert events[-1].startswith("event: end")
        assert json.loads(events[-1].split("data: ", 1)[1])["state"] == "succeeded"
        dones = [json.loads(e.split("data: ", 1)[1])["done"] for e in events]
        assert dones == sorted(dones) and dones[-1] == 6  # in order, none repeated


def test_a_stream_of_a_finished_job_ends_at_once_and_an_idle_one_keeps_alive():
    async def scenario():
        jobs = FakeJobs()
        jobs.states["done"] = {"state": "cancelled"}
        jobs.states["slow"] = {"state": "running"}
        feed = StatusFeed(jobs.fetch, interval_s=0.05, final_states=FINAL)
        ended = [chunk async for chunk in feed.follow("done")]
        idle = feed.follow("slow", keepalive_s=0.1)
        chunks = [await idle.__anext__() for _ in range(3)]
        await idle.aclose()  # the client went away: its poller stops
        await asyncio.sleep(0.1)
        return ended, chunks, feed

    ended, chunks, feed = asyncio.run(scenario())
    assert len(ended) == 1 and ended[0].startswith("event: end")
    assert chunks[0].startswith("event: progress") and chunks[1:] == [": keep-alive\n\n"] * 2
    assert feed.polled_jobs == 0


def test_an_unreachable_coordinator_ends_the_stream_with_an_error_event():
    async def scenario():
        jobs = FakeJobs()
        jobs.fail = True
        feed = StatusFeed(jobs.fetch, interval_s=0.05, final_states=FINAL)
        return [chunk async for chunk in feed.follow("j1")]

    chunks = asyncio.run(scenario())
    assert len(chunks) == 1 and chunks[0].startswith("event: error")
    assert "retry" in json.loads(chunks[0].split("data: ", 1)[1])["detail"]


def test_stream_limits_per_client_and_in_total():
    limits = StreamLimits(per_client=2, total=3)
    limits.acquire("a")
    limits.acquire("a")
    with pytest.raises(StreamLimitError, match="from this client.*FARM_API_MAX_STREAMS_PER_CLIENT"):
        limits.acquire("a")
    limits.acquire("b")
    with pytest.raises(StreamLimitError, match="the limit is 3, FARM_API_MAX_STREAMS\\)"):
        limits.acquire("c")
    limits.release("a")
    limits.acquire("c")
    for client in ("a", "b", "c"):
        limits.release(client)
    assert limits.open == 0 and not limits.open_by_client
