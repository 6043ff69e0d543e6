"""The render actor: one per GPU (or one CPU worker), loads the model once, renders many items.

On start it sets the CUDA allocator up (expandable segments unless the operator chose), learns
its card (CUDA, capped to a declared smaller card; or FARM_GPU_VRAM_GB when simulating), hence
its tier and memory budget, and loads the model in the precision the card supports. A load
failure, out-of-memory included, does not kill the actor (a crash loop would just reload and
fail again): it stays up, reports itself unusable in `info()`, and the executor routes around it.

While it renders it watches its node's drain (`drain_probe`: Ray's draining nodes, asked as each
render starts and at most every FARM_DRAIN_CHECK_S during the denoise, from the renderer's step
hook, on the render's thread): see `farm.renderer` and `farm.core.drain`.

Cancel: `cancel(job_id, item_id)` runs in a concurrency group of its own ("control", one
thread), so it reaches the actor while a render occupies it; it only sets a flag
(`farm.core.cancel.CancelRequests`) that the render's step hook reads before each denoise step.
Every other method (render, info, switch_model, adopt, flush) stays in the default group, whose
one thread runs them one at a time in the order they were sent, as before.
"""

from __future__ import annotations

import os
import traceback

import ray

from farm.core.cancel import CancelRequests
from farm.core.contracts import Escalation, ItemOutcome, RenderTask, ReturnedItem, WorkerReply
from farm.core.errors import FarmError

CONTROL_GROUP = "control"  # the concurrency group of calls that must reach a worker mid-render


class RenderWorkerImpl:
    """One render worker (a Ray actor as `RenderWorker`): the model loaded once, items one by one."""

    def __init__(
        self,
        model_ref: str,
        name: str,
        cpu_threads: int | None = None,
        faults: str | None = None,
        advertised_tier: str | None = None,
        settings=None,
        mailbox=None,
    ):
        # The coordinator's or the CLI's settings, and (read here: the card and the device are
        # this node's) the worker settings of this node's environment.
        self.settings = settings
        self.local = None
        self.mailbox = mailbox  # farm.runtime.mailbox: where each commit is reported the moment it lands
        self.name = name
        self.model_ref = model_ref
        self.advertised_tier = advertised_tier
        self.error: str | None = None
        self.renderer = None
        self.adapter = None
        self.card = None
        self.memory_baseline_bytes = None
        self.cancels = CancelRequests()  # set by `cancel` (its own thread), read by the render's step hook
        from farm.models.memory import prepare_allocator

        prepare_allocator()  # read by torch when CUDA first allocates: before anything else
        if cpu_threads:
            import torch

            torch.set_num_threads(cpu_threads)
        try:
            from farm.settings import load_settings

            here = load_settings()
            self.settings, self.local = self.settings or here, here.workers
            self._load(faults)
        except FarmError as exc:
            self.error = str(exc)
        except Exception as exc:  # keep the actor alive; report instead of crash-looping
            from farm.models.memory import is_out_of_memory

            if is_out_of_memory(exc):
                self.error = f"out of memory while loading model {model_ref!r}: {str(exc).splitlines()[0]}"
            else:
                self.error = f"loading model {model_ref!r} failed: {type(exc).__name__}: {exc}"
                traceback.print_exc()
            self.adapter = self.renderer = None
        if self.adapter is None:
            from farm.models.memory import release_memory

            release_memory("cuda" if self.card and self.card.physical_bytes else "cpu")

    def _load(self, faults: str | None) -> None:
        from farm.core.tiers import load_tier_table
        from farm.core.vram import profile_for_model
        from farm.models.faults import OomInjector, parse_faults
        from farm.models.registry import load_adapter
        from farm.models.loading import select_device
        from farm.models.memory import SimulatedCard, allocated_bytes, apply_memory_cap, detect_card
        from farm.renderer import BackgroundCommits, ItemRenderer
        settings, local = self.settings, self.local
        device = select_device(local.device)
        self.card = detect_card(device, load_tier_table(settings.tiers_file), self.advertised_tier, local.gpu_vram_gb,
                                simulate_tier=local.simulate_tier_cards)
        apply_memory_cap(self.card, device)
        if self.card.simulated:
            SimulatedCard(self.card, profile_for_model(self.model_ref, calibration=settings.vram_calibration)).check_load()
        self.adapter = load_adapter(
            self.model_ref, device=device, requested_precision=local.precision, vae_upcast=local.vae_upcast
        )
        rules = parse_faults(faults or settings.workers.faults or local.faults)
        if rules:
            self.adapter.injector = OomInjector(rules, self.card.tier)
            self.adapter.injector.attach(self.adapter.pipeline)
        node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        self._renderer_options = dict(
            worker_name=self.name, card=self.card, calibration=settings.vram_calibration, node_id=node_id,
            drain_probe=node_drain_probe(node_id) if node_id else None,
            drain_check_s=settings.engine.drain_check_s, drain_margin_s=settings.engine.drain_margin_s,
            cancels=self.cancels,
        )
        self.renderer = ItemRenderer(self.adapter, **self._renderer_options)
        self.commits = BackgroundCommits(self.renderer, settings.storage.upload_queue, on_commit=self._report_commits)
        self.memory_baseline_bytes = allocated_bytes(device)

    @classmethod
    def in_process(cls, name: str, adapter, card, *, upload_queue: int = 2, mailbox=None, drain_probe=None,
                   drain_check_s: float = 2.0, drain_margin_s: float = 5.0) -> RenderWorkerImpl:
        """A worker around an adapter already loaded in this process (no Ray, no model load):
        for `farm.runtime.handles.LocalWorkerHandle`, which runs a whole job in a test.
        `drain_probe`: () -> farm.core.drain.NodeDrain | None, a stand-in for its node's drain."""
        from farm.models.memory import allocated_bytes
        from farm.renderer import BackgroundCommits, ItemRenderer

        worker = cls.__new__(cls)
        worker.name, worker.model_ref, worker.advertised_tier = name, adapter.model.ref, card.tier
        worker.settings = worker.local = None
        worker.mailbox = mailbox
        worker.error, worker.adapter, worker.card = None, adapter, card
        worker.cancels = CancelRequests()
        worker._renderer_options = dict(worker_name=name, card=card, drain_probe=drain_probe,
                                        drain_check_s=drain_check_s, drain_margin_s=drain_margin_s,
                                        cancels=worker.cancels)
        worker.renderer = ItemRenderer(adapter, **worker._renderer_options)
        worker.commits = BackgroundCommits(worker.renderer, upload_queue, on_commit=worker._report_commits)
        worker.memory_baseline_bytes = allocated_bytes(adapter.device)
        return worker

    def info(self, measure_memory: bool = False) -> dict:
        node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        info = {
            "name": self.name,
            "ok": self.renderer is not None,
            "error": self.error,
            "device": self.adapter.device if self.adapter else None,
            "model": self.adapter.describe() if self.adapter else None,
            "load_seconds": self.adapter.load_seconds if self.adapter else None,
            "card": self.card.to_dict() if self.card else None,
            "tier": self.card.tier if self.card else None,
            "node_id": node_id,
            "pid": os.getpid(),
            "memory_baseline_bytes": self.memory_baseline_bytes,
        }
        if measure_memory and self.adapter is not None:
            from farm.models.memory import allocated_bytes

            info["memory_allocated_bytes"] = allocated_bytes(self.adapter.device)
        return info

    def render(self, task: RenderTask) -> WorkerReply:
        """Render one task: the items that ended (this one, if nothing is left to upload, and
        background commits that landed since), an escalation, and what still uploads."""
        if self.renderer is None:
            reason = self.error or "model not loaded"
            outcome = ItemOutcome.failure(task.item_id, "model_unavailable", reason, job_id=task.job_id)
            return WorkerReply(self.name, -1, (outcome,))
        self.cancels.begin(task.job_id, task.item_id)  # a cancel that came first stops it at once
        try:
            produced = self.renderer.produce(task)
            if isinstance(produced, ItemOutcome):
                return self._reply([produced])
            if isinstance(produced, Escalation):
                return self._reply([], produced)
            if isinstance(produced, ReturnedItem):  # its node is being drained: nothing was committed
                return self._reply([], returned=produced)
            why = self.cancels.why()
            if why is not None:  # cancelled while it decoded or encoded: still nothing committed
                return self._reply([self.renderer.cancel_produced(produced, why)])
            self.commits.submit(produced)  # blocks while the upload queue is full; from here its commit stands
            return self._reply([])
        finally:
            self.cancels.end()

    @ray.method(concurrency_group=CONTROL_GROUP)
    def cancel(self, job_id: str, item_id: str | None = None) -> bool:
        """Stop the render of `item_id` of `job_id` (None: any item of the job) at its next denoise
        step; its render call then answers a `cancelled` outcome. Runs beside a render (its own
        concurrency group). True when that render is running now (see farm.core.cancel)."""
        return self.cancels.request(job_id, item_id)

    def switch_model(self, model_ref: str) -> dict:
        """Hold `model_ref` instead of the model loaded now (the dispatcher's switch, see
        farm.core.switching): the uploads in flight finish first, the old model's memory is
        handed back, the new one loads through its family's adapter. If it cannot load, the old
        model is loaded again and the answer says why (`ok` False, `switch_error`)."""
        import time

        from farm.models.loading import select_device
        from farm.models.registry import load_adapter
        from farm.renderer import ItemRenderer

        started = time.perf_counter()
        if self.renderer is not None:
            self.commits.flush()
        previous = self.model_ref
        device = self.adapter.device if self.adapter is not None else select_device(self.local.device if self.local else None)
        precision = self.local.precision if self.local else "auto"
        vae_upcast = self.local.vae_upcast if self.local else "auto"
        error = None
        for ref in (model_ref, previous):
            if self.adapter is not None:
                self.adapter.unload()
                self.adapter = self.renderer = None
            try:
                self.adapter = load_adapter(ref, device=device, requested_precision=precision, vae_upcast=vae_upcast)
            except Exception as exc:  # the answer says why; the old model is loaded again
                error = error or f"loading model {ref!r} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                continue
            self.model_ref = ref
            self.renderer = ItemRenderer(self.adapter, **self._renderer_options)
            self.commits.renderer = self.renderer
            break
        self.error = None if self.renderer is not None else error
        info = self.info()
        info["ok"] = self.renderer is not None and self.model_ref == model_ref
        info["switch_error"] = error if self.model_ref != model_ref else None
        info["switch_seconds"] = round(time.perf_counter() - started, 3)
        return info

    def adopt(self, mailbox) -> dict:
        """A new coordinator takes this worker over (the one that started it died): commits are
        reported to its mailbox from now on. Calls run one at a time, so this runs after any
        render the old coordinator had sent, and it waits for that render's uploads: once it
        answers, everything this worker was given is committed (or never will be), and the new
        coordinator's scan of the outputs sees it. What the old coordinator never heard of is
        dropped here; the scan finds it."""
        self.mailbox = mailbox
        self.cancels.clear()  # the old coordinator's requests are not the new one's
        if self.renderer is not None:
            self.commits.flush()
            self.commits.reply()
        return self.info()

    def flush(self) -> WorkerReply:
        """Wait for this worker's uploads; same shape as `render`."""
        if self.renderer is None:
            return WorkerReply(self.name, -1)
        return self._reply(self.commits.flush())

    def _report_commits(self) -> None:
        """On the commit thread, right after a commit: report it (unless a reply already took it)."""
        if self.mailbox is None:
            return
        sequence, finished, pending = self.commits.report()
        if finished:
            self.mailbox.put(WorkerReply(self.name, sequence, tuple(finished), pending=tuple(pending)))

    def _reply(self, outcomes: list[ItemOutcome], escalation: Escalation | None = None,
               returned: ReturnedItem | None = None) -> WorkerReply:
        sequence, finished, pending = self.commits.reply()
        return WorkerReply(self.name, sequence, (*outcomes, *finished), escalation, tuple(pending), self.memory(),
                           returned)

    def memory(self) -> dict:
        """Device memory in use and in total: CUDA's figures, the simulated card's, or the host's."""
        from farm.models.memory import device_memory

        return device_memory(self.adapter, self.card)


def node_drain_probe(node_id: str):
    """() -> NodeDrain | None: whether the node `node_id` is being drained (one GCS call)."""
    from farm.core.drain import NodeDrain
    from farm.runtime.cluster import draining_nodes

    def probe() -> NodeDrain | None:
        nodes = draining_nodes()
        return NodeDrain(nodes[node_id]) if node_id in nodes else None

    return probe


# max_restarts: a worker process that dies (segfault, host OOM killer) comes back and reloads.
# concurrency_groups: `cancel` on a thread of its own beside the default group's one thread.
RenderWorker = ray.remote(max_restarts=2, max_task_retries=0, concurrency_groups={CONTROL_GROUP: 1})(RenderWorkerImpl)

WORKER_NAME_PREFIX = "farm-worker-"  # the service's workers are named (WORKER_NAME_PREFIX + name) and detached


def service_worker_names(namespace: str) -> list[str]:
    """The render workers a coordinator of `namespace` started that are alive now (they outlive
    it: a restarted coordinator adopts them instead of loading every model again)."""
    return sorted(entry["name"][len(WORKER_NAME_PREFIX):] for entry in ray.util.list_named_actors(all_namespaces=True)
                  if entry["namespace"] == namespace and entry["name"].startswith(WORKER_NAME_PREFIX))
