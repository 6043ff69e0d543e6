"""Benchmark: "the seeds' way" (one `python generate.py` process per image, the model loaded
every time) against `farm run` on the same items.

The original batch script was

    for img in ./inputs/*.png; do python generate.py --image $img --prompt "..." \
        --output ./outputs/$(basename $img .png)_video.mp4; done

`benchmarks/seeds_generate.py` is that generate.py (diffusers pipeline, no farm); it is run once
per image in a fresh process, in sequence, and the whole loop is timed. `farm run` renders the
same items (same image, prompt, seed, size, frames, steps) with one worker. Runs alternate
between the two; prints the median wall time of each and farm's speedup.

    python benchmarks/seeds_way.py [--items 6] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import (
    BENCHMARKS,
    add_render_flags,
    apply_thread_flag,
    bench_env,
    bench_inputs,
    machine_line,
    paired_ratio,
    run_farm,
    same_videos,
    settings_from,
    wait_for_quiet,
)


def seeds_loop(items: list[dict], output: Path, args) -> tuple[float, list[float]]:
    """The for-loop: one generate.py process per image. (total seconds, each process's seconds)."""
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    env = bench_env(args.bare_nice)
    each = []
    started = time.perf_counter()
    for item in items:
        command = [
            sys.executable, str(BENCHMARKS / "seeds_generate.py"),
            "--image", item["image"], "--prompt", item["prompt"], "--seed", str(item["seed"]),
            "--output", str(output / f"{item['id']}.mp4"),
            "--resolution", str(args.resolution), "--frames", str(args.frames), "--steps", str(args.steps),
        ]
        t0 = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        each.append(time.perf_counter() - t0)
    return time.perf_counter() - started, each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_render_flags(parser, items=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    apply_thread_flag(args)
    settings = settings_from(args)
    work, items, manifest = bench_inputs("seeds", args.items, settings)

    farm_times, seeds_times, per_process = [], [], []
    for run in range(args.repeats):
        for kind in ("farm", "seeds") if run % 2 == 0 else ("seeds", "farm"):
            note = wait_for_quiet(args.quiet_wait)
            if kind == "farm":
                farm_times.append(run_farm(manifest, work / "farm-out", workers=1).wall_s)
                print(f"  run {run + 1} farm run: {farm_times[-1]:.1f} s; {note}", file=sys.stderr)
            else:
                total, each = seeds_loop(items, work / "seeds-out", args)
                seeds_times.append(total)
                per_process += each
                print(f"  run {run + 1} seeds' loop: {total:.1f} s; {note}", file=sys.stderr)
    identical = same_videos(work / "farm-out" / "bench", work / "seeds-out", [i["id"] for i in items])

    farm, seeds = statistics.median(farm_times), statistics.median(seeds_times)
    speedup = paired_ratio(seeds_times, farm_times)
    n = args.items
    print(f"{n} items, {settings.resolution}x{settings.resolution}, {settings.frames} frames, {settings.steps} steps; "
          f"medians of {args.repeats} runs (speedup: median of per-run ratios)")
    print(f"{'way':34} {'wall':>8} {'items/min':>10} {'speedup':>8}")
    print(f"{'seeds: one process per image':34} {seeds:7.1f}s {n / seeds * 60:10.2f} {1.0:7.2f}x")
    print(f"{'farm run, 1 worker':34} {farm:7.1f}s {n / farm * 60:10.2f} {speedup:7.2f}x")
    print(f"seeds: median {statistics.median(per_process):.1f} s per generate.py process "
          f"(interpreter, imports, model load, one render, encode)")
    print(f"byte-identical MP4s, farm vs seeds: {identical}/{n}")
    print(machine_line())


if __name__ == "__main__":
    main()
