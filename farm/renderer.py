"""Render one item end to end, on whatever process holds the model (a Ray actor, or a test).

read image (local, s3://, https://; a worker keeps its last two, so that the takes of one image
read and prepare it once: `InputCache`) -> prepare to frame size -> generate frames -> encode MP4 and
thumbnail (`produce`), then commit: upload video and thumbnail, then the sidecar, conditionally,
as the commit marker (`commit`, see farm.storage.commit). A worker commits in the background
(`BackgroundCommits`) so its next render starts at once; the queue is bounded.

On a CUDA out-of-memory error (torch's, or a CUDA library's allocation failure raised as a
RuntimeError) the renderer leaves the `except` block (the traceback holds the failed attempt's
tensors), collects garbage and empties the CUDA cache, then asks the degrade ladder for the next
option. An OOM in the VAE decode keeps the finished latents and first retries only the decode
with the decode savers; otherwise: more memory savers, a bigger GPU (handed back to the
coordinator as an `escalate` outcome), lower resolution, fewer frames. Every step is recorded.
When the ladder is exhausted the item fails with reason `oom` and the worker carries on. Frames
with NaN/Inf fail the item with reason `nan_output`. Any other failure also becomes an
`ItemOutcome` with a reason; nothing raised here stops the job.

Graceful drain: given a `drain_probe` (is this worker's node being drained, and until when), a
render asks it as it starts (a task that reaches a draining node goes back unstarted) and then,
from a hook before each denoise step, at most every `drain_check_s`. Once the node drains,
`farm.core.drain.decide` says at each step whether the rest of the render fits before the
node's deadline; if not, the denoise stops there, memory is released and the item comes back
as a `ReturnedItem` (nothing committed), which the dispatcher queues again at once.

Cancel: given the worker's `CancelRequests` (farm.core.cancel), the same step hook asks it before
each denoise step (a flag read: no cost) and a cancelled render stops there (`RenderCancelled`),
handled as a drain's hand-back is: outside the except block, memory released, then a `cancelled`
outcome with the steps done (nothing committed). A render cancelled before it started answers
at once.

The sidecar keeps what was measured (each phase's peak allocated and reserved CUDA memory) and
the estimator's figure for the same settings side by side, so `farm calibrate` can fit one to
the other.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from farm.core.cancel import CancelRequests, RenderCancelled
from farm.core.errors import FarmError, ItemError, StorageError
from farm.core.contracts import Escalation, ItemOutcome, RenderTask, ReturnedItem, inputs_digest
from farm.core.drain import NODE_DRAINING, DrainHandBack, NodeDrain, decide
from farm.core.ladder import (
    BIGGER_TIER,
    Degradation,
    OomRecord,
    RenderSettings,
    blocked_on,
    climb,
    describe_change,
    next_decode_step,
)
from farm.core.sidecar import build_sidecar, effective_params, outputs_record
from farm.core.states import SKIPPED, SUCCEEDED
from farm.core.tiers import GIB
from farm.core.vram import estimate_vram, profile_for_model
from farm.media.images import ImageLimits, PreparedImage, prepare_image
from farm.media.video import encode_mp4, write_thumbnail
from farm.models.memory import CardInfo, SimulatedCard, allocated_bytes, is_out_of_memory, release_memory
from farm.storage import open_store
from farm.storage.base import item_keys
from farm.storage.commit import commit_item
from farm.storage.inputs import InputImage, local_fingerprint, read_input

log = logging.getLogger(__name__)


@dataclass
class Produced:
    """A rendered, encoded item waiting to be committed; its files live in `scratch`."""

    task: RenderTask
    scratch: tempfile.TemporaryDirectory
    files: dict[str, str]
    sidecar: dict[str, Any]
    outcome: ItemOutcome
    started: float = field(default_factory=time.perf_counter)


class InputCache:
    """The last `size` input images this worker read, each with its prepared sizes: the takes of
    one image reach a worker one after another and share one read and one preprocess. Keyed by
    job and location (another job's same path may be another file by then); a local file is
    used again only while its size and mtime are unchanged (one stat)."""

    def __init__(self, size: int = 2):
        self.size = size
        self.reads = 0
        self._entries: OrderedDict[tuple, tuple[InputImage, dict]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, task: RenderTask, read) -> tuple[InputImage, dict]:
        """(the image, its prepared sizes: size -> PreparedImage, filled by the caller); `read()`
        only when it is not here. A failed read is not kept."""
        key = (task.job_id, task.job_name, task.image, task.image_root)
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and self._unchanged(task.image, entry[0]):
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
            return entry
        entry = (read(), {})
        with self._lock:
            self.reads += 1
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return entry

    @staticmethod
    def _unchanged(location: str, source: InputImage) -> bool:
        if "://" in location:  # s3:// and https:// inputs: taken as unchanged within a job
            return True
        try:
            return local_fingerprint(location) == source.fingerprint
        except OSError:
            return False


class ItemRenderer:
    """Holds a loaded model adapter and renders tasks with it, one at a time."""

    def __init__(
        self,
        adapter,
        *,
        worker_name: str = "local",
        card: CardInfo | None = None,
        image_limits: ImageLimits = ImageLimits(),
        calibration: str | None = None,
        node_id: str | None = None,
        drain_probe=None,
        drain_check_s: float = 2.0,
        drain_margin_s: float = 5.0,
        cancels: CancelRequests | None = None,
    ):
        self.adapter = adapter
        self.worker_name = worker_name
        self.node_id = node_id  # the Ray node this worker runs on (sidecars say where an item rendered)
        self.card = card or CardInfo("cpu", None, None, "cpu", False)
        # The estimator's constants for this GPU kind when a calibration file (FARM_VRAM_CALIBRATION) has them.
        self.profile = profile_for_model(adapter.model.ref, self.card.gpu.get("name"), calibration)
        self.simulated = SimulatedCard(self.card, self.profile) if self.card.simulated else None
        self.image_limits = image_limits
        self._stores: dict[str, Any] = {}
        self.inputs = InputCache()  # consecutive takes of one image read it once
        # () -> NodeDrain | None: whether this worker's node is being drained (None: never asked).
        self.drain_probe = drain_probe
        self.drain_check_s = drain_check_s
        self.drain_margin_s = drain_margin_s
        self.cancels = cancels  # the worker's cancel requests, read before each denoise step (None: never cancelled)
        self.after_denoise_s: float | None = None  # decode + encode + upload of the last item here
        self._upload_s = 0.0

    def _store(self, uri: str):
        if uri not in self._stores:
            self._stores[uri] = open_store(uri)
        return self._stores[uri]

    def render(self, task: RenderTask) -> ItemOutcome | Escalation:
        """Produce and commit in one go (tests, one-off renders)."""
        produced = self.produce(task)
        return self.commit(produced) if isinstance(produced, Produced) else produced

    def produce(self, task: RenderTask) -> ItemOutcome | Escalation | ReturnedItem | Produced:
        """Render and encode; an ItemOutcome when there is nothing to commit (a failure), an
        Escalation when the ladder wants a bigger GPU, a ReturnedItem when this worker's node is
        being drained and the render could not finish before it goes; a `cancelled` ItemOutcome
        when a cancel stopped it (`cancels`, asked before each denoise step)."""
        started = time.perf_counter()
        watch = DrainWatch(self) if self.drain_probe is not None else None
        returned = cancelled = None
        why = self.cancels.why() if self.cancels is not None else None
        try:
            if why is not None:  # cancelled before it started: nothing read, nothing rendered
                result = self._cancelled(task, f"{why}; stopped before it started", 0)
            elif watch is not None and watch.drain is not None:
                result = self._returned(task, "its node is being drained: not started")
            else:
                result = self._produce(task, started, self._step_hook(watch))
        # Both handled outside the except block: the stopped denoise's tensors go with it.
        except DrainHandBack as exc:
            returned = (str(exc), exc.steps_done)
        except RenderCancelled as exc:
            cancelled = (str(exc), exc.steps_done)
        except Exception as exc:
            result = self._failure(task, exc)
        if returned is not None or cancelled is not None:
            self.adapter.phase = "idle"
            self._released()
            result = self._returned(task, *returned) if returned is not None else self._cancelled(task, *cancelled)
        if not isinstance(result, Produced):
            self._stamp(result, task, started)
        return result

    def _step_hook(self, watch: DrainWatch | None):
        """The adapter's `on_step(done, total)`: a cancel stops the render, then the drain watch
        has its say; None when neither can stop it."""
        cancels = self.cancels
        if cancels is None:
            return watch.step if watch is not None else None

        def step(done: int, total: int) -> None:
            why = cancels.why()
            if why is not None:
                raise RenderCancelled(f"{why}; stopped after denoise step {done} of {total}", done)
            if watch is not None:
                watch.step(done, total)

        return step

    def _cancelled(self, task: RenderTask, message: str, steps_done: int = 0) -> ItemOutcome:
        log.info("worker %s stops item %s of job %s: %s", self.worker_name, task.item_id, task.job_id, message)
        return ItemOutcome.cancelled(task.item_id, message, steps_done)

    def cancel_produced(self, produced: Produced, why: str) -> ItemOutcome:
        """A render that ended while its cancel came: not committed, its files dropped."""
        produced.scratch.cleanup()
        steps = produced.task.params.steps
        outcome = self._cancelled(produced.task, f"{why}; stopped after its render, before its commit", steps)
        self._stamp(outcome, produced.task, produced.started)
        return outcome

    def _returned(self, task: RenderTask, message: str, steps_done: int = 0) -> ReturnedItem:
        log.info("worker %s hands item %s back: %s", self.worker_name, task.item_id, message)
        return ReturnedItem(task.item_id, task.job_id, NODE_DRAINING, message, steps_done)

    def commit(self, produced: Produced) -> ItemOutcome:
        """Upload and commit a produced item (conditional sidecar write: exactly once)."""
        task, outcome = produced.task, produced.outcome
        try:
            t0 = time.perf_counter()
            store = self._store(task.output)
            result = commit_item(
                store,
                task.job_name,
                task.item_id,
                produced.files,
                produced.sidecar,
                token=uuid.uuid4().hex[:12],
                replace_etag=task.replace_etag,
            )
            outcome.timings["upload"] = round(time.perf_counter() - t0, 4)
            self._upload_s = outcome.timings["upload"]
            if result.committed:
                outcome.outputs = {name: store.location(key) for name, key in item_keys(task.job_name, task.item_id).items()}
                outcome.upload_bytes = sum(info.size for info in result.outputs.values()) + result.sidecar.size
            else:
                outcome.status = SKIPPED
                outcome.message = "another render of this item committed first; its result stands"
        except Exception as exc:
            outcome = self._failure(task, exc)
        finally:
            produced.scratch.cleanup()
        self._stamp(outcome, task, produced.started)
        return outcome

    def _stamp(self, outcome: ItemOutcome | Escalation, task: RenderTask, started: float) -> None:
        outcome.job_id = task.job_id
        outcome.seconds = time.perf_counter() - started
        outcome.worker = self.worker_name
        outcome.tier = self.card.tier

    def _failure(self, task: RenderTask, exc: Exception) -> ItemOutcome:
        if isinstance(exc, ItemError):
            return ItemOutcome.failure(task.item_id, exc.reason, str(exc))
        if isinstance(exc, StorageError):
            return ItemOutcome.failure(task.item_id, "storage_error", str(exc))
        if isinstance(exc, FarmError):
            return ItemOutcome.failure(task.item_id, "render_error", str(exc))
        # A bug or a library failure: keep the worker, fail the item.
        log.error("item %s failed:\n%s", task.item_id, traceback.format_exc())
        return ItemOutcome.failure(task.item_id, "render_error", f"{type(exc).__name__}: {exc}")

    # --- one render with the degrade ladder -------------------------------------------------

    def _produce(self, task: RenderTask, started: float, on_step=None) -> ItemOutcome | Escalation | Produced:
        params = task.params
        degradations: list[Degradation] = list(task.degradations)
        ooms: list[OomRecord] = list(task.ooms)  # those of earlier attempts, when the item moved or came back
        tier = self.card.tier
        timings: dict[str, float] = {"load": round(self.adapter.load_seconds, 3)}

        def ladder(settings: RenderSettings, why: str):
            """The next settings that have not run out of memory on this tier, or the item's end."""
            result = climb(
                settings,
                mode=params.degrade,
                order=task.degrade_order,
                blocked=blocked_on(tier, ooms),
                bigger_tier_available=task.bigger_tier_available,
                why=lambda _settings, _blocked: why,
            )
            degradations.extend(result.degradations)
            if result.exhausted:
                return ItemOutcome.failure(
                    task.item_id,
                    "oom",
                    f"{why}; no cheaper option left (degrade: {params.degrade})",
                    degradations=[d.to_dict() for d in degradations],
                    ooms=[o.to_dict() for o in ooms],
                    settings=result.settings.to_dict(),
                )
            if result.escalate:
                return Escalation(task.item_id, task.job_id, why, result.settings, tuple(degradations), tuple(ooms))
            return result.settings

        settings = task.settings
        if settings in blocked_on(tier, ooms):  # back on a card of a tier where these ran out of memory
            settings = ladder(settings, f"{settings.describe()} ran out of memory on {tier} before")
            if not isinstance(settings, RenderSettings):
                return settings

        t0 = time.perf_counter()
        # `prepared` (size -> PreparedImage) is shared with the image's other takes on this worker.
        source, prepared = self.inputs.get(task, lambda: read_input(task.image, self.image_limits, root=task.image_root))
        data = source.data
        timings["read"] = time.perf_counter() - t0
        timings["preprocess"] = 0.0

        while True:
            size = settings.size
            if size not in prepared:
                t0 = time.perf_counter()
                prepared[size] = prepare_image(data, *size, name=task.image, limits=self.image_limits)
                timings["preprocess"] += time.perf_counter() - t0
            result, settings = self._attempt(task, params, settings, prepared[size], degradations, ooms, on_step)
            if not isinstance(result, OomRecord):
                generation = result
                break
            # Outside the except block now: the failed attempt's tensors are unreachable.
            oom = replace(result, allocated_after_bytes=self._released())
            ooms.append(oom)
            why = f"out of memory during {oom.phase} at {settings.describe()} on {tier}: {oom.message}"
            settings = ladder(settings, why)
            if not isinstance(settings, RenderSettings):
                return settings

        timings.update(generation.timings)
        warnings = prepared[settings.size].warnings + generation.warnings
        scratch = tempfile.TemporaryDirectory(prefix="farm-item-")
        files = {"video": os.path.join(scratch.name, "video.mp4"), "thumbnail": os.path.join(scratch.name, "thumb.jpg")}
        try:
            t0 = time.perf_counter()
            encode_mp4(generation.frames, files["video"], params.fps)
            write_thumbnail(generation.frames[0], files["thumbnail"])
            timings["encode"] = time.perf_counter() - t0
        except BaseException:
            scratch.cleanup()
            raise
        self.after_denoise_s = timings.get("decode", 0.0) + timings["encode"] + self._upload_s
        sizes = {name: os.path.getsize(path) for name, path in files.items()}
        timings["total"] = time.perf_counter() - started
        image = prepared[settings.size]
        digest = inputs_digest(
            image_sha256=image.sha256,
            prompt=task.prompt,
            params=task.params.model_dump(),
            seed=task.seed,
            model=task.model,
            model_config_sha256=self.adapter.config_sha256,
        )
        if self.simulated is not None:  # the simulated card's peak, not the CPU process's
            width, height = settings.size
            generation.peak_memory_bytes = self.simulated.peak_bytes(
                width, height, settings.frames, settings.savers, params.guidance_scale > 1
            )
            generation.memory_kind = "simulated_card_estimate"
        sidecar = self._sidecar(
            task, image, source.fingerprint, digest, generation, settings, degradations, ooms, timings, warnings, sizes
        )
        outcome = ItemOutcome(
            item_id=task.item_id,
            status=SUCCEEDED,
            warnings=warnings,
            degradations=[d.to_dict() for d in degradations],
            ooms=[o.to_dict() for o in ooms],
            settings=settings.to_dict(),
            timings={k: round(v, 4) for k, v in timings.items()},
            peak_memory_bytes=generation.peak_memory_bytes,
            memory_kind=generation.memory_kind,
            frames=int(generation.frames.shape[0]),
        )
        return Produced(task, scratch, files, sidecar, outcome, started)

    def _attempt(self, task: RenderTask, params, settings: RenderSettings, prepared: PreparedImage, degradations, ooms,
                 on_step=None):
        """(Generation, settings), or (OomRecord, settings) for the ladder to handle.

        A decode OOM is handled here: the latents are kept and only the decode is retried with
        the decode savers (recorded in `degradations` and `ooms`), as long as that can help.
        """
        width, height = settings.size
        guidance = params.guidance_scale > 1
        self.adapter.apply_savers(settings.savers)

        def denoise():
            if self.simulated is not None:
                self.simulated.check_render(width, height, settings.frames, settings.savers, guidance, "denoise")
            return self.adapter.denoise(
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
                **({"on_step": on_step} if on_step is not None else {}),
            )

        latents, oom = self._guarded("denoise", settings, denoise)
        if oom is not None:
            return oom, settings
        while True:
            current = settings

            def decode():
                if self.simulated is not None:
                    self.simulated.check_render(width, height, current.frames, current.savers, guidance, "decode")
                return self.adapter.decode(latents)

            generation, oom = self._guarded("decode", current, decode)
            if oom is None:
                return generation, settings
            oom = replace(oom, allocated_after_bytes=self._released())  # the latents stay: they are what we keep
            option = next_decode_step(settings, mode=params.degrade)
            if option is None:
                del latents
                return oom, settings
            ooms.append(oom)
            step, changed = option
            before, after = describe_change(step, settings, changed)
            why = (
                f"out of memory during decode at {settings.describe()} on {self.card.tier}: {oom.message}; "
                "the finished latents were kept and only the decode was retried"
            )
            degradations.append(Degradation(step, before, after, why))
            settings = changed
            self.adapter.apply_savers(settings.savers)

    def _released(self) -> int | None:
        """Hand what a failed attempt left back to the device; on CUDA, what is still allocated
        (the weights and anything kept on purpose: it should be back to the render's baseline)."""
        release_memory(self.adapter.device)
        return allocated_bytes(self.adapter.device) if self.adapter.device.startswith("cuda") else None

    def _guarded(self, phase: str, settings: RenderSettings, call):
        """(result, None), or (None, OomRecord) when `call` ran out of memory. The exception (and the
        tensors its traceback holds) is dropped before this returns; anything else propagates."""
        try:
            return call(), None
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self.adapter.phase = "idle"
            event = OomRecord(phase, self.card.tier, settings, str(exc).strip().splitlines()[0][:300])
        return None, event

    def _memory_record(self, generation, settings: RenderSettings, guidance: bool) -> dict:
        """Measured peaks per phase beside the estimator's figure for the same settings."""
        width, height = settings.size
        kind = "cuda" if self.card.gpu else ("simulated" if self.simulated is not None else "cpu")
        dtype_bytes = self.simulated.dtype_bytes if self.simulated is not None else self.adapter.precision.dtype_bytes
        estimate = estimate_vram(
            self.profile, width, height, settings.frames, dtype_bytes=dtype_bytes, savers=settings.savers, guidance=guidance
        )
        return {
            "kind": kind,
            "gpu_name": self.card.gpu.get("name"),
            "dtype": self.adapter.dtype_name,
            "dtype_bytes": dtype_bytes,
            "savers": list(settings.savers),
            "baseline_allocated_bytes": self.adapter.memory.baseline_bytes,
            "phases": generation.phases,
            "cap_fraction": self.card.cap_fraction,
            "estimate": {
                "total_bytes": estimate.total_bytes,
                "denoise_bytes": estimate.denoise_bytes,
                "decode_bytes": estimate.decode_bytes,
                "weights_bytes": estimate.weights_bytes,
                "overhead_bytes": estimate.overhead_bytes,
            },
        }

    def _sidecar(
        self, task, prepared, fingerprint, digest, generation, settings, degradations, ooms, timings, warnings, sizes
    ) -> dict:
        params = task.params
        frames = generation.frames
        return build_sidecar(
            task,
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            input={**prepared.describe(), "fingerprint": fingerprint},
            inputs_sha256=digest,
            effective=effective_params(params, settings, task.seed),
            seed_source="manifest" if params.seed is not None else "derived from the item id",
            model=self.adapter.describe(),
            device={
                "type": self.adapter.device,
                "worker": self.worker_name,
                "node_id": self.node_id,
                "host": platform.node(),
                "torch": torch_version(),
                **({"gpu": self.card.gpu, "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")} if self.card.gpu else {}),
            },
            tier={
                "planned": task.planned_tier,
                "ran_on": self.card.tier,
                "stolen": task.planned_tier != self.card.tier and not any(d.step == BIGGER_TIER for d in degradations),
                "card_gib": round(self.card.card_bytes / GIB, 2) if self.card.card_bytes else None,
                "budget_gib": round(self.card.budget_bytes / GIB, 2) if self.card.budget_bytes else None,
                "simulated": self.card.simulated,
                "planned_estimate_gib": task.estimate_gib,
            },
            timings_seconds={k: round(v, 4) for k, v in timings.items()},
            peak_memory_bytes=generation.peak_memory_bytes,
            memory_kind=generation.memory_kind,
            memory=self._memory_record(generation, settings, params.guidance_scale > 1),
            degraded=bool(degradations),
            degradations=[d.to_dict() for d in degradations],
            ooms=[o.to_dict() for o in ooms],
            warnings=warnings,
            outputs=outputs_record(
                task.item_id, sizes, frames=int(frames.shape[0]), width=int(frames.shape[2]),
                height=int(frames.shape[1]), fps=params.fps,
            ),
        )


class DrainWatch:
    """One render's watch on its node's drain (see the module text): the probe is asked when the
    render starts and then, from the step hook, at most every `drain_check_s`; once the node is
    draining, each step asks `farm.core.drain.decide` and stops the render (DrainHandBack) when
    it cannot end before the node's deadline."""

    def __init__(self, renderer: ItemRenderer):
        self.renderer = renderer
        self.checked = time.monotonic()
        self.drain: NodeDrain | None = self._probe()
        self.first_step: float | None = None
        self.finishing = False  # told the log this render finishes despite the drain

    def _probe(self) -> NodeDrain | None:
        try:
            return self.renderer.drain_probe()
        except Exception:  # noqa: BLE001 - the cluster's state unreachable for a moment: ask again later
            log.debug("drain probe failed", exc_info=True)
            return None

    def step(self, done: int, total: int) -> None:
        """Before denoise step `done + 1` of `total`."""
        now = time.monotonic()
        if done == 0:
            self.first_step = now  # the pace counts from here (a retried denoise starts again)
        if self.drain is None and now - self.checked >= self.renderer.drain_check_s:
            self.checked = now
            self.drain = self._probe()
        if self.drain is None:
            return
        verdict = decide(
            elapsed_s=now - (self.first_step if self.first_step is not None else now),
            steps_done=done,
            steps_total=total,
            seconds_left=self.drain.seconds_left(time.time()),
            after_denoise_s=self.renderer.after_denoise_s,
            margin_s=self.renderer.drain_margin_s,
        )
        if not verdict.finish:
            raise DrainHandBack(f"its node is being drained: {verdict.why}; stopped after step {done} of {total}", done)
        if not self.finishing:
            self.finishing = True
            log.info("worker %s: its node is being drained; finishing its item (%s)", self.renderer.worker_name,
                     verdict.why)


def torch_version() -> str:
    import torch

    return torch.__version__


class BackgroundCommits:
    """Commits produced items on a background thread so the next render starts at once.

    At most `capacity` items wait for upload; `submit` blocks beyond that (backpressure, so a
    slow or unreachable store cannot make rendered videos pile up without limit).
    """

    def __init__(self, renderer: ItemRenderer, capacity: int = 2, on_commit=None):
        self.renderer = renderer
        self.on_commit = on_commit  # called on the commit thread after each commit (to report it at once)
        self._slots = threading.BoundedSemaphore(capacity)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="farm-commit")
        self._lock = threading.Lock()
        self._done: list[ItemOutcome] = []  # not yet in a commit report (the mailbox)
        # Not yet in a render reply: a reply repeats what a report already sent, because the
        # report may reach the engine after the reply (it would then see nothing pending and end
        # the job before the commit is counted); the engine counts an item once.
        self._unreplied: list[ItemOutcome] = []
        self._pending: dict[tuple[str, str], Future] = {}  # (job id, item id) -> its commit
        self._sequence = 0  # of the reports: a later report's pending list replaces an earlier's

    def submit(self, produced: Produced) -> None:
        self._slots.acquire()
        key = (produced.task.job_id, produced.task.item_id)
        with self._lock:
            self._pending[key] = self._executor.submit(self._commit, produced)

    def _commit(self, produced: Produced) -> None:
        try:
            outcome = self.renderer.commit(produced)
        finally:
            self._slots.release()
        with self._lock:
            self._done.append(outcome)
            self._unreplied.append(outcome)
            self._pending.pop((produced.task.job_id, produced.task.item_id), None)
        if self.on_commit is not None:
            self.on_commit()

    def pending(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._pending)

    def report(self) -> tuple[int, list[ItemOutcome], list[tuple[str, str]]]:
        """For the mailbox: (sequence, outcomes not yet reported, still pending), taken together.
        A report with a higher sequence is newer (its pending list replaces an older one)."""
        with self._lock:
            done, self._done = self._done, []
            self._sequence += 1
            return self._sequence, done, list(self._pending)

    def reply(self) -> tuple[int, list[ItemOutcome], list[tuple[str, str]]]:
        """For a render reply: the same, with every outcome since the last reply (reported or not)."""
        with self._lock:
            done, self._unreplied, self._done = self._unreplied, [], []
            self._sequence += 1
            return self._sequence, done, list(self._pending)

    def flush(self) -> list[ItemOutcome]:
        """Wait for every pending commit; return all finished outcomes."""
        with self._lock:
            futures = list(self._pending.values())
        for future in futures:
            future.result()
        return self.reply()[1]
