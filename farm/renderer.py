"""Render one item end to end, on whatever process holds the model (a Ray actor, or a test).

read image -> prepare to frame size -> generate frames -> encode MP4 + thumbnail -> store video,
thumbnail, then the sidecar. The sidecar is written last: it is the item's commit marker.

On a CUDA out-of-memory error the renderer leaves the `except` block (the traceback holds the
failed attempt's tensors), collects garbage and empties the CUDA cache, then asks the degrade
ladder for the next option: more memory savers, a bigger GPU (handed back to the coordinator as
an `escalate` outcome), lower resolution, fewer frames. Every step is recorded. When the ladder
is exhausted the item fails with reason `oom` and the worker carries on. Any other failure also
becomes an `ItemOutcome` with a reason; nothing raised here stops the job.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any

from farm import __version__
from farm.core.errors import FarmError, ItemError, StorageError
from farm.core.job import ESCALATE, SUCCEEDED, ItemOutcome, RenderTask
from farm.core.ladder import BIGGER_TIER, Degradation, RenderSettings, describe_change, next_step
from farm.core.tiers import GIB
from farm.media.images import ImageLimits, PreparedImage, prepare_image, read_image_file
from farm.media.video import encode_mp4, write_thumbnail
from farm.models.memory import CardInfo, SimulatedCard, release_memory
from farm.storage import open_store
from farm.storage.base import CONTENT_TYPES, item_keys

log = logging.getLogger(__name__)


@dataclass
class OomEvent:
    phase: str
    settings: RenderSettings
    message: str

    def to_dict(self, tier: str) -> dict[str, Any]:
        width, height = self.settings.size
        return {
            "phase": self.phase,
            "tier": tier,
            "resolution": self.settings.resolution,
            "size": f"{width}x{height}",
            "frames": self.settings.frames,
            "savers": list(self.settings.savers),
            "message": self.message,
        }


class ItemRenderer:
    """Holds a loaded model adapter and renders tasks with it, one at a time."""

    def __init__(
        self,
        adapter,
        *,
        worker_name: str = "local",
        card: CardInfo | None = None,
        image_limits: ImageLimits = ImageLimits(),
    ):
        self.adapter = adapter
        self.worker_name = worker_name
        self.card = card or CardInfo("cpu", None, None, "cpu", False)
        self.simulated = SimulatedCard(self.card, adapter.profile) if self.card.source == "FARM_GPU_VRAM_GB" else None
        self.image_limits = image_limits
        self._stores: dict[str, Any] = {}

    def _store(self, uri: str):
        if uri not in self._stores:
            self._stores[uri] = open_store(uri)
        return self._stores[uri]

    def render(self, task: RenderTask) -> ItemOutcome:
        started = time.perf_counter()
        try:
            outcome = self._render(task, started)
        except ItemError as exc:
            outcome = ItemOutcome.failure(task.item_id, exc.reason, str(exc))
        except StorageError as exc:
            outcome = ItemOutcome.failure(task.item_id, "storage_error", str(exc))
        except FarmError as exc:
            outcome = ItemOutcome.failure(task.item_id, "render_error", str(exc))
        except Exception as exc:  # a bug or a library failure: keep the worker, fail the item
            log.error("item %s failed:\n%s", task.item_id, traceback.format_exc())
            outcome = ItemOutcome.failure(task.item_id, "render_error", f"{type(exc).__name__}: {exc}")
        outcome.seconds = time.perf_counter() - started
        outcome.worker = self.worker_name
        outcome.tier = self.card.tier
        return outcome

    # --- one render with the degrade ladder -------------------------------------------------

    def _render(self, task: RenderTask, started: float) -> ItemOutcome:
        params = task.render_params
        settings = task.render_settings
        degradations = list(task.degradations)
        ooms = list(task.ooms)  # those of earlier workers, when the item moved here
        timings: dict[str, float] = {"load": round(self.adapter.load_seconds, 3)}

        t0 = time.perf_counter()
        data = read_image_file(task.image, self.image_limits)
        prepared: dict[tuple[int, int], PreparedImage] = {}
        timings["preprocess"] = time.perf_counter() - t0

        while True:
            size = settings.size
            if size not in prepared:
                t0 = time.perf_counter()
                prepared[size] = prepare_image(data, *size, name=task.image, limits=self.image_limits)
                timings["preprocess"] += time.perf_counter() - t0
            result = self._attempt(task, params, settings, prepared[size])
            if not isinstance(result, OomEvent):
                generation = result
                break
            # Outside the except block now: the failed attempt's tensors are unreachable.
            release_memory(self.adapter.device)
            ooms.append(result.to_dict(self.card.tier))
            option = next_step(
                settings, mode=params.degrade, order=task.degrade_order, bigger_tier_available=task.bigger_tier_available
            )
            why = f"out of memory during {result.phase} at {settings.describe()} on {self.card.tier}: {result.message}"
            if option is None:
                return ItemOutcome.failure(
                    task.item_id,
                    "oom",
                    f"{why}; no cheaper option left (degrade: {params.degrade})",
                    degradations=degradations,
                    ooms=ooms,
                    settings=settings.to_dict(),
                )
            step, changed = option
            if step == BIGGER_TIER:
                return ItemOutcome(
                    item_id=task.item_id,
                    status=ESCALATE,
                    message=why,
                    degradations=degradations,
                    ooms=ooms,
                    settings=settings.to_dict(),
                )
            before, after = describe_change(step, settings, changed)
            degradations.append(Degradation(step, before, after, why).to_dict())
            settings = changed

        timings.update(generation.timings)
        warnings = prepared[settings.size].warnings + generation.warnings
        store = self._store(task.output)
        keys = item_keys(task.job_name, task.item_id)
        with tempfile.TemporaryDirectory(prefix="farm-item-") as scratch:
            t0 = time.perf_counter()
            video_path = os.path.join(scratch, "video.mp4")
            thumb_path = os.path.join(scratch, "thumb.jpg")
            encode_mp4(generation.frames, video_path, params.fps)
            write_thumbnail(generation.frames[0], thumb_path)
            timings["encode"] = time.perf_counter() - t0
            video_bytes = os.path.getsize(video_path)

            t0 = time.perf_counter()
            store.put_file(keys["video"], video_path, CONTENT_TYPES["video"])
            store.put_file(keys["thumbnail"], thumb_path, CONTENT_TYPES["thumbnail"])
            timings["store"] = time.perf_counter() - t0
            timings["total"] = time.perf_counter() - started
            sidecar = self._sidecar(
                task, prepared[settings.size], generation, settings, degradations, ooms, timings, warnings, keys, video_bytes
            )
            store.put_bytes(keys["sidecar"], json.dumps(sidecar, indent=2).encode(), CONTENT_TYPES["sidecar"])

        return ItemOutcome(
            item_id=task.item_id,
            status=SUCCEEDED,
            warnings=warnings,
            degradations=degradations,
            ooms=ooms,
            settings=settings.to_dict(),
            timings={k: round(v, 4) for k, v in timings.items()},
            peak_memory_bytes=generation.peak_memory_bytes,
            outputs={name: store.location(key) for name, key in keys.items()},
        )

    def _attempt(self, task: RenderTask, params, settings: RenderSettings, prepared: PreparedImage):
        """Generation, or an OomEvent. The OOM is caught here and nothing of it escapes."""
        import torch

        width, height = settings.size
        guidance = params.guidance_scale > 1
        try:
            self.adapter.apply_savers(settings.savers)
            if self.simulated is not None:
                self.simulated.check_render(width, height, settings.frames, settings.savers, guidance)
            return self.adapter.generate(
                prepared.image,
                prompt=task.prompt,
                negative_prompt=params.negative_prompt,
                width=width,
                height=height,
                frames=settings.frames,
                steps=params.steps,
                guidance_scale=params.guidance_scale,
                fps=params.fps,
                seed=task.seed,
            )
        except torch.OutOfMemoryError as exc:
            phase = self.adapter.phase if self.adapter.phase != "idle" else "denoise"
            self.adapter.phase = "idle"
            event = OomEvent(phase, settings, str(exc).strip().splitlines()[0][:300])
        return event

    def _sidecar(
        self, task, prepared, generation, settings, degradations, ooms, timings, warnings, keys, video_bytes
    ) -> dict:
        params = task.render_params
        width, height = settings.size
        frames = generation.frames
        effective = params.model_dump()
        effective.update(
            resolution=settings.resolution,
            frames=settings.frames,
            width=width,
            height=height,
            seed=task.seed,
            memory_savers=list(settings.savers),
        )
        return {
            "farm_version": __version__,
            "status": SUCCEEDED,
            "job": task.job_name,
            "item_id": task.item_id,
            "item_index": task.item_index,
            "prompt": task.prompt,
            "image": task.image,
            "input": prepared.describe(),
            "requested": task.requested,
            "effective": effective,
            "seed": task.seed,
            "seed_source": "manifest" if params.seed is not None else "derived from the item id",
            "model": self.adapter.describe(),
            "device": {
                "type": self.adapter.device,
                "worker": self.worker_name,
                "host": platform.node(),
            },
            "tier": {
                "planned": task.planned_tier,
                "ran_on": self.card.tier,
                "stolen": task.planned_tier != self.card.tier and not any(d["step"] == BIGGER_TIER for d in degradations),
                "card_gib": round(self.card.card_bytes / GIB, 2) if self.card.card_bytes else None,
                "budget_gib": round(self.card.budget_bytes / GIB, 2) if self.card.budget_bytes else None,
                "simulated": self.card.simulated,
                "planned_estimate_gib": task.estimate_gib,
            },
            "timings_seconds": {k: round(v, 4) for k, v in timings.items()},
            "peak_memory_bytes": generation.peak_memory_bytes,
            "memory_kind": generation.memory_kind,
            "degraded": bool(degradations),
            "degradations": degradations,
            "ooms": ooms,
            "warnings": warnings,
            "outputs": {
                "video": keys["video"].rsplit("/", 1)[-1],
                "thumbnail": keys["thumbnail"].rsplit("/", 1)[-1],
                "video_bytes": video_bytes,
                "frames": int(frames.shape[0]),
                "width": int(frames.shape[2]),
                "height": int(frames.shape[1]),
                "fps": params.fps,
                "codec": "h264",
                "pix_fmt": "yuv420p",
            },
            "attempt": task.attempt,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

