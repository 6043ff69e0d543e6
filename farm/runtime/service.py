"""`farm serve`: start (or join) a Ray cluster, the job coordinator and the Serve HTTP app,
then wait for a stop request and drain.

Settings travel as arguments: the coordinator actor and the API replica get the caller's
`FarmSettings` (with `--model`/`--output` applied), nothing is passed through the environment.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

from farm.settings import FarmSettings


class ServiceStartError(Exception):
    """The coordinator did not start (the model could not load, storage is unusable, ...)."""


@dataclass
class ServeOptions:
    """Where `farm serve` listens and which cluster it uses."""

    address: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    start_timeout_s: float = 600.0


def serve_until_stopped(settings: FarmSettings, options: ServeOptions) -> None:
    """Run the service until SIGTERM/Ctrl-C. Raises ServiceStartError when it cannot start."""
    from farm.runtime.cluster import prepare_local_environment

    embedded = not (options.address or os.environ.get("RAY_ADDRESS"))
    if embedded:
        prepare_local_environment()  # before `ray` is first imported: Ray reads it at import
    import ray
    from ray import serve

    from farm.core.tiers import load_tier_table
    from farm.runtime.cluster import RayCluster, embedded_cpus, local_gpu_resources
    from farm.runtime.coordinator import coordinator_handle
    from farm.runtime.stopping import StopRequest
    from farm.serve.app import build_app

    grace_s = settings.engine.stop_grace_s
    stop = StopRequest("running renders", grace_s)
    stop.install()
    local = local_gpu_resources(load_tier_table(settings.tiers_file), settings.workers) if embedded else {}
    if embedded:
        local["num_cpus"] = embedded_cpus(settings, int(local.get("num_gpus", 0)))
    with RayCluster(options.address, connect_timeout_s=settings.ray_connect_timeout_s, **local):
        stop.install()  # again: ray.init replaced the SIGTERM handler
        print(f"starting the job coordinator and render workers (model {settings.model_ref!r})...", flush=True)
        coordinator = coordinator_handle(settings)
        try:
            wait_until_ready(coordinator, options.start_timeout_s)
        except Exception as error:  # the workers could not load the model, or storage is unusable
            ray.kill(coordinator)
            raise ServiceStartError(f"the coordinator did not start: {remote_cause(error)}") from None
        # One HTTP proxy, on the head (where Serve's controller runs, and where `farm serve --address
        # auto` is run): the published port is the head's, and no GPU node binds one. Serve's
        # default starts a proxy on every node with a replica, on the same port.
        try:
            serve.start(proxy_location="HeadOnly", http_options={"host": options.host, "port": options.port})
            serve.run(build_app({"settings": settings}), name="farm", route_prefix="/", blocking=False)
            wait_for_proxy(options, PROXY_START_TIMEOUT_S)
        except Exception as error:  # the proxy could not bind (Serve raises the proxy actor's error)
            _stop_serve(embedded)
            if isinstance(error, ServiceStartError):
                raise
            raise ServiceStartError(f"the HTTP API did not start on {options.host}:{options.port}: "
                                    f"{remote_cause(error).rstrip('.')}; {proxy_checklist(options)}") from None
        print(f"farm serves on http://{options.host}:{options.port} (docs: /docs, health: /healthz); "
              "Ctrl-C stops it", flush=True)
        at_once = False
        try:
            while not stop.event.wait(1.0):
                pass
        except KeyboardInterrupt:  # a second signal: no grace period
            at_once = True
        print("stopping: the API no longer takes requests", file=sys.stderr, flush=True)
        if not embedded:
            serve.delete("farm")  # leave a joined cluster as we found it (the coordinator stays)
            return
        serve.shutdown()
        if not at_once:  # the coordinator goes with the embedded cluster: let running items finish
            try:
                drained = ray.get(coordinator.drain.remote(grace_s), timeout=grace_s + 30)
                print(f"stopped: {drained['handed_back']} running item(s) handed back; unfinished jobs resume "
                      "at the next start", file=sys.stderr, flush=True)
            except Exception as error:
                print(f"warning: the coordinator did not stop cleanly: {remote_cause(error)}", file=sys.stderr)


PROXY_START_TIMEOUT_S = 60.0


def wait_for_proxy(options: ServeOptions, timeout_s: float) -> None:
    """Return once Serve's HTTP proxy is healthy; ServiceStartError when it is not within
    `timeout_s` (the port is taken, or the host is not an address of the head)."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    states: dict = {}
    while time.monotonic() < deadline:
        try:
            states = {node[:8]: str(getattr(state, "value", state)) for node, state in serve.status().proxies.items()}
        except Exception:  # noqa: BLE001 - the controller is still starting
            states = {}
        if "HEALTHY" in states.values():
            return
        time.sleep(0.5)
    raise ServiceStartError(
        f"the HTTP API did not come up on {options.host}:{options.port} within {timeout_s:.0f} s (Serve's proxy: "
        f"{states or 'not started'}); {proxy_checklist(options)}"
    )


def proxy_checklist(options: ServeOptions) -> str:
    return (f"check that no other process listens on port {options.port} (--port picks another) and that "
            f"{options.host} is an address of the Ray head, where the API's HTTP proxy runs")


def _stop_serve(embedded: bool) -> None:
    """Take down what a failed start left: the whole of Serve in an embedded cluster; only the
    farm app in a joined one (its coordinator stays, for the next `farm serve` to adopt)."""
    from ray import serve

    try:
        if embedded:
            serve.shutdown()
        else:
            serve.delete("farm")
    except Exception:  # noqa: BLE001 - Serve did not get far enough to have anything to stop
        pass


def wait_until_ready(coordinator, timeout_s: float) -> dict:
    """The coordinator's health once a render worker has joined (its workers load in the
    background); raises when every worker it started failed, or at the timeout. A farm that
    waits for the autoscaler's first GPU node is ready with none."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        health = ray.get(coordinator.health.remote(), timeout=max(deadline - time.monotonic(), 1.0))
        if health["workers"] or not health["starting"]:
            if not health["workers"] and health["start_errors"]:
                raise RuntimeError(f"no render worker could start: {health['start_errors'][-1]}")
            return health
        if time.monotonic() > deadline:
            raise TimeoutError(f"no render worker was ready within {timeout_s:.0f} s")
        time.sleep(0.5)


def serve_deployment(settings: FarmSettings | None = None):
    """The Serve deployment of the HTTP API, its app built with `settings` (read from the
    environment of the process that builds it when none are given: a RayService's controller)."""
    from ray import serve

    from farm.serve.app import create_app
    from farm.settings import load_settings

    settings = settings or load_settings()
    api = settings.api
    # Serve's default (5 ongoing requests per replica) let six open event streams hold every
    # slot, so /healthz and status requests queued behind them. Streams are cheap coroutines
    # (farm.serve.events) with their own bound; leave room for ordinary requests beside them.
    ongoing = api.max_streams + 256

    # On the head, next to the coordinator and Serve's only proxy (proxy_location HeadOnly): a
    # 0-CPU replica could otherwise land on a GPU node, and keep that node from scaling in.
    @serve.deployment(
        name="farm-api", num_replicas=1, max_ongoing_requests=ongoing,
        ray_actor_options={"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}},
    )
    @serve.ingress(create_app(CoordinatorClient(settings=settings), settings=api))
    class FarmAPI:
        """The Serve replica: nothing but the FastAPI app (job state lives in the coordinator)."""

        def __init__(self):
            from farm.runtime.cluster import bind_serve_replica_to_loopback

            bind_serve_replica_to_loopback()

    return FarmAPI


class CoordinatorUnavailable(Exception):
    """The coordinator is restarting or did not answer in time (the API answers 503)."""


class CoordinatorFailure(Exception):
    """The coordinator raised something that is not a farm error (a bug: logged, answered 500)."""


class CoordinatorClient:
    """Every call from the API to the coordinator actor goes through here (one place to fake in
    tests). What the coordinator raises comes back as the farm's own error, never as Ray's
    wrapper (whose text holds the remote traceback, pids and the node's address)."""

    def __init__(self, handle=None, timeout_s: float | None = None, settings: FarmSettings | None = None):
        self._handle = handle
        self.settings = settings  # for a coordinator this client creates (none running yet)
        self.timeout_s = timeout_s if timeout_s is not None else (settings.api.call_timeout_s if settings else 30.0)

    @property
    def handle(self):
        if self._handle is None:
            from farm.runtime.coordinator import coordinator_handle

            self._handle = coordinator_handle(self.settings)
        return self._handle

    async def call(self, method: str, *args, **kwargs):
        import asyncio

        from ray.exceptions import RayActorError, RayTaskError

        from farm.core.errors import FarmError

        try:
            return await asyncio.wait_for(getattr(self.handle, method).remote(*args, **kwargs), self.timeout_s)
        except RayActorError:
            self._handle = None  # it is restarting; look it up again next time
            raise CoordinatorUnavailable("the job coordinator is restarting; retry in a few seconds") from None
        except asyncio.TimeoutError:
            raise CoordinatorUnavailable(f"the job coordinator did not answer within {self.timeout_s:.0f} s; retry") from None
        except RayTaskError as error:
            cause = error.cause if isinstance(getattr(error, "cause", None), BaseException) else None
            if isinstance(cause, FarmError):
                raise cause from None
            raise CoordinatorFailure(f"coordinator.{method}: {type(cause or error).__name__}: {cause or error}") from None


def remote_cause(error: BaseException) -> str:
    """The last line of what went wrong, without Ray's remote traceback."""
    cause = getattr(error, "cause", None) or error
    lines = str(cause).strip().splitlines()
    return lines[-1] if lines else type(cause).__name__
