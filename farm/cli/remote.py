"""The commands that talk to a farm service (`farm serve`) over its HTTP API, through
`farm.client.FarmClient`: `submit` (optionally following the job with a progress bar), `status`,
`jobs` and `cancel`. The endpoint is --endpoint, else FARM_ENDPOINT, else http://127.0.0.1:8000.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from farm.cli.output import EXIT_FAILED_ITEMS, EXIT_OK, _print_status, _progress_info


def _client(args: argparse.Namespace):
    from farm.client import FarmClient

    return FarmClient(getattr(args, "endpoint", None), settings=args.settings.client)


def cmd_submit(args: argparse.Namespace) -> int:
    client = _client(args)
    accepted = client.submit(Path(args.manifest))
    print(accepted["id"])
    if not args.wait:
        return EXIT_OK
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    final = None
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[info]}")) as bar:
        task = bar.add_task(accepted["id"], total=None, info="")
        for _event, status in client.events(accepted["id"]):
            counts = status.get("counts") or {}
            finished = sum(counts.get(k, 0) for k in ("succeeded", "failed", "skipped", "cancelled"))
            bar.update(task, total=counts.get("total") or status.get("items"), completed=finished,
                       info=_progress_info(status))
            final = status
    if final is None:
        final = client.status(accepted["id"])
    _print_status(final, failures=True)
    return EXIT_OK if final["state"] == "succeeded" else EXIT_FAILED_ITEMS


def cmd_status(args: argparse.Namespace) -> int:
    status = _client(args).status(args.job)
    if args.json:
        print(json.dumps(status, indent=1))
    else:
        _print_status(status, failures=True)
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    page = _client(args).jobs(limit=args.limit)
    if args.json:
        print(json.dumps(page, indent=1))
        return EXIT_OK
    for status in page["jobs"]:
        _print_status(status)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    _print_status(_client(args).cancel(args.job))
    return EXIT_OK
