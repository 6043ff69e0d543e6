"""The CPU stage's queue: items whose deliverables wait for a CPU worker, at most `concurrency`
being made at once, each as one call the engine waits on beside its render calls.

Pure bookkeeping (no Ray here): a `runner` starts a call for a `PostTask` and returns its
token, which the engine's call pool waits on. `RayPostRunner` runs `post_item` as a Ray task
with `num_gpus=0` (on the CPUs of any node, or of the nodes holding a custom resource the
operator names: never in a GPU worker's process), `ThreadPostRunner` on threads of this process
(tests, `farm post`). The queue is first in, first out: deliverables are made in the order the
renders committed.
"""

from __future__ import annotations

import collections
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from farm.post.item import PostResult, PostTask, post_item


class PostStage:
    def __init__(self, runner: Callable[[PostTask], Any], concurrency: int):
        self.runner = runner
        self.concurrency = max(1, concurrency)
        self.queue: collections.deque[PostTask] = collections.deque()
        self.running: dict[Any, PostTask] = {}  # call -> its task
        self._pending: collections.Counter[str | None] = collections.Counter()  # job id -> queued + running

    def enqueue(self, task: PostTask) -> None:
        self.queue.append(task)
        self._pending[task.job_id] += 1

    def start_ready(self) -> list[tuple[Any, PostTask]]:
        """Start calls for queued tasks while fewer than `concurrency` run."""
        started = []
        while self.queue and len(self.running) < self.concurrency:
            task = self.queue.popleft()
            call = self.runner(task)
            self.running[call] = task
            started.append((call, task))
        return started

    def finished(self, call) -> PostTask:
        task = self.running.pop(call)
        self._pending[task.job_id] -= 1
        if not self._pending[task.job_id]:
            del self._pending[task.job_id]
        return task

    def drop(self, job_id: str) -> list[PostTask]:
        """Forget the job's queued tasks (a cancel); running ones finish."""
        dropped = [task for task in self.queue if task.job_id == job_id]
        self.queue = collections.deque(task for task in self.queue if task.job_id != job_id)
        if dropped:
            self._pending[job_id] -= len(dropped)
            if not self._pending[job_id]:
                del self._pending[job_id]
        return dropped

    def pending(self, job_id: str | None) -> int:
        return self._pending.get(job_id, 0)

    def busy(self) -> bool:
        return bool(self.queue or self.running)

    def counts(self) -> tuple[int, int]:
        """(queued, running)."""
        return len(self.queue), len(self.running)


class ThreadPostRunner:
    """`post_item` on threads of this process (ffmpeg runs in its own processes anyway)."""

    def __init__(self, threads: int):
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="farm-post")

    def __call__(self, task: PostTask) -> Future:
        return self._pool.submit(post_item, task)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class RayPostRunner:
    """`post_item` as a Ray task: `num_gpus=0`, `num_cpus` CPUs each, optionally only on nodes
    with the custom resource `resource` (a CPU node group's label)."""

    def __init__(self, num_cpus: float = 1.0, resource: str | None = None):
        import ray

        options: dict[str, Any] = {"num_gpus": 0, "num_cpus": num_cpus, "max_retries": 1}
        if resource:
            options["resources"] = {resource: 0.001}
        self._remote = ray.remote(post_item).options(**options)

    def __call__(self, task: PostTask):
        return self._remote.remote(task)


def result_of(pool, call, task: PostTask) -> PostResult:
    """The call's PostResult; a lost or crashed call fails the item's deliverables."""
    try:
        return pool.result(call)
    except Exception as exc:  # WorkerDied/WorkerCallError: the CPU worker's process died
        return PostResult.failure(task, "post_error", f"the CPU worker failed: {str(exc)[:300]}")
