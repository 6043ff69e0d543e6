"""`python -m farm.healthcheck`: the images' HEALTHCHECK (no curl or wget needed; standard library only).

A farm container is a Ray node: the head (with `farm serve`, whose Serve HTTP proxy answers on
:8000) or a worker node (a raylet, whose dashboard agent answers on :52365). The check asks the
Serve proxy's `/-/healthz` first; when nothing listens there (a worker node, or the head before
`farm serve` started Serve) it asks the local raylet's `/api/local_raylet_healthz` instead, which
is what KubeRay's own probes ask. A proxy that answers but not with 200 (starting, draining) is
unhealthy: the check does not fall back past a Serve that is there and failing.

Exit 0 healthy, 1 unhealthy (Docker's meaning), with one line saying what was asked and what came
back. `--serve ''` or `--raylet ''` leaves a check out; `--require-serve` fails when nothing
listens on the Serve port (for a container whose only job is the API).
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request

SERVE_URL = "http://127.0.0.1:8000/-/healthz"
RAYLET_URL = "http://127.0.0.1:52365/api/local_raylet_healthz"


class NotListening(Exception):
    """Nothing accepted the connection (refused): the component is not on this node."""


def probe(url: str, timeout_s: float) -> tuple[bool, str]:
    """(healthy, what was seen) for one GET; raises NotListening when the connection is refused."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = response.read(200).decode("utf-8", "replace").strip()
            return response.status == 200, f"{url}: {response.status} {body}".strip()
    except urllib.error.HTTPError as error:
        body = error.read(200).decode("utf-8", "replace").strip()
        return False, f"{url}: {error.code} {body}".strip()
    except urllib.error.URLError as error:
        reason = error.reason
        if isinstance(reason, ConnectionRefusedError):
            raise NotListening(url) from None
        return False, f"{url}: {reason}"
    except ConnectionRefusedError:
        raise NotListening(url) from None
    except OSError as error:  # a timeout, a reset connection
        return False, f"{url}: {type(error).__name__}: {error}"


def check(serve_url: str | None = SERVE_URL, raylet_url: str | None = RAYLET_URL, *,
          timeout_s: float = 5.0, require_serve: bool = False) -> tuple[bool, str]:
    """(healthy, one line): Serve when it listens, else the local raylet."""
    if serve_url:
        try:
            return probe(serve_url, timeout_s)
        except NotListening:
            if require_serve or not raylet_url:
                return False, f"{serve_url}: nothing listens (farm serve is not running here)"
    if raylet_url:
        try:
            return probe(raylet_url, timeout_s)
        except NotListening:
            return False, f"{raylet_url}: nothing listens (no Ray node runs in this container)"
    return False, "nothing to check (both --serve and --raylet are empty)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m farm.healthcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", default=SERVE_URL, help=f"the Serve proxy's health URL (default {SERVE_URL}; '' skips)")
    parser.add_argument("--raylet", default=RAYLET_URL, help=f"the local raylet's health URL (default {RAYLET_URL}; '' skips)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request (default 5)")
    parser.add_argument("--require-serve", action="store_true", help="unhealthy when nothing listens on the Serve URL")
    args = parser.parse_args(argv)
    healthy, line = check(args.serve or None, args.raylet or None, timeout_s=args.timeout, require_serve=args.require_serve)
    print(("healthy: " if healthy else "unhealthy: ") + line)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
