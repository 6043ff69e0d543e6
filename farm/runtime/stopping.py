"""Stopping on request: SIGTERM (Kubernetes, systemd, `kill`) and Ctrl-C stop farm gracefully.

The first signal sets `StopRequest.event` and prints a "stopping" line; the run loop sees it,
sends no new work, and lets the running items finish within a grace period (what is still
running after it is handed back: never committed, so `farm resume` renders it). A second
signal stops at once (KeyboardInterrupt).

`ray.init` installs its own SIGTERM handler (exit at once, killing the cluster under the
running code), so `install()` is called again after the cluster is up.
"""

from __future__ import annotations

import signal
import sys
import threading

class StopRequest:
    """The first SIGINT/SIGTERM sets `event`; a second raises KeyboardInterrupt (stop at once)."""

    def __init__(self, what: str = "running items", grace_s: float = 30.0):
        self.grace_s = grace_s  # FARM_STOP_GRACE_S, from the caller's settings
        self.event = threading.Event()
        self.signal: int | None = None
        self.what = what

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self._handle)

    def _handle(self, number, _frame) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.signal = number
        self.event.set()
        name = signal.Signals(number).name
        print(
            f"stopping ({name}): no new work; {self.what} get up to {self.grace_s:.0f} s to finish "
            "(FARM_STOP_GRACE_S); send it again to stop at once",
            file=sys.stderr,
            flush=True,
        )

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as shells report a process ended by that signal."""
        return 128 + (self.signal or signal.SIGINT)
