"""Benchmark: the same renders through Ray Data (`map_batches` with an actor pool), the tool a
Ray user would reach for, against `farm run` with the same number of workers.

The Ray Data version runs in a fresh process: Ray started on 127.0.0.1 as farm starts it
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, no usage stats, no dashboard), `ray.data.from_items(items)`
mapped by a callable class that loads the diffusers pipeline once in `__init__` and renders and
writes one MP4 per call (`batch_size=1`, `ActorPoolStrategy(size=workers)`, one CPU per actor and
torch threads = CPUs, as farm's CPU workers), then `ray.shutdown()`. `farm run --workers N` renders
the same items (same image, prompt, seed, size, frames, steps). Runs alternate between the two;
prints the median wall time and the steady-state rate (first to last finished item) of each and
farm / Ray Data. Goal: farm at least as fast.

    python benchmarks/ray_data.py [--items 10] [--workers 1] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from common import (
    add_render_flags,
    alternate_runs,
    apply_thread_flag,
    bench_inputs,
    compare,
    machine_line,
    parse_settings,
    run_child,
    run_farm,
    same_videos,
    settings_from,
    steady_rate,
    tiny_model_folder,
)


class RenderVideos:
    """Ray Data callable class: one pipeline per actor, one MP4 per row."""

    def __init__(self, output: str, settings_json: str):
        from common import BarePipeline

        self.output = Path(output)
        self.settings = parse_settings(settings_json)
        self.pipe = BarePipeline(tiny_model_folder())

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        done = []
        for item_id, image, prompt, seed in zip(batch["id"], batch["image"], batch["prompt"], batch["seed"]):
            self.pipe.render(str(image), str(prompt), int(seed), self.settings, self.output / f"{item_id}.mp4")
            done.append(time.time())
        return {"id": np.asarray(batch["id"]), "done": np.asarray(done)}


def ray_data_child(items_file: str, output: str, settings_json: str, workers: str) -> None:
    """Start Ray like farm does, run the Ray Data pipeline, shut down; prints one JSON line."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    items = json.loads(Path(items_file).read_text())
    Path(output).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    ray_start = time.perf_counter() - started
    try:
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        rows = (
            ray.data.from_items(items)
            .map_batches(
                RenderVideos,
                fn_constructor_args=(output, settings_json),
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=int(workers)),
                num_cpus=1,
            )
            .take_all()
        )
    finally:
        ray.shutdown()
    print(json.dumps({"ray_start_s": ray_start, "done": sorted(float(r["done"]) for r in rows), "rows": len(rows)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_render_flags(parser, items=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=4, metavar=("ITEMS", "OUTPUT", "SETTINGS", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        ray_data_child(*args.child)
        return
    apply_thread_flag(args)
    settings = settings_from(args)
    work, items, manifest = bench_inputs("raydata", args.items, settings)

    # A row: (wall, steady rate, launch to first item).
    def farm_side() -> tuple:
        farm = run_farm(manifest, work / "farm-out", workers=args.workers)
        return farm.wall_s, steady_rate(farm.commits), farm.commits[0] - farm.started

    def ray_data_side() -> tuple:
        arguments = ["--child", str(work / "items.json"), str(work / "ray-data-out"), json.dumps(asdict(settings)), str(args.workers)]
        child = run_child("ray_data.py", arguments)
        if child["rows"] != args.items:
            raise RuntimeError(f"Ray Data returned {child['rows']} rows for {args.items} items")
        return child["ended"] - child["started"], steady_rate(child["done"]), child["done"][0] - child["started"]

    rows = alternate_runs(args.repeats, args.quiet_wait, {"farm": farm_side, "ray_data": ray_data_side})
    identical = same_videos(work / "farm-out" / "bench", work / "ray-data-out", [i["id"] for i in items])

    med, end_to_end, steady = compare(rows, "farm", "ray_data")
    farm, data, n = med["farm"], med["ray_data"], args.items
    print(f"{n} items, {settings.resolution}x{settings.resolution}, {settings.frames} frames, {settings.steps} steps, "
          f"{args.workers} worker(s); medians of {args.repeats} runs (farm/Ray Data: median of per-run ratios)")
    print(f"{'':30} {'farm run':>9} {'Ray Data':>9} {'farm/Ray Data':>14}")
    print(f"{'end to end, items/min':30} {n / farm[0] * 60:9.2f} {n / data[0] * 60:9.2f} {end_to_end:13.3f}x")
    print(f"{'steady state, items/min':30} {farm[1] * 60:9.2f} {data[1] * 60:9.2f} {steady:13.3f}x")
    print(f"{'  wall time, s':30} {farm[0]:9.1f} {data[0]:9.1f}")
    print(f"{'  launch to first item done, s':30} {farm[2]:9.1f} {data[2]:9.1f}")
    print(f"byte-identical MP4s, farm vs Ray Data: {identical}/{n}")
    print(machine_line())


if __name__ == "__main__":
    main()
