"""What the command line says: its exit codes, a manifest's errors, a job's status line (with its
deliverables, when the job has any), durations."""

from __future__ import annotations

import sys

from farm.core.errors import ManifestError

EXIT_OK, EXIT_FAILED_ITEMS, EXIT_INVALID, EXIT_CANNOT_RUN = 0, 1, 2, 3
MESSAGE_CHARS = 300  # a deliverable failure's message at most, on one line (ffmpeg's can be long)


def _print_manifest_error(error: ManifestError) -> None:
    print(str(error), file=sys.stderr)


def _post_summary(post: dict) -> str:
    """A job's deliverables (its `post`) in a few words: `deliverables: 12 made, 0 failed, 3
    queued`, then what is running, skipped (committed before) and superseded when there is any."""
    parts = [f"{post.get('made', 0)} made", f"{post.get('failed', 0)} failed", f"{post.get('queued', 0)} queued"]
    parts += [f"{post[key]} {key}" for key in ("running", "skipped", "superseded") if post.get(key)]
    return "deliverables: " + ", ".join(parts)


def _post_failure_lines(post: dict) -> list[str]:
    """The job's deliverable failures, one line each: item, deliverable, reason and message. The
    record keeps the last ones only (`post.failures`); the header says so when there were more."""
    failures = post.get("failures") or []
    if not failures:
        return []
    failed = post.get("failed") or len(failures)
    header = "deliverables that failed"
    header += f" (the last {len(failures)} of {failed}):" if failed > len(failures) else ":"
    lines = [header]
    for failure in failures:
        message = " ".join(str(failure.get("message") or "-").split())
        if len(message) > MESSAGE_CHARS:
            message = message[: MESSAGE_CHARS - 3] + "..."
        lines.append(f"  {failure.get('item', '-')}  {failure.get('deliverable', '-')}  "
                     f"{failure.get('reason') or '-'}: {message}")
    return lines


def _status_line(status: dict) -> str:
    counts = status.get("counts") or {}
    done = counts.get("succeeded", 0) + counts.get("skipped", 0)
    line = f"{status['id']}  {status['name']}  {status['state']}"
    if counts:
        line += f"  {done}/{counts.get('total', 0)} done, {counts.get('failed', 0)} failed"
        if counts.get("cancelled"):
            line += f", {counts['cancelled']} cancelled"
    if status.get("picks") is not None:  # a job with takes
        line += f", {len(status['picks'])} picked"
    if status.get("post"):
        line += "  " + _post_summary(status["post"])
    return line + f"  -> {status.get('output_prefix') or status.get('output')}"


def _print_status(status: dict, *, failures: bool = False) -> None:
    """The job's status line; with `failures`, its deliverable failures below it."""
    print(_status_line(status))
    if failures and status.get("post"):
        for line in _post_failure_lines(status["post"]):
            print(line)


def _progress_info(status: dict) -> str:
    """What the progress bar of `farm submit --wait` says beside the bar."""
    counts = status.get("counts") or {}
    eta = status.get("eta_seconds")
    info = f"{counts.get('failed', 0)} failed · {status.get('items_per_minute') or 0:.1f}/min"
    info += f" · ETA {int(eta)}s" if eta else ""
    post = status.get("post")
    if post:
        waiting = post.get("queued", 0) + post.get("running", 0)
        info += f" · deliverables {post.get('made', 0)} made, {post.get('failed', 0)} failed, {waiting} to make"
    return info


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
