"""Render one item end to end, on whatever process holds the model (a Ray actor, or a test).

read image -> prepare to frame size -> generate frames -> encode MP4 + thumbnail -> store video,
thumbnail, then the sidecar. The sidecar is written last: it is the item's commit marker. Any
failure becomes an `ItemOutcome` with a reason; nothing raised here stops the job.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
import traceback
from typing import Any

from farm import __version__
from farm.core.errors import FarmError, ItemError, StorageError
from farm.core.job import SUCCEEDED, ItemOutcome, RenderTask
from farm.media.images import ImageLimits, prepare_image, read_image_file
from farm.media.video import encode_mp4, write_thumbnail
from farm.storage import open_store
from farm.storage.base import CONTENT_TYPES, item_keys

log = logging.getLogger(__name__)


class ItemRenderer:
    """Holds a loaded model adapter and renders tasks with it, one at a time."""

    def __init__(self, adapter, *, worker_name: str = "local", image_limits: ImageLimits = ImageLimits()):
        self.adapter = adapter
        self.worker_name = worker_name
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
        return outcome

    def _render(self, task: RenderTask, started: float) -> ItemOutcome:
        params = task.render_params
        width, height = params.size
        timings: dict[str, float] = {"load": round(self.adapter.load_seconds, 3)}

        t0 = time.perf_counter()
        data = read_image_file(task.image, self.image_limits)
        prepared = prepare_image(data, width, height, name=task.image, limits=self.image_limits)
        timings["preprocess"] = time.perf_counter() - t0

        generation = self.adapter.generate(
            prepared.image,
            prompt=task.prompt,
            negative_prompt=params.negative_prompt,
            width=width,
            height=height,
            frames=params.frames,
            steps=params.steps,
            guidance_scale=params.guidance_scale,
            fps=params.fps,
            seed=task.seed,
        )
        timings.update(generation.timings)
        warnings = prepared.warnings + generation.warnings

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
            sidecar = self._sidecar(task, prepared, generation, timings, warnings, keys, video_bytes)
            store.put_bytes(keys["sidecar"], json.dumps(sidecar, indent=2).encode(), CONTENT_TYPES["sidecar"])

        return ItemOutcome(
            item_id=task.item_id,
            status=SUCCEEDED,
            warnings=warnings,
            timings={k: round(v, 4) for k, v in timings.items()},
            peak_memory_bytes=generation.peak_memory_bytes,
            outputs={name: store.location(key) for name, key in keys.items()},
        )

    def _sidecar(self, task, prepared, generation, timings, warnings, keys, video_bytes) -> dict:
        params = task.render_params
        width, height = params.size
        frames = generation.frames
        effective = params.model_dump()
        effective.update(width=width, height=height, seed=task.seed)
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
            "timings_seconds": {k: round(v, 4) for k, v in timings.items()},
            "peak_memory_bytes": generation.peak_memory_bytes,
            "memory_kind": generation.memory_kind,
            "degradations": [],
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

