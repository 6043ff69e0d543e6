"""Fault-injection helpers: watch a job's commits while something breaks, then audit the result.

A `CommitWatcher` polls the job's output a few times a second and remembers, per item, every
distinct sidecar it saw (the sidecar is the commit marker and carries a per-attempt token, so a
changed ETag means a second commit) and whether a committed item ever vanished. `audit` checks
the end state against the job's own per-item record and returns the figures that go into
docs/reliability.md; each test stores them in `chaos_report`, printed at the end of the run by
tests/conftest.py (and written to FARM_CHAOS_REPORT as JSON when set). Not a conftest.py: every
conftest here is imported as module `conftest`, and tests import the top one by that name.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers import encode, pattern

SETTINGS = {"resolution": 256, "frames": 8, "steps": 10}
FINAL_JOB_STATES = ("succeeded", "partial", "failed", "cancelled")


def write_images(folder: Path, count: int = 3) -> list[str]:
    names = []
    for n in range(count):
        name = f"still{n}.png"
        (folder / name).write_bytes(encode(pattern(320 + 32 * n, 240), "PNG"))
        names.append(name)
    return names


def chaos_items(count: int, images: list[str], prefix: str = "item") -> list[dict]:
    return [
        {"id": f"{prefix}-{n:02d}", "image": images[n % len(images)], "prompt": f"slow pan {n}", "seed": n, **SETTINGS}
        for n in range(count)
    ]


def is_sidecar(job_name: str, key: str) -> str | None:
    """The item id when `key` is an item's sidecar (JOB/ITEM.json), else None."""
    rest = key[len(job_name) + 1:]
    if not key.startswith(f"{job_name}/") or "/" in rest or not rest.endswith(".json"):
        return None
    if rest in ("job.json", "spec.json", "manifest.json"):
        return None
    return rest[: -len(".json")]


class CommitWatcher:
    """Background poller of one job's sidecars: first-seen time and every ETag per item."""

    def __init__(self, store, job_name: str, interval_s: float = 0.25):
        self.store = store
        self.job_name = job_name
        self.interval_s = interval_s
        self.etags: dict[str, list[str]] = {}
        self.first_seen: dict[str, float] = {}
        self.vanished: set[str] = set()
        self.poll_errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="commit-watcher", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=600)
        self.poll()  # one last look at the end state

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval_s)

    def poll(self) -> None:
        try:
            listing = {info.key: info for info in self.store.list(f"{self.job_name}/")}
        except Exception:  # noqa: BLE001 - the store is down: that is the point of some scenarios
            self.poll_errors += 1
            return
        now = time.monotonic()
        seen = set()
        for key, info in listing.items():
            item_id = is_sidecar(self.job_name, key)
            if item_id is None:
                continue
            seen.add(item_id)
            history = self.etags.setdefault(item_id, [])
            if not history or history[-1] != info.etag:
                history.append(info.etag)
            self.first_seen.setdefault(item_id, now)
        self.vanished |= set(self.etags) - seen

    def committed_count(self) -> int:
        return len(self.etags)

    def wait_for_commits(self, count: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self.committed_count() < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.committed_count()} of {count} commits within {timeout} s")
            time.sleep(0.1)

    def first_commit_after(self, moment: float) -> float | None:
        later = [t for t in self.first_seen.values() if t >= moment]
        return min(later) if later else None


class BackgroundJob:
    """`run_job` on a thread, so the test can break things while it runs."""

    def __init__(self, spec, options):
        self.state = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(spec, options), daemon=True)
        self._thread.start()

    def _run(self, spec, options) -> None:
        from farm.runtime.executor import run_job

        try:
            self.state = run_job(spec, options)
        except BaseException as exc:  # noqa: BLE001 - surfaced by result()
            self.error = exc

    def result(self, timeout: float = 900):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the job did not reach a final state"
        if self.error is not None:
            raise self.error
        return self.state


def committed_etags(watcher: CommitWatcher) -> dict[str, str]:
    return {item_id: history[-1] for item_id, history in watcher.etags.items()}


@dataclass
class Audit:
    scenario: str
    items: int
    committed: int
    failed: dict[str, str]
    lost: list[str]
    duplicated: list[str]
    recover_seconds: float | None
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def row(self) -> dict:
        return {
            "scenario": self.scenario, "items": self.items, "committed": self.committed,
            "failed": len(self.failed), "failure_reasons": sorted(set(self.failed.values())),
            "lost": len(self.lost), "duplicated": len(self.duplicated),
            "recover_seconds": None if self.recover_seconds is None else round(self.recover_seconds, 1),
            "notes": self.notes, **self.extra,
        }


def audit(
    scenario: str,
    store,
    job_name: str,
    item_ids: list[str],
    item_records: dict[str, dict],
    watcher: CommitWatcher,
    *,
    fault_over_at: float | None,
    committed_before_fault: dict[str, str] | None = None,
    notes: str = "",
) -> Audit:
    """Check the end state: every item committed once (with its outputs) or failed with a reason.

    `item_records` is the job record's `items` map; `committed_before_fault` maps items seen
    committed before the fault to their sidecar ETag, which must be unchanged at the end.
    """
    from farm.storage.commit import outputs_present

    listing = {info.key: info for info in store.list(f"{job_name}/")}
    committed, lost = [], set(watcher.vanished)
    for item_id in item_ids:
        sidecar_key = f"{job_name}/{item_id}.json"
        if sidecar_key not in listing:
            if item_id in watcher.etags:
                lost.add(item_id)
            continue
        sidecar = json.loads(store.get_bytes(sidecar_key))
        if not outputs_present(listing, job_name, item_id, sidecar):
            lost.add(item_id)
        committed.append(item_id)
    for item_id, etag in (committed_before_fault or {}).items():
        if listing.get(f"{job_name}/{item_id}.json") is None or listing[f"{job_name}/{item_id}.json"].etag != etag:
            lost.add(item_id)  # replaced or removed after the fault: the earlier result is gone
    duplicated = sorted(item_id for item_id, history in watcher.etags.items() if len(history) > 1)
    failed = {}
    for item_id in item_ids:
        record = item_records.get(item_id) or {}
        if record.get("state") == "failed":
            assert record.get("reason"), f"{item_id} failed without a reason: {record}"
            failed[item_id] = record["reason"]
    both = set(failed) & set(committed)
    assert not both, f"items both committed and failed: {sorted(both)}"
    unaccounted = set(item_ids) - set(failed) - set(committed)
    assert not unaccounted, f"items neither committed nor failed with a reason: {sorted(unaccounted)}"
    # Recovered when the work the fault interrupted (items rendered again) is committed; when
    # nothing was interrupted, at the next commit.
    redone = [item_id for item_id in committed if (item_records.get(item_id) or {}).get("attempts", 1) > 1]
    recovered = None
    if fault_over_at is not None:
        later = [watcher.first_seen[i] for i in redone if watcher.first_seen.get(i, 0) >= fault_over_at]
        recovered = max(later) if later else watcher.first_commit_after(fault_over_at)
    return Audit(
        scenario=scenario,
        items=len(item_ids),
        committed=len(committed),
        failed=failed,
        lost=sorted(lost),
        duplicated=duplicated,
        recover_seconds=None if recovered is None else recovered - fault_over_at,
        notes=notes,
        extra={"rendered_again": len(redone)},
    )


_REPORT: list[dict] = []


def record(result: Audit) -> None:
    """Keep the row for the summary; assert nothing was lost or duplicated (the `chaos_report` fixture)."""
    _REPORT.append(result.row())
    assert not result.lost, f"{result.scenario}: committed items lost: {result.lost}"
    assert not result.duplicated, f"{result.scenario}: items committed more than once: {result.duplicated}"


class OutageProxy:
    """A TCP proxy on 127.0.0.1 in front of an endpoint, which the test can take down and bring back.

    `down()` closes the listening socket and every open connection (pooled keep-alive ones too,
    which a server's own shutdown leaves serving), so clients get resets and refusals, as when an
    S3 endpoint goes away; `up()` listens on the same port again.
    """

    def __init__(self, target_port: int, port: int):
        self.target = ("127.0.0.1", target_port)
        self.port = port
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            listener.close()
        with self._lock:
            connections, self._open = self._open, set()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by down()
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def print_report(terminalreporter) -> None:
    if not _REPORT:
        return
    terminalreporter.section("fault injection (docs/reliability.md)")
    terminalreporter.write_line(
        "| scenario | items | committed | failed (reason) | lost | duplicated | rendered again | time to recover |"
    )
    terminalreporter.write_line("|---|---|---|---|---|---|---|---|")
    for row in _REPORT:
        reasons = ", ".join(row["failure_reasons"])
        recover = "-" if row["recover_seconds"] is None else f"{row['recover_seconds']} s"
        terminalreporter.write_line(
            f"| {row['scenario']} | {row['items']} | {row['committed']} | {row['failed']}"
            f"{f' ({reasons})' if reasons else ''} | {row['lost']} | {row['duplicated']} | {row['rendered_again']} | {recover} |"
        )
    target = os.environ.get("FARM_CHAOS_REPORT")
    if target:
        Path(target).write_text(json.dumps(_REPORT, indent=1))
