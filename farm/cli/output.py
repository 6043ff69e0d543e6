"""What the command line says: its exit codes, a manifest's errors, a job's status line, durations."""

from __future__ import annotations

import sys

from farm.core.errors import ManifestError

EXIT_OK, EXIT_FAILED_ITEMS, EXIT_INVALID, EXIT_CANNOT_RUN = 0, 1, 2, 3


def _print_manifest_error(error: ManifestError) -> None:
    print(str(error), file=sys.stderr)


def _print_status(status: dict) -> None:
    counts = status.get("counts") or {}
    done = counts.get("succeeded", 0) + counts.get("skipped", 0)
    line = f"{status['id']}  {status['name']}  {status['state']}"
    if counts:
        line += f"  {done}/{counts.get('total', 0)} done, {counts.get('failed', 0)} failed"
    if status.get("picks") is not None:  # a job with takes
        line += f", {len(status['picks'])} picked"
    print(line + f"  -> {status.get('output_prefix') or status.get('output')}")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
