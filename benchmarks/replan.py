"""Re-planning when the last worker of a tier is gone: the time the dispatch state machine takes
to plan every orphaned queued item on the tiers left (one pass), for a big job.

    python benchmarks/replan.py [--items 20000]

A job of identical 768p/16-frame items on a 12g and a 24g worker (they plan on 24g); the 24g
worker is lost and probed gone; the printed time is that one `handle` call. Pure code, no Ray.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from farm.core import dispatch as d
from farm.core.job import JobState
from farm.core.manifest import parse_manifest
from farm.core.planner import plan_job
from farm.core.tiers import TierTable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20000)
    count = parser.parse_args().items
    table = TierTable()
    items = [{"id": f"i{n}", "image": "s3://b/a.png", "prompt": "p", "resolution": 768, "frames": 16} for n in range(count)]
    spec = parse_manifest(json.dumps({"version": 1, "model": "tiny", "items": items}), "json", base_dir=Path("/tmp"))
    state = d.DispatchState(table, [("12g-0", "12g"), ("24g-0", "24g")])
    job = JobState(spec)
    state.handle(d.JobAdmitted("j", job, plan_job(spec, state.shape, table)))
    state.handle(d.WorkerLost("24g-0", "gone"))
    started = time.perf_counter()
    state.handle(d.WorkerProbed("24g-0", ok=False))
    seconds = time.perf_counter() - started
    planned = {s.planned_tier for s in job.items.values() if s.state == "queued"}
    print(f"{count} items: {count - 1} orphans planned again on {sorted(planned)} in {seconds:.3f} s")


if __name__ == "__main__":
    main()
