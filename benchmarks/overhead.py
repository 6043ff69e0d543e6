"""Benchmark: farm's overhead on one worker, against a bare diffusers loop doing the same renders.

`farm run` (the real CLI in a fresh process: embedded Ray on 127.0.0.1, one render actor, the
tiny model, local output with the exactly-once commit) renders N items; a bare loop in a fresh
process (`I2VGenXLPipeline.from_pretrained` once, then per item: crop, render, encode the MP4
with the same encoder) renders the very same items (same image, prompt, seed, size, frames,
steps; same torch thread count; same CPU niceness as Ray's workers). Runs alternate between the
two. Prints the median throughput of each and farm / bare end to end (process start, Ray, model
load and exit included) and in steady state (first to last finished item: farm's sidecar
commits, the loop's MP4 writes), where the time goes, and whether both wrote identical videos.
The goal: farm >= 0.95x the bare loop's throughput on one worker.

    python benchmarks/overhead.py [--items 10] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from common import (
    BarePipeline,
    add_render_flags,
    alternate_runs,
    apply_thread_flag,
    bench_inputs,
    compare,
    machine_line,
    match_ray_priority,
    parse_settings,
    phases,
    run_child,
    run_farm,
    same_videos,
    settings_from,
    steady_rate,
    tiny_model_folder,
)


def bare_child(items_file: str, output: str, settings_json: str) -> None:
    """The bare loop, run in its own process; prints its timings as one JSON line."""
    match_ray_priority()
    settings = parse_settings(settings_json)
    items = json.loads(Path(items_file).read_text())
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    pipe = BarePipeline(tiny_model_folder())
    done = []
    for item in items:
        pipe.render(item["image"], item["prompt"], item["seed"], settings, folder / f"{item['id']}.mp4")
        done.append(time.time())
    print(json.dumps({"load_s": pipe.load_s, "done": done}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_render_flags(parser, items=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bare-child", nargs=3, metavar=("ITEMS", "OUTPUT", "SETTINGS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_child:
        bare_child(*args.bare_child)
        return
    apply_thread_flag(args)
    settings = settings_from(args)
    work, items, manifest = bench_inputs("overhead", args.items, settings)

    shares: list[dict[str, float]] = []  # farm's CPUs in use by process group, first to last commit

    # A row: (wall, steady rate, launch to first item, first to last, last to exit, model load).
    def farm_side() -> tuple:
        farm = run_farm(manifest, work / "farm-out", workers=1, cpu_profile=True)
        if farm.cpu:
            shares.append({k: v / (farm.commits[-2] - farm.commits[0]) for k, v in farm.cpu.items()})
        return row(farm.started, farm.commits, farm.ended, farm.load_s)

    def bare_side() -> tuple:
        arguments = ["--bare-child", str(work / "items.json"), str(work / "bare-out"), json.dumps(asdict(settings))]
        child = run_child("overhead.py", arguments, nice=args.bare_nice)
        return row(child["started"], child["done"], child["ended"], child["load_s"])

    def row(started: float, done: list[float], ended: float, load: float) -> tuple:
        return (ended - started, steady_rate(done), *phases(started, done, ended), load)

    rows = alternate_runs(args.repeats, args.quiet_wait, {"farm": farm_side, "bare": bare_side})
    identical = same_videos(work / "farm-out" / "bench", work / "bare-out", [item["id"] for item in items])

    med, end_to_end, steady = compare(rows, "farm", "bare")
    farm, bare, n = med["farm"], med["bare"], args.items
    print(f"{n} items, {settings.resolution}x{settings.resolution}, {settings.frames} frames, {settings.steps} steps, "
          f"1 worker, torch threads {os.environ.get('FARM_CPU_THREADS') or os.cpu_count()}; medians of {args.repeats} runs (farm/bare: median of per-run ratios)")
    print(f"{'':36} {'farm run':>9} {'bare loop':>10} {'farm/bare':>10}")
    print(f"{'end to end, items/min':36} {n / farm[0] * 60:9.2f} {n / bare[0] * 60:10.2f} {end_to_end:9.3f}x")
    print(f"{'steady state, items/min':36} {farm[1] * 60:9.2f} {bare[1] * 60:10.2f} {steady:9.3f}x")
    print(f"{'  launch to first item done, s':36} {farm[2]:9.1f} {bare[2]:10.1f}")
    print(f"{'  first to last item done, s':36} {farm[3]:9.1f} {bare[3]:10.1f}")
    print(f"{'  last item done to exit, s':36} {farm[4]:9.1f} {bare[4]:10.1f}")
    print(f"{'  model load (inside the above), s':36} {farm[5]:9.1f} {bare[5]:10.1f}")
    if shares:
        groups = ("render worker", "Ray processes", "farm driver")
        used = {g: statistics.median(s.get(g, 0.0) for s in shares) for g in groups}
        total = sum(used.values())
        print("farm's processes, first to last-but-one item: " + ", ".join(f"{g} {used[g]:.2f} CPUs ({used[g] / total:.1%})" for g in groups)
              + f" of {total:.2f} CPUs in use")
    print(f"byte-identical MP4s, farm vs bare: {identical}/{n}")
    print(machine_line())


if __name__ == "__main__":
    main()
