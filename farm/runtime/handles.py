"""How the engine talks to a render worker: a small `WorkerHandle` protocol, and a `CallPool`
that waits on the calls in flight.

Two implementations: Ray actors (`RayWorkerHandle`, `RayCallPool`), which is what the farm
runs, and plain objects in this process (`LocalWorkerHandle`, `LocalCallPool`: each worker
on a thread of its own), so that a whole job runs through the real engine and dispatch state
machine in a test without Ray. A worker is anything with `render(task)` (a RenderTask, answered
with a WorkerReply) and `info()` returning what `farm.runtime.workers.RenderWorkerImpl` returns;
its commits reach the engine through a mailbox (`farm.runtime.mailbox`).

`cancel(job_id, item_id)` is the one call that must not wait for the worker's render: a Ray
actor runs it in its own concurrency group; an in-process worker gets it on the caller's thread
(it only sets a flag). Nothing waits for its answer (the render's reply says how the item ended).
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Protocol

from farm.core.contracts import RenderTask


class WorkerDied(Exception):
    """The worker's process is gone (or its node): what it held is lost."""


class WorkerCallError(Exception):
    """The worker's own code raised; the worker itself is fine."""


class WorkerHandle(Protocol):
    """One render worker, as the engine uses it. Each method starts a call and returns its
    token for the pool to wait on."""

    def render(self, task: RenderTask) -> Any: ...

    def info(self) -> Any: ...

    def switch_model(self, model: str) -> Any:
        """Unload the model and load `model`; answered with `info()`'s dict plus `switch_seconds`."""

    def adopt(self, mailbox) -> Any:
        """Take over a worker an earlier engine started: it reports to `mailbox` from now on;
        answers `info()` once its last render's uploads are done."""

    def cancel(self, job_id: str, item_id: str | None) -> None:
        """Stop the worker's render of (job, item) at its next denoise step, while it renders
        (fire and forget: a worker that is gone, or has no such call, is left be)."""

    def kill(self) -> None: ...


class CallPool(Protocol):
    def wait(self, calls: list, timeout: float) -> list:
        """The calls among `calls` that are done (at most one is enough), after up to `timeout` s."""

    def result(self, call, timeout: float | None = None) -> Any:
        """The call's reply; raises WorkerDied or WorkerCallError."""


# --- Ray ---------------------------------------------------------------------------------------


class RayWorkerHandle:
    """A render actor (`farm.runtime.workers.RenderWorker` or one with the same methods)."""

    def __init__(self, actor):
        self.actor = actor

    def render(self, task: RenderTask):
        return self.actor.render.remote(task)

    def info(self):
        return self.actor.info.remote()

    def switch_model(self, model: str):
        return self.actor.switch_model.remote(model)

    def adopt(self, mailbox):
        return self.actor.adopt.remote(mailbox)

    def cancel(self, job_id: str, item_id: str | None) -> None:
        try:  # the actor's "control" concurrency group: it runs beside the render
            self.actor.cancel.remote(job_id, item_id)
        except AttributeError:  # an actor without `cancel` (a test's or a benchmark's stand-in)
            pass

    def kill(self) -> None:
        import ray

        try:
            ray.kill(self.actor, no_restart=True)  # stop Ray from restarting it somewhere later
        except Exception:  # already gone
            pass


class RayCallPool:
    def wait(self, calls: list, timeout: float) -> list:
        import ray

        ready, _ = ray.wait(calls, num_returns=1, timeout=timeout)
        return ready

    def result(self, call, timeout: float | None = None):
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return ray.get(call, timeout=timeout)
        except RayActorError as error:
            raise WorkerDied(str(error).splitlines()[0]) from None
        except RayTaskError as error:
            raise WorkerCallError(str(error).splitlines()[-1]) from None


# --- in process --------------------------------------------------------------------------------


class LocalWorkerHandle:
    """A worker object in this process; its calls run one at a time on a thread of its own, as
    an actor's would. `kill()` makes its later calls fail as a dead actor's do."""

    def __init__(self, worker):
        self.worker = worker
        self.killed = False
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="farm-local-worker")

    def _call(self, method: str, *args) -> Future:
        def run():
            if self.killed:
                raise WorkerDied("the worker was stopped")
            return getattr(self.worker, method)(*args)

        return self._thread.submit(run)

    def render(self, task: RenderTask) -> Future:
        return self._call("render", task)

    def info(self) -> Future:
        return self._call("info")

    def switch_model(self, model: str) -> Future:
        return self._call("switch_model", model)

    def adopt(self, mailbox) -> Future:
        return self._call("adopt", mailbox)

    def cancel(self, job_id: str, item_id: str | None) -> None:
        """On the caller's thread, not the worker's: it must not queue behind the render."""
        cancel = getattr(self.worker, "cancel", None)
        if cancel is not None and not self.killed:
            cancel(job_id, item_id)

    def kill(self) -> None:
        self.killed = True


class LocalCallPool:
    def wait(self, calls: list, timeout: float) -> list:
        done, _ = wait(calls, timeout=timeout, return_when=FIRST_COMPLETED)
        return [call for call in calls if call in done][:1]

    def result(self, call: Future, timeout: float | None = None):
        try:
            return call.result(timeout=timeout)
        except WorkerDied:
            raise
        except Exception as error:
            raise WorkerCallError(f"{type(error).__name__}: {error}") from None
