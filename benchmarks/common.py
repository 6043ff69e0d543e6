"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import subprocess
import time


def median_seconds(command: list[str], repeats: int) -> float:
    """Median wall time of running `command` `repeats` times (output discarded)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)
