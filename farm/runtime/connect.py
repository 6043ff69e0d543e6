"""Joining a Ray cluster within a bound, and saying why it failed.

Left to itself, `ray.init(address=...)` against an address where nothing answers retries for
minutes (20 attempts of up to 40 s each, printing GCS warnings), may end the process from C++,
and raises a `ConnectionError` whose text is a remote traceback. So before Ray is asked, farm
(1) resolves `auto` itself, from `RAY_ADDRESS` or the address file `ray start` writes on this
machine, never from Ray's legacy fallback of any GCS process `ps` shows (on a shared machine,
someone else's cluster); (2) waits for the GCS port to accept a TCP connection; (3) calls
`ray.init` with Ray's own connect retries and timeouts scaled to what is left of
FARM_RAY_CONNECT_TIMEOUT_S; and a guard ends the process with exit 3 should Ray still overrun.
Every failure becomes a `ClusterUnavailableError` that names the address and what to check:
the head, the port, a firewall, the Ray version, and the authentication token.

The embedded cluster gets a token of its own (`private_token_environment`): Ray 2.60 turns token
authentication on for a new local cluster and, without a token, writes one to
`~/.ray/auth_token`, after which every later `ray start` on the machine silently requires it.

Pure functions (resolution, messages, the knobs) are apart from the I/O (`wait_for_port`, `join`).
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping

from farm.core.errors import ClusterUnavailableError

DEFAULT_GCS_PORT = 6379
# Ray's own spellings of an authentication failure: the server's gRPC status, the client's
# "token auth is on but there is no token", and the message constant Ray raises with.
AUTH_MARKERS = ("InvalidAuthToken", "Unauthenticated", "authentication token", "AuthenticationError")
VERSION_MARKERS = ("Version mismatch",)
NO_LOCAL_NODE_MARKER = "No node info found"
# How long past the deadline Ray may still run before the guard ends the process.
OVERRUN_GRACE_S = 15.0
EXIT_CANNOT_RUN = 3  # farm.cli.output.EXIT_CANNOT_RUN (the runtime does not import the CLI)


# --- pure ------------------------------------------------------------------------------------


def private_token_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What to add to the environment of a process that starts an embedded cluster, so that Ray
    finds a token without writing `~/.ray/auth_token`: a fresh random `RAY_AUTH_TOKEN`, held only
    by this process and the cluster processes it starts. Nothing when the operator chose
    (`RAY_AUTH_MODE=disabled`, or a token of their own in RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH)."""
    if environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled":
        return {}
    if environ.get("RAY_AUTH_TOKEN") or environ.get("RAY_AUTH_TOKEN_PATH"):
        return {}
    return {"RAY_AUTH_TOKEN": secrets.token_hex(32)}


def default_address_file(environ: Mapping[str, str], platform: str = sys.platform) -> str:
    """Where `ray start --head` records its address on this machine (Ray's
    `get_ray_address_file(None)`: $RAY_TMPDIR, else $TMPDIR on Linux, else /tmp; then ray/)."""
    if environ.get("RAY_TMPDIR"):
        base = environ["RAY_TMPDIR"]
    elif platform.startswith("linux") and environ.get("TMPDIR"):
        base = environ["TMPDIR"]
    else:
        base = "/tmp"
    return os.path.join(base, "ray", "ray_current_cluster")


def resolve_auto(environ: Mapping[str, str], recorded: str | None, address_file: str) -> str:
    """The address `auto` stands for: RAY_ADDRESS, else the one `ray start` recorded. Raises
    ClusterUnavailableError when there is neither (Ray would connect to any GCS it finds)."""
    if environ.get("RAY_ADDRESS", "").strip() and environ["RAY_ADDRESS"].strip() != "auto":
        return environ["RAY_ADDRESS"].strip()
    if recorded and recorded.strip():
        return recorded.strip()
    raise ClusterUnavailableError(
        "--address auto: no Ray cluster was started on this machine (RAY_ADDRESS is unset and "
        f"{address_file} does not exist); start the head here first (`ray start --head`), or give "
        f"the head's address as --address HOST:PORT (port {DEFAULT_GCS_PORT} unless `ray start --port` "
        "set another)"
    )


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of `HOST:PORT`, `[IPv6]:PORT` or `ray://HOST:PORT`; ClusterUnavailableError
    naming the value otherwise."""
    text = address.strip().removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterUnavailableError(
            f"the Ray address {address!r} is not HOST:PORT; give the head's GCS address, e.g. "
            f"--address 10.0.0.5:{DEFAULT_GCS_PORT} (or `auto` on the head itself)"
        )
    return host, int(port)


def connect_knobs(remaining_s: float, environ: Mapping[str, str]) -> dict[str, str]:
    """Ray's connect settings that make `ray.init` give up within about `remaining_s`: one
    attempt (`gcs_server_port_wait_time_s`) lasts about two connect timeouts, one GCS request
    timeout and a 1 s pause. Settings the operator set are left alone."""
    budget = max(int(remaining_s), 1)
    connect_s = min(max(budget // 6, 1), 5)
    request_s = min(max(budget // 3, 2), 30)
    attempts = max(budget // (2 * connect_s + request_s + 1), 1)
    knobs = {
        "RAY_gcs_rpc_server_connect_timeout_s": str(connect_s),
        "RAY_py_gcs_connect_timeout_s": str(request_s),
        "RAY_gcs_server_port_wait_time_s": str(attempts),
    }
    return {name: value for name, value in knobs.items() if name not in environ}


def error_text(error: BaseException) -> str:
    """The text of an exception and of every exception it came from (Ray wraps the cause)."""
    parts, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        parts.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(parts)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300].rstrip(".") if lines else "unknown error"


def checklist(ray_version: str) -> str:
    return (
        f"check that a Ray head runs there (`ray start --head`; its GCS port is {DEFAULT_GCS_PORT} unless "
        "--port set another), that the address and port are right, that no firewall blocks the port, "
        f"and that this machine runs the cluster's Ray version ({ray_version} here)"
    )


def where(address: str, target: str) -> str:
    """The address as given, and as Ray dials it when it differs (Ray replaces a loopback host
    with this machine's address, unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)."""
    return address if target == address else f"{address} (Ray dials it as {target})"


def unreachable_message(address: str, target: str, problem: str, timeout_s: float, ray_version: str) -> str:
    return (
        f"cannot reach the Ray cluster at {where(address, target)}: nothing accepted a connection within "
        f"{timeout_s:g} s ({problem}); {checklist(ray_version)}. FARM_RAY_CONNECT_TIMEOUT_S sets how long to wait"
    )


def join_failure_message(address: str, target: str, text: str, ray_version: str) -> str:
    """Why `ray.init` could not join, from the text of what it raised."""
    at = where(address, target)
    if any(marker in text for marker in AUTH_MARKERS):
        return (
            f"cannot join the Ray cluster at {at}: it refused this process's authentication token (Ray's "
            "InvalidAuthToken), or token authentication is on and no token was found. The cluster uses token "
            "authentication: set RAY_AUTH_MODE=token and give the cluster's token in RAY_AUTH_TOKEN (or in a file "
            "named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token); it must be the token the head was started "
            "with (`ray get-auth-token` on the head prints it)"
        )
    if NO_LOCAL_NODE_MARKER in text:
        return (
            f"cannot join the Ray cluster at {at}: this machine runs no Ray node of that cluster (a Ray driver "
            "joins through a node on its own machine, under the same address). Run this on the head (`--address "
            "auto` there) or on a machine that ran `ray start --address ...` for that cluster"
        )
    if any(marker in text for marker in VERSION_MARKERS):
        return (
            f"cannot join the Ray cluster at {at}: it runs another Ray or Python version than this machine "
            f"({last_line(text)}); install the cluster's versions here (Ray {ray_version} here)"
        )
    return f"cannot join the Ray cluster at {at}: {last_line(text)}; {checklist(ray_version)}"


def overrun_message(address: str, target: str, timeout_s: float, ray_version: str) -> str:
    return (
        f"cannot join the Ray cluster at {where(address, target)}: its GCS port accepts connections, but Ray "
        f"could not join within {timeout_s:g} s; is it a Ray head's GCS port? {checklist(ray_version)}"
    )


# --- I/O -------------------------------------------------------------------------------------


def wait_for_port(host: str, port: int, deadline: float) -> str | None:
    """None once host:port accepts a TCP connection; else, at `deadline` (time.monotonic), what
    the last attempt said. A head that is still starting gets until then."""
    problem = "no attempt made"
    while True:
        remaining = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(min(remaining, 3.0), 0.2)):
                return None
        except OSError as error:
            problem = error.strerror or type(error).__name__
            if isinstance(error, (socket.timeout, TimeoutError)):
                problem = "timed out"
        if time.monotonic() + 0.5 >= deadline:
            return problem
        time.sleep(0.5)


def ray_target(address: str) -> str:
    """The address Ray will dial for `address` (its own canonical form); `address` itself when
    Ray's helper is not there (another Ray layout)."""
    if address.startswith("ray://"):
        return address
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:
        return address
    try:
        return canonicalize_bootstrap_address(address) or address
    except Exception:  # noqa: BLE001 - a malformed address: split_address has said why already
        return address


def join(address: str, timeout_s: float, init: Callable[[str], object]) -> None:
    """Join the cluster at `address` (`auto`, HOST:PORT, ray://...) with `init(address)` (a call
    of `ray.init`) within about `timeout_s`; raises ClusterUnavailableError otherwise."""
    import ray

    deadline = time.monotonic() + timeout_s
    given = address.strip()
    dial = given
    if given == "auto":
        address_file = default_address_file(os.environ)
        try:
            with open(address_file, encoding="utf-8") as handle:
                recorded = handle.read()
        except OSError:
            recorded = None
        dial = resolve_auto(os.environ, recorded, address_file)
    host, port = split_address(dial)
    target = ray_target(dial)
    if target != dial:
        host, port = split_address(target)
    problem = wait_for_port(host, port, deadline)
    if problem is not None:
        raise ClusterUnavailableError(unreachable_message(given, target, problem, timeout_s, ray.__version__))
    knobs = connect_knobs(deadline - time.monotonic(), os.environ)
    guard = threading.Timer(max(deadline - time.monotonic(), 0) + OVERRUN_GRACE_S, _overrun,
                            args=(overrun_message(given, target, timeout_s, ray.__version__),))
    guard.daemon = True
    with _environment(knobs), _node_lookup_bounded(deadline):
        _refresh_ray_config()
        guard.start()
        try:
            init(given)  # `auto` as given: Ray resolves it as above, and may switch token auth on for it
        except Exception as error:  # noqa: BLE001 - anything Ray raises here means "could not join"
            _shutdown_quietly()
            raise ClusterUnavailableError(
                join_failure_message(given, target, error_text(error), ray.__version__)
            ) from None
        finally:
            guard.cancel()


def _overrun(message: str) -> None:
    """Ray is past its bound inside C++ (no Python exception will come): say why and end the
    process with exit 3; nothing of farm's is running yet on the cluster."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(EXIT_CANNOT_RUN)


def _environment(values: dict[str, str]):
    """`values` in os.environ while joining, then as before (they are Ray's connect bounds for
    this process, not settings for anything it starts later)."""
    import contextlib

    @contextlib.contextmanager
    def applied():
        previous = {name: os.environ.get(name) for name in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    return applied()


def _node_lookup_bounded(deadline: float):
    """While joining, Ray's search for a node of the cluster on this machine (a driver joins
    through one; none there: "No node info found") ends at `deadline`, not after its 60 s."""
    import contextlib

    @contextlib.contextmanager
    def bounded():
        try:
            from ray._private import services
        except ImportError:
            yield
            return
        original = getattr(services, "get_node_to_connect_for_driver", None)
        if original is None:
            yield
            return

        def lookup(*args, **kwargs):
            kwargs.setdefault("timeout_seconds", max(int(deadline - time.monotonic()), 1))
            return original(*args, **kwargs)

        services.get_node_to_connect_for_driver = lookup
        try:
            yield
        finally:
            services.get_node_to_connect_for_driver = original

    return bounded()


def _refresh_ray_config() -> None:
    """Ray's C++ settings are read from the environment when `ray` is imported; read them again
    (what Ray itself does when it switches token authentication on)."""
    try:
        from ray._raylet import Config

        Config.initialize("")
    except Exception:  # noqa: BLE001 - another Ray layout: the pre-check and the guard still bound it
        pass


def _shutdown_quietly() -> None:
    import ray

    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 - half-connected state; nothing to keep
        pass
