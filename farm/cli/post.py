"""`farm post OUTPUT_URI/JOB --deliverable NAME...`: add deliverables to a job that rendered.

The same CPU stage as a running job's (`farm.post.item.post_item`), here on threads of this
process (each deliverable is an ffmpeg process of its own): for every committed item it makes
the deliverables its sidecar lacks, from the committed MP4, never rendering anything. The
deliverables join the job's `spec.json` (a later `farm resume` keeps them) and the outcome is
added to `job.json`'s `post` section (compare-and-swap). A job whose `deliverables_for` is
`picked` gets them only for its picked takes (`farm pick`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import replace

from farm.cli.output import EXIT_FAILED_ITEMS, EXIT_INVALID, EXIT_OK
from farm.core.deliverables import Deliverable, DeliverableError, parse_entries


def parse_deliverable_flags(values: list[str] | None) -> tuple[Deliverable, ...] | None:
    """`--deliverable vertical --deliverable '{"name": "reel", "preset": "vertical", "fps": 30}'`."""
    if not values:
        return None
    entries = []
    for value in values:
        text = value.strip()
        if text.startswith("{"):
            try:
                entries.append(json.loads(text))
            except ValueError as exc:
                raise DeliverableError(f"not a JSON object: {exc}", "--deliverable", value) from None
        else:
            entries.extend(part for part in text.replace(",", " ").split() if part)
    try:
        return parse_entries(entries)
    except DeliverableError as exc:
        raise DeliverableError(str(exc), "--deliverable" + exc.field.removeprefix("deliverables"), exc.value) from None


def _merge(existing: tuple[Deliverable, ...], added: tuple[Deliverable, ...]) -> tuple[Deliverable, ...]:
    """The item's deliverables with `added` (a name given again takes the new spec)."""
    names = {d.name for d in added}
    return tuple(d for d in existing if d.name not in names) + added


def cmd_post(args: argparse.Namespace) -> int:
    from farm.cli.local import load_job
    from farm.core.deliverables import missing_encoders
    from farm.media.deliverables import encoders_if_known
    from farm.post.item import PostTask
    from farm.post.stage import ThreadPostRunner
    from farm.storage.base import job_record_key, job_spec_key

    try:
        added = parse_deliverable_flags(args.deliverable)
    except DeliverableError as exc:
        print(f"error: {exc.field}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    encoders = encoders_if_known()
    problems = missing_encoders(added, encoders) if encoders is not None else []
    if problems:
        for problem in problems:
            print(f"error: --deliverable {problem.value}: {problem}", file=sys.stderr)
        return EXIT_INVALID
    found = load_job(args.job)
    if isinstance(found, int):
        return found
    store, output, name, spec = found
    record = json.loads(store.get_bytes(job_record_key(name)) or b"{}")
    picks = record.get("picks") or {}
    items = [replace(item, deliverables=_merge(item.deliverables, added)) for item in spec.items]
    spec = replace(spec, items=items)
    chosen = [item for item in items
              if spec.deliverables_for != "picked" or item.take is None or picks.get(item.take_of) == item.id]
    settings = args.settings
    runner = ThreadPostRunner(settings.post.concurrency)
    names = {d.name for d in added}
    tasks = [PostTask(None, name, output, item.id, tuple(d for d in item.deliverables if d.name in names),
                      settings.post.ffmpeg_threads) for item in chosen]
    print(f"making {', '.join(sorted(names))} for {len(tasks)} items of job {name!r} "
          f"({settings.post.concurrency} at a time)")
    outcomes: Counter[str] = Counter()
    failures = []
    try:
        for task, future in [(task, runner(task)) for task in tasks]:
            for result in future.result().results:
                if result.reason == "not_rendered":
                    outcomes["not rendered"] += 1
                    continue
                outcomes[result.outcome] += 1
                if result.outcome == "failed":
                    failures.append({"item": task.item_id, "deliverable": result.name, "reason": result.reason,
                                     "message": result.message})
    finally:
        runner.close()
    store.put_bytes(job_spec_key(name), json.dumps(spec.to_dict(), indent=1).encode(), "application/json")
    _add_to_record(store, name, outcomes, failures)
    print(", ".join(f"{count} {what}" for what, count in sorted(outcomes.items())) or "nothing to do")
    for failure in failures[:20]:
        print(f"  {failure['item']} {failure['deliverable']}: {failure['reason']}: {failure['message']}")
    return EXIT_FAILED_ITEMS if failures else EXIT_OK


def _add_to_record(store, name: str, outcomes: Counter, failures: list[dict]) -> None:
    """Add this run's outcome to job.json's `post` (compare-and-swap: a pick may write it too)."""
    from farm.storage.base import job_record_key
    from farm.storage.picks import update_record

    def add(record: dict) -> bool:
        post = record.setdefault("post", {"queued": 0, "running": 0, "made": 0, "skipped": 0, "failed": 0,
                                          "superseded": 0, "seconds": 0.0, "failures": []})
        for outcome in ("made", "skipped", "failed", "superseded"):
            post[outcome] = post.get(outcome, 0) + outcomes.get(outcome, 0)
        post["failures"] = [*post.get("failures", []), *failures][-20:]
        return True

    if store.head(job_record_key(name)) is not None:  # a job without a record keeps none
        update_record(store, name, add, "the deliverables' outcome")
