"""Takes end to end with the tiny model: one image rendered three times with distinct seeds, its
contact sheet, and picks. Through the service's API (an in-process coordinator, no Ray): a pick
while the job runs, kept across a coordinator that stops mid-job and another that finishes it, a
pick of the finished job, the takes listing, and one image read per worker for all its takes.
Through `farm run`, `farm pick OUTPUT/JOB` and `farm resume` on a local Ray cluster."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import threading
import time

import pytest
from helpers import FAST, encode, pattern, write_manifest
from PIL import Image

from farm.core.lease import Holder
from farm.core.manifest import JobSpec
from farm.core.tiers import GIB, TierTable
from farm.models.memory import CardInfo
from farm.post.contact import PICKED, contact_layout
from farm.runtime.coordinator import Coordinator
from farm.runtime.engine import Engine, Worker
from farm.runtime.handles import LocalCallPool, LocalWorkerHandle
from farm.runtime.mailbox import LocalMailbox
from farm.runtime.workers import RenderWorkerImpl
from farm.settings import load_settings

pytestmark = pytest.mark.integration
TABLE = TierTable()
TOKEN = "takes-token"


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def near(pixel, color, tolerance=40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, color))


def check_sheet(path, spec: JobSpec, states: dict, picks: dict) -> Image.Image:
    """contact.jpg is a JPEG of the layout's size with the picked take outlined."""
    layout = contact_layout(spec, states, picks)
    sheet = Image.open(io.BytesIO(path.read_bytes()))
    assert sheet.format == "JPEG" and sheet.size == (layout.width, layout.height)
    for cell in layout.rows[0].cells:
        assert near(sheet.getpixel((cell.x - 3, cell.y + cell.height // 2)), PICKED) == cell.picked, cell.item_id
    return sheet


class GatedHandle(LocalWorkerHandle):
    """From the `hold_after`-th render on, each waits on the worker's thread until `gate` is set."""

    def __init__(self, worker, hold_after: int | None):
        super().__init__(worker)
        self.hold_after, self.sent, self.gate = hold_after, 0, threading.Event()

    def render(self, task):
        self.sent += 1
        if self.hold_after is not None and self.sent > self.hold_after:
            self._thread.submit(self.gate.wait, 60)
        return super().render(task)


def coordinator(settings, adapter, name: str, hold_after: int | None = None) -> Coordinator:
    mailbox = LocalMailbox()
    tier = TABLE["80g"]
    card = CardInfo("80g", int(tier.card_gib * GIB), tier.budget_bytes, "FARM_GPU_VRAM_GB", True)
    impl = RenderWorkerImpl.in_process(f"{name}-80g-0", adapter, card, mailbox=mailbox)
    worker = Worker(impl.name, GatedHandle(impl, hold_after), "80g", impl.info())
    engine = Engine([worker], TABLE, settings=settings, pool=LocalCallPool(), mailbox=mailbox)
    return Coordinator(settings, engine=engine, holder=Holder(name))


class InProcessClient:
    """The API's coordinator client, calling an in-process coordinator on a thread."""

    timeout_s = 60.0

    def __init__(self, target: Coordinator):
        self.target = target

    async def call(self, method: str, *args, **kwargs):
        return await asyncio.to_thread(getattr(self.target, method), *args, **kwargs)


def api_of(target: Coordinator, settings):
    from fastapi.testclient import TestClient

    from farm.serve.app import create_app

    client = TestClient(create_app(InProcessClient(target), settings.api, settings), raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {TOKEN}"
    return client


def test_the_service_lists_takes_keeps_picks_across_coordinators_and_reads_the_image_once(
        tmp_path, tiny_adapter, monkeypatch):
    import farm.renderer

    reads = []
    real_read = farm.renderer.read_input
    monkeypatch.setattr(farm.renderer, "read_input", lambda location, *a, **k: reads.append(location) or real_read(location, *a, **k))
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "still.png").write_bytes(encode(pattern(320, 240), "PNG"))
    out = tmp_path / "out"
    settings = load_settings(environ={
        "FARM_MODEL": "tiny", "FARM_STATE_URI": str(tmp_path / "state"), "FARM_DEFAULT_OUTPUT": str(out),
        "FARM_JOB_LEASE_TTL_S": "2", "FARM_RECORD_INTERVAL_S": "0.2", "FARM_CACHE_DIR": str(tmp_path / "cache"),
        "FARM_API_TOKEN": TOKEN, "FARM_API_LOCAL_BASE": str(tmp_path / "images"),
    })
    tiny_adapter.injector = None
    a = coordinator(settings, tiny_adapter, "A", hold_after=2)  # its third render waits
    b = None
    try:
        api = api_of(a, settings)
        document = {"version": 1, "name": "takes", "defaults": {**FAST, "fps": 8, "deliverables": ["poster"]},
                    "deliverables_for": "picked",  # only the chosen take gets its poster
                    "items": [{"id": "cat", "image": "still.png", "prompt": "a slow pan", "takes": 3}]}
        accepted = api.post("/v1/jobs", json=document)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["id"]
        folder = out / "takes"
        wait_for(lambda: (folder / "cat.take-2.json").exists(), 120, "the first two takes to commit")

        # A pick while the job runs: in the status at once, and in the registry entry.
        picked = api.post(f"/v1/jobs/{job_id}/items/cat/pick", json={"take": 2})
        assert picked.status_code == 200, picked.text
        assert picked.json()["picked"] == "cat.take-2" and [t["picked"] for t in picked.json()["takes"]] == [False, True, False]
        status = api.get(f"/v1/jobs/{job_id}").json()
        assert status["state"] == "running" and status["picks"] == {"cat": "cat.take-2"}
        entry = json.loads((tmp_path / "state" / "jobs" / f"{job_id}.json").read_text())
        assert entry["picks"] == {"cat": "cat.take-2"}

        # A stops mid-job: take 3, held, is handed back (and never renders there); A's last
        # record has the pick.
        handle = a.engine.workers[0].handle
        a.drain(0.5)
        handle.kill()  # the held render, once let go, fails as a dead worker's would
        handle.gate.set()
        a.close(release=True)
        record = json.loads((folder / "job.json").read_text())
        assert record["picks"] == {"cat": "cat.take-2"} and record["items"]["cat.take-3"]["state"] == "queued"

        # B takes the job over and finishes it: the picks are restored, not reset.
        b = coordinator(settings, tiny_adapter, "B")
        api = api_of(b, settings)
        wait_for(lambda: (b.status(job_id) or {}).get("state") == "succeeded", 120, "B to finish the job")
        assert api.get(f"/v1/jobs/{job_id}").json()["picks"] == {"cat": "cat.take-2"}
        record = json.loads((folder / "job.json").read_text())
        assert record["picks"] == {"cat": "cat.take-2"} and record["deliverables_for"] == "picked"
        posters = folder / "deliverables" / "poster"
        assert sorted(p.name for p in posters.iterdir()) == ["cat.take-2.png"]  # made for the picked take only
        assert {k: v["state"] for k, v in record["items"].items()} == {
            "cat.take-1": "skipped", "cat.take-2": "skipped", "cat.take-3": "succeeded"}
        spec = JobSpec.from_dict(json.loads((folder / "spec.json").read_text()))
        seeds = [json.loads((folder / f"cat.take-{k}.json").read_text())["seed"] for k in (1, 2, 3)]
        assert seeds == [item.seed for item in spec.items] and len(set(seeds)) == 3
        states = {k: v["state"] for k, v in record["items"].items()}
        wait_for(lambda: (folder / "contact.jpg").exists(), 60, "the contact sheet")
        check_sheet(folder / "contact.jpg", spec, states, {"cat": "cat.take-2"})
        assert len(reads) == 2 and len(set(reads)) == 1, f"one read on A for two takes, one on B: {reads}"

        # The takes listing, by the shared id or a take's id.
        for named in ("cat", "cat.take-3"):
            listing = api.get(f"/v1/jobs/{job_id}/items/{named}/takes")
            assert listing.status_code == 200, listing.text
            assert [(t["id"], t["seed"], t["state"], t["picked"]) for t in listing.json()["takes"]] == [
                ("cat.take-1", seeds[0], "skipped", False), ("cat.take-2", seeds[1], "skipped", True),
                ("cat.take-3", seeds[2], "succeeded", False)]

        # A pick of the finished job: job.json by compare-and-swap, the sheet rewritten.
        before = (folder / "contact.jpg").read_bytes()
        picked = api.post(f"/v1/jobs/{job_id}/items/cat.take-1/pick", json={"take": "cat.take-3"})
        assert picked.status_code == 200 and picked.json()["picked"] == "cat.take-3", picked.text
        assert json.loads((folder / "job.json").read_text())["picks"] == {"cat": "cat.take-3"}
        assert api.get(f"/v1/jobs/{job_id}").json()["picks"] == {"cat": "cat.take-3"}
        wait_for(lambda: (folder / "contact.jpg").read_bytes() != before, 60, "the sheet to be rewritten")
        wait_for(lambda: (posters / "cat.take-3.png").exists(), 60, "the newly picked take's poster")
        check_sheet(folder / "contact.jpg", spec, states, {"cat": "cat.take-3"})

        # What is not a take says so.
        bad = api.post(f"/v1/jobs/{job_id}/items/cat/pick", json={"take": 4})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "take" and "1 to 3" in bad.text
        unknown = api.post(f"/v1/jobs/{job_id}/items/cow/pick", json={"take": 1})
        assert unknown.status_code == 404 and "'cow'" in unknown.text
        assert api.get("/v1/jobs/j-000000000000/items/cat/takes").status_code == 404
    finally:
        for started in (a, b):
            if started is not None:
                started.close(release=False)


def test_farm_run_renders_takes_with_a_contact_sheet_and_farm_pick_and_resume_keep_the_pick(tmp_path, ray_cluster):
    from farm.cli import main

    (tmp_path / "still.png").write_bytes(encode(pattern(320, 240), "PNG"))
    manifest = write_manifest(tmp_path, [{"id": "cat", "image": "still.png", "prompt": "a slow pan", "takes": 3}],
                              name="takes", deliverables_for="picked")
    folder = tmp_path / "out" / "takes"
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert main(["run", str(manifest), "--output", str(tmp_path / "out"), "--deliverable", "poster"]) == 0
        assert not (folder / "deliverables").exists()  # `deliverables_for: picked`, and nothing is picked yet
        record = json.loads((folder / "job.json").read_text())
        assert {k: v["state"] for k, v in record["items"].items()} == {f"cat.take-{k}": "succeeded" for k in (1, 2, 3)}
        assert record["picks"] == {}
        spec = JobSpec.from_dict(json.loads((folder / "spec.json").read_text()))
        sidecars = [json.loads((folder / f"cat.take-{k}.json").read_text()) for k in (1, 2, 3)]
        assert [s["item_id"] for s in sidecars] == ["cat.take-1", "cat.take-2", "cat.take-3"]
        assert len({s["seed"] for s in sidecars}) == 3 and [s["seed"] for s in sidecars] == [i.seed for i in spec.items]
        states = {item.id: "succeeded" for item in spec.items}
        sheet = check_sheet(folder / "contact.jpg", spec, states, {})
        cell = contact_layout(spec, states, {}).rows[0].cells[0]
        with Image.open(folder / "cat.take-1.jpg") as first:  # the take's first frame is drawn there
            frame = first.convert("RGB").resize((cell.width, cell.height)).getpixel((cell.width // 2, cell.height // 2))
        assert near(sheet.getpixel((cell.x + cell.width // 2, cell.y + cell.height // 2)), frame)

        assert main(["pick", str(folder), "cat", "2"]) == 0
        assert json.loads((folder / "job.json").read_text())["picks"] == {"cat": "cat.take-2"}
        posters = folder / "deliverables" / "poster"
        assert sorted(p.name for p in posters.iterdir()) == ["cat.take-2.png"]  # made by the pick
        check_sheet(folder / "contact.jpg", spec, states, {"cat": "cat.take-2"})
        assert main(["pick", str(folder), "cat", "7"]) == 2  # out of range: exit 2, nothing changed
        assert main(["pick", str(folder), "cow", "1"]) == 2
        assert main(["pick", str(folder), "cat"]) == 2  # the image, not a take
        assert json.loads((folder / "job.json").read_text())["picks"] == {"cat": "cat.take-2"}

        # A resume that renders again (a take's sidecar lost) keeps the pick and the sheet's mark.
        (folder / "cat.take-3.json").unlink()
        (folder / "contact.jpg").unlink()
        assert main(["resume", str(folder)]) == 0
        record = json.loads((folder / "job.json").read_text())
        assert record["picks"] == {"cat": "cat.take-2"}
        assert record["items"]["cat.take-3"]["state"] == "succeeded" and record["items"]["cat.take-1"]["state"] == "skipped"
        resumed = {k: v["state"] for k, v in record["items"].items()}
        check_sheet(folder / "contact.jpg", spec, resumed, {"cat": "cat.take-2"})
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
