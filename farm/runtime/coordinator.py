"""The job coordinator behind `farm serve`: a named, detached Ray actor that owns the queues and
the render pool, so the HTTP layer holds no job state.

Durability: every job is recorded in a registry (FARM_STATE_URI, a folder or s3:// prefix:
`jobs/ID.json`), and its validated spec lives in its output (`JOB/spec.json`). The actor is
restarted by Ray after a crash (`max_restarts=-1`). Its render workers are named detached actors
(namespace `farm`), so they outlive it: the new incarnation adopts them (no model loaded again),
waits until each has finished what the old one gave it and uploaded it, then reloads every
unfinished job from the registry and runs it again: committed items are skipped (their
sidecars), so nothing is rendered or committed twice.

Leases (farm.core.lease): a coordinator runs a job only while it holds the job's lease
(`leases/JOB_ID.json` in FARM_STATE_URI, renewed every FARM_JOB_LEASE_TTL_S/3). Two coordinators
on one state store (the old and the new cluster of a RayService upgrade) so never run the same
job: at start every unfinished job is watched and run once its lease is had (at once when it is
free, or its holder was a process on this machine that is gone; after a TTL without renewal
otherwise); a new job's lease is taken when it is accepted; a lease lost (taken over, or not
renewed in time) stops the job's dispatch here at once (what is rendering finishes and commits:
commits are exactly-once); a finished or cancelled job's lease is deleted. A job held elsewhere
is reported as such (`held_by`), and a cancel of it is passed on (`cancels/JOB_ID.json`, which
its holder reads). Jobs accepted by another coordinator after this one started are found by a
rescan of the registry every TTL.

Cancelling: a cancelled job's queued items are cancelled at once and its rendering ones stopped
at their next denoise step (farm.runtime.engine); its status says `cancelling` until it has
ended. One item is cancelled the same way (`cancel_item`); an item cancelled before its job was
admitted is remembered in the registry entry (`cancel_items`) and cancelled at admission. A job
another coordinator runs has its item cancels refused (409: cancel it there, or the whole job).

Takes and picks (farm.core.takes): a pick of a job running here is set in its JobState (the job
recorder writes it with the next job.json) and in its registry entry at once (`picks`), so a
restarted coordinator restores it; a pick of a finished job changes its job.json by
compare-and-swap (farm.storage.picks) and rewrites its contact sheet (farm.post.contact), which
is also written when a job with takes ends.

Threads: Ray calls (submit, status, ...) run on the actor's thread pool; one admission thread
checks, scans and plans submitted jobs in order; one dispatch thread drives the engine; one
thread keeps the leases (farm.runtime.leases) and one looks at the registry for the jobs of other
coordinators (new jobs, their state, cancel requests); one writes contact sheets.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from farm import __version__
from farm.core.errors import FarmError, ItemCancelError, JobConflictError, QueueFullError, StorageError, TakeError
from farm.core.job import FINAL_ITEM_STATES, FINAL_JOB_STATES, JobState, JobStatus
from farm.core.lease import Holder, LeasePolicy
from farm.core.manifest import JobSpec
from farm.core.states import SKIPPED, SUCCEEDED
from farm.core.takes import resolve_pick, takes_listing, takes_of, valid_picks
from farm.core.tiers import load_tier_table
from farm.runtime.engine import ActiveJob, Engine
from farm.runtime.jobs import JobRecorder, clear_staging, prepare_job, write_job_files
from farm.runtime.leases import LeaseKeeper, coordinator_holder
from farm.settings import FarmSettings, load_settings
from farm.storage import canonical_output, open_store
from farm.storage.base import item_keys, job_record_key, job_spec_key
from farm.storage.lease import LeaseStore, lease_storage_config
from farm.storage.picks import read_record, record_picks

log = logging.getLogger(__name__)

COORDINATOR_NAME = "farm-coordinator"
NAMESPACE = "farm"


class JobRecordEntry(BaseModel):
    """The fields a registry record must have to be a job of this farm (others are kept as is)."""

    model_config = ConfigDict(extra="allow")

    id: StrictStr = Field(pattern=r"^j-[0-9a-f]{12}$")
    name: StrictStr = Field(min_length=1)
    output: StrictStr = Field(min_length=1)
    state: Literal[tuple(s.value for s in (*FINAL_JOB_STATES, JobStatus.QUEUED, JobStatus.RUNNING))]  # type: ignore[valid-type]
    submitted_at: float
    items: int | None = None
    priority: int = 0


class JobRegistry:
    """One small JSON record per job in the state store; the source of truth after a restart.

    A file there that is not a readable record of a job (damaged, hand-edited, or planted by a
    job that wrote into the state folder) is skipped and reported (`skipped`, the log, the
    `farm_job_records_skipped` gauge, `/healthz`), never a reason for the service not to start.
    """

    def __init__(self, store):
        self.store = store
        self.skipped: list[dict[str, str]] = []

    def put(self, entry: dict) -> None:
        self.store.put_bytes(f"jobs/{entry['id']}.json", json.dumps(entry, indent=1).encode(), "application/json")

    def get(self, job_id: str) -> dict | None:
        """One job's record as it is now (None: none, or not a readable record). StorageError."""
        data = self.store.get_bytes(f"jobs/{job_id}.json")
        if data is None:
            return None
        try:
            entry = JobRecordEntry.model_validate_json(data).model_dump()
        except ValidationError:
            return None
        return entry if entry["id"] == job_id else None

    def ids(self) -> set[str]:
        """The ids the registry has records for (one listing, no record read)."""
        return {info.key[len("jobs/"):-len(".json")] for info in self.store.list("jobs/")
                if info.key.endswith(".json") and "/" not in info.key[len("jobs/"):]}

    def list(self) -> list[dict]:
        entries, self.skipped = [], []
        for info in self.store.list("jobs/"):
            reason = None
            try:
                data = self.store.get_bytes(info.key)
                entry = JobRecordEntry.model_validate_json(data or b"").model_dump()
                if info.key != f"jobs/{entry['id']}.json":
                    reason = f"it holds job {entry['id']}, not the one its name says"
            except ValidationError as error:
                reason = f"not a job record ({error.error_count()} problem(s), first: {error.errors()[0]['msg']})"
            if reason:
                log.warning("job registry: skipping %s: %s", info.key, reason)
                self.skipped.append({"key": info.key, "reason": reason})
                continue
            entries.append(entry)
        return sorted(entries, key=lambda e: (e.get("submitted_at") or 0, e["id"]))


def coordinator_settings(settings: FarmSettings | dict | None) -> FarmSettings:
    """The settings a coordinator runs with: those handed over by `farm serve`, or read from the
    environment here (a RayService's app creates the coordinator with none); a dict overrides
    `model` and `default_output` of the environment's."""
    if isinstance(settings, FarmSettings):
        return settings
    overrides = settings or {}
    return load_settings().with_model(overrides.get("model")).with_output(overrides.get("default_output"))


class Coordinator:
    """The service's job state and render pool (a detached Ray actor; see the module text)."""

    def __init__(self, settings: FarmSettings | dict | None = None, *, engine: Engine | None = None,
                 holder: Holder | None = None):
        """`engine`: one built by the caller (tests: in-process workers, no Ray); default the
        service's, whose workers follow the cluster's GPUs. `holder`: this instance's name in
        lease records (default: host, pid and a random part)."""
        self.settings = coordinator_settings(settings)
        self.model = self.settings.model_ref
        self.table = load_tier_table(self.settings.tiers_file)
        state_uri = self.settings.coordinator.state_uri
        state_uri = state_uri if "://" in state_uri else os.path.expanduser(state_uri)
        self.registry = JobRegistry(open_store(state_uri))
        self.state_location = canonical_output(state_uri if "://" in state_uri else os.path.abspath(state_uri))
        self.lock = threading.RLock()
        self.entries: dict[str, dict] = {}  # job id -> registry entry (every job this farm knows)
        self.states: dict[str, JobState] = {}  # job id -> live state (admitted or finished here)
        self.finished = collections.OrderedDict()  # job id -> final record summary (bounded)
        self.pending: queue.Queue[str | None] = queue.Queue()
        self.started_at = time.time()
        self.policy = LeasePolicy(self.settings.coordinator.job_lease_ttl_s)
        self.holder = holder or coordinator_holder()
        lease_store = LeaseStore(open_store(state_uri, lease_storage_config(self.settings.storage, self.policy.ttl_s)))
        if not lease_store.exclusive:
            log.warning("FARM_S3_CONDITIONAL_WRITES=false: job leases are not exclusive, so two coordinators on "
                        "one FARM_STATE_URI (a RayService upgrade) may run the same job")
        self.lease_registry = JobRegistry(lease_store.store)  # reads with the leases' short timeouts
        self.leases = LeaseKeeper(lease_store, self.holder, self.policy, wanted=self._lease_wanted,
                                  gained=self._lease_gained, lost=self._lease_lost)
        self.released: set[str] = set()  # jobs the engine still finishes whose lease went elsewhere
        self._closing = threading.Event()
        # Contact sheets (read every take's thumbnail): off the dispatch thread, one at a time, in
        # the order asked, so the last written has the latest picks.
        self._sheets = ThreadPoolExecutor(max_workers=1, thread_name_prefix="farm-contact")
        from farm.metrics import FarmMetrics

        self.metrics = FarmMetrics()
        self.metrics.tier_budgets({t.name: t.budget_bytes for t in self.table.tiers})
        self.engine = engine if engine is not None else self._service_engine()
        self._reload()
        self.metrics.skipped_records.set(len(self.registry.skipped))
        self.leases.start()
        self._threads = [threading.Thread(target=target, name=name, daemon=True) for target, name in (
            (self._admit_loop, "farm-admission"), (self._dispatch_loop, "farm-dispatch"),
            (self._registry_loop, "farm-registry"))]
        for thread in self._threads:
            thread.start()

    def _service_engine(self) -> Engine:
        from farm.runtime.mailbox import RayMailbox

        mailbox = RayMailbox()  # the workers' commit reports; killed with this actor (it owns it)
        from farm.runtime.fleet import RayFleet

        # Workers follow the cluster's GPUs; they are named detached actors, so that they outlive
        # this actor: after a restart the new incarnation adopts them, and no model is loaded again.
        fleet = RayFleet(self.model, self.settings, mailbox=mailbox, namespace=NAMESPACE)
        engine = Engine([], self.table, self.metrics, self.settings, mailbox=mailbox, fleet=fleet)
        engine.adopt(fleet.adoptable_workers())
        engine.warm_start()  # the rest load in the background; dispatch starts with the first
        return engine

    def close(self, *, release: bool = True) -> None:
        """Stop this coordinator's threads (tests, and a service that stops): `release` deletes
        the leases it holds so that another coordinator takes those jobs over at once; without,
        they lapse after the TTL, as a crashed coordinator's do."""
        self._closing.set()
        self.pending.put(None)
        self.leases.stop(release=release)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=30)
        self._sheets.shutdown(wait=True)

    # --- submission ---------------------------------------------------------------------------

    def _check_models(self, spec: JobSpec) -> None:
        """Only the models the operator allows (FARM_MODEL and FARM_EXTRA_MODELS): a client of the
        API must not make the workers download or read weights of its choosing."""
        from farm.models.loading import absolute_model_ref

        allowed = {absolute_model_ref(ref) for ref in self.settings.allowed_models}
        named = sorted({spec.model, *(item.model for item in spec.items if item.model)})
        refused = [ref for ref in named if absolute_model_ref(ref) not in allowed]
        if refused:
            raise FarmError(
                f"this farm renders only {', '.join(map(repr, self.settings.allowed_models))}, not "
                f"{', '.join(map(repr, refused))}; omit `model`, use one of those, or ask the operator to add it "
                "to FARM_EXTRA_MODELS"
            )

    def submit(self, spec_data: dict, manifest: tuple[str, bytes] | None = None) -> dict:
        """Accept a validated job; returns its registry entry. Raises FarmError with the reason."""
        spec = JobSpec.from_dict(spec_data)
        self._check_models(spec)
        self._check_apart_from_state(spec)
        with self.lock:
            waiting = sum(1 for e in self.entries.values() if e["state"] == "queued" and not self.leases.held_elsewhere(e["id"]))
            limit = self.settings.coordinator.max_queued_jobs
            if waiting >= limit:
                raise QueueFullError(f"{waiting} jobs are already queued (the limit is {limit}); try later")
            clash = next(
                (e for e in self.entries.values()
                 if e["state"] not in FINAL_JOB_STATES and e["output"] == spec.output and e["name"] == spec.name),
                None,
            )
            if clash:
                raise JobConflictError(f"job {clash['id']} with the same name and output is not finished yet; wait or cancel it")
        store = open_store(spec.output)
        store.check_access(spec.name)
        write_job_files(store, spec, manifest)
        entry = {
            "id": "j-" + uuid.uuid4().hex[:12],
            "name": spec.name,
            "output": spec.output,
            "model": spec.model,
            "priority": spec.priority,
            "notify_url": spec.notify_url,
            "items": spec.total,
            "state": "queued",
            "submitted_at": time.time(),
            "farm_version": __version__,
            **({"picks": {}} if any(item.take_of is not None for item in spec.items) else {}),
        }
        self.leases.create(entry["id"])  # before the record: no other coordinator can take it first
        try:
            self.registry.put(entry)
        except StorageError:
            self.leases.release(entry["id"])
            raise
        with self.lock:
            self.entries[entry["id"]] = entry
        self.pending.put(entry["id"])
        return entry

    def _check_apart_from_state(self, spec: JobSpec) -> None:
        """A job never writes into the state folder (its files would be read as job records)."""
        from farm.core.outputs import OutputRefused, overlaps

        try:
            target = canonical_output(f"{spec.output.rstrip('/')}/{spec.name}")
        except OutputRefused as error:
            raise FarmError(f"output {spec.output!r} cannot be used: {error}") from None
        if overlaps(target, self.state_location):
            raise FarmError("the job's output overlaps the farm's state folder; choose another output or name")

    def cancel(self, job_id: str) -> dict | None:
        with self.lock:
            entry = self.entries.get(job_id)
            if entry is None:
                return None
            if entry["state"] in FINAL_JOB_STATES:
                return self.status(job_id)
            elsewhere = not self.leases.holds(job_id) and job_id not in self.states
        if elsewhere:  # another coordinator runs it (or will): it reads the request and cancels
            self.leases.leases.request_cancel(job_id, self.holder.id, time.time())
            with self.lock:
                entry["cancel_forwarded"] = True
            return self.status(job_id)
        with self.lock:
            entry["cancel_requested"] = True
            if job_id not in self.states:  # not admitted yet: nothing ran, everything is dropped
                entry["counts"] = {"total": entry.get("items", 0), "cancelled": entry.get("items", 0)}
                self._finish_entry(entry, "cancelled", None)
                return self.status(job_id)
        self.engine.cancel(job_id)
        return self.status(job_id)

    def cancel_item(self, job_id: str, item_id: str) -> dict | None:
        """Cancel one item: queued, at once; rendering, its render stops at its next denoise step.
        Answers {job_id, item_id, state, job}: `state` is `cancelled`, or `cancelling` (its render
        is being stopped, or its job has not started yet: it is cancelled when it does). None
        for an unknown job; ItemCancelError: 404 for an unknown item, 409 for one that has ended
        or is committing (its result stands) or a job another coordinator runs."""
        with self.lock:
            entry = self.entries.get(job_id)
            if entry is None:
                return None
            job_state = self.states.get(job_id)
            final = entry["state"] in FINAL_JOB_STATES
            if not final and job_state is None and (elsewhere := self.leases.held_elsewhere(job_id)) is not None:
                raise ItemCancelError(f"job {job_id} runs on another coordinator ({elsewhere.holder}); cancel the whole "
                                      "job (it is passed on), or this item again in a moment", 409, item_id)
        if job_state is None:  # finished, or accepted and not admitted yet: its items from its output
            job_state = self._readable_state(entry)
        if item_id not in job_state.items:
            raise ItemCancelError(f"job {job_id} has no item {item_id!r}; see GET /v1/jobs/{job_id}/items", 404, item_id)
        if final or job_id not in self.states:
            state = job_state.items[item_id].state
            if final or state in FINAL_ITEM_STATES:
                raise ItemCancelError(f"item {item_id!r} of job {job_id} has already ended ({state}); "
                                      "nothing to cancel (a committed result stays)", 409, item_id, str(state))
            with self.lock:  # not admitted yet: cancelled at admission (`_admit`), kept across restarts
                entry["cancel_items"] = sorted({*entry.get("cancel_items", []), item_id})
                self._put_entry(entry)
            if job_id in self.states:  # admitted meanwhile: `_admit` may have read the list before
                self.engine.cancel_item(job_id, item_id)
            return self._item_answer(job_id, item_id, "cancelling")
        result = self.engine.cancel_item(job_id, item_id)
        if result is None and job_state.items[item_id].state in FINAL_ITEM_STATES:  # the job ended meanwhile
            result = str(job_state.items[item_id].state)
        elif result is None:  # being admitted: not in the engine yet; `_admit` reads the list once it is
            with self.lock:
                entry["cancel_items"] = sorted({*entry.get("cancel_items", []), item_id})
            result = self.engine.cancel_item(job_id, item_id) or "cancelling"
        if result == "committing":
            raise ItemCancelError(f"item {item_id!r} of job {job_id} has rendered and is being committed; its result "
                                  "stands", 409, item_id, "running")
        if result not in ("cancelled", "cancelling"):
            raise ItemCancelError(f"item {item_id!r} of job {job_id} has already ended ({result}); nothing to cancel "
                                  "(a committed result stays)", 409, item_id, result)
        return self._item_answer(job_id, item_id, result)

    def _item_answer(self, job_id: str, item_id: str, state: str) -> dict:
        return {"job_id": job_id, "item_id": item_id, "state": state, "job": self.status(job_id)}

    # --- views ----------------------------------------------------------------------------------

    def status(self, job_id: str) -> dict | None:
        with self.lock:
            entry = self.entries.get(job_id)
            if entry is None:
                return None
            state = self.states.get(job_id)
            summary = dict(entry)
            summary.pop("cancel_requested", None)
            elsewhere = None
            if state is None and entry["state"] not in FINAL_JOB_STATES:
                elsewhere = self.leases.held_elsewhere(job_id)
            if elsewhere is not None:  # run by another coordinator: its record, not a claim to run it
                summary["held_by"] = elsewhere.holder
                summary["lease_expires_at"] = elsewhere.expires_at
            if state is not None:  # counts and rates only: the per-item record is never rebuilt here
                counts = state.counts()
                rate, eta = state.throughput(counts)
                summary.update(
                    state=entry["state"] if entry["state"] in FINAL_JOB_STATES else state.state_for(counts),
                    counts=counts,
                    started_at=state.started_at,
                    finished_at=state.finished_at,
                    items_per_minute=rate,
                    eta_seconds=eta,
                )
                if state.has_deliverables:  # the CPU stage: deliverables queued, made, failed
                    summary["post"] = state.post.to_dict()
                if self.engine.unprovidable and summary["state"] not in FINAL_JOB_STATES:
                    # asked of the autoscaler, never came: its work was planned on the tiers there are
                    summary["unprovidable_tiers"] = sorted(self.engine.unprovidable)
                if state.has_takes:
                    summary["picks"] = dict(state.picks)
            cancelled = entry.get("cancel_requested") or entry.get("cancel_forwarded")
            if cancelled and summary["state"] not in FINAL_JOB_STATES:  # until it has ended (also when run elsewhere)
                summary["state"] = JobStatus.CANCELLING.value
            summary.pop("cancel_forwarded", None)
            summary.pop("cancel_items", None)
            return summary

    def list_jobs(self, cursor: str | None = None, limit: int = 50) -> dict:
        with self.lock:
            ordered = sorted(self.entries.values(), key=lambda e: (e["submitted_at"], e["id"]), reverse=True)
        if cursor:
            ids = [e["id"] for e in ordered]
            ordered = ordered[ids.index(cursor) + 1 :] if cursor in ids else []
        page = ordered[:limit]
        return {
            "jobs": [self.status(e["id"]) for e in page],
            "next_cursor": page[-1]["id"] if len(ordered) > limit else None,
        }

    def items(self, job_id: str, state: str | None = None, cursor: int | None = None, limit: int = 100) -> dict | None:
        with self.lock:
            job_state = self.states.get(job_id)
            entry = self.entries.get(job_id)
        if entry is None:
            return None
        if job_state is None:
            job_state = self._load_state(entry)
        if job_state is None:
            return {"items": [], "next_cursor": None}
        # From the cursor on in index order (a bisection, no sort); a state filter reads on only
        # until the page is full.
        rows, more = job_state.page(state or None, cursor, limit)
        return {"items": rows, "next_cursor": rows[-1]["index"] if more else None}

    def takes(self, job_id: str, item_id: str) -> dict | None:
        """One image's takes (`item_id`: their shared id or one take's id), their states and which
        is picked; None for an unknown job. TakeError for an unknown item or one without takes."""
        with self.lock:
            entry = self.entries.get(job_id)
            job_state = self.states.get(job_id)
        if entry is None:
            return None
        job_state = job_state or self._readable_state(entry)
        shared, takes = takes_of(job_state.spec, item_id)
        with self.lock:
            return self._listing(job_state, shared, takes)

    def pick(self, job_id: str, item_id: str, take: int | str) -> dict | None:
        """Choose take `take` (K from 1, or its id) of an image; the takes listing after, None for
        an unknown job. TakeError (unknown item, not a take, out of range, a failed take);
        JobConflictError for a job another coordinator runs. With `deliverables_for: picked`
        the chosen take's deliverables are made (at once if it committed, else when it does)."""
        with self.lock:
            entry = self.entries.get(job_id)
            if entry is None:
                return None
            job_state = self.states.get(job_id)
            final = entry["state"] in FINAL_JOB_STATES
            if not final and job_state is None and (elsewhere := self.leases.held_elsewhere(job_id)) is not None:
                raise JobConflictError(f"job {job_id} runs on another coordinator ({elsewhere.holder}), whose job record "
                                       "would overwrite the pick; pick again in a moment")
            running = not final and job_state is not None
            if running:
                # Running here: the recorder's next job.json has it; the registry entry at once
                # (what a restarted coordinator restores). `_finish_entry` makes the job final
                # under this lock, so a pick is either in the final record or goes the way below.
                shared, take_id = resolve_pick(job_state.spec, item_id, take, self._take_states(job_state, item_id))
                job_state.picks[shared] = take_id
                entry["picks"] = dict(job_state.picks)
                self._put_entry(entry)
                listing = self._listing(job_state, shared)
                committed = job_state.items[take_id].state in (SUCCEEDED, SKIPPED)
        if running:
            # A take that commits later gets its deliverables then (the engine reads the pick).
            # Called outside our lock: the engine calls back into this object under its own.
            if committed and job_state.spec.deliverables_for == "picked":
                self.engine.enqueue_post(job_id, take_id)
            return listing
        # Finished (its job.json is final), or accepted and not started yet (its entry).
        loaded = job_state or self._readable_state(entry)
        shared, take_id = resolve_pick(loaded.spec, item_id, take, self._take_states(loaded, item_id))
        store = open_store(entry["output"])
        if final:
            picks = record_picks(store, entry["name"], {shared: take_id})
        else:
            picks = {**(entry.get("picks") or {}), shared: take_id}
        with self.lock:
            entry["picks"] = {**(entry.get("picks") or {}), **picks}
            loaded.picks.update(picks)
            if job_id in self.states and self.states[job_id] is not loaded:
                self.states[job_id].picks.update(picks)
            self._put_entry(entry)
            listing = self._listing(loaded, shared)
        if final:
            self._sheet_later(self._write_sheet, store, loaded.spec)  # its states and picks from job.json
            if loaded.spec.deliverables_for == "picked":  # the chosen take's deliverables, made now
                self.engine.post_after_job(loaded.spec, take_id)
        return listing

    def _readable_state(self, entry: dict) -> JobState:
        """A job's state from its output (spec.json and job.json); StorageError when not readable."""
        job_state = self._load_state(entry)
        if job_state is None:
            raise StorageError(f"the spec and record of job {entry['id']} cannot be read from its output now; retry later")
        return job_state

    @staticmethod
    def _take_states(job_state: JobState, item_id: str) -> dict[str, str]:
        """The states of the takes of `item_id`'s image (none: `resolve_pick` says what is wrong)."""
        try:
            _, takes = takes_of(job_state.spec, item_id)
        except TakeError:
            return {}
        return {item.id: job_state.items[item.id].state for item in takes}

    @staticmethod
    def _listing(job_state: JobState, shared: str, takes: list | None = None) -> dict:
        if takes is None:
            shared, takes = takes_of(job_state.spec, shared)
        records = {item.id: job_state.items[item.id].to_dict() for item in takes}
        return takes_listing(shared, takes, records, job_state.picks)

    def _put_entry(self, entry: dict) -> None:
        try:
            self.registry.put(entry)
        except StorageError as error:  # kept in memory (and job.json); the registry has it at the next write
            log.warning("job record %s not updated: %s", entry["id"], error)

    def loop_stats(self) -> dict:
        """What the dispatch loop spends its time on (for benchmarks/coordinator_scale.py): the
        engine's steps and their part in job.json writes, and each running job's recorder."""
        with self.engine.lock:
            jobs = {job_id: job.recorder.stats() for job_id, job in self.engine.jobs.items() if job.recorder is not None}
            return {"engine": dict(self.engine.loop_stats), "records": jobs}

    def video(self, job_id: str, item_id: str, expiry_s: int | None = None) -> dict | None:
        """Where a committed item's video is; `committed` is false unless the item's own sidecar
        says it succeeded (so the job's own files, job.json and spec.json, are never items)."""
        with self.lock:
            entry = self.entries.get(job_id)
        if entry is None:
            return None
        store = open_store(entry["output"])
        keys = item_keys(entry["name"], item_id)
        try:
            sidecar = json.loads(store.get_bytes(keys["sidecar"]) or b"null")
        except ValueError:
            sidecar = None
        if not isinstance(sidecar, dict) or sidecar.get("item_id") != item_id or sidecar.get("status") != "succeeded":
            return {"committed": False}
        if entry["output"].startswith("s3://"):
            return {"committed": True, "url": store.presigned_url(keys["video"], expiry_s)}
        if store.head(keys["video"]) is None:
            return {"committed": False}
        return {"committed": True, "path": store.location(keys["video"])}

    def health(self) -> dict:
        storage_ok = True
        try:
            self.registry.store.check_access("health")
        except StorageError:
            storage_ok = False
        with self.lock:
            active = sum(1 for e in self.entries.values() if e["state"] not in FINAL_JOB_STATES)
        engine = self.engine
        with engine.lock:
            unprovidable = dict(engine.unprovidable)
            requested = dict(engine.requested)
        return {
            # Ready to take jobs: workers there, loading, or an autoscaler that brings GPU nodes.
            "ok": storage_ok and bool(engine.workers or engine.starting or self.settings.engine.autoscale_max_workers),
            "workers": {w.name: w.tier for w in engine.workers},
            "starting": len(engine.starting),
            "start_errors": engine.start_errors[-5:],
            "autoscaler_requested": requested,
            "unprovidable_tiers": unprovidable,
            "storage": storage_ok,
            "skipped_job_records": self.registry.skipped[:20],
            "active_jobs": active,
            # Job leases: held here, watched (held elsewhere, or not yet had), the last ones lost.
            "leases": {**self.leases.counts(), "holder": self.holder.id, "exclusive": self.leases.leases.exclusive,
                       "lost": self.leases.losses[-5:]},
            "model": self.model,
            "uptime_seconds": round(time.time() - self.started_at, 1),
        }

    def ping(self) -> bool:
        return True

    def drain(self, grace_s: float) -> dict:
        """The service is stopping: start nothing new, let running items finish for up to
        `grace_s`, hand back the rest and write every job record. The registry still says
        `running` for those jobs, so the next start queues them again and skips what committed."""
        self.engine.begin_drain()
        deadline = time.monotonic() + grace_s
        while not self.engine.settled() and time.monotonic() < deadline:
            time.sleep(0.2)
        handed_back = self.engine.hand_back_held()
        with self.engine.lock:
            jobs = list(self.engine.jobs.values())
        for job in jobs:
            job.state.interrupted = True
            if job.recorder is not None:
                job.recorder.close(final=True)
        # The records are written: the next coordinator (this service started again, or a new
        # cluster's) may take the jobs over at once instead of after the leases' TTL.
        self._closing.set()
        self.leases.stop(release=True)
        return {"handed_back": len(handed_back), "jobs": len(jobs)}

    def metrics_text(self) -> bytes:
        """Prometheus text format of every farm series (served by the API at /metrics)."""
        self._publish_jobs()
        self.engine.publish()
        return self.metrics.text()

    def _publish_jobs(self) -> None:
        with self.lock:
            counts: dict[str, int] = {}
            for entry in self.entries.values():
                if entry["state"] not in FINAL_JOB_STATES and self.leases.held_elsewhere(entry["id"]):
                    continue  # counted by the coordinator that runs it (two clusters: not twice)
                state = entry["state"]
                if entry.get("cancel_requested") and state not in FINAL_JOB_STATES:
                    state = JobStatus.CANCELLING.value
                counts[state] = counts.get(state, 0) + 1
        self.metrics.job_states(counts)
        self.metrics.leases(self.leases.counts())

    def memory_bytes(self) -> int:
        """This process's resident memory now (for capacity measurements)."""
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    # --- admission and dispatch -----------------------------------------------------------------

    def _reload(self) -> None:
        """After a (re)start: know every job, and queue the unfinished ones again."""
        try:
            entries = self.registry.list()
        except StorageError as error:
            log.error("cannot read the job registry: %s", error)
            return
        for entry in entries:
            self.entries[entry["id"]] = entry
            if entry["state"] not in FINAL_JOB_STATES:
                self.leases.watch(entry["id"])  # run once its lease is ours (`_lease_gained`)

    def _admit_loop(self) -> None:
        # Adopted workers first finish and upload what the last coordinator gave them: only then
        # does a job's scan of its output see every commit (no item rendered twice).
        while self.engine.adopting():
            time.sleep(0.1)
        while not self._closing.is_set():
            job_id = self.pending.get()
            if job_id is None or self._closing.is_set():
                return
            with self.lock:
                entry = self.entries[job_id]
                if entry["state"] in FINAL_JOB_STATES or job_id in self.states or not self.leases.holds(job_id):
                    continue  # finished, admitted already, or not ours (`_lease_gained` queues it again)
            if job_id in self.engine.jobs:  # its last run here (lease lost) is still finishing
                threading.Timer(0.5, self.pending.put, (job_id,)).start()
                continue
            try:
                self._admit(entry)
            except Exception as error:  # the job cannot run; the farm goes on
                log.exception("job %s cannot start", job_id)
                with self.lock:
                    self._finish_entry(entry, "failed", None, message=str(error))

    def _admit(self, entry: dict) -> None:
        # What committed stays only if the model is the same: learn which model the workers
        # loaded from the first that joins (a farm with none starting, scaled to zero, compares
        # with what each sidecar names instead: farm.storage.resume).
        deadline = time.monotonic() + self.settings.engine.worker_restart_timeout_s
        while self.engine.model_config_sha256 is None and self.engine.starting and time.monotonic() < deadline:
            time.sleep(0.1)
        store = open_store(entry["output"])
        data = store.get_bytes(job_spec_key(entry["name"]))
        if data is None:
            raise FarmError(f"the job's spec.json is missing from {entry['output']}")
        spec = JobSpec.from_dict(json.loads(data), output=entry["output"])
        state = JobState(spec)
        earlier: dict[str, str] = {}
        if state.has_takes:  # a run again (a restart, a takeover) keeps the picks made before
            earlier = _as_dict((read_record_quietly(store, spec.name) or {}).get("picks"))
            try:
                current = self.registry.get(entry["id"]) or {}  # another coordinator's picks of it
            except StorageError as error:
                log.warning("job %s: its registry record is not read for its picks: %s", entry["id"], error)
                current = {}
            earlier.update(_as_dict(current.get("picks")))
        recorder = JobRecorder(state, store, self.settings.engine.record_interval_s)
        job = ActiveJob(id=entry["id"], state=state, recorder=recorder, priority=entry.get("priority", 0))
        job.on_finish = lambda finished: self._job_done(finished, store)
        plan, decision = prepare_job(self.engine, job, store)
        with self.lock:
            if entry["state"] in FINAL_JOB_STATES or not self.leases.holds(entry["id"]):
                recorder.close(final=False)  # cancelled, or its lease lost, while it was prepared
                return
            if state.has_takes:  # with this lock: a pick now finds the state, one before is in the entry
                state.picks = valid_picks(spec, {**earlier, **_as_dict(entry.get("picks"))})
                entry["picks"] = dict(state.picks)
            self.states[entry["id"]] = state
            entry["state"] = "running"
            entry["started_at"] = time.time()
            entry.pop("lease_lost", None)
            self.registry.put(entry)
        recorder.write(force=True)
        self.engine.admit(job, plan, decision.replace, decision.post)
        with self.lock:
            cancel_job, cancel_items = bool(entry.get("cancel_requested")), list(entry.get("cancel_items", []))
        if cancel_job:  # cancelled while it was admitted (the engine did not have it yet)
            self.engine.cancel(entry["id"])
        for item_id in cancel_items:  # items cancelled before the job started
            self.engine.cancel_item(entry["id"], item_id)
        if not self.leases.holds(entry["id"]):  # lost between the check and the admission
            self._lease_lost(entry["id"], "lost while the job was being admitted")

    def _dispatch_loop(self) -> None:
        while not self._closing.is_set():
            try:
                self.leases.expire_overdue()  # a renewal stuck in storage must not keep us dispatching
                if self.engine.busy():
                    self.engine.step(0.5)
                else:
                    time.sleep(0.2)
                self._publish_jobs()
            except Exception:  # keep dispatching; a broken step must not stop the farm
                log.exception("dispatch step failed")
                time.sleep(1.0)

    def _job_done(self, job: ActiveJob, store) -> None:
        with self.lock:
            released = job.id in self.released
            self.released.discard(job.id)
        if released:  # its lease went elsewhere: the new holder finishes it (and clears staging)
            if job.recorder is not None:
                job.recorder.close(final=False, discard=True)
            log.info("job %s: handed over; what was rendering here when its lease was lost has ended", job.id)
            return
        clear_staging(store, job.state.spec.name)
        job.state.finish()
        job.recorder.close(final=True)
        with self.lock:
            entry = self.entries[job.id]
            final = "cancelled" if entry.get("cancel_requested") else job.state.final_state
            self._finish_entry(entry, final, job.state)
        if job.state.has_takes:
            self._sheet_later(self._takes_job_done, store, job.state)
        if entry.get("notify_url"):
            threading.Thread(target=self._notify, args=(entry,), daemon=True).start()

    def _finish_entry(self, entry: dict, state: str, job_state: JobState | None, message: str | None = None) -> None:
        entry["state"] = state
        entry["finished_at"] = time.time()
        if job_state is not None:
            entry["counts"] = job_state.counts()
            if job_state.has_deliverables:
                entry["post"] = job_state.post.to_dict()
            if job_state.has_takes:
                entry["picks"] = dict(job_state.picks)
        if message:
            entry["message"] = message
        entry.pop("cancel_requested", None)
        entry.pop("cancel_forwarded", None)
        entry.pop("cancel_items", None)
        entry.pop("lease_lost", None)
        try:
            self.registry.put(entry)
        except StorageError as error:
            log.warning("job record %s not updated: %s", entry["id"], error)
        # After the final record: whoever sees the lease gone and reads the record finds it done.
        threading.Thread(target=self.leases.release, args=(entry["id"],), daemon=True).start()
        if entry.get("notify_url") and job_state is None:
            threading.Thread(target=self._notify, args=(entry,), daemon=True).start()

    def _takes_job_done(self, store, job_state: JobState) -> None:
        """(The contact-sheet thread) A job with takes ended here: a pick made while its final
        record was being written goes into job.json too, then its contact sheet is written."""
        with self.lock:
            picks = dict(job_state.picks)
        if picks:
            try:
                record_picks(store, job_state.spec.name, picks)
            except FarmError as error:
                log.warning("job %s: picks not written to its record: %s", job_state.spec.name, error)
        with self.lock:
            picks = dict(job_state.picks)
            states = {item_id: status.state for item_id, status in job_state.items.items()}
        self._write_sheet(store, job_state.spec, picks=picks, states=states)

    def _sheet_later(self, work, *args) -> None:
        try:
            self._sheets.submit(work, *args)
        except RuntimeError:  # this coordinator is closing: the next one's end of the job writes it
            log.info("contact sheet not written: the coordinator is closing")

    @staticmethod
    def _write_sheet(store, spec: JobSpec, **kwargs) -> None:
        from farm.post.contact import write_contact_sheet_logged

        write_contact_sheet_logged(store, spec, **kwargs)

    # --- leases --------------------------------------------------------------------------------

    def _lease_wanted(self, job_id: str) -> bool:
        """(The lease thread, before acquiring) Is the job still to be run? Its record now."""
        current = self.lease_registry.get(job_id)  # StorageError: the keeper tries again later
        with self.lock:
            entry = self.entries.get(job_id)
            if entry is None or current is None:
                return False
            if entry["state"] in FINAL_JOB_STATES:
                return False
            if current["state"] in FINAL_JOB_STATES:  # finished by another coordinator
                entry.clear()
                entry.update(current)
                return False
            return True

    def _lease_gained(self, job_id: str) -> None:
        """The job's lease is ours: run it (committed items are skipped as after a restart)."""
        with self.lock:
            entry = self.entries.get(job_id)
            if entry is None or entry["state"] in FINAL_JOB_STATES:
                return
            if job_id not in self.states:
                entry["state"] = "queued"
        self.pending.put(job_id)

    def _lease_lost(self, job_id: str, reason: str) -> None:
        """The job's lease is gone: dispatch none of its items any more (those rendering finish
        and commit), write none of its records, and watch it (to take it back once free)."""
        recorder = None
        with self.engine.lock, self.lock:  # the engine's first, as its callbacks take ours
            entry = self.entries.get(job_id)
            if entry is None or entry["state"] in FINAL_JOB_STATES:
                return
            entry["lease_lost"] = {"reason": reason, "at": time.time()}
            self.metrics.lease_lost(reason)
            self.states.pop(job_id, None)
            job = self.engine.jobs.get(job_id)
            if job is not None and job_id not in self.released:
                self.released.add(job_id)
                recorder, job.recorder = job.recorder, None
                self.engine.release(job_id)  # may end the job here at once (`_job_done`)
        if recorder is not None:
            recorder.close(final=False, discard=True)
        self.leases.watch(job_id)

    def _registry_loop(self) -> None:
        """Every TTL/3: cancel requests for jobs held here; the records of jobs held elsewhere
        (their state); every TTL: jobs other coordinators accepted since this one started."""
        next_scan = time.monotonic() + self.policy.ttl_s
        while not self._closing.wait(self.policy.poll_s):
            try:
                self._take_cancel_requests()
                self._refresh_watched()
                if time.monotonic() >= next_scan:
                    next_scan = time.monotonic() + self.policy.ttl_s
                    self._scan_registry()
            except StorageError as error:
                log.warning("job registry not read: %s", error)
            except Exception:  # keep looking
                log.exception("job registry pass failed")

    def _take_cancel_requests(self) -> None:
        for job_id in self.leases.leases.cancel_requests():
            with self.lock:
                entry = self.entries.get(job_id)
                mine = entry is not None and self.leases.holds(job_id)
                done = entry is not None and entry["state"] in FINAL_JOB_STATES
            if mine:
                log.info("job %s: cancelled by a request to another coordinator", job_id)
                self.cancel(job_id)
            if mine or done:
                self.leases.leases.clear_cancel(job_id)

    def _refresh_watched(self) -> None:
        with self.lock:
            watched = [job_id for job_id, e in self.entries.items()
                       if e["state"] not in FINAL_JOB_STATES and job_id not in self.states
                       and self.leases.held_elsewhere(job_id) is not None]
        for job_id in watched:
            current = self.registry.get(job_id)
            if current is None:
                continue
            with self.lock:
                entry = self.entries.get(job_id)
                if entry is None or job_id in self.states or entry["state"] in FINAL_JOB_STATES:
                    continue
                entry.clear()
                entry.update(current)
            if current["state"] in FINAL_JOB_STATES:
                self.leases.forget(job_id)

    def _scan_registry(self) -> None:
        with self.lock:
            known = set(self.entries)
        for job_id in sorted(self.registry.ids() - known):
            entry = self.registry.get(job_id)
            if entry is None:
                continue
            with self.lock:
                if job_id in self.entries:
                    continue
                self.entries[job_id] = entry
            if entry["state"] not in FINAL_JOB_STATES:
                log.info("job %s: accepted by another coordinator; watched", job_id)
                self.leases.watch(job_id)

    def _notify(self, entry: dict) -> None:
        from farm.storage.inputs import post_json

        payload = {k: entry.get(k) for k in ("id", "name", "state", "output", "counts", "finished_at", "message")}
        try:
            post_json(entry["notify_url"], payload, self.settings.url)
        except FarmError as error:
            log.warning("webhook for job %s not delivered: %s", entry["id"], error)

    def _load_state(self, entry: dict) -> JobState | None:
        """A finished job from an earlier incarnation: rebuild its item states from job.json."""
        try:
            store = open_store(entry["output"])
            spec_data = store.get_bytes(job_spec_key(entry["name"]))
            record_data = store.get_bytes(job_record_key(entry["name"]))
        except StorageError:
            return None
        if not spec_data:
            return None
        state = JobState(JobSpec.from_dict(json.loads(spec_data), output=entry["output"]))
        record = json.loads(record_data) if record_data else {}
        for item_id, item in (record.get("items") or {}).items():
            if item_id in state.items and item.get("state") in FINAL_ITEM_STATES:
                state.restore(item_id, item["state"], reason=item.get("reason"), message=item.get("message"),
                              degradations=item.get("degradations"))
        if state.has_takes:  # a finished job's job.json is where its picks are changed (compare-and-swap)
            state.picks = valid_picks(state.spec, {**_as_dict(entry.get("picks")), **_as_dict(record.get("picks"))})
        return state

    # --- the web UI (farm.serve.ui) -------------------------------------------------------------

    def ui_items(self, job_id: str, state: str | None = None, cursor: int | None = None, limit: int = 60,
                 query: str | None = None) -> dict | None:
        """A page of a job's items as `items` gives it, each with its prompt and take, for the web
        UI: `state` is an item state or `degraded`; `query` keeps the items whose id or prompt
        contains it (case-insensitive). It reads the whole job once per call (milliseconds for
        10,000 items) to count `matches`, the items the filter selects in all."""
        with self.lock:
            job_state = self.states.get(job_id)
            entry = self.entries.get(job_id)
        if entry is None:
            return None
        job_state = job_state or self._load_state(entry)
        if job_state is None:
            return {"items": [], "next_cursor": None, "matches": 0}
        needle = (query or "").strip().casefold()
        rows, matches, more = [], 0, False
        for item_id in list(job_state.item_order()):
            status = job_state.items[item_id]
            if state == "degraded" and not status.degradations:
                continue
            if state not in (None, "", "degraded") and status.state != state:
                continue
            try:
                spec_item = job_state.spec_item(item_id)
            except KeyError:  # rejected at validation: it has no prompt
                spec_item = None
            prompt = spec_item.prompt if spec_item is not None else ""
            if needle and needle not in item_id.casefold() and needle not in prompt.casefold():
                continue
            matches += 1
            if cursor is not None and status.index <= cursor:
                continue
            if len(rows) == limit:
                more = True
                continue
            rows.append({"id": item_id, **status.to_dict(), "prompt": prompt,
                         "take_of": spec_item.take_of if spec_item is not None else None})
        return {"items": rows, "next_cursor": rows[-1]["index"] if more and rows else None, "matches": matches}

    def ui_item(self, job_id: str, item_id: str) -> dict | None:
        """One item's row as `ui_items` gives it (None: no such job or item)."""
        with self.lock:
            job_state = self.states.get(job_id)
            entry = self.entries.get(job_id)
        if entry is None:
            return None
        job_state = job_state or self._load_state(entry)
        status = job_state.items.get(item_id) if job_state is not None else None
        if status is None:
            return None
        try:
            spec_item = job_state.spec_item(item_id)
        except KeyError:  # rejected at validation: it has no prompt
            spec_item = None
        return {"id": item_id, **status.to_dict(), "prompt": spec_item.prompt if spec_item is not None else "",
                "take_of": spec_item.take_of if spec_item is not None else None}

    def ui_spec(self, job_id: str) -> dict | None:
        """A job's validated spec (`spec.json`'s form), for the UI's re-render of failed items."""
        with self.lock:
            job_state = self.states.get(job_id)
            entry = self.entries.get(job_id)
        if entry is None:
            return None
        job_state = job_state or self._readable_state(entry)
        failed = [item_id for item_id, status in job_state.items.items() if status.state == "failed"]
        return {"spec": job_state.spec.to_dict(), "failed": failed}

    def ui_cluster(self) -> dict:
        """The render workers for the UI's Cluster page: tier, node, phase, model, card and the
        item each renders; those still loading; and the autoscaler's view."""
        from farm.runtime.engine import model_id

        engine = self.engine
        with engine.lock:
            workers = []
            for worker in engine.workers:
                slot = engine.state.workers.get(worker.name)
                workers.append({
                    "name": worker.name, "tier": worker.tier, "node_id": worker.info.get("node_id"),
                    "device": worker.info.get("device"), "card": worker.info.get("card") or {},
                    "model": (slot.model if slot is not None else None) or model_id(worker.info),
                    "phase": slot.phase.value if slot is not None else "unknown",
                    "job_id": slot.job_id if slot is not None else None,
                    "item_id": slot.item_id if slot is not None else None,
                    "uploading": len(slot.uploading) if slot is not None else 0,
                })
            starting = [{"name": w.name, "tier": w.slot_tier} for w in engine.starting.values()]
            return {"workers": workers, "starting": starting, "start_errors": engine.start_errors[-5:],
                    "requested": dict(engine.requested), "unprovidable": sorted(engine.unprovidable),
                    "model": self.model}


def _as_dict(value: object) -> dict:
    return dict(value) if isinstance(value, dict) else {}


def read_record_quietly(store, job_name: str) -> dict | None:
    """The job record, or None where there is none or it cannot be read (logged)."""
    try:
        return read_record(store, job_name)
    except StorageError as error:
        log.warning("job %s: its record is not read: %s", job_name, error)
        return None


def coordinator_handle(settings: FarmSettings | dict | None = None, *, create: bool = True) -> Any:
    """The running coordinator, or a new one (named, detached, restarted by Ray after a crash)."""
    import ray

    try:
        return ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)
    except ValueError:
        if not create:
            raise
    actor_class = ray.remote(Coordinator)
    return actor_class.options(
        name=COORDINATOR_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=0,  # a submit that may have run is not retried blindly: clients retry
        max_concurrency=32,
        num_cpus=0,
        # On the head node: on a GPU node it would keep the autoscaler from seeing that node
        # idle, or die with it when the node is scaled in or reclaimed.
        resources={"node:__internal_head__": 0.001},
    ).remote(settings)
