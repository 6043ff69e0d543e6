"""BENCHMARK ONLY: a render worker that does not render. It sleeps, then commits a canned clip.

`SleepRenderWorker` is a Ray actor with the interface farm's engine expects from
`farm.runtime.workers.RenderWorker` (`info`, `render`, `flush`, with the same WorkerReply), used
by `benchmarks/scale.py` to measure farm's scheduling on dozens of simulated GPUs without a model.
It lives in `benchmarks/` on purpose: nothing in `farm/` imports it, `start_workers` cannot start
it, and no manifest, flag or setting can select it. Everything it writes says so (the sidecar's
`renderer` field, its `device`, its model id).

Per task it sleeps `frames * seconds_per_frame / speed`, where `speed` is its node's simulated
GPU speed (`FARM_BENCH_SPEED` in the node's environment; the tier comes from `FARM_GPU_VRAM_GB`,
exactly as for a simulated farm worker). Then it hands the item to farm's real commit path
(`farm.renderer.BackgroundCommits` -> `ItemRenderer.commit` -> `farm.storage.commit.commit_item`:
staging uploads, conditional sidecar, promotion), so storage and the background-upload protocol
(commit reports through the mailbox, `flush` at the end) are exercised as in production.

The tiny MP4 (and its JPEG thumbnail) is encoded ONCE per actor with `farm.media.video.encode_mp4`
and the same file is committed for every item: running ffmpeg for each of thousands of items on
a 2-core machine would measure ffmpeg, not scheduling. No torch, no diffusers: 64 of these must
fit on 2 cores.

The canned clip is 64x64, 8 frames at 8 fps (a moving gradient) unless `FARM_BENCH_CLIP` in the
actor's environment says `WIDTHxHEIGHTxFRAMES` (optionally `@FPS`), e.g. `512x512x16@8` for
`benchmarks/deliverables_throughput.py`, whose deliverables must start from a render of a real
size: such a clip is a textured still panning across the frame with mild grain (seeded, the
same for every actor), so the encoders downstream have real detail and motion to code.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import threading
import time
from types import SimpleNamespace

import numpy as np
import ray

from farm.core.contracts import ItemOutcome, RenderTask, WorkerReply
from farm.core.sidecar import build_sidecar, outputs_record
from farm.core.states import SUCCEEDED
from farm.core.tiers import load_tier_table
from farm.core.vram import I2VGENXL_PROFILE
from farm.media.video import encode_mp4, write_thumbnail
from farm.models.memory import detect_card, device_memory
from farm.renderer import BackgroundCommits, ItemRenderer, Produced
from farm.runtime.workers import RenderWorkerImpl
from farm.settings import load_settings
from farm.storage.config import StorageConfig

LABEL = "BENCHMARK ONLY: benchmarks/sleep_worker.py sleeps instead of rendering"
SPEED_ENV = "FARM_BENCH_SPEED"
CLIP_ENV = "FARM_BENCH_CLIP"
CLIP_FRAMES, CLIP_SIZE, CLIP_FPS = 8, 64, 8  # the default clip (scale.py's)


def clip_shape(text: str | None) -> tuple[int, int, int, int] | None:
    """`WIDTHxHEIGHTxFRAMES[@FPS]` -> (width, height, frames, fps); None for the default clip."""
    import re

    if not text:
        return None
    match = re.fullmatch(r"(\d+)x(\d+)x(\d+)(?:@(\d+))?", text.strip())
    if not match:
        raise ValueError(f"{CLIP_ENV}={text!r}: expected WIDTHxHEIGHTxFRAMES[@FPS], e.g. 512x512x16@8")
    width, height, frames = (int(v) for v in match.groups()[:3])
    fps = int(match.group(4) or CLIP_FPS)
    if width % 2 or height % 2 or not (16 <= width <= 4096 and 16 <= height <= 4096) or not 1 <= frames <= 512:
        raise ValueError(f"{CLIP_ENV}={text!r}: even sides of 16-4096 pixels and 1-512 frames")
    return width, height, frames, fps


def default_clip() -> np.ndarray:
    """scale.py's clip: 8 frames of a moving 64x64 gradient."""
    x = np.arange(CLIP_SIZE)
    frames = np.empty((CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, 3), np.uint8)
    for f in range(CLIP_FRAMES):  # a moving gradient: a valid, visibly non-empty clip
        frames[f, :, :, 0] = (x[None, :] * 4 + f * 16) % 256
        frames[f, :, :, 1] = (x[:, None] * 4) % 256
        frames[f, :, :, 2] = 128
    return frames


def textured_clip(width: int, height: int, count: int) -> np.ndarray:
    """A render-sized clip: a smooth random texture (a still's detail) panning 4 px per frame,
    with mild per-frame grain. Seeded: every actor encodes the same clip."""
    rng = np.random.default_rng(19)
    pan = 4 * count
    y, x = np.mgrid[0:height, 0:width + pan].astype(np.float32)
    still = np.zeros((height, width + pan, 3), np.float32)
    for _ in range(12):  # a few oriented waves per channel: soft shapes, edges, colour
        fx, fy = rng.uniform(-0.05, 0.05, 2)
        phase, amplitude = rng.uniform(0, 2 * np.pi), rng.uniform(10, 30)
        still[..., rng.integers(3)] += amplitude * np.sin(fx * x + fy * y + phase)
    still += rng.uniform(70, 170, 3)
    frames = np.empty((count, height, width, 3), np.uint8)
    for f in range(count):
        grain = rng.normal(0, 4, (height, width, 3)).astype(np.float32)
        frames[f] = np.clip(still[:, 4 * f:4 * f + width] + grain, 0, 255).astype(np.uint8)
    return frames


class _SleepAdapter:
    """The few attributes of a model adapter that ItemRenderer and the engine read."""

    profile = I2VGENXL_PROFILE  # the simulated card's memory figures, as for a simulated farm worker
    device = "benchmark-sleep"
    load_seconds = 0.0
    config_sha256 = "benchmark-sleep-renderer"
    model = SimpleNamespace(ref="benchmark-sleep")  # planned and estimated as I2VGen-XL

    def describe(self) -> dict:
        return {"id": "benchmark-sleep", "source": LABEL, "config_sha256": self.config_sha256, "dtype": None}


class _CannedClip:
    """`Produced.scratch`: the clip is shared by every item of this actor, nothing to remove per item."""

    def cleanup(self) -> None:
        pass


class _TimedRenderer(ItemRenderer):
    """farm's ItemRenderer, its commit timestamped (wall clock) for the benchmark's makespan."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.commit_log: list[tuple[str, str, float]] = []  # (item, status, when)
        self._log_lock = threading.Lock()

    def commit(self, produced: Produced) -> ItemOutcome:
        outcome = super().commit(produced)
        with self._log_lock:
            self.commit_log.append((outcome.item_id, outcome.status, time.time()))
        return outcome


class SleepRenderWorkerImpl:
    """BENCHMARK ONLY (see the module docstring): sleeps `frames * seconds_per_frame / speed`."""

    def __init__(self, name: str, seconds_per_frame: float, advertised_tier: str | None = None,
                 scratch: str | None = None, mailbox=None):
        self.name = name
        self.mailbox = mailbox  # commit reports, as RenderWorker's
        self.seconds_per_frame = float(seconds_per_frame)
        self.speed = float(os.environ.get(SPEED_ENV, "1"))
        vram_gb = load_settings().workers.gpu_vram_gb  # this node's FARM_GPU_VRAM_GB -> tier
        self.card = detect_card("cpu", load_tier_table(), advertised_tier, vram_gb)
        self.adapter = _SleepAdapter()
        self.renderer = _TimedRenderer(self.adapter, worker_name=name, card=self.card)
        self.commits = BackgroundCommits(self.renderer, StorageConfig().upload_queue, on_commit=self._report_commits)
        self.folder = tempfile.mkdtemp(prefix="farm-bench-clip-", dir=scratch)  # scratch: removed by the caller
        self.files = {"video": os.path.join(self.folder, "video.mp4"), "thumbnail": os.path.join(self.folder, "thumb.jpg")}
        shape = clip_shape(os.environ.get(CLIP_ENV))
        if shape is None:
            self.clip = (CLIP_SIZE, CLIP_SIZE, CLIP_FRAMES, CLIP_FPS)
            frames = default_clip()
        else:
            self.clip = shape
            frames = textured_clip(*shape[:3])
        encode_mp4(frames, self.files["video"], self.clip[3])
        write_thumbnail(frames[0], self.files["thumbnail"])
        self.sizes = {name: os.path.getsize(path) for name, path in self.files.items()}
        # (kind, item_id, received, sleep_start, sleep_end, returned): wall clock, for scale.py
        self.events: list[tuple] = []

    # --- the RenderWorker interface ------------------------------------------------------------

    def info(self, measure_memory: bool = False) -> dict:
        context = ray.get_runtime_context()
        info = {
            "name": self.name,
            "ok": True,
            "error": None,
            "device": self.adapter.device,
            # No model id: the engine's dispatch then gives this worker any model's items and never
            # asks it to switch (it has no switch_model); its sidecars still say benchmark-sleep.
            "model": {**self.adapter.describe(), "id": None},
            "load_seconds": 0.0,
            "card": self.card.to_dict(),
            "tier": self.card.tier,
            "node_id": context.get_node_id(),
            "pid": os.getpid(),
            "memory_baseline_bytes": 0,
            "benchmark_only": LABEL,
            "speed": self.speed,
            "seconds_per_frame": self.seconds_per_frame,
            "clip": "x".join(map(str, self.clip[:3])) + f"@{self.clip[3]}",
            "clip_bytes": self.sizes["video"],
            "torch_imported": "torch" in sys.modules or "diffusers" in sys.modules,
        }
        if measure_memory:
            info["memory_allocated_bytes"] = 0
        return info

    def render(self, task: RenderTask) -> WorkerReply:
        """Sleep for the item, queue its commit; a WorkerReply as RenderWorker's."""
        received, started = time.time(), time.perf_counter()
        task_obj = task
        settings = task.settings.to_dict()
        frames = task.settings.frames
        seconds = frames * self.seconds_per_frame / self.speed
        sleep_start = time.time()
        time.sleep(seconds)
        sleep_end = time.time()
        outcome = ItemOutcome(
            item_id=task_obj.item_id,
            status=SUCCEEDED,
            settings=settings,
            timings={"sleep": round(seconds, 4)},
            frames=frames,
            memory_kind="benchmark-sleep",
        )
        sidecar = self._sidecar(task_obj, settings, frames, seconds)
        self.commits.submit(Produced(task_obj, _CannedClip(), dict(self.files), sidecar, outcome, started))
        reply = self._reply([])
        self.events.append(("render", task_obj.item_id, received, sleep_start, sleep_end, time.time()))
        return reply

    def flush(self) -> WorkerReply:
        received = time.time()
        reply = self._reply(self.commits.flush())
        self.events.append(("flush", None, received, received, received, time.time()))
        return reply

    _report_commits = RenderWorkerImpl._report_commits  # the same reports to the mailbox

    _reply = RenderWorkerImpl._reply  # the same replies

    def memory(self) -> dict:
        return device_memory(self.adapter, self.card)

    # --- for the benchmark only --------------------------------------------------------------

    def timeline(self) -> dict:
        """What happened on this worker: calls, commits, and the process's resident memory."""
        with open("/proc/self/statm") as handle:
            rss = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return {"name": self.name, "events": list(self.events), "commits": list(self.renderer.commit_log), "rss": rss}

    def reset(self) -> None:
        self.commits.flush()
        self.events.clear()
        self.renderer.commit_log.clear()

    def _sidecar(self, task: RenderTask, settings: dict, frames: int, seconds: float) -> dict:
        """farm's own sidecar builder, with what this worker did (slept) said in `renderer`."""
        return build_sidecar(
            task,
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            renderer=LABEL,
            effective=settings,
            model=self.adapter.describe(),
            device={"type": self.adapter.device, "worker": self.name, "host": platform.node()},
            tier={"planned": task.planned_tier, "ran_on": self.card.tier, "simulated": True, "speed": self.speed},
            timings_seconds={"sleep": round(seconds, 4)},
            outputs=outputs_record(task.item_id, self.sizes, frames=self.clip[2], requested_frames=frames,
                                   width=self.clip[0], height=self.clip[1], fps=self.clip[3]),
        )


SleepRenderWorker = ray.remote(max_restarts=0, max_task_retries=0)(SleepRenderWorkerImpl)
