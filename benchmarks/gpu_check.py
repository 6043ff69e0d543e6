"""Check one GPU with farm's own render path, and measure what the planner can only estimate.

    python benchmarks/gpu_check.py --out gpu-check            # on a CUDA machine, at most ~9 min
    python benchmarks/gpu_check.py --dry-run --out /tmp/gc    # the whole script on the CPU, tiny model

It needs no internet: the model is the full-size random-weight I2VGen-XL
(`random:ali-vilab/i2vgen-xl`, the published architecture) unless `--model` names a folder of
real weights. Every render goes through farm's `ItemRenderer`, the code a worker runs, so its
sidecars are real ones. Sections, each recorded in gpu_check.json and gpu_check.md:

1. load: the model saved with only `variant="fp16"` weight files (as a Hub download with that
   variant leaves it), then loaded from that folder as `--model DIR` would, once per precision;
2. steps: seconds per denoise step (CUDA events around each UNet call, warm-up calls excluded)
   and model FLOP utilisation at 512x512x16, 768x768x24 and 1024x1024x32 in fp16 and bf16,
   with the VAE decode time of the same renders;
3. memory: measured peak allocated/reserved memory per phase against `estimate_vram`, at each
   size without and with each memory-saver level;
4. oom: the process capped to 12 GiB (FARM_GPU_VRAM_GB, the workers' own cap); a 768x768x24
   render climbs the degrade ladder and succeeds; memory after each OOM against the baseline;
5. end_to_end: the seeds' `standard` preset (512p, 16 frames, 50 steps) from image to MP4;
6. calibration: `farm calibrate` on the sidecars, writing vram-calibration.json.

A section that would start after `--budget-s` is skipped and recorded as skipped. The dry run
uses the tiny model at small sizes (the OOM on a simulated 12 GiB-class card instead of a real
cap), so this script keeps working; a test runs it.

Imports beyond the standard library happen inside functions: on a machine with torch but not
diffusers, pydantic or imageio-ffmpeg, carry those as wheels (docs/gpu.md says how).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GIB = 1024**3
RANDOM_MODEL = "random:ali-vilab/i2vgen-xl"
JOB = "gpu-check"
STEPS = 10  # the fewest a manifest accepts; the first WARMUP UNet calls of each render are not timed
WARMUP_CALLS = 2
CAP_GIB = 12
OOM_SHAPE = (768, 24)  # resolution (1:1) and frames of the capped render
# Dense fp16/bf16 tensor-core peaks (TFLOP/s, without sparsity) from the vendors' data sheets.
SPEC_PEAK_TFLOPS = {
    "H200": 989.4, "H100 PCIe": 756.5, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0,
    "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.2, "RTX 3090": 71.0, "V100": 125.0,
}


class Plan:
    """What to run: the real check on CUDA, or the dry run on the CPU with the tiny model."""

    def __init__(self, dry_run: bool, model: str | None):
        import torch

        self.dry_run = dry_run
        self.device = "cpu" if dry_run else "cuda"
        if not dry_run and not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device here; run with --dry-run to check the script on the CPU")
        self.model = model or ("tiny" if dry_run else RANDOM_MODEL)
        if dry_run:
            self.sizes = [(256, "1:1", 8), (256, "16:9", 8)]
            self.precisions = ["fp32", "bf16"]
            self.oom_shape = (256, 8)
            self.end_to_end = {"preset": "standard", "resolution": 256, "frames": 8, "steps": STEPS}
        else:
            self.sizes = [(512, "1:1", 16), (768, "1:1", 24), (1024, "1:1", 32)]
            self.precisions = ["fp16", "bf16"] if torch.cuda.is_bf16_supported() else ["fp16"]
            self.oom_shape = OOM_SHAPE
            self.end_to_end = {"preset": "standard"}
        # What `auto` picks on this device: fp32 on the CPU, bf16 where the GPU supports it.
        self.primary = self.precisions[0] if dry_run else self.precisions[-1]
        self.real_flops = self.model != "tiny"  # farm's FLOP count is the real UNet's, not the tiny one's


class Clock:
    """Times one module's forward calls: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, module, on_cuda: bool):
        self.on_cuda = on_cuda
        self.pairs: list = []
        self._handles = [module.register_forward_pre_hook(self._start), module.register_forward_hook(self._stop)]

    def _now(self):
        if self.on_cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _start(self, module, args):
        self.pairs.append([self._now(), None])

    def _stop(self, module, args, output):
        self.pairs[-1][1] = self._now()

    def take(self) -> list[float]:
        """Seconds of each call since the last take."""
        if self.on_cuda:
            import torch

            torch.cuda.synchronize()
            seconds = [start.elapsed_time(end) / 1000 for start, end in self.pairs if end is not None]
        else:
            seconds = [end - start for start, end in self.pairs if end is not None]
        self.pairs = []
        return seconds

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class Check:
    def __init__(self, plan: Plan, out: Path, work: Path, budget_s: float):
        self.plan, self.out, self.work, self.budget_s = plan, out, work, budget_s
        self.started = time.perf_counter()
        self.output_root = work / "output"
        self.image = work / "still.png"
        self.report: dict = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "mode": "dry-run" if plan.dry_run else "gpu",
            "model": plan.model,
            "skipped": [],
        }

    # --- helpers ---------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def within_budget(self, what: str) -> bool:
        if self.elapsed() < self.budget_s:
            return True
        self.report["skipped"].append(f"{what}: past the {self.budget_s:.0f} s budget at {self.elapsed():.0f} s")
        return False

    def task(self, item_id: str, resolution: int, aspect: str, frames: int, *, level: int = 0, **params):
        from farm.core.job import RenderTask
        from farm.core.ladder import RenderSettings
        from farm.core.manifest import parse_manifest

        item = {"id": item_id, "image": self.image.name, "prompt": "a slow pan across the scene",
                "resolution": resolution, "aspect": aspect, "frames": frames, **params}
        document = {"version": 1, "name": JOB, "model": self.plan.model, "output": str(self.output_root),
                    "defaults": {"steps": STEPS}, "items": [item]}
        spec = parse_manifest(json.dumps(document), "json", base_dir=self.work)
        parsed = spec.items[0]
        settings = RenderSettings(parsed.params.resolution, parsed.params.aspect, parsed.params.frames, level)
        return RenderTask.for_item(spec, parsed, planned_tier="check", settings=settings)

    def sidecar(self, item_id: str) -> dict:
        return json.loads((self.output_root / JOB / f"{item_id}.json").read_text())

    def card(self, declared_gib: float | None = None):
        """The worker's card as a worker finds it, optionally declared smaller (the cap)."""
        from farm.core.tiers import load_tier_table
        from farm.models.memory import detect_card

        return detect_card(self.plan.device, load_tier_table(), None, declared_gib)

    # --- sections --------------------------------------------------------------------------

    def environment(self) -> None:
        import torch

        from farm.models.memory import gpu_description

        info = {"python": platform.python_version(), "torch": torch.__version__, "host_cpus": os.cpu_count()}
        for module in ("diffusers", "transformers", "pydantic", "imageio_ffmpeg"):
            try:
                info[module] = __import__(module).__version__
            except Exception as exc:  # recorded, and the section that needs it fails visibly
                info[module] = f"missing ({type(exc).__name__})"
        if self.plan.device == "cuda":
            info["gpu"] = gpu_description("cuda")
            info["bf16_supported"] = bool(torch.cuda.is_bf16_supported())
        self.report["environment"] = info
        self.report["matmul_tflops"] = {name: round(matmul_tflops(self.plan.device, name), 1) for name in self.plan.precisions}

    def save_model(self) -> Path:
        """The weights as a `variant="fp16"` download leaves them: only *.fp16.* files."""
        import torch

        from farm.models.loading import RANDOM_PREFIX, cache_dir, resolve_model

        started = time.perf_counter()
        if self.plan.model.startswith(RANDOM_PREFIX):
            from farm.models.fullsize import ensure_random_model

            folder = ensure_random_model(cache_dir(), self.plan.model[len(RANDOM_PREFIX):],
                                         device=self.plan.device, dtype=torch.float16)
            how = "built on the device in fp16 and saved with variant=fp16 (farm's cache)"
        else:
            from diffusers import I2VGenXLPipeline

            source = resolve_model(self.plan.model, variant="fp16").path
            folder = self.work / "fp16-variant"
            pipeline = I2VGenXLPipeline.from_pretrained(source, dtype=torch.float16)
            pipeline.save_pretrained(folder, variant="fp16")
            del pipeline
            how = f"{self.plan.model} saved again with variant=fp16"
        weights = sorted(p.relative_to(folder).as_posix() for p in folder.glob("*/*.safetensors"))
        self.report["load"] = {
            "folder": how,
            "build_and_save_s": round(time.perf_counter() - started, 2),
            "weight_files": weights,
            "only_variant_files": bool(weights) and all(".fp16." in w for w in weights),
            "bytes_on_disk": sum((folder / w).stat().st_size for w in weights),
            "loads": {},
        }
        return folder

    def load(self, folder: Path, precision_name: str):
        import torch

        from farm.models.i2vgen import I2VGenXLAdapter
        from farm.models.precision import choose_precision

        on_cuda = self.plan.device == "cuda"
        precision = choose_precision(precision_name, on_cuda=on_cuda,
                                     bf16_supported=on_cuda and torch.cuda.is_bf16_supported() or not on_cuda)
        adapter = I2VGenXLAdapter.load(str(folder), device=self.plan.device, precision=precision)
        self.report["load"]["loads"][precision_name] = {
            "seconds": round(adapter.load_seconds, 2),
            "weight_variant": adapter.weight_variant,
            "dtype": adapter.dtype_name,
            "vae_decode_dtype": adapter.describe()["vae_decode_dtype"],
            "allocated_after_load_bytes": allocated(self.plan.device),
        }
        return adapter

    def render(self, renderer, task) -> dict | None:
        """The committed sidecar; None, with the failure recorded, when the item did not succeed
        (the check goes on: one failed shape or precision must not hide the others)."""
        outcome = renderer.render(task)
        if outcome.status != "succeeded":
            self.report.setdefault("failures", []).append(
                {"item": task.item_id, "status": outcome.status, "reason": outcome.reason, "message": outcome.message}
            )
            return None
        return self.sidecar(task.item_id)

    def steps_and_memory(self, adapter, precision_name: str, levels: range) -> None:
        from farm.core.vram import SAVER_LEVELS, unet_flop_per_step
        from farm.renderer import ItemRenderer

        renderer = ItemRenderer(adapter, worker_name="gpu-check", card=self.card())
        on_cuda = self.plan.device == "cuda"
        unet_clock = Clock(adapter.pipeline.unet, on_cuda)
        decode_clock = Clock(adapter.pipeline.vae.decoder, on_cuda)
        peak = self.report["matmul_tflops"].get(precision_name)
        spec = spec_peak(self.report["environment"].get("gpu", {}).get("name", ""))
        try:
            for level in levels:
                for resolution, aspect, frames in self.plan.sizes:
                    item_id = f"{precision_name}-{resolution}-{aspect.replace(':', 'x')}-{frames}f-L{level}"
                    if not self.within_budget(f"steps/memory {item_id}"):
                        return
                    # Cached blocks of the previous (larger) render would show as this one's reserved peak.
                    release(self.plan.device)
                    unet_clock.take(), decode_clock.take()
                    sidecar = self.render(renderer, self.task(item_id, resolution, aspect, frames, level=level))
                    unet_calls, decode_calls = unet_clock.take(), decode_clock.take()
                    if sidecar is None:
                        continue
                    width, height = sidecar["effective"]["width"], sidecar["effective"]["height"]
                    memory = sidecar["memory"]
                    point = memory_point(memory, width, height, frames, level, SAVER_LEVELS[level], precision_name)
                    self.report.setdefault("memory", []).append(point)
                    if level != 0:
                        continue
                    timed = unet_calls[WARMUP_CALLS:]
                    seconds = statistics.median(timed)
                    flop = unet_flop_per_step(adapter.profile, width, height, frames, guidance=True) if self.plan.real_flops else None
                    achieved = flop / seconds / 1e12 if flop else None
                    self.report.setdefault("steps", []).append({
                        "precision": precision_name, "width": width, "height": height, "frames": frames,
                        "timed_calls": len(timed), "seconds_per_step": round(seconds, 4),
                        "seconds_per_step_min_max": [round(min(timed), 4), round(max(timed), 4)],
                        "model_tflop_per_step": round(flop / 1e12, 2) if flop else None,
                        "achieved_tflops": round(achieved, 1) if achieved else None,
                        "mfu_of_spec_peak": round(achieved / spec, 4) if achieved and spec else None,
                        "fraction_of_measured_matmul": round(achieved / peak, 4) if achieved and peak else None,
                        "decode_seconds": round(sum(decode_calls), 3),
                        "decode_dtype": adapter.describe()["vae_decode_dtype"],
                        "render_timings_s": sidecar["timings_seconds"],
                    })
        finally:
            unet_clock.remove()
            decode_clock.remove()
            adapter.apply_savers(())

    def oom(self, adapter) -> None:
        """A render that does not fit the capped card climbs the ladder and succeeds."""
        from farm.core.vram import SAVER_LEVELS, estimate_vram
        from farm.models.memory import CardInfo, apply_memory_cap
        from farm.renderer import ItemRenderer

        resolution, frames = self.plan.oom_shape
        estimates = [estimate_vram(adapter.profile, resolution, resolution, frames, savers=s).total_bytes for s in SAVER_LEVELS]
        if self.plan.device == "cuda":
            card = self.card(CAP_GIB)
            apply_memory_cap(card, self.plan.device)
            how = f"torch.cuda.set_per_process_memory_fraction({card.cap_fraction:.4f}) (FARM_GPU_VRAM_GB={CAP_GIB})"
        else:  # no allocator to cap: the simulated card raises torch.OutOfMemoryError from the estimate
            budget = (estimates[0] + estimates[2]) // 2
            card = CardInfo("check", budget, budget, "FARM_GPU_VRAM_GB", True)
            how = f"simulated card of {budget / GIB:.2f} GiB (no CUDA allocator to cap on the CPU)"
        renderer = ItemRenderer(adapter, worker_name="gpu-check", card=card)
        baseline = allocated(self.plan.device)
        started = time.perf_counter()
        try:
            outcome = renderer.render(self.task(f"oom-{resolution}-{frames}f", resolution, "1:1", frames))
        finally:
            if self.plan.device == "cuda":
                import torch

                torch.cuda.set_per_process_memory_fraction(1.0)
        after = [o.get("allocated_after_bytes") for o in outcome.ooms]
        self.report["oom"] = {
            "cap": how,
            "shape": f"{resolution}x{resolution}x{frames}",
            "estimates_gib_per_saver_level": [round(e / GIB, 2) for e in estimates],
            "status": outcome.status,
            "message": outcome.message,
            "seconds": round(time.perf_counter() - started, 2),
            "ooms": outcome.ooms,
            "degradations": [{k: d[k] for k in ("step", "from", "to") if k in d} for d in outcome.degradations],
            "final_settings": outcome.settings,
            "baseline_allocated_bytes": baseline,
            "allocated_after_each_oom_bytes": after,
            # Back to the baseline: nothing of a failed attempt survives (64 MiB allows the kept latents).
            "back_to_baseline": all(a is None or a - baseline < 64 * 1024**2 for a in after),
        }

    def end_to_end(self, adapter) -> None:
        from farm.renderer import ItemRenderer

        options = dict(self.plan.end_to_end)
        preset = options.pop("preset")
        renderer = ItemRenderer(adapter, worker_name="gpu-check", card=self.card())
        from farm.core.params import PRESETS

        values = {**PRESETS[preset], **options}
        started = time.perf_counter()
        task = self.task(f"end-to-end-{preset}", values.pop("resolution"), "1:1", values.pop("frames"), preset=preset, **values)
        sidecar = self.render(renderer, task)
        if sidecar is None:
            return
        self.report["end_to_end"] = {
            "preset": preset,
            "effective": {k: sidecar["effective"][k] for k in ("width", "height", "frames", "steps", "fps", "guidance_scale")},
            "seconds": round(time.perf_counter() - started, 2),
            "timings_s": sidecar["timings_seconds"],
            "precision": sidecar["model"]["precision"],
            "mp4_bytes": (self.output_root / JOB / f"{task.item_id}.mp4").stat().st_size,
        }

    def calibrate(self) -> None:
        from farm.cli import main as farm

        stdout, stderr = io.StringIO(), io.StringIO()
        target = self.out / "vram-calibration.json"
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = farm(["calibrate", str(self.output_root), "--output", str(target)])
        self.report["calibration"] = {
            "command": f"farm calibrate {self.output_root} --output {target.name}",
            "exit_code": code,
            "output": (stdout.getvalue() + stderr.getvalue()).strip().splitlines(),
            "file": target.name if target.is_file() else None,
        }
        with tarfile.open(self.out / "sidecars.tar.gz", "w:gz") as archive:
            for path in sorted((self.output_root / JOB).glob("*.json")):
                archive.add(path, arcname=f"{JOB}/{path.name}")

    # --- the run ---------------------------------------------------------------------------

    def guarded(self, section: str, call, *args):
        """Run one section; an exception is recorded and the check goes on with the next."""
        try:
            return call(*args)
        except Exception as exc:
            self.report.setdefault("errors", {})[section] = "".join(
                traceback.format_exception_only(type(exc), exc)).strip()[-2000:]
            traceback.print_exc()
            return None

    def run(self) -> dict:
        write_test_image(self.image)
        self.environment()
        folder = self.save_model()  # nothing below can run without the weights
        primary = None
        # The primary precision last, so that it stays loaded for the OOM and end-to-end sections.
        for name in sorted(self.plan.precisions, key=lambda n: n == self.plan.primary):
            if not self.within_budget(f"precision {name}"):
                break
            adapter = self.guarded(f"load {name}", self.load, folder, name)
            if adapter is None:
                continue
            is_primary = name == self.plan.primary
            self.guarded(f"steps/memory {name}", self.steps_and_memory, adapter, name, range(4) if is_primary else range(1))
            if is_primary:
                primary = adapter
            else:
                del adapter
                release(self.plan.device)
        if primary is not None:
            if self.within_budget("oom"):
                self.guarded("oom", self.oom, primary)
            if self.within_budget("end_to_end"):
                self.guarded("end_to_end", self.end_to_end, primary)
        self.guarded("calibration", self.calibrate)
        self.report["seconds"] = round(self.elapsed(), 1)
        return self.report


# --- pure helpers ------------------------------------------------------------------------------


def memory_point(memory: dict, width: int, height: int, frames: int, level: int, savers, precision: str) -> dict:
    """One measured render's peaks beside the estimate (relative error of the estimated peak)."""
    phases = memory.get("phases", {})
    estimate = memory["estimate"]
    figures = {phase: phases.get(phase, {}) for phase in ("denoise", "decode")}
    key = "max_allocated_bytes" if memory["kind"] == "cuda" else "max_rss_bytes"
    measured = max((f.get(key, 0) for f in figures.values()), default=0)
    return {
        "precision": precision, "width": width, "height": height, "frames": frames,
        "saver_level": level, "savers": list(savers), "kind": memory["kind"],
        "measured": {phase: f for phase, f in figures.items() if f},
        "estimate_total_bytes": estimate["total_bytes"],
        "estimate_denoise_bytes": estimate["overhead_bytes"] + estimate["denoise_bytes"],
        "estimate_decode_bytes": estimate["overhead_bytes"] + estimate["decode_bytes"],
        # Only a CUDA figure is comparable; the CPU's RSS holds the whole process.
        "estimate_error": round((estimate["total_bytes"] - measured) / measured, 4) if measured and memory["kind"] == "cuda" else None,
    }


def spec_peak(gpu_name: str) -> float | None:
    for key, tflops in SPEC_PEAK_TFLOPS.items():  # the longer names come first where they overlap
        if key in gpu_name:
            return tflops
    return None


def matmul_tflops(device: str, precision: str) -> float:
    """Measured dense matmul rate in this precision: the practical peak to compare the UNet with."""
    import torch

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    n = 8192 if device == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    repeats = 10
    if device == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            a @ b
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1000
    else:
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        seconds = time.perf_counter() - started
    del a, b
    return 2 * n**3 * repeats / seconds / 1e12


def allocated(device: str) -> int | None:
    if device != "cuda":
        return None
    import torch

    return int(torch.cuda.memory_allocated())


def release(device: str) -> None:
    from farm.models.memory import release_memory

    release_memory(device)


def write_test_image(path: Path) -> None:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (640, 480), (40, 90, 160))
    draw = ImageDraw.Draw(image)
    for x in range(0, 640, 40):
        draw.rectangle([x, 0, x + 19, 479], fill=(200, 120 + x % 100, 60))
    draw.ellipse([220, 140, 420, 340], fill=(250, 240, 200))
    image.save(path)


def gib(value) -> str:
    return f"{value / GIB:.2f}" if value else "-"


def markdown(report: dict) -> str:
    env = report.get("environment", {})
    gpu = env.get("gpu", {})
    lines = [
        f"# gpu_check: {gpu.get('name', 'CPU (dry run)')}, {report['date']}",
        "",
        f"mode {report['mode']}, model `{report['model']}`, torch {env.get('torch')}, "
        f"CUDA {gpu.get('cuda_runtime', '-')}, driver {gpu.get('cuda_driver', '-')}, "
        f"capability {gpu.get('capability', '-')}, diffusers {env.get('diffusers')}; {report.get('seconds')} s in all.",
        f"Measured matmul TFLOP/s: {report.get('matmul_tflops')}",
        "",
    ]
    load = report.get("load")
    if load:
        lines += [
            "## Load path (fp16 variant files only)",
            "",
            f"{load['folder']}: {len(load['weight_files'])} weight files, only variant files: {load['only_variant_files']}, "
            f"{load['bytes_on_disk'] / GIB:.2f} GiB, built and saved in {load['build_and_save_s']} s.",
            "",
            "| precision | load s | variant loaded | dtype | VAE decode dtype | allocated after load GiB |",
            "|---|---|---|---|---|---|",
        ]
        for name, entry in load["loads"].items():
            lines.append(f"| {name} | {entry['seconds']} | {entry['weight_variant']} | {entry['dtype']} | "
                         f"{entry['vae_decode_dtype']} | {gib(entry['allocated_after_load_bytes'])} |")
        lines.append("")
    if report.get("steps"):
        lines += [
            "## Denoise steps and decode",
            "",
            "| precision | size | s/step (median) | model TFLOP/step | TFLOP/s | MFU (spec peak) | of measured matmul | decode s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in report["steps"]:
            mfu = f"{s['mfu_of_spec_peak']:.1%}" if s["mfu_of_spec_peak"] else "-"
            of_matmul = f"{s['fraction_of_measured_matmul']:.1%}" if s["fraction_of_measured_matmul"] else "-"
            lines.append(f"| {s['precision']} | {s['width']}x{s['height']}x{s['frames']} | {s['seconds_per_step']} | "
                         f"{s['model_tflop_per_step']} | {s['achieved_tflops']} | {mfu} | {of_matmul} | {s['decode_seconds']} |")
        lines.append("")
    if report.get("memory"):
        lines += [
            "## Peak memory against the estimate (GiB)",
            "",
            "| precision | size | saver level | denoise allocated | denoise reserved | decode allocated | decode reserved | estimate | estimate error |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m in report["memory"]:
            d, v = m["measured"].get("denoise", {}), m["measured"].get("decode", {})
            error = f"{m['estimate_error']:+.1%}" if m["estimate_error"] is not None else "- (not CUDA)"
            lines.append(
                f"| {m['precision']} | {m['width']}x{m['height']}x{m['frames']} | {m['saver_level']} | "
                f"{gib(d.get('max_allocated_bytes'))} | {gib(d.get('max_reserved_bytes'))} | "
                f"{gib(v.get('max_allocated_bytes'))} | {gib(v.get('max_reserved_bytes'))} | {gib(m['estimate_total_bytes'])} | {error} |"
            )
        lines.append("")
    oom = report.get("oom")
    if oom:
        lines += [
            "## A real OOM climbs the ladder",
            "",
            f"{oom['shape']} under {oom['cap']}: {oom['status']} in {oom['seconds']} s after {len(oom['ooms'])} OOM(s); "
            f"estimates per saver level {oom['estimates_gib_per_saver_level']} GiB; final settings {oom['final_settings']}.",
            f"Memory after each OOM {[gib(a) for a in oom['allocated_after_each_oom_bytes']]} GiB against a baseline of "
            f"{gib(oom['baseline_allocated_bytes'])} GiB: back to baseline {oom['back_to_baseline']}.",
            "",
        ]
        for o in oom["ooms"]:
            lines.append(f"- {o['phase']} at {o['size']}x{o['frames']}, savers {o['savers'] or 'none'}: {o['message']}")
        lines.append("")
    e2e = report.get("end_to_end")
    if e2e:
        lines += [
            f"## End to end: the `{e2e['preset']}` preset",
            "",
            f"{e2e['effective']} in {e2e['precision']}: {e2e['seconds']} s from image to committed MP4 "
            f"({e2e['mp4_bytes']} bytes); timings {e2e['timings_s']}.",
            "",
        ]
    calibration = report.get("calibration")
    if calibration:
        lines += ["## `farm calibrate` on these sidecars", "", f"exit code {calibration['exit_code']}", "", "```",
                  *calibration["output"], "```", ""]
    if report.get("failures"):
        lines += ["## Failed renders", "", *[f"- {f['item']}: {f['status']} ({f['reason']}): {f['message']}" for f in report["failures"]], ""]
    if report.get("error"):
        lines += ["## The check stopped", "", report["error"], ""]
    for section, error in report.get("errors", {}).items():
        lines += [f"## Section {section} failed", "", "```", error, "```", ""]
    if report["skipped"]:
        lines += ["## Skipped", "", *[f"- {s}" for s in report["skipped"]], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the whole script on the CPU with the tiny model")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-check", help="where gpu_check.json, gpu_check.md go")
    parser.add_argument("--model", help=f"a folder of real I2VGen-XL weights (default {RANDOM_MODEL})")
    parser.add_argument("--budget-s", type=float, default=480, help="no section starts after this many seconds")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (renders, sidecars)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # as a worker sets it
    check = Check(Plan(args.dry_run, args.model), out, work, args.budget_s)
    try:
        report = check.run()
    except BaseException as exc:
        check.report["error"] = f"{type(exc).__name__}: {exc}"
        report = check.report
        raise
    finally:
        (out / "gpu_check.json").write_text(json.dumps(check.report, indent=1, default=str))
        (out / "gpu_check.md").write_text(markdown(check.report))
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(report))
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    if report.get("errors") or report.get("failures"):
        print(f"gpu_check: {len(report.get('errors', {}))} section(s) failed, "
              f"{len(report.get('failures', []))} render(s) failed: see the report", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
