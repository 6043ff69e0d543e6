"""Benchmark: farm's scheduling at scale: makespan against the ideal on 32-64 simulated GPUs.

A simulated multi-node GPU cluster on 127.0.0.1 (`ray.cluster_utils.Cluster`: a head without
CPUs, then nodes of mixed tiers and speeds, each advertising `num_gpus` and `farm_tier_<tier>`
and telling its workers `FARM_GPU_VRAM_GB`), one BENCHMARK-ONLY sleep renderer per simulated
GPU (`benchmarks/sleep_worker.py`: sleeps `frames * seconds_per_frame / node speed`, then commits
a canned tiny MP4, thumbnail and sidecar through farm's real commit path into a local folder),
and farm's real coordinator path: the manifest is loaded and validated (`load_manifest`), then
`prepare_job` (resume scan + `plan_job`), `JobRecorder`, `Engine.admit` and
`Engine.run_until_done`, as `farm run` does, with the sleep actors in place of `start_workers`.

Measured side by side in the same run:
  - makespan (first dispatch to last commit) against the ideal: the largest of the lower bounds
    total work / total speed and, per tier t, (work planned for tiers >= t) / (speed of tiers
    >= t), and the longest single item on the fastest worker allowed to run it;
    efficiency = ideal / makespan (goal: >= 0.9);
  - farm's dispatch policy replayed on the same durations with zero overhead (farm's own
    `DispatchState` on a simulated clock: what the per-tier queues, longest-first and stealing
    would give on a perfect runtime), to separate policy from overhead;
  - the coordinator's (this process's) resident memory: before the job, peak, growth;
  - per-item scheduling overhead: each worker's gap between returning a reply and receiving its
    next task (split into reply pickup, coordinator processing, task delivery), the coordinator's
    CPU time per item, and where the lost capacity went (start, gaps, in-call, tail);
  - correctness: every item committed exactly once (one sidecar, MP4 and thumbnail per item, one
    commit per item in the workers' logs), job state `succeeded`.

`seconds_per_frame` defaults to whatever puts the ideal near `--target-ideal` (180 s), so that
fixed per-item costs on a 2-core machine do not dominate. A run takes about 4 minutes (the job,
then checking every output) after a minute of cluster start-up, so `--repeats` defaults to 1.
`--dry-run` only plans and prints the bounds; `--profile` profiles the coordinator's loop.

    python benchmarks/scale.py [--items 5000] [--workers 48] [--target-ideal 180] [--repeats 1]

Many GPUs (`--gpus`, no Ray, seconds): farm's dispatch state machine (`DispatchState`, pure)
replayed on a simulated clock over hundreds of simulated GPUs of three tiers, three jobs of one
priority, at several loads, each against the ideal (the same lower bounds), and the same machine
with the plans' estimates withheld (its tier queues then first-in first-out) beside it:

    python benchmarks/scale.py --gpus 500 --per-gpu 4,10,40 [--noise 0.2] [--seed 7]
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from farm.core.planner import plan_job
from farm.core.tiers import ClusterShape, load_tier_table
from farm.storage.manifest_file import load_manifest

# Simulated nodes: (tier, speed, workers for the default 48). Two 12g nodes and two 24g nodes of
# different speeds (older and newer cards of one memory class), one 80g node. Scaled to --workers.
NODES = (("12g", 1.0, 12), ("12g", 0.75, 8), ("24g", 1.5, 10), ("24g", 1.25, 8), ("80g", 3.0, 10))
RESOLUTIONS, RESOLUTION_WEIGHTS = (256, 512, 768, 1024), (3, 4, 2, 1)
ASPECTS, ASPECT_WEIGHTS = ("1:1", "16:9", "9:16"), (2, 1, 1)


# --- the job ---------------------------------------------------------------------------------


def write_manifest(folder: Path, count: int, output: Path, seed: int) -> Path:
    """A manifest of `count` items of mixed resolution, aspect and frames (8-32)."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    for n in range(4):
        Image.new("RGB", (96, 64), (40 * n, 120, 200)).save(folder / "images" / f"{n}.jpg")
    rng = random.Random(seed)
    items = [
        {
            "id": f"shot-{n:05d}",
            "image": f"images/{n % 4}.jpg",
            "prompt": f"a slow pan across scene {n}",
            "resolution": rng.choices(RESOLUTIONS, RESOLUTION_WEIGHTS)[0],
            "aspect": rng.choices(ASPECTS, ASPECT_WEIGHTS)[0],
            "frames": rng.randint(8, 32),
        }
        for n in range(count)
    ]
    path = folder / "scale.json"
    path.write_text(json.dumps({"version": 1, "name": "scale", "model": "tiny", "output": str(output), "items": items}))
    return path


def node_layout(workers: int) -> list[tuple[str, float, int]]:
    """NODES scaled to `workers` GPUs in total (largest remainders; at least one per node)."""
    base = sum(n for _, _, n in NODES)
    shares = [workers * n / base for _, _, n in NODES]
    counts = [max(1, int(s)) for s in shares]
    for index in sorted(range(len(NODES)), key=lambda i: shares[i] - int(shares[i]), reverse=True):
        if sum(counts) >= workers:
            break
        counts[index] += 1
    while sum(counts) > workers:
        counts[counts.index(max(counts))] -= 1
    return [(tier, speed, count) for (tier, speed, _), count in zip(NODES, counts)]


# --- the ideal and farm's policy on a perfect runtime ----------------------------------------


def lower_bounds(work: dict[str, float], planned: dict[str, str], speeds: list[tuple[str, float]], order: list[str]) -> dict:
    """Lower bounds on the makespan: `work` is each item's seconds at speed 1; an item planned for
    tier t may run on any worker of tier >= t (the engine steals upwards, never downwards)."""
    rank = {tier: index for index, tier in enumerate(order)}
    bounds = {"all tiers (total work / total speed)": sum(work.values()) / sum(s for _, s in speeds)}
    for tier in order[1:]:
        tier_work = sum(w for item, w in work.items() if rank[planned[item]] >= rank[tier])
        tier_speed = sum(s for t, s in speeds if rank[t] >= rank[tier])
        bounds[f"items that need {tier} or bigger"] = tier_work / tier_speed
    fastest = {t: max(s for w, s in speeds if rank[w] >= rank[t]) for t in order}
    bounds["longest single item"] = max(w / fastest[planned[item]] for item, w in work.items())
    return bounds


def replay_policy(spec, plan, work: dict[str, float], workers: list[tuple[str, float]], table) -> float:
    """farm's dispatch (`DispatchState`, longest estimated first) on these exact durations with
    zero overhead: the makespan a perfect runtime would get. `workers`: (tier, speed) each."""
    names = [(f"{tier}-{index}", tier) for index, (tier, _) in enumerate(workers)]
    speed = {name: s for (name, _), (_, s) in zip(names, workers)}
    return replay_dispatch(table, names, [("job", spec, plan)], lambda worker, task: work[task.item_id] / speed[worker]).makespan


# --- many GPUs: farm's dispatch state machine on a simulated clock ---------------------------


@dataclass
class Replay:
    makespan: float
    sent: int
    handles: int
    wall_seconds: float
    busy: dict[str, float]  # tier -> GPU-seconds rendering
    stolen: int  # items run on a bigger tier than planned


def replay_dispatch(table, workers: list[tuple[str, str]], jobs, seconds, *, estimates: bool = True) -> Replay:
    """Drive farm's `DispatchState` (pure: events in, instructions out) on a simulated clock.

    `workers`: (name, tier); `jobs`: (job id, JobSpec, JobPlan), admitted together at time 0 with
    one priority (they take turns); `seconds(worker, task)`: how long that worker renders that
    task. Each `SendTask` is answered at now + seconds by a `WorkerReplied` with a succeeded
    `ItemOutcome` (nothing left uploading), one `handle` per reply, in time order (an event heap).
    `estimates=False` admits the plans with their time estimates taken out: every item's queued
    work is 0, so each tier queue is first-in first-out (farm's policy before longest-first)."""
    from dataclasses import replace

    from farm.core import dispatch as d
    from farm.core.contracts import ItemOutcome
    from farm.core.job import SUCCEEDED, JobState

    clock = [0.0]
    state = d.DispatchState(table, workers)
    tier_of = dict(workers)
    states = {}
    admitted = []
    for job_id, spec, plan in jobs:
        states[job_id] = JobState(spec, clock=lambda: clock[0])
        if not estimates:
            plan = replace(plan, items=[replace(p, seconds=None) for p in plan.items])
        admitted.append(d.JobAdmitted(job_id, states[job_id], plan))
    heap: list = []
    sent = handles = 0
    busy: Counter = Counter()
    sequence = 0
    started = time.perf_counter()

    def carry_out(out) -> None:
        nonlocal sent, sequence
        for instruction in out:
            if isinstance(instruction, d.SendTask):
                task = instruction.task
                duration = seconds(instruction.worker, task)
                busy[tier_of[instruction.worker]] += duration
                sent += 1
                sequence += 1
                heapq.heappush(heap, (clock[0] + duration, sequence, instruction.worker, task.job_id, task.item_id, duration))

    carry_out(state.handle(*admitted))
    handles = 1
    while heap:
        clock[0], _, worker, job_id, item_id, duration = heapq.heappop(heap)
        outcome = ItemOutcome(item_id, SUCCEEDED, job_id=job_id, seconds=duration, worker=worker, tier=tier_of[worker])
        carry_out(state.handle(d.WorkerReplied(worker, (outcome,), ())))
        handles += 1
    wall = time.perf_counter() - started
    unfinished = [p.item_id for job_id, _, plan in jobs for p in plan.items if states[job_id].items[p.item_id].state != SUCCEEDED]
    assert not unfinished and not state.jobs, f"replay ended with {len(unfinished)} planned items not succeeded"
    stolen = sum(1 for s in states.values() for item in s.items.values() if item.tier != item.planned_tier)
    return Replay(clock[0], sent, handles, wall, dict(busy), stolen)


# Many simulated GPUs (`--gpus`): tiers by share of the GPU count, and the item mix.
MANY_TIER_SHARES = (("12g", 0.6), ("24g", 0.3), ("80g", 0.1))
MANY_RESOLUTIONS, MANY_RESOLUTION_WEIGHTS = (512, 768, 1024), (5, 3, 2)
MANY_STEPS = (20, 25, 30, 40, 50)
JOB_SHARES = (0.5, 0.3, 0.2)  # three jobs of one priority: they take turns


def many_layout(text: str, table) -> dict[str, int]:
    """`500` (split 60/30/10 % over 12g/24g/80g) or `12g:300,24g:150,80g:50`."""
    from farm.core.tiers import parse_gpus

    if text.isdigit():
        total = int(text)
        counts = {tier: int(total * share) for tier, share in MANY_TIER_SHARES}
        counts["12g"] += total - sum(counts.values())
        return counts
    return parse_gpus(text, table).workers


def many_jobs(count: int, seed: int):
    """Three manifests (50/30/20 % of `count` items) of mixed resolution (512-1024), aspect,
    frames (8-32) and steps (20-50), parsed and validated as farm does (no images are read)."""
    from farm.core.manifest import parse_manifest

    rng = random.Random(seed)
    sizes = [int(count * share) for share in JOB_SHARES]
    sizes[0] += count - sum(sizes)
    specs = []
    for index, size in enumerate(sizes):
        items = [
            {
                "id": f"j{index}-{n:05d}",
                "image": "s3://bench/a.png",
                "prompt": f"a slow pan across scene {n}",
                "resolution": rng.choices(MANY_RESOLUTIONS, MANY_RESOLUTION_WEIGHTS)[0],
                "aspect": rng.choices(ASPECTS, ASPECT_WEIGHTS)[0],
                "frames": rng.randint(8, 32),
                "steps": rng.choice(MANY_STEPS),
            }
            for n in range(size)
        ]
        document = {"version": 1, "name": f"job-{index}", "model": "tiny", "items": items}
        specs.append(parse_manifest(json.dumps(document), "json", base_dir=Path(tempfile.gettempdir())))
    return specs


def many_gpus(args) -> None:
    """Farm's dispatch (`DispatchState`) on `--gpus` simulated GPUs at each `--per-gpu` load,
    against the ideal; the same state machine with the estimates withheld (FIFO) beside it."""
    from farm.core.planner import Planner
    from farm.core.vram import profile_for_model

    table = load_tier_table()
    counts = many_layout(args.gpus, table)
    shape = ClusterShape(counts)
    order = table.ordered(counts)
    workers = [(f"{tier}-{n:03d}", tier) for tier in order for n in range(counts[tier])]
    tier_of = dict(workers)
    gpus = len(workers)
    flops = {tier: table[tier].effective_flops for tier in order}
    speeds = [(tier, flops[tier]) for _, tier in workers]
    planner = Planner(table, shape, profile_for_model("tiny"))
    print(f"{gpus} simulated GPUs: {', '.join(f'{counts[t]} x {t} ({flops[t] / 1e12:.0f} TFLOP/s effective)' for t in order)}; "
          f"{len(JOB_SHARES)} jobs of one priority ({'/'.join(f'{100 * s:.0f}' for s in JOB_SHARES)} % of the items)")
    print("policy: farm.core.dispatch.DispatchState, one handle per WorkerReplied on a simulated clock (no Ray, no "
          "threads, no overhead); a task takes the planner's estimate for its item on that worker's tier")
    print("ideal: a lower bound, the largest of: total work / total capacity; per tier t, work planned for t or bigger "
          "/ capacity of t and bigger (items never move to a smaller tier); the longest item on the fastest GPU allowed it")
    print(f"FIFO: the same DispatchState admitted with the plans' estimates withheld (every queued item's work 0: "
          f"each tier queue first-in first-out); 'noisy': true time = estimate x lognormal(0, {args.noise}), seeded per item, "
          f"the queues still order by the estimates")
    cache: dict = {}  # the planner's estimate per (tier, settings, steps, guidance)

    def estimate(worker: str, task) -> float:
        key = (tier_of[worker], task.settings, task.params.steps, task.params.guidance_scale > 1)
        if key not in cache:
            cache[key] = planner.seconds(*key)
        return cache[key]

    rows = []
    for per_gpu in args.per_gpu:
        count = gpus * per_gpu
        t = time.perf_counter()
        specs = many_jobs(count, args.seed + per_gpu)
        plans = [plan_job(spec, shape, table) for spec in specs]
        setup = time.perf_counter() - t
        jobs = [(spec.name, spec, plan) for spec, plan in zip(specs, plans)]
        params = {item.id: item.params for spec in specs for item in spec.items}
        planned = {p.item_id: p.tier for plan in plans for p in plan.items}
        rng = random.Random(args.seed * 1000 + per_gpu)
        noise = {item_id: rng.lognormvariate(0.0, args.noise) for item_id in planned}
        base_work = {p.item_id: planner.work(p.settings, params[p.item_id].steps, params[p.item_id].guidance_scale > 1)
                     for plan in plans for p in plan.items}
        row = {"per_gpu": per_gpu, "items": count, "setup_s": setup, "planned": dict(Counter(planned.values()))}
        for label, factor in (("exact", None), ("noisy", noise)):
            work = base_work if factor is None else {k: v * factor[k] for k, v in base_work.items()}
            bounds = lower_bounds(work, planned, speeds, order)
            ideal = max(bounds.values())
            if factor is None:
                seconds = estimate
            else:
                def seconds(worker: str, task, factor=factor) -> float:
                    return estimate(worker, task) * factor[task.item_id]
            lpt = replay_dispatch(table, workers, jobs, seconds)
            fifo = replay_dispatch(table, workers, jobs, seconds, estimates=False)
            capacity = sum(flops[tier] * counts[tier] for tier in order)
            row[label] = {
                "bounds": bounds, "ideal": ideal, "binding": max(bounds, key=bounds.get),
                "lpt": lpt.makespan, "lpt_ratio": ideal / lpt.makespan, "fifo": fifo.makespan, "fifo_ratio": ideal / fifo.makespan,
                "lpt_replay_s": lpt.wall_seconds, "fifo_replay_s": fifo.wall_seconds, "handles": lpt.handles,
                "lpt_stolen": lpt.stolen, "fifo_stolen": fifo.stolen,
                "lpt_busy": {t: lpt.busy.get(t, 0.0) / (lpt.makespan * counts[t]) for t in order},
                "work_share": sum(work.values()) / capacity,
            }
        rows.append(row)
        exact, noisy = row["exact"], row["noisy"]
        print(f"\n--- {per_gpu} items per GPU: {count} items, planned {row['planned']} (set up in {setup:.1f} s) ---")
        for name, value in exact["bounds"].items():
            print(f"  bound: {name:40} {value:8.1f} s")
        print(f"  exact : ideal {exact['ideal']:7.1f} s ({exact['binding']}); longest-first {exact['lpt']:7.1f} s, "
              f"ratio {exact['lpt_ratio']:.3f}; FIFO {exact['fifo']:7.1f} s, ratio {exact['fifo_ratio']:.3f}")
        print(f"  noisy : ideal {noisy['ideal']:7.1f} s ({noisy['binding']}); longest-first {noisy['lpt']:7.1f} s, "
              f"ratio {noisy['lpt_ratio']:.3f}; FIFO {noisy['fifo']:7.1f} s, ratio {noisy['fifo_ratio']:.3f}")
        print(f"  longest-first: tier busy {', '.join(f'{t} {100 * v:.1f}%' for t, v in exact['lpt_busy'].items())}; "
              f"stolen {exact['lpt_stolen']} (FIFO {exact['fifo_stolen']}); replay {exact['lpt_replay_s']:.2f} s for "
              f"{exact['handles']} handle calls ({1e3 * exact['lpt_replay_s'] / exact['handles']:.3f} ms each)")
    print(f"\n{'items/GPU':>9} {'items':>7} {'ideal s':>8} {'LPT s':>8} {'ratio':>6} {'FIFO s':>8} {'ratio':>6} "
          f"{'noisy: ideal':>12} {'LPT':>6} {'FIFO':>6} {'replay s':>8}")
    for row in rows:
        e, n = row["exact"], row["noisy"]
        print(f"{row['per_gpu']:>9} {row['items']:>7} {e['ideal']:8.1f} {e['lpt']:8.1f} {e['lpt_ratio']:6.3f} {e['fifo']:8.1f} "
              f"{e['fifo_ratio']:6.3f} {n['ideal']:12.1f} {n['lpt_ratio']:6.3f} {n['fifo_ratio']:6.3f} {e['lpt_replay_s']:8.2f}")
    print(f"goal: >= 0.9 of the ideal at 10 items per GPU; machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    if args.raw:
        Path(args.raw).write_text(json.dumps({"args": vars(args), "layout": counts, "rows": rows}, default=str))


# --- instrumentation -------------------------------------------------------------------------


class Timings:
    """Wall-clock stamps of the engine's calls, taken at its worker-handle seam (no subclass of
    the engine): each render sent, each reply taken (per worker and call kind), each wait."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sends: dict[str, list[float]] = defaultdict(list)  # worker -> render send times
        self.replies: dict[tuple[str, str], list[float]] = defaultdict(list)  # (worker, kind) -> reply taken
        self.kinds: dict = {}  # call -> (worker, kind)
        self.steps = 0  # waits, one per engine step with calls open


TIMINGS = Timings()


def timed_handle(name: str, actor):
    """farm's Ray worker handle, unchanged, stamping each call it starts."""
    from farm.runtime.handles import RayWorkerHandle

    class TimedHandle(RayWorkerHandle):
        def render(self, task: dict):
            TIMINGS.sends[name].append(time.time())
            call = super().render(task)
            TIMINGS.kinds[call] = (name, "render")
            return call

    return TimedHandle(actor)


def timed_pool():
    """farm's Ray call pool, unchanged, stamping each reply the engine takes."""
    from farm.runtime.handles import RayCallPool

    class TimedPool(RayCallPool):
        def wait(self, calls: list, timeout: float) -> list:
            TIMINGS.steps += 1
            return super().wait(calls, timeout)

        def result(self, call, timeout: float | None = None):
            tag = TIMINGS.kinds.pop(call, None)
            if tag is not None:
                TIMINGS.replies[tag].append(time.time())
            return super().result(call, timeout)

    return TimedPool()


def timed_recorder_class():
    from farm.runtime.jobs import JobRecorder

    class TimedRecorder(JobRecorder):
        """farm's JobRecorder, unchanged, timing each snapshot it takes on the dispatch thread."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.snapshots: list[tuple[float, float]] = []  # (start, end), wall clock

        def write(self, *, force: bool = False) -> None:
            last, start = self._last, time.time()
            super().write(force=force)
            if self._last != last:
                self.snapshots.append((start, time.time()))

    return TimedRecorder


class MemorySampler:
    """This process's resident memory every `interval` seconds, on a thread."""

    def __init__(self, interval: float = 0.25):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.cpu_busy: list[float] = []  # the whole machine's CPU use, percent, per interval
        self.load: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return self.process.memory_info().rss

    def _run(self) -> None:
        import psutil

        psutil.cpu_percent(None)
        while not self._stop.is_set():
            self.samples.append((time.time(), self.rss()))
            self.cpu_busy.append(psutil.cpu_percent(None))
            self.load.append(os.getloadavg()[0])
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append((time.time(), self.rss()))

    @property
    def peak(self) -> int:
        return max(rss for _, rss in self.samples)


def long_gaps(series, snapshots, t0, threshold: float = 0.05) -> dict:
    """Dispatch gaps over `threshold` seconds, and how many of them overlap a job-record snapshot."""
    long = [(when, gap) for when, gap, *_ in series if gap > threshold]
    spans = [(s - t0, e - t0) for s, e in snapshots]
    overlapping = sum(1 for when, gap in long if any(s < when + gap and e > when for s, e in spans))
    return {"count": len(long), "of": len(series), "overlap_record_snapshot": overlapping,
            "worker_seconds": sum(gap for _, gap in long)}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- one run ---------------------------------------------------------------------------------


def run_once(run: int, spec, manifest_path: Path, workers, table, speeds: dict[str, float], spf: float, profile: bool,
             mailbox) -> dict:
    from dataclasses import replace

    import ray

    from farm.core.job import SUCCEEDED, JobState
    from farm.runtime.engine import ActiveJob, Engine
    from farm.runtime.jobs import clear_staging, prepare_job, write_job_files
    from farm.settings import load_settings
    from farm.storage import open_store

    spec = replace(spec, name=f"{spec.name}-{run}")
    ray.get([w.actor.reset.remote() for w in workers])
    store = open_store(spec.output)
    store.check_access(spec.name)
    write_job_files(store, spec, (manifest_path.name, manifest_path.read_bytes()))
    state = JobState(spec)
    recorder = timed_recorder_class()(state, store, load_settings().engine.record_interval_s)
    TIMINGS.reset()
    engine = Engine(workers, table, pool=timed_pool(), mailbox=mailbox)
    job = ActiveJob(id=spec.name, state=state, recorder=recorder)
    sampler = MemorySampler()
    rss_before = sampler.rss()
    cpu0 = cpu_seconds()
    profiler = None
    with sampler:
        started = time.time()
        plan, decision = prepare_job(engine, job, store)
        recorder.write(force=True)
        engine.admit(job, plan, decision.replace)
        admitted = time.time()
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        engine.run_until_done()
        done = time.time()
        if profiler is not None:
            profiler.disable()
        engine.publish()
        clear_staging(store, spec.name)
        state.finish()
        recorder.close()
    cpu1 = cpu_seconds()
    timelines = {t["name"]: t for t in ray.get([w.actor.timeline.remote() for w in workers])}

    # --- correctness: every item committed exactly once ---------------------------------------
    job_dir = Path(spec.output) / spec.name
    ids = {item.id for item in spec.items}
    sidecars = [p for p in job_dir.glob("*.json") if p.name not in ("job.json", "spec.json", "manifest.json")]
    sidecar_ids = [json.loads(p.read_text())["item_id"] for p in sidecars]
    commits = Counter(item for t in timelines.values() for item, status, _ in t["commits"] if status == SUCCEEDED)
    other = Counter(status for t in timelines.values() for _, status, _ in t["commits"] if status != SUCCEEDED)
    staging = job_dir / ".staging"
    record = json.loads((job_dir / "job.json").read_text())
    checks = {
        "sidecars == items": len(sidecars) == len(ids) and set(sidecar_ids) == ids,
        "one MP4 and one thumbnail per item": len(list(job_dir.glob("*.mp4"))) == len(ids) == len(list(job_dir.glob("*.jpg"))),
        "each item committed exactly once (worker logs)": set(commits) == ids and max(commits.values()) == 1 and not other,
        "no staging leftovers": not staging.exists() or not any(staging.iterdir()),
        "job state succeeded (engine and job.json)": state.final_state == "succeeded" and record["state"] == "succeeded"
        and record["counts"]["succeeded"] == len(ids),
    }

    # --- timing -------------------------------------------------------------------------------
    t0 = min(t for sends in TIMINGS.sends.values() for t in sends)  # first dispatch
    last_commit = max(when for t in timelines.values() for _, _, when in t["commits"])
    makespan = last_commit - t0
    work = {p.item_id: p.settings.frames * spf for p in plan.items}  # seconds at speed 1, as slept
    planned = {p.item_id: p.tier for p in plan.items}
    order = engine.queue.tiers
    worker_speeds = [(w.tier, speeds[w.name]) for w in workers]
    bounds = lower_bounds(work, planned, worker_speeds, order)
    ideal = max(bounds.values())
    policy = replay_policy(spec, plan, work, worker_speeds, table)

    # Where each worker's time went, from first dispatch to the last commit (wall seconds).
    lost = Counter()  # speed-weighted seconds
    lost_plain = Counter()  # worker seconds
    gap_series = []  # (when, gap, pickup, processing, delivery)
    gaps, pickups, processing, deliveries, in_call = [], [], [], [], []
    busy_by_tier, span_by_tier = Counter(), Counter()
    for w in workers:
        events = timelines[w.name]["events"]
        speed = speeds[w.name]
        renders = [e for e in events if e[0] == "render"]  # commits calls run beside them
        replies, sends = TIMINGS.replies[(w.name, "render")], TIMINGS.sends[w.name]
        assert len(replies) == len(renders) == len(sends), (w.name, len(replies), len(renders), len(sends))
        busy = sum(e[4] - e[3] for e in renders)
        nominal = sum(work[e[1]] / speed for e in renders)
        busy_by_tier[w.tier] += nominal * speed
        span_by_tier[w.tier] += makespan * speed

        def add(name: str, seconds: float, speed: float = speed) -> None:
            lost[name] += seconds * speed
            lost_plain[name] += seconds

        add("sleep overshoot", busy - nominal)
        add("start (first dispatch to first task)", renders[0][2] - t0 if renders else makespan)
        for k, event in enumerate(renders):
            overhead = (event[3] - event[2]) + (event[5] - event[4])
            in_call.append(overhead)
            add("in-call (task decode, commit queueing, reply)", overhead)
            if k > 0:
                gap = event[2] - renders[k - 1][5]
                gaps.append(gap)
                pickups.append(replies[k - 1] - renders[k - 1][5])
                processing.append(sends[k] - replies[k - 1])
                deliveries.append(event[2] - sends[k])
                add("dispatch gaps (reply to next task)", gap)
                gap_series.append((renders[k - 1][5] - t0, gap, pickups[-1], processing[-1], deliveries[-1]))
        if renders:
            add("tail (after a worker's last item)", t0 + makespan - renders[-1][5])
    capacity = sum(speeds.values())
    stolen = Counter((s.planned_tier, s.tier) for s in state.items.values() if s.planned_tier != s.tier)
    result = {
        "run": run,
        "items": len(ids),
        "checks": checks,
        "makespan": makespan,
        "engine_done": done - t0,
        "admit_seconds": admitted - started,
        "ideal": ideal,
        "bounds": bounds,
        "policy": policy,
        "efficiency": ideal / makespan,
        "policy_efficiency": ideal / policy,
        "runtime_efficiency": policy / makespan,
        "capacity": capacity,
        "total_work": sum(work.values()),
        "lost_fraction": {k: v / (makespan * capacity) for k, v in lost.items()},
        "gap_ms": {"median": 1e3 * statistics.median(gaps), "p90": 1e3 * pct(gaps, 0.9), "p99": 1e3 * pct(gaps, 0.99),
                   "max": 1e3 * max(gaps), "mean": 1e3 * statistics.fmean(gaps)},
        "pickup_ms": {"median": 1e3 * statistics.median(pickups), "p90": 1e3 * pct(pickups, 0.9), "mean": 1e3 * statistics.fmean(pickups)},
        "processing_ms": {"median": 1e3 * statistics.median(processing), "p90": 1e3 * pct(processing, 0.9), "mean": 1e3 * statistics.fmean(processing)},
        "delivery_ms": {"median": 1e3 * statistics.median(deliveries), "p90": 1e3 * pct(deliveries, 0.9), "mean": 1e3 * statistics.fmean(deliveries)},
        "in_call_ms": {"median": 1e3 * statistics.median(in_call), "p90": 1e3 * pct(in_call, 0.9), "mean": 1e3 * statistics.fmean(in_call)},
        "lost_per_item_ms": {k: 1e3 * v / len(ids) for k, v in lost_plain.items()},
        "long_gaps": long_gaps(gap_series, recorder.snapshots, t0),
        "recorder_ms": {"count": len(recorder.snapshots), "median": 1e3 * statistics.median(e - s for s, e in recorder.snapshots),
                        "max": 1e3 * max(e - s for s, e in recorder.snapshots)},
        "machine_cpu_busy": statistics.fmean(sampler.cpu_busy) if sampler.cpu_busy else None,
        "machine_load": statistics.fmean(sampler.load) if sampler.load else None,
        "gap_series": gap_series,
        "driver_cpu_s": cpu1 - cpu0,
        "driver_cpu_ms_per_item": 1e3 * (cpu1 - cpu0) / len(ids),
        "steps": TIMINGS.steps,
        "rss_before": rss_before,
        "rss_peak": sampler.peak,
        "rss_after": sampler.samples[-1][1],
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "tier_busy": {t: busy_by_tier[t] / span_by_tier[t] for t in order},
        "stolen": {f"{a}->{b}": n for (a, b), n in sorted(stolen.items())},
        "planned": dict(Counter(planned.values())),
        "worker_rss_median": statistics.median(t["rss"] for t in timelines.values()),
        "loadavg": os.getloadavg(),
    }
    if profiler is not None:
        import io
        import pstats

        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        result["profile"] = text.getvalue()
    return result


def report(result: dict) -> None:
    mib = 2**20
    print(f"\n--- run {result['run']}: {result['items']} items ---")
    for name, ok in result["checks"].items():
        print(f"  check: {name:48} {'ok' if ok else 'FAILED'}")
    print("  lower bounds on the makespan:")
    for name, seconds in result["bounds"].items():
        print(f"    {name:40} {seconds:8.1f} s")
    print(f"  ideal (largest bound)          {result['ideal']:8.1f} s")
    print(f"  farm's policy, zero overhead   {result['policy']:8.1f} s   ideal/policy   {result['policy_efficiency']:.3f}")
    print(f"  measured makespan              {result['makespan']:8.1f} s   ideal/makespan {result['efficiency']:.3f}  "
          f"({'meets' if result['efficiency'] >= 0.9 else 'BELOW'} the 0.9 goal); policy/makespan {result['runtime_efficiency']:.3f}")
    print(f"  (engine saw the job done at {result['engine_done']:.1f} s; prepare+admit took {result['admit_seconds']:.2f} s)")
    print("  lost capacity, share of makespan x total speed:")
    for name, share in sorted(result["lost_fraction"].items(), key=lambda kv: -kv[1]):
        print(f"    {name:48} {100 * share:6.2f} %   {result['lost_per_item_ms'][name]:7.2f} worker-ms per item")
    for name in ("gap_ms", "pickup_ms", "processing_ms", "delivery_ms", "in_call_ms"):
        stats = "  ".join(f"{k} {v:7.1f}" for k, v in result[name].items())
        print(f"  {name:14} {stats}")
    lg = result["long_gaps"]
    print(f"  gaps over 50 ms: {lg['count']} of {lg['of']} ({lg['worker_seconds']:.1f} worker-s), "
          f"{lg['overlap_record_snapshot']} overlapping a job.json snapshot; snapshots: {result['recorder_ms']}")
    print(f"  machine during the run: CPU {result['machine_cpu_busy']:.0f}% busy (both cores), load average {result['machine_load']:.1f}")
    print(f"  coordinator CPU: {result['driver_cpu_s']:.1f} s = {result['driver_cpu_ms_per_item']:.2f} ms per item; {result['steps']} engine steps")
    print(f"  coordinator RSS: {result['rss_before'] / mib:.0f} MiB before the job, peak {result['rss_peak'] / mib:.0f} MiB "
          f"(+{(result['rss_peak'] - result['rss_before']) / mib:.0f} MiB), after {result['rss_after'] / mib:.0f} MiB; "
          f"ru_maxrss {result['ru_maxrss'] / mib:.0f} MiB")
    print(f"  tier busy share: {', '.join(f'{t} {100 * v:.1f}%' for t, v in result['tier_busy'].items())}; "
          f"planned {result['planned']}; stolen {result['stolen']}")
    print(f"  sleep worker RSS (median) {result['worker_rss_median'] / mib:.0f} MiB; load average {result['loadavg']}")
    if "profile" in result:
        print(result["profile"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=48, help="simulated GPUs (32-64 intended)")
    parser.add_argument("--target-ideal", type=float, default=180.0, help="seconds; sets --seconds-per-frame")
    parser.add_argument("--seconds-per-frame", type=float, default=None, help="sleep per frame at speed 1")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="cProfile the coordinator's loop (slows it)")
    parser.add_argument("--raw", help="write every figure as JSON to this file")
    parser.add_argument("--dry-run", action="store_true", help="plan and print the bounds; start nothing")
    parser.add_argument("--gpus", help="many simulated GPUs, no Ray: replay farm's dispatch state machine on a simulated "
                        "clock; 500 (60/30/10 %% over 12g/24g/80g) or 12g:300,24g:150,80g:50")
    parser.add_argument("--per-gpu", type=lambda text: [int(v) for v in text.split(",")], default=[4, 10, 40],
                        help="with --gpus: items per GPU, comma-separated (default 4,10,40)")
    parser.add_argument("--noise", type=float, default=0.2, help="with --gpus: sigma of the lognormal true/estimate factor")
    args = parser.parse_args()
    if args.gpus:
        many_gpus(args)
        return

    table = load_tier_table()
    layout = node_layout(args.workers)
    work_dir = Path(tempfile.mkdtemp(prefix="farm-scale-"))
    manifest_path = write_manifest(work_dir, args.items, work_dir / "out", args.seed)
    t = time.perf_counter()
    spec = load_manifest(manifest_path)
    print(f"manifest: {args.items} items loaded and validated in {time.perf_counter() - t:.2f} s")
    counts = Counter()
    for tier, _, n in layout:
        counts[tier] += n
    plan = plan_job(spec, ClusterShape(dict(counts)), table)
    order = table.ordered(counts)
    unit = {p.item_id: float(p.settings.frames) for p in plan.items}
    planned = {p.item_id: p.tier for p in plan.items}
    speeds_nominal = [(tier, speed) for tier, speed, n in layout for _ in range(n)]
    per_unit = max(lower_bounds(unit, planned, speeds_nominal, order).values())
    spf = args.seconds_per_frame or round(args.target_ideal / per_unit, 4)
    print(f"nodes: {', '.join(f'{n} x {t} at speed {s}' for t, s, n in layout)} "
          f"({sum(n for *_, n in layout)} simulated GPUs, total speed {sum(s * n for _, s, n in layout):.1f})")
    print(f"planned per tier: {dict(Counter(planned.values()))}; seconds per frame at speed 1: {spf}")
    bounds = lower_bounds({k: v * spf for k, v in unit.items()}, planned, speeds_nominal, order)
    for name, seconds in bounds.items():
        print(f"  bound: {name:40} {seconds:7.1f} s")
    print(f"  farm's policy with zero overhead:        "
          f"{replay_policy(spec, plan, {k: v * spf for k, v in unit.items()}, speeds_nominal, table):7.1f} s")
    print("renderer: BENCHMARK-ONLY sleep worker (benchmarks/sleep_worker.py), not farm's renderer")
    if args.dry_run:
        import shutil

        shutil.rmtree(work_dir, ignore_errors=True)
        return

    import ray
    from ray.cluster_utils import Cluster

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sleep_worker
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sleep_worker)  # the actor class travels by value
    from farm.runtime.engine import Worker

    results = []
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    actors = []
    try:
        t = time.perf_counter()
        for tier, speed, n in layout:
            cluster.add_node(
                num_cpus=n, num_gpus=n, resources={f"farm_tier_{tier}": n}, node_ip_address="127.0.0.1",
                env_vars={"FARM_GPU_VRAM_GB": tier.rstrip("g"), sleep_worker.SPEED_ENV: str(speed)},
            )
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="farm-bench-scale", log_to_driver=False)
        # As start_workers does: one actor per GPU, pinned to its tier; one CPU slot each.
        workers = []
        from farm.runtime.mailbox import RayMailbox

        mailbox = RayMailbox()  # where the sleep workers report their commits, as farm's do
        for tier in order:
            for index in range(counts[tier]):
                actor = sleep_worker.SleepRenderWorker.options(
                    num_gpus=1, num_cpus=1, resources={f"farm_tier_{tier}": 1}
                ).remote(f"{tier}-{index}", spf, tier, str(work_dir), mailbox)
                actors.append(actor)
                workers.append(Worker(f"{tier}-{index}", timed_handle(f"{tier}-{index}", actor), tier))
        infos = ray.get([w.actor.info.remote() for w in workers])
        for worker, info in zip(workers, infos):
            worker.info = info
        print(f"cluster: {len(layout)} nodes + head, {len(workers)} sleep workers up in {time.perf_counter() - t:.0f} s; "
              f"torch imported by a worker: {any(i['torch_imported'] for i in infos)}")
        assert all(w.tier == w.slot_tier for w in workers), "a worker's card does not match its tier resource"
        speeds = {w.name: w.info["speed"] for w in workers}
        for run in range(1, args.repeats + 1):
            result = run_once(run, spec, manifest_path, workers, table, speeds, spf, args.profile, mailbox)
            results.append(result)
            report(result)
    finally:
        for actor in actors:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(actor, no_restart=True)
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        import shutil

        shutil.rmtree(work_dir, ignore_errors=True)
    if args.raw:
        Path(args.raw).write_text(json.dumps({"args": vars(args), "spf": spf, "layout": layout, "results": results}, default=str))
    for result in results:
        result.pop("gap_series", None)
    if results:
        efficiencies = [r["efficiency"] for r in results]
        print(f"\n{args.items} items on {args.workers} simulated GPUs ({len(layout)} nodes), {len(results)} run(s): "
              f"ideal/makespan median {statistics.median(efficiencies):.3f} (goal >= 0.9); "
              f"all checks {'passed' if all(all(r['checks'].values()) for r in results) else 'FAILED'}")
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
