"""Ends the processes of an embedded Ray cluster when the farm process that started it is gone,
however it ended (a clean exit, SIGTERM, SIGKILL, the OOM killer).

Ray's GCS and raylet notice a dead driver, but its dashboard and runtime-env agents can outlive
it for a minute or more, still listening on their ports. So right after starting the embedded
cluster, farm starts this guard as a separate process (its own session, so a Ctrl-C to the
terminal's process group does not end it first) with a pipe from the farm process on stdin.
The guard records the process tree under the cluster's root processes (the ones `ray.init`
started) every `INTERVAL_S`. When the pipe closes, which the kernel does when the farm process
exits for any reason, it sends SIGTERM to every recorded process that still exists (same pid
and start time, so a recycled pid is never touched), waits `GRACE_S`, and SIGKILLs the rest.
It touches nothing else: no process it did not see descend from those roots.

Usage (internal): `python -m farm.runtime.reaper ROOT_PID [ROOT_PID ...]`, stdin a pipe.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys

INTERVAL_S = 1.0
GRACE_S = 3.0


def start_reaper(root_pids: list[int]) -> subprocess.Popen | None:
    """Start the guard for the processes under `root_pids`; keep the returned handle alive
    (its stdin is the pipe whose closing means 'the farm process is gone')."""
    if not root_pids:
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "farm.runtime.reaper", *map(str, root_pids)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def stop_reaper(reaper: subprocess.Popen | None, timeout_s: float = GRACE_S + 5) -> None:
    """The cluster was shut down: let the guard end whatever survived, and wait for it."""
    if reaper is None:
        return
    try:
        reaper.stdin.close()
        reaper.wait(timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _snapshot(roots: list[int], seen: dict[int, float]) -> None:
    import psutil

    for root in roots:
        try:
            process = psutil.Process(root)
            family = [process, *process.children(recursive=True)]
        except psutil.Error:
            continue
        for member in family:
            try:
                seen.setdefault(member.pid, member.create_time())
            except psutil.Error:
                pass


def _still_ours(seen: dict[int, float]) -> list:
    import psutil

    alive = []
    for pid, started in seen.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.Error:
            pass
    return alive


def reap(seen: dict[int, float], grace_s: float = GRACE_S) -> int:
    """SIGTERM every recorded process still alive, SIGKILL those left after `grace_s`."""
    import psutil

    alive = _still_ours(seen)
    for process in alive:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _gone, left = psutil.wait_procs(alive, timeout=grace_s)
    for process in left:
        try:
            process.kill()
        except psutil.Error:
            pass
    return len(alive)


def main(argv: list[str]) -> int:
    roots = [int(pid) for pid in argv]
    seen: dict[int, float] = {}
    me = os.getpid()
    while True:
        _snapshot(roots, seen)
        seen.pop(me, None)
        ready, _, _ = select.select([sys.stdin], [], [], INTERVAL_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # EOF: the farm process closed the pipe or died
    reap(seen)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
