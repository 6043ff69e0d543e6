"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent


def median_seconds(command: list[str], repeats: int) -> float:
    """Median wall time of running `command` `repeats` times (output discarded)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]  # total, idle + iowait


def cpu_busy(seconds: float = 2.0) -> float:
    """Fraction of all CPUs busy over the next `seconds` (every process on the machine)."""
    total0, idle0 = _cpu_times()
    time.sleep(seconds)
    total1, idle1 = _cpu_times()
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_quiet(limit_s: float, threshold: float = 0.25) -> str:
    """Before a timed run on a shared machine: wait up to `limit_s` for the CPUs to be mostly
    idle (other users' jobs), so runs start on a quiet machine when one is to be had. Returns a
    note for the log; it never changes what is measured, only when."""
    started = time.monotonic()
    busy = cpu_busy() if limit_s > 0 else 0.0
    while busy > threshold and time.monotonic() - started < limit_s:
        busy = cpu_busy()
    waited = time.monotonic() - started
    return f"CPUs {busy:.0%} busy before the run (waited {waited:.0f} s)" if limit_s > 0 else ""


def machine_line() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"machine: {os.cpu_count()} CPUs, load average {load}; python {sys.version.split()[0]}"


# --- render benchmarks: inputs, settings, farm and a bare diffusers loop ------------------------


@dataclass(frozen=True)
class Settings:
    """One render's parameters, the same for every item (only image, prompt and seed vary)."""

    resolution: int = 256  # 1:1, so width = height = resolution
    frames: int = 16
    steps: int = 20
    fps: int = 8
    guidance_scale: float = 9.0

    @property
    def size(self) -> tuple[int, int]:
        return self.resolution, self.resolution


def add_render_flags(parser, *, items: int, steps: int = 20) -> None:
    parser.add_argument("--items", type=int, default=items)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="before each run, wait up to this many seconds for the CPUs to be idle (shared machines)")
    parser.add_argument("--bare-nice", type=int, default=RAY_WORKER_NICENESS,
                        help="CPU niceness of the non-Ray baselines (default: Ray's for its workers, 15)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch threads on every side (default: all CPUs); fewer leaves cores to the rest, as on a GPU node")


def apply_thread_flag(args) -> None:
    """--torch-threads for both sides: farm's CPU workers and the baselines read FARM_CPU_THREADS."""
    if args.torch_threads:
        os.environ["FARM_CPU_THREADS"] = str(args.torch_threads)


def settings_from(args) -> Settings:
    return Settings(resolution=args.resolution, frames=args.frames, steps=args.steps)


# Ray starts its worker processes (farm's render actors, Ray Data's actors) at nice 15, so that
# its own control plane stays responsive. The baselines that run outside Ray are started at the
# same niceness: on an idle machine this changes nothing, on a shared one it keeps other users'
# load from favouring one side of a comparison.
RAY_WORKER_NICENESS = 15


def match_ray_priority() -> None:
    """In a baseline's child process: take the niceness the parent asked for (FARM_BENCH_NICE)."""
    wanted = int(os.environ.get("FARM_BENCH_NICE", "0"))
    current = os.nice(0)
    if wanted > current:
        os.nice(wanted - current)


def bench_env(nice: int | None = None) -> dict[str, str]:
    """Environment for every child process: offline, no usage reporting, loopback-only Ray, and
    OMP_NUM_THREADS=1, which Ray sets in any one-CPU actor: every side's torch starts from the same
    OpenMP setting, then takes its thread count from torch.set_num_threads."""
    env = dict(os.environ)
    if nice is not None:
        env["FARM_BENCH_NICE"] = str(nice)
    env.update(HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCHMARKS), env.get("PYTHONPATH")) if p)
    return env


def tiny_model_folder() -> Path:
    """The tiny I2VGen-XL in diffusers format (built once, cached like `farm run --model tiny`)."""
    from farm.models.loading import cache_dir
    from farm.models.tiny import ensure_tiny_model

    return ensure_tiny_model(cache_dir())


def write_items(folder: Path, count: int) -> list[dict]:
    """`count` distinct 640x480 PNG stills with a prompt and a seed each; returns the items."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:480, 0:640]
    items = []
    for n in range(count):
        base = rng.integers(0, 256, 3)
        slope = rng.uniform(-0.4, 0.4, (2, 3))
        pixels = base + x[..., None] * slope[0] + y[..., None] * slope[1]
        pixels += rng.normal(0, 8, pixels.shape)  # texture, so the PNGs are photo-sized
        path = folder / f"still-{n:03d}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        items.append({"id": f"shot-{n:03d}", "image": str(path), "prompt": f"a slow pan across scene {n}", "seed": 1000 + n})
    return items


def write_manifest(path: Path, name: str, items: list[dict], settings: Settings) -> Path:
    document = {
        "version": 1,
        "name": name,
        "model": "tiny",
        "defaults": {
            "resolution": settings.resolution,
            "aspect": "1:1",
            "frames": settings.frames,
            "steps": settings.steps,
            "fps": settings.fps,
            "guidance_scale": settings.guidance_scale,
        },
        "items": items,
    }
    path.write_text(json.dumps(document, indent=1))
    return path


def bench_inputs(name: str, count: int, settings: Settings) -> tuple[Path, list[dict], Path]:
    """A scratch folder (removed at exit) with `count` stills, their manifest (bench.json) and the
    items as JSON (items.json, for the baselines); the tiny model built first, outside any timing."""
    import atexit

    tiny_model_folder()
    work = Path(tempfile.mkdtemp(prefix=f"farm-bench-{name}-"))
    atexit.register(shutil.rmtree, work, True)
    items = write_items(work / "inputs", count)
    manifest = write_manifest(work / "bench.json", "bench", items, settings)
    (work / "items.json").write_text(json.dumps(items))
    return work, items, manifest


def farm_command() -> list[str]:
    """The `farm` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("farm")
    return [str(script)] if script.exists() else [sys.executable, "-m", "farm"]


@dataclass
class FarmRun:
    started: float  # time.time() when the process was launched
    ended: float  # ... and when it had exited
    load_s: float  # the workers' model load (job.json)
    commits: list[float]  # each item's commit time (its sidecar's mtime), sorted
    cpu: dict[str, float] | None = None  # CPU seconds by process group, first to last-but-one commit

    @property
    def wall_s(self) -> float:
        return self.ended - self.started


def _cpu_by_group(root_pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds of `root_pid` and its descendants, each labelled with its group."""
    import psutil

    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    seen = {}
    for process in processes:
        try:
            name = " ".join(process.cmdline()) or process.name()
            times = process.cpu_times()
        except psutil.Error:
            continue
        seconds = times.user + times.system
        if name.startswith("ray::RenderWorker"):  # its ffmpeg encoders count once reaped
            group, seconds = "render worker", seconds + times.children_user + times.children_system
        elif "ffmpeg" in name:
            group = "render worker"
        elif process.pid == root_pid:
            group = "farm driver"
        else:
            group = "Ray processes"
        seen[process.pid] = (group, seconds)
    return seen


def run_farm(manifest: Path, output: Path, *, workers: int = 1, cpu_profile: bool = False) -> FarmRun:
    """`farm run MANIFEST --output OUTPUT --model tiny --workers N` in a subprocess, timed.

    With `cpu_profile`, the CPU time of farm's processes (render worker, Ray's own processes, the
    farm driver) is sampled when the first and the last-but-one item commit (the worker is stopped
    right after the last), polling a few times a second."""
    if output.exists():
        shutil.rmtree(output)
    document = json.loads(manifest.read_text())
    name = document["name"]
    sidecars = [output / name / f"{item['id']}.json" for item in document["items"]]
    command = [*farm_command(), "run", str(manifest), "--output", str(output), "--model", "tiny", "--workers", str(workers)]
    with tempfile.TemporaryFile("w+") as log:
        started = time.time()
        process = subprocess.Popen(command, env=bench_env(), stdout=log, stderr=subprocess.STDOUT, text=True)
        first = last = None
        while process.poll() is None:
            if cpu_profile and first is None and any(p.exists() for p in sidecars):
                first = _cpu_by_group(process.pid)
            elif cpu_profile and first is not None and last is None and sum(p.exists() for p in sidecars) >= len(sidecars) - 1:
                last = _cpu_by_group(process.pid)
            time.sleep(0.2 if cpu_profile else 0.05)
        ended = time.time()
        if process.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"farm run failed ({process.returncode}):\n{log.read()[-4000:]}")
    record = json.loads((output / name / "job.json").read_text())
    counts = record["counts"]
    if counts["succeeded"] != counts["total"]:
        raise RuntimeError(f"farm run did not render every item: {counts}")
    # An item is committed when its sidecar lands (LocalStore writes it last, atomically).
    commits = sorted(p.stat().st_mtime_ns / 1e9 for p in sidecars)
    loads = [w.get("load_seconds") or 0.0 for w in record["workers"].values()]
    cpu = None
    if first and last:
        cpu = {}
        for pid, (group, seconds) in last.items():
            cpu[group] = cpu.get(group, 0.0) + seconds - first.get(pid, (group, 0.0))[1]
    return FarmRun(started, ended, max(loads), commits, cpu)


def steady_rate(done_times: list[float]) -> float:
    """Items per second between the first and the last finished item (start-up excluded)."""
    return (len(done_times) - 1) / (done_times[-1] - done_times[0])


def paired_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median of the per-repeat ratios. Each repeat runs both sides back to back, so a ratio
    within a repeat is less exposed to a shared machine's load drifting over minutes."""
    return statistics.median(a / b for a, b in zip(numerators, denominators))


def alternate_runs(repeats: int, quiet_wait_s: float, sides: dict) -> dict[str, list[tuple]]:
    """Run each side (name -> a callable returning one row) once per repeat, the order reversed
    on every other repeat. A row starts (wall s, steady items/s, launch to first item s)."""
    rows: dict[str, list[tuple]] = {name: [] for name in sides}
    names = list(sides)
    for run in range(repeats):
        for name in names if run % 2 == 0 else names[::-1]:
            note = wait_for_quiet(quiet_wait_s)
            rows[name].append(sides[name]())
            wall, rate, first = rows[name][-1][:3]
            print(f"  run {run + 1} {name}: {wall:.1f} s, first item after {first:.1f} s, {rate * 60:.2f} items/min "
                  f"steady; {note}", file=sys.stderr)
    return rows


def compare(rows: dict[str, list[tuple]], farm: str, baseline: str) -> tuple[dict[str, list[float]], float, float]:
    """(median of each row field per side, farm / baseline end to end, farm / baseline steady)."""
    medians = {name: [statistics.median(column) for column in zip(*runs)] for name, runs in rows.items()}
    walls = {name: [row[0] for row in runs] for name, runs in rows.items()}
    rates = {name: [row[1] for row in runs] for name, runs in rows.items()}
    # Throughput ratio end to end = the baseline's wall time / farm's.
    return medians, paired_ratio(walls[baseline], walls[farm]), paired_ratio(rates[farm], rates[baseline])


def phases(started: float, done_times: list[float], ended: float) -> tuple[float, float, float]:
    """(launch to first item done, first to last item done, last item done to exit), seconds."""
    return done_times[0] - started, done_times[-1] - done_times[0], ended - done_times[-1]


def fit_to_frame(image, width: int, height: int):
    """Center crop to the aspect, then Lanczos resize (what any preprocessing script does)."""
    from PIL import Image

    src_w, src_h = image.size
    if src_w / src_h > width / height:
        crop_w = round(src_h * width / height)
        box = ((src_w - crop_w) // 2, 0, (src_w - crop_w) // 2 + crop_w, src_h)
    else:
        crop_h = round(src_w * height / width)
        box = (0, (src_h - crop_h) // 2, src_w, (src_h - crop_h) // 2 + crop_h)
    return image.resize((width, height), Image.Resampling.LANCZOS, box=box)


class BarePipeline:
    """I2VGen-XL straight from diffusers, no farm: load once, render (image, prompt, seed) to MP4.

    The only deviation from a plain `pipe(image=..., prompt=...)` call is the prompt conditioning:
    with transformers >= 5.6 the pipeline's own `clip_skip=1` path raises AttributeError, so the
    penultimate CLIP layer (through the final layer norm) is computed here and passed as
    `prompt_embeds`, as any script on current libraries must. Decoding uses 4 frames per VAE call,
    as farm does, and frames are encoded with farm's encoder settings (libx264, CRF 18).
    """

    def __init__(self, folder: str | Path, threads: int | None = None):
        import torch
        from diffusers import I2VGenXLPipeline
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
        torch.set_num_threads(threads or int(os.environ.get("FARM_CPU_THREADS") or 0) or os.cpu_count())
        started = time.perf_counter()
        self.pipe = I2VGenXLPipeline.from_pretrained(str(folder), dtype=torch.float32)
        self.pipe.set_progress_bar_config(disable=True)
        self.load_s = time.perf_counter() - started

    def _embed(self, text: str):
        import torch

        tokenizer, encoder = self.pipe.tokenizer, self.pipe.text_encoder
        ids = tokenizer([text], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            hidden = encoder(ids, output_hidden_states=True).hidden_states[-2]
            return getattr(encoder, "text_model", encoder).final_layer_norm(hidden)

    def render(self, image_path: str, prompt: str, seed: int, settings: Settings, output: str | Path) -> None:
        import torch
        from PIL import Image

        from farm.media.video import encode_mp4, to_uint8

        image = fit_to_frame(Image.open(image_path).convert("RGB"), *settings.size)
        torch.manual_seed(seed)  # the pipeline samples the image latents from the global RNG
        frames = self.pipe(
            image=image,
            prompt_embeds=self._embed(prompt),
            negative_prompt_embeds=self._embed(""),
            height=settings.size[1],
            width=settings.size[0],
            num_frames=settings.frames,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            target_fps=settings.fps,
            decode_chunk_size=4,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
        ).frames[0]
        encode_mp4(to_uint8(frames), str(output), settings.fps)


def run_child(script: str, arguments: list[str], *, nice: int | None = None) -> dict:
    """Run `python benchmarks/SCRIPT ARGS` in a fresh process; its last stdout line (JSON), plus
    `started` and `ended` (time.time() at launch and after exit)."""
    command = [sys.executable, str(BENCHMARKS / script), *arguments]
    started = time.time()
    result = subprocess.run(command, check=False, env=bench_env(nice), capture_output=True, text=True)
    ended = time.time()
    if result.returncode != 0:
        raise RuntimeError(f"{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "started": started, "ended": ended}


def parse_settings(text: str) -> Settings:
    return Settings(**json.loads(text))


def same_videos(a: Path, b: Path, ids: list[str]) -> int:
    """How many items have byte-identical MP4s in folders `a` and `b` (ID.mp4 in both)."""
    return sum((a / f"{i}.mp4").read_bytes() == (b / f"{i}.mp4").read_bytes() for i in ids)
