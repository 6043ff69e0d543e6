"""The commands that talk to a farm service (`farm serve`) over its HTTP API, through
`farm.client.FarmClient`: `submit` (optionally following the job with a progress bar), `status`,
`jobs`, `cancel` (a job, or one item of it) and `pick` (which also works on a job's output folder or s3:// prefix, without a
service: `farm.cli.local.pick_in_output`). The endpoint is --endpoint, else FARM_ENDPOINT, else
http://127.0.0.1:8000.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
    """`farm cancel JOB [ITEM]`: the job (queued items at once, rendering ones stopped at their
    next denoise step), or one item of it; committed results stay."""
    client = _client(args)
    if args.item is None:
        _print_status(client.cancel(args.job))
        return EXIT_OK
    answer = client.cancel_item(args.job, args.item)
    print(f"{answer['item_id']}  {answer['state']}")
    _print_status(answer["job"])
    return EXIT_OK


JOB_ID = re.compile(r"j-[0-9a-f]{12}")


def cmd_pick(args: argparse.Namespace) -> int:
    """`farm pick JOB ITEM [TAKE]`: JOB a service's job id, or a job's output (OUTPUT/JOB, a
    folder holding job.json, or s3://...). TAKE: K from 1 or the take's id; without it, ITEM
    names the take itself (ITEM.take-K)."""
    take = args.take if args.take is not None else args.item
    if not JOB_ID.fullmatch(args.job) or os.path.exists(args.job):
        from farm.cli.local import pick_in_output

        return pick_in_output(args.job, args.item, take)
    listing = _client(args).pick(args.job, args.item, int(take) if take.isdigit() else take)
    _print_takes(listing)
    return EXIT_OK


def _print_takes(listing: dict) -> None:
    for take in listing["takes"]:
        mark = "  <- picked" if take["picked"] else ""
        print(f"{take['id']}  take {take['take']}  seed {take['seed']}  {take['state']}{mark}")
