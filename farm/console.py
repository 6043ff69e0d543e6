"""Terminal output of a run: a live progress bar (or one line per item when not a terminal),
and the end-of-job summary table."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from farm.core.job import CANCELLED, FAILED, SKIPPED, SUCCEEDED, ItemOutcome, JobState


def _format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class ConsoleReporter:
    """Progress: done/failed/total, rate and ETA; live bar on a terminal, plain lines otherwise."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self.progress: Progress | None = None
        self.task_id = None

    def started(self, state: JobState, workers: list[dict]) -> None:
        devices = ", ".join(f"{w['name']} ({w.get('device')})" for w in workers)
        self.console.print(f"[bold]{state.spec.name}[/]: {len(state.items)} items on {len(workers)} worker(s): {devices}",
                           soft_wrap=True)
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self.progress.start()
            self.task_id = self.progress.add_task(state.spec.name, total=len(state.items), stats="")
            self._update(state)

    def _stats(self, state: JobState) -> str:
        counts = state.counts()
        rate, eta = state.throughput(counts)
        rate_text = f"{rate:.1f}/min" if rate is not None else "-/min"
        cancelled = f", {counts[CANCELLED]} cancelled" if counts[CANCELLED] else ""
        return (
            f"{counts[SUCCEEDED] + counts[SKIPPED]} done, {counts[FAILED]} failed{cancelled}, {counts['total']} total · "
            f"{rate_text} · ETA {_format_eta(eta)}"
        )

    def _update(self, state: JobState) -> None:
        counts = state.counts()
        finished = counts[SUCCEEDED] + counts[FAILED] + counts[SKIPPED] + counts[CANCELLED]
        self.progress.update(self.task_id, completed=finished, stats=self._stats(state))

    def item_finished(self, state: JobState, item_id: str, outcome: ItemOutcome) -> None:
        if self.progress is not None:
            self._update(state)
            if outcome.status == FAILED:
                self.progress.console.print(f"[red]failed[/] {item_id}: {outcome.reason}: {outcome.message}", soft_wrap=True)
            return
        if outcome.status == SUCCEEDED:
            status = "ok"
        elif outcome.status == CANCELLED:
            status = f"cancelled ({outcome.message})"
        else:
            status = f"FAILED ({outcome.reason}: {outcome.message})"
        # soft_wrap: a line per item, never cut in the middle of a path (logs are not 80 columns wide)
        self.console.print(f"{item_id}: {status} in {outcome.seconds:.1f}s  [{self._stats(state)}]", highlight=False,
                           soft_wrap=True, markup=False)

    def finished(self, state: JobState) -> None:
        if self.progress is not None:
            self._update(state)
            self.progress.stop()


def print_summary(state: JobState, results_location: str, record_location: str, console: Console | None = None) -> None:
    console = console or Console()
    counts = state.counts()
    record = state.to_record()
    table = Table(title=f"job {state.spec.name}: {record['state']}", show_header=True)
    for column in ("total", "succeeded", "failed", "skipped", "degraded", "elapsed", "rate"):
        table.add_column(column, justify="right")
    rate = record["items_per_minute"]
    table.add_row(
        str(counts["total"]),
        str(counts[SUCCEEDED]),
        str(counts[FAILED]),
        str(counts[SKIPPED]),
        str(counts["degraded"]),
        f"{record['elapsed_seconds']:.1f}s",
        f"{rate:.1f}/min" if rate else "-",
    )
    console.print(table)
    failures = state.failures()
    if failures:
        failed = Table(title="failed items", show_header=True)
        failed.add_column("item")
        failed.add_column("reason")
        failed.add_column("what happened", overflow="fold")
        for item_id, status in failures:
            failed.add_row(item_id, status.reason or "-", status.message or "-")
        console.print(failed)
    post = record.get("post")  # the job has deliverables
    if post and post.get("failures"):
        kept, failed_count = len(post["failures"]), post.get("failed", 0)
        title = "failed deliverables" + (f" (the last {kept} of {failed_count})" if failed_count > kept else "")
        table = Table(title=title, show_header=True)
        for column in ("item", "deliverable", "reason"):
            table.add_column(column)
        table.add_column("what happened", overflow="fold")
        for failure in post["failures"]:
            # Text, not markup: ffmpeg's messages hold brackets ("[libx264 @ 0x...]")
            table.add_row(*(Text(str(failure.get(key) or "-")) for key in ("item", "deliverable", "reason", "message")))
        console.print(table)
    console.print(
        f"rendered {counts[SUCCEEDED]} new, {counts[SKIPPED]} already committed, {counts[FAILED]} failed",
        highlight=False,
    )
    if post:
        from farm.cli.output import _post_summary

        console.print(_post_summary(post), highlight=False)
    console.print(f"results: {results_location}   job record: {record_location}", highlight=False, soft_wrap=True)
