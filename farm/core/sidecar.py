"""The sidecar of a committed item (`ITEM.json`), built from plain values: no I/O, no clock.

A sidecar is the commit marker and the item's whole story: what was asked (`requested`), what
ran (`effective`), on what (`model`, `device`, `tier`), what the ladder changed (`degradations`,
`ooms`), how long each phase took, the memory measured beside the estimate, and the outputs'
facts. The renderer builds one per item; the scale benchmark's sleep worker builds its own with
the same function (and says in `renderer` that it did not render).
"""

from __future__ import annotations

from typing import Any

from farm import __version__
from farm.core.contracts import RenderTask
from farm.core.ladder import RenderSettings
from farm.core.params import RenderParams
from farm.core.states import SUCCEEDED


def effective_params(params: RenderParams, settings: RenderSettings, seed: int) -> dict[str, Any]:
    """The parameters the render ran with: the validated ones, with what the ladder changed."""
    width, height = settings.size
    effective = params.model_dump()
    effective.update(
        resolution=settings.resolution,
        frames=settings.frames,
        width=width,
        height=height,
        seed=seed,
        memory_savers=list(settings.savers),
    )
    return effective


def outputs_record(item_id: str, sizes: dict[str, int], *, frames: int, width: int, height: int, fps: int,
                   **extra: Any) -> dict[str, Any]:
    """The `outputs` section: file names (next to the sidecar), bytes and the clip's facts."""
    return {
        "video": f"{item_id}.mp4",
        "thumbnail": f"{item_id}.jpg",
        "bytes": dict(sizes),
        "video_bytes": sizes["video"],
        "frames": frames,
        **extra,
        "width": width,
        "height": height,
        "fps": fps,
        "codec": "h264",
        "pix_fmt": "yuv420p",
    }


def build_sidecar(task: RenderTask, *, created_at: str, outputs: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """One committed item's sidecar: its identity from the task, then `sections` (effective,
    model, device, tier, timings, memory, degradations ...) as the caller measured them."""
    return {
        "farm_version": __version__,
        "status": SUCCEEDED,
        "job": task.job_name,
        "item_id": task.item_id,
        "item_index": task.item_index,
        "prompt": task.prompt,
        "image": task.image,
        **sections,
        "requested": task.requested,
        "seed": task.seed,
        "outputs": outputs,
        "attempt": task.attempt,
        "created_at": created_at,
    }
