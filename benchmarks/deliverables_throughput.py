"""Benchmark: GPU-worker throughput with three deliverables per item against none (issue 19).

Does making deliverables (the CPU stage: `vertical` 1080x1920 pad, `web` H.264 CRF 23, `gif`)
slow the GPUs down? Goal: render throughput with deliverables >= 0.95x of throughput without.

A simulated GPU node on 127.0.0.1 (`ray.cluster_utils.Cluster`: a head without CPUs, one node
advertising `--gpus` GPUs and as many `farm_tier_24g` and CPUs, its workers told
`FARM_GPU_VRAM_GB=24`, and one CPU node of `--post-cpus` CPUs for the CPU stage) runs one
BENCHMARK-ONLY sleep renderer per simulated GPU (`benchmarks/sleep_worker.py`: it sleeps
`--seconds-per-item` per item, then commits a canned MP4, thumbnail and sidecar through farm's
real commit path). The canned clip has the size of a real render, 512x512, 16 frames at 8 fps
(`FARM_BENCH_CLIP=512x512x16@8`: a textured still panning with grain, ~0.7 MB at farm's CRF 18),
so ffmpeg really scales, pads and encodes 1080x1920 frames from it. The coordinator is farm's:
`load_manifest`, `prepare_job`, `JobRecorder`, `Engine.admit`, `Engine.run_until_done`, with
the engine's own CPU stage (`RayPostRunner`: `post_item` as Ray tasks with `num_gpus=0`, real
ffmpeg, each deliverable committed into the item's sidecar) and the settings
FARM_POST_CONCURRENCY / FARM_POST_NUM_CPUS / FARM_POST_FFMPEG_THREADS as given here.

Runs alternate in one process on the same cluster: without, with, without, with, ... (the same
items; only the manifest's `defaults.deliverables` differ), after one unmeasured warm-up job with
deliverables (the CPU node's Ray worker process, imports, ffmpeg's encoder list). Per run:
  - render throughput: items / (first dispatch -> last render commit), the commit times taken
    from the sleep workers' own commit logs: what the GPUs delivered;
  - end to end: first dispatch -> the engine saw the job end (its last deliverable made), and the
    post-processing backlog at the last render commit (items whose deliverables were not all
    committed then; each item's last deliverable time is its sidecar's last write);
  - where a GPU could lose time: each worker's gap from returning a reply to receiving its next
    task, its sleep overshoot, and the coordinator's CPU seconds;
  - checks: every item committed once, job succeeded; with deliverables, every item's sidecar
    records vertical, web and gif, each file at JOB/deliverables/NAME/ITEM.EXT with the recorded
    size and probed facts (vertical 1080x1920 H.264, web 512x512 H.264, gif), none failed.
The ratio is with / without per pair (each "with" against the "without" just before it); the
figure reported is the median of the pairs, every pair printed.

    python benchmarks/deliverables_throughput.py [--items 32] [--gpus 4] [--seconds-per-item 3]
        [--repeats 3] [--post-concurrency 1] [--ffmpeg-threads 1] [--raw FILE]
    python benchmarks/deliverables_throughput.py --quick      # smoke test: 4 items, 1 pair
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))

from common import machine_line, wait_for_quiet

TIER = "24g"
CLIP = "512x512x16@8"  # the canned render: 512x512, 16 frames at 8 fps
RESOLUTION, FRAMES, FPS = 512, 16, 8
DELIVERABLES = ["vertical", "web", "gif"]
EXPECTED = {  # name -> (extension, codec, width, height)
    "vertical": ("mp4", "h264", 1080, 1920),
    "web": ("mp4", "h264", 512, 512),
    "gif": ("gif", "gif", 512, 512),
}
METADATA = ("job.json", "spec.json", "manifest.json")


# --- the job ---------------------------------------------------------------------------------


def write_manifests(folder: Path, count: int, output: Path) -> dict[str, Path]:
    """Two manifests of the same `count` items (512p 1:1, 16 frames, 8 fps): without and with
    `defaults.deliverables`."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    for n in range(4):
        Image.new("RGB", (96, 96), (40 * n, 120, 200)).save(folder / "images" / f"{n}.jpg")
    items = [{"id": f"shot-{n:03d}", "image": f"images/{n % 4}.jpg", "prompt": f"a slow pan across scene {n}"}
             for n in range(count)]
    defaults = {"resolution": RESOLUTION, "aspect": "1:1", "frames": FRAMES, "fps": FPS}
    paths = {}
    for kind, extra in (("without", {}), ("with", {"deliverables": DELIVERABLES})):
        document = {"version": 1, "name": kind, "model": "tiny", "output": str(output),
                    "defaults": {**defaults, **extra}, "items": items}
        paths[kind] = folder / f"{kind}.json"
        paths[kind].write_text(json.dumps(document))
    return paths


def timed_handle(actor, sends: list[float]):
    """farm's Ray worker handle, unchanged, stamping each render it sends."""
    from farm.runtime.handles import RayWorkerHandle

    class TimedHandle(RayWorkerHandle):
        def render(self, task):
            sends.append(time.time())
            return super().render(task)

    return TimedHandle(actor)


class Sampler:
    """The machine's CPU use every 0.25 s, on a thread."""

    def __init__(self):
        self.busy: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        psutil.cpu_percent(None)
        while not self._stop.wait(0.25):
            self.busy.append((time.time(), psutil.cpu_percent(None)))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def mean(self, start: float, end: float) -> float | None:
        values = [v for t, v in self.busy if start <= t <= end]
        return statistics.fmean(values) if values else None


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# --- one run ---------------------------------------------------------------------------------


def run_once(label: str, kind: str, spec, manifest: Path, workers, actors, table, settings, mailbox,
             seconds_per_item: float) -> dict:
    import ray

    from farm.core.job import JobState
    from farm.core.states import SUCCEEDED
    from farm.runtime.engine import ActiveJob, Engine
    from farm.runtime.handles import RayCallPool
    from farm.runtime.jobs import JobRecorder, clear_staging, prepare_job, write_job_files
    from farm.storage import open_store

    spec = replace(spec, name=label)
    ray.get([actor.reset.remote() for actor in actors])
    sends: dict[str, list[float]] = {w.name: [] for w in workers}
    for w in workers:
        w.handle = timed_handle(w.actor, sends[w.name])
    store = open_store(spec.output)
    store.check_access(spec.name)
    write_job_files(store, spec, (manifest.name, manifest.read_bytes()))
    state = JobState(spec)
    recorder = JobRecorder(state, store, settings.engine.record_interval_s)
    engine = Engine(workers, table, settings=settings, pool=RayCallPool(), mailbox=mailbox)
    job = ActiveJob(id=spec.name, state=state, recorder=recorder)
    with Sampler() as sampler:
        cpu0 = cpu_seconds()
        plan, decision = prepare_job(engine, job, store)
        recorder.write(force=True)
        engine.admit(job, plan, decision.replace, decision.post)
        engine.run_until_done()
        done = time.time()
        cpu1 = cpu_seconds()
        engine.publish()
        clear_staging(store, spec.name)
        state.finish()
        recorder.close()
    timelines = {t["name"]: t for t in ray.get([actor.timeline.remote() for actor in actors])}

    # --- correctness ----------------------------------------------------------------------------
    job_dir = Path(spec.output) / spec.name
    ids = sorted(item.id for item in spec.items)
    sidecar_paths = {p.stem: p for p in job_dir.glob("*.json") if p.name not in METADATA}
    sidecars = {item_id: json.loads(path.read_text()) for item_id, path in sidecar_paths.items()}
    commits = Counter(item for t in timelines.values() for item, status, _ in t["commits"] if status == SUCCEEDED)
    other = [status for t in timelines.values() for _, status, _ in t["commits"] if status != SUCCEEDED]
    record = json.loads((job_dir / "job.json").read_text())
    staging = job_dir / ".staging"
    checks = {
        "one sidecar, MP4 and thumbnail per item": sorted(sidecars) == ids
        and len(list(job_dir.glob("*.mp4"))) == len(ids) == len(list(job_dir.glob("*.jpg"))),
        "each item committed exactly once (worker logs)": sorted(commits) == ids and max(commits.values()) == 1 and not other,
        "job succeeded (engine and job.json)": state.final_state == "succeeded" and record["state"] == "succeeded"
        and record["counts"]["succeeded"] == len(ids),
        "no staging leftovers": not staging.exists() or not any(staging.iterdir()),
    }
    post = state.post.to_dict()
    if kind == "with":
        problems = deliverable_problems(job_dir, spec.name, sidecars, ids)
        checks["3 deliverables per item: sidecar entries, files, probed facts"] = not problems
        checks[f"post: {3 * len(ids)} made, none failed (engine and job.json)"] = (
            post["made"] == 3 * len(ids) and post["failed"] == post["superseded"] == post["skipped"] == 0
            and record.get("post", {}).get("made") == 3 * len(ids))
    else:
        problems = []
        checks["no deliverables recorded or written"] = (not any(s.get("deliverables") for s in sidecars.values())
                                                         and not (job_dir / "deliverables").exists())

    # --- timing ---------------------------------------------------------------------------------
    t0 = min(t for stamps in sends.values() for t in stamps)  # first dispatch
    commit_at = {item: when for t in timelines.values() for item, status, when in t["commits"] if status == SUCCEEDED}
    render_end = max(commit_at.values())
    render_s = render_end - t0
    # An item's deliverables are all made when its sidecar was last written (each deliverable's
    # entry is a compare-and-swap rewrite of the sidecar; the render's commit wrote it first).
    post_done = {item: sidecar_paths[item].stat().st_mtime_ns / 1e9 for item in sidecar_paths} if kind == "with" else {}
    backlog = sum(1 for item in ids if post_done.get(item, 0.0) > render_end) if kind == "with" else 0
    lags = [post_done[item] - commit_at[item] for item in ids if item in post_done and item in commit_at]
    gaps, overshoot, in_call = [], [], []
    for w in workers:
        renders = [e for e in timelines[w.name]["events"] if e[0] == "render"]
        for k, (_, _, received, sleep_start, sleep_end, returned) in enumerate(renders):
            overshoot.append(sleep_end - sleep_start - seconds_per_item)
            in_call.append((sleep_start - received) + (returned - sleep_end))
            if k:
                gaps.append(received - renders[k - 1][5])
    slots = len(workers)
    return {
        "label": label,
        "kind": kind,
        "items": len(ids),
        "checks": checks,
        "problems": problems[:10],
        "render_s": render_s,
        "throughput": len(ids) / render_s,
        "ideal_render_s": math.ceil(len(ids) / slots) * seconds_per_item,
        "end_to_end_s": done - t0,
        "last_deliverable_s": (max(post_done.values()) - t0) if post_done else None,
        "backlog_at_render_end": backlog,
        "post_lag_s": {"median": statistics.median(lags), "max": max(lags)} if lags else None,
        "gap_ms": {"median": 1e3 * statistics.median(gaps), "p90": 1e3 * pct(gaps, 0.9), "max": 1e3 * max(gaps),
                   "total_worker_s": sum(gaps)} if gaps else None,
        "sleep_overshoot_ms": {"median": 1e3 * statistics.median(overshoot), "max": 1e3 * max(overshoot)},
        "in_call_ms": {"median": 1e3 * statistics.median(in_call), "max": 1e3 * max(in_call)},
        "coordinator_cpu_s": cpu1 - cpu0,
        "engine_steps": engine.loop_stats["steps"],
        "machine_cpu_busy_render": sampler.mean(t0, render_end),
        "machine_cpu_busy_run": sampler.mean(t0, done),
        "post": {k: v for k, v in post.items() if k != "failures"},
        "post_failures": post.get("failures", [])[:5],
        "loadavg": os.getloadavg(),
    }


def deliverable_problems(job_dir: Path, job_name: str, sidecars: dict[str, dict], ids: list[str]) -> list[str]:
    """What is wrong with the items' deliverables (empty: each has its three, as recorded)."""
    problems = []
    for item in ids:
        entries = (sidecars.get(item) or {}).get("deliverables") or {}
        if sorted(entries) != sorted(EXPECTED):
            problems.append(f"{item}: sidecar records {sorted(entries)}")
            continue
        for name, (extension, codec, width, height) in EXPECTED.items():
            entry = entries[name]
            key = f"{job_name}/deliverables/{name}/{item}.{extension}"
            path = job_dir / "deliverables" / name / f"{item}.{extension}"
            probed = entry.get("probed") or {}
            if entry.get("key") != key:
                problems.append(f"{item}/{name}: key {entry.get('key')!r}, expected {key!r}")
            elif not path.is_file() or path.stat().st_size != entry.get("bytes"):
                problems.append(f"{item}/{name}: {path} missing or not {entry.get('bytes')} bytes")
            elif (probed.get("codec"), probed.get("width"), probed.get("height")) != (codec, width, height):
                problems.append(f"{item}/{name}: probed {probed}")
    return problems


# --- report ----------------------------------------------------------------------------------


def print_run(result: dict) -> None:
    r = result
    failed = [name for name, ok in r["checks"].items() if not ok]
    gap = r["gap_ms"]
    gaps = (f"gaps median {gap['median']:.1f} ms, p90 {gap['p90']:.1f}, max {gap['max']:.1f}" if gap
            else "no gaps (one item per worker)")
    line = (f"  {r['label']:10} render {r['render_s']:6.2f} s (ideal {r['ideal_render_s']:.1f} s) "
            f"{r['throughput']:.4f} items/s; end to end {r['end_to_end_s']:6.1f} s")
    if r["kind"] == "with":
        line += (f", backlog at render end {r['backlog_at_render_end']}/{r['items']}, "
                 f"post lag median {r['post_lag_s']['median']:.1f} s")
    print(line)
    print(f"  {'':10} {gaps}; sleep overshoot median {r['sleep_overshoot_ms']['median']:.1f} ms, "
          f"max {r['sleep_overshoot_ms']['max']:.1f}; coordinator CPU {r['coordinator_cpu_s']:.2f} s, "
          f"{r['engine_steps']} steps; machine CPU {r['machine_cpu_busy_render'] or 0:.0f} % busy while rendering; "
          f"checks {'ok' if not failed else 'FAILED: ' + ', '.join(failed)}")
    for problem in r["problems"]:
        print(f"    problem: {problem}")
    for failure in r["post_failures"]:
        print(f"    post failure: {failure}")


def summarize(results: list[dict]) -> dict:
    without = [r for r in results if r["kind"] == "without"]
    with_ = [r for r in results if r["kind"] == "with"]
    ratios = [b["throughput"] / a["throughput"] for a, b in zip(without, with_)]
    return {
        "ratios": ratios,
        "median_ratio": statistics.median(ratios) if ratios else None,
        "ratio_of_medians": (statistics.median(r["throughput"] for r in with_)
                             / statistics.median(r["throughput"] for r in without)) if ratios else None,
        "end_to_end_ratios": [b["end_to_end_s"] / a["end_to_end_s"] for a, b in zip(without, with_)],
        "all_checks": all(all(r["checks"].values()) for r in results),
    }


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--gpus", type=int, default=4, help="simulated GPUs (sleep workers)")
    parser.add_argument("--seconds-per-item", type=float, default=3.0, help="each sleep worker's time per item")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (without, with)")
    parser.add_argument("--post-concurrency", type=int, default=int(os.environ.get("FARM_POST_CONCURRENCY", "1")),
                        help="FARM_POST_CONCURRENCY: items whose deliverables are made at once")
    parser.add_argument("--post-num-cpus", type=float, default=float(os.environ.get("FARM_POST_NUM_CPUS", "1")),
                        help="FARM_POST_NUM_CPUS: Ray CPUs each deliverable task reserves")
    parser.add_argument("--ffmpeg-threads", type=int, default=int(os.environ.get("FARM_POST_FFMPEG_THREADS", "1")),
                        help="FARM_POST_FFMPEG_THREADS (0: ffmpeg's own choice)")
    parser.add_argument("--post-cpus", type=int, default=None,
                        help="CPUs of the simulated CPU node (default: enough for --post-concurrency tasks)")
    parser.add_argument("--quiet-wait", type=float, default=30.0,
                        help="before each run, wait up to this many seconds for the CPUs to be idle (shared machines)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the unmeasured warm-up job")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: --gpus items, 1.5 s each, one pair, no warm-up, no quiet wait")
    parser.add_argument("--raw", help="write every figure as JSON to this file")
    args = parser.parse_args()
    if args.quick:
        args.items, args.seconds_per_item, args.repeats, args.quiet_wait, args.no_warmup = args.gpus, 1.5, 1, 0.0, True
    post_cpus = args.post_cpus or max(1, math.ceil(args.post_concurrency * args.post_num_cpus))

    import ray
    import sleep_worker
    from ray import cloudpickle
    from ray.cluster_utils import Cluster

    from farm.core.tiers import load_tier_table
    from farm.runtime.engine import Worker
    from farm.runtime.mailbox import RayMailbox
    from farm.settings import load_settings
    from farm.storage.manifest_file import load_manifest

    cloudpickle.register_pickle_by_value(sleep_worker)  # the actor class travels by value
    table = load_tier_table()
    settings = load_settings()
    settings = settings.model_copy(update={"post": settings.post.model_copy(update={
        "concurrency": args.post_concurrency, "num_cpus": args.post_num_cpus,
        "ffmpeg_threads": args.ffmpeg_threads or None})})
    spf = args.seconds_per_item / FRAMES  # the sleep worker sleeps frames * seconds_per_frame

    work_dir = Path(tempfile.mkdtemp(prefix="farm-deliverables-"))
    manifests = write_manifests(work_dir, args.items, work_dir / "out")
    specs = {kind: load_manifest(path) for kind, path in manifests.items()}
    print(f"job: {args.items} items, {RESOLUTION}x{RESOLUTION}, {FRAMES} frames at {FPS} fps; with deliverables: "
          f"{', '.join(DELIVERABLES)} (3 per item)")
    print(f"GPUs: {args.gpus} simulated {TIER} GPUs, BENCHMARK-ONLY sleep workers (benchmarks/sleep_worker.py), "
          f"{args.seconds_per_item:g} s per item, canned clip {CLIP}")
    print(f"CPU stage: FARM_POST_CONCURRENCY={args.post_concurrency}, FARM_POST_NUM_CPUS={args.post_num_cpus:g}, "
          f"FARM_POST_FFMPEG_THREADS={args.ffmpeg_threads or 'unset (ffmpeg decides)'}; a CPU node of {post_cpus} CPU(s)")
    print(machine_line())

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    actors, results = [], []
    try:
        started = time.perf_counter()
        cluster.add_node(num_cpus=args.gpus, num_gpus=args.gpus, resources={f"farm_tier_{TIER}": args.gpus},
                         node_ip_address="127.0.0.1",
                         env_vars={"FARM_GPU_VRAM_GB": TIER.rstrip("g"), sleep_worker.CLIP_ENV: CLIP})
        cluster.add_node(num_cpus=post_cpus, num_gpus=0, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="farm-bench-deliverables", log_to_driver=False)
        mailbox = RayMailbox()
        workers = []
        for index in range(args.gpus):
            name = f"{TIER}-{index}"
            actor = sleep_worker.SleepRenderWorker.options(
                num_gpus=1, num_cpus=1, resources={f"farm_tier_{TIER}": 1}
            ).remote(name, spf, TIER, str(work_dir), mailbox)
            actors.append(actor)
            workers.append(Worker(name, timed_handle(actor, []), TIER))
        infos = ray.get([w.actor.info.remote() for w in workers])
        for worker, info in zip(workers, infos):
            worker.info = info
        assert all(w.tier == TIER for w in workers), [w.tier for w in workers]
        assert {i["clip"] for i in infos} == {CLIP}, {i["clip"] for i in infos}
        print(f"cluster: head + GPU node + CPU node, {len(workers)} sleep workers up in "
              f"{time.perf_counter() - started:.0f} s; canned MP4 {infos[0]['clip_bytes'] / 1e6:.2f} MB")

        common = {"workers": workers, "actors": actors, "table": table, "settings": settings, "mailbox": mailbox,
                  "seconds_per_item": args.seconds_per_item}
        if not args.no_warmup:
            warm_spec = replace(specs["with"], items=specs["with"].items[:args.gpus])
            warm = run_once("warmup", "with", warm_spec, manifests["with"], **common)
            print(f"  warm-up (not measured): {warm['items']} items with deliverables, "
                  f"end to end {warm['end_to_end_s']:.1f} s, checks {'ok' if all(warm['checks'].values()) else 'FAILED'}")
        for repeat in range(1, args.repeats + 1):
            for kind in ("without", "with"):
                note = wait_for_quiet(args.quiet_wait) if args.quiet_wait > 0 else "no quiet wait"
                result = run_once(f"{kind}-{repeat}", kind, specs[kind], manifests[kind], **common)
                result["quiet"] = note
                results.append(result)
                print_run(result)
                print(f"  {'':10} ({note})")
    finally:
        for actor in actors:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(actor, no_restart=True)
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(work_dir, ignore_errors=True)

    summary = summarize(results)
    print("\nper pair, render throughput with / without: "
          + ", ".join(f"{ratio:.3f}" for ratio in summary["ratios"]))
    print("per pair, end to end with / without (time): "
          + ", ".join(f"{ratio:.2f}" for ratio in summary["end_to_end_ratios"]))
    verdict = "meets" if summary["median_ratio"] >= 0.95 else "BELOW"
    print(f"median of the pairs: {summary['median_ratio']:.3f}x ({verdict} the 0.95 goal); ratio of the medians "
          f"{summary['ratio_of_medians']:.3f}x; all checks {'passed' if summary['all_checks'] else 'FAILED'}")
    print(machine_line())
    if args.raw:
        Path(args.raw).write_text(json.dumps({"args": vars(args), "post_cpus": post_cpus, "clip": CLIP,
                                              "results": results, "summary": summary}, indent=1, default=str))
    if not summary["all_checks"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
