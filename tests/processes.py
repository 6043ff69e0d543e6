"""The processes a test started, and what they listen on: found from the test's own pids (a
process tree), never by name or title across the machine, which on a shared machine would
include other people's Ray clusters and render workers."""

from __future__ import annotations

import time

import psutil

LOOPBACK_ADDRESSES = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


def tree(root_pid: int) -> list[psutil.Process]:
    """`root_pid` and all its descendants that are alive now."""
    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def own_processes(title_prefix: str = "", root_pid: int | None = None) -> list[psutil.Process]:
    """Descendants of this process (or of `root_pid`) whose command line starts with
    `title_prefix` (Ray sets worker titles such as `ray::RenderWorkerImpl.render`)."""
    import os

    found = []
    for process in tree(root_pid or os.getpid())[1 if root_pid is None else 0:]:
        try:
            title = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if title.startswith(title_prefix):
            found.append(process)
    return found


def listening_addresses(processes: list[psutil.Process]) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket of `processes`."""
    sockets = []
    for process in processes:
        try:
            connections = process.net_connections(kind="inet")
            name = process.name()
        except psutil.Error:
            continue
        for connection in connections:
            if connection.status == psutil.CONN_LISTEN:
                sockets.append((connection.laddr.ip, connection.laddr.port, name))
    return sockets


def alive(snapshot: list[psutil.Process]) -> list[psutil.Process]:
    """The members of an earlier snapshot that still run (same pid and start time)."""
    left = []
    for process in snapshot:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(process)
        except psutil.Error:
            pass
    return left


def wait_until_gone(snapshot: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while (left := alive(snapshot)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def end(snapshot: list[psutil.Process]) -> None:
    """Clean up after a failed test: kill what is left of a snapshot (only those processes)."""
    for process in alive(snapshot):
        try:
            process.kill()
        except psutil.Error:
            pass
