"""The render actor: one per GPU (or one CPU worker), loads the model once, renders many items.

Model-loading failures do not kill the actor (a crash loop would just reload and fail again):
the actor stays up, reports itself unusable in `info()`, and the executor routes around it.
"""

from __future__ import annotations

import os
import traceback

import ray

from farm.core.errors import FarmError
from farm.core.job import ItemOutcome, RenderTask


class RenderWorkerImpl:
    def __init__(self, model_ref: str, name: str, cpu_threads: int | None = None):
        self.name = name
        self.model_ref = model_ref
        self.error: str | None = None
        self.renderer = None
        self.device = None
        self.load_seconds = None
        self.model = None
        if cpu_threads:
            import torch

            torch.set_num_threads(cpu_threads)
        try:
            from farm.models.i2vgen import I2VGenXLAdapter
            from farm.renderer import ItemRenderer

            adapter = I2VGenXLAdapter.load(model_ref)
            self.renderer = ItemRenderer(adapter, worker_name=name)
            self.device = adapter.device
            self.load_seconds = adapter.load_seconds
            self.model = adapter.describe()
        except FarmError as exc:
            self.error = str(exc)
        except Exception as exc:  # keep the actor alive; report instead of crash-looping
            self.error = f"loading model {model_ref!r} failed: {type(exc).__name__}: {exc}"
            traceback.print_exc()

    def info(self) -> dict:
        context = ray.get_runtime_context()
        return {
            "name": self.name,
            "ok": self.error is None,
            "error": self.error,
            "device": self.device,
            "model": self.model,
            "load_seconds": self.load_seconds,
            "node_id": context.get_node_id(),
            "pid": os.getpid(),
        }

    def render(self, task: dict) -> dict:
        if self.renderer is None:
            outcome = ItemOutcome.failure(task["item_id"], "model_unavailable", self.error or "model not loaded")
            return outcome.to_dict()
        return self.renderer.render(RenderTask.from_dict(task)).to_dict()


# max_restarts: a worker process that dies (segfault, host OOM killer) comes back and reloads.
RenderWorker = ray.remote(max_restarts=2, max_task_retries=0)(RenderWorkerImpl)
