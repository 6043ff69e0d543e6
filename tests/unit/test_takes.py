"""Takes without Ray or a model: which items are an image's takes, what a pick names and what it
refuses, the listing the API answers, picks read back, the contact sheet's layout (pure) and
drawing, the record's compare-and-swap, the worker's input cache, and the HTTP routes with a fake
coordinator."""

from __future__ import annotations

import io
import json
import os
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from farm.core.errors import CommitConflict, TakeError
from farm.core.manifest import JobSpec, parse_manifest
from farm.core.takes import resolve_pick, take_groups, takes_listing, takes_of, valid_picks
from farm.post import contact
from farm.post.contact import (
    CELL_WIDTH,
    FOOTER_LINE_HEIGHT,
    LINE_HEIGHT,
    MAX_HEIGHT,
    MAX_PIXELS,
    PAD,
    ROW_LABEL_HEIGHT,
    TITLE_HEIGHT,
    contact_layout,
    draw_contact_sheet,
    write_contact_sheet,
)
from farm.storage.local import LocalStore
from farm.storage.picks import record_picks


def job(**extra) -> JobSpec:
    items = [
        {"id": "cat", "image": "s3://in/cat.png", "prompt": "p", "takes": 3, "seed": 10},
        {"id": "dog", "image": "s3://in/dog.png", "prompt": "p", "seeds": [5, 9], "aspect": "16:9"},
        {"id": "solo", "image": "s3://in/solo.png", "prompt": "p"},
    ]
    document = {"version": 1, "name": "shoot", "model": "tiny", "output": "/tmp/unused", "items": items, **extra}
    return parse_manifest(json.dumps(document), "json", base_dir=Path("/tmp"))


def test_an_items_takes_are_found_from_the_shared_id_or_any_takes_id():
    spec = job()
    assert {shared: [i.id for i in takes] for shared, takes in take_groups(spec).items()} == {
        "cat": ["cat.take-1", "cat.take-2", "cat.take-3"], "dog": ["dog.take-1", "dog.take-2"]}
    for named in ("cat", "cat.take-3"):
        shared, takes = takes_of(spec, named)
        assert shared == "cat" and [i.seed for i in takes] == [10, 11, 12]
    with pytest.raises(TakeError) as single:
        takes_of(spec, "solo")
    assert single.value.status == 422 and "no takes" in str(single.value) and "takes: N" in str(single.value)
    with pytest.raises(TakeError) as unknown:
        takes_of(spec, "cow")
    assert unknown.value.status == 404 and "'cow'" in str(unknown.value) and unknown.value.field == "item"


@pytest.mark.parametrize("item, take, chosen", [
    ("cat", 2, "cat.take-2"), ("cat", "3", "cat.take-3"), ("cat.take-1", "cat.take-2", "cat.take-2"),
    ("dog", "dog.take-1", "dog.take-1"), ("dog.take-2", 2, "dog.take-2"),
])
def test_a_pick_names_a_take_by_its_number_or_its_id(item, take, chosen):
    assert resolve_pick(job(), item, take) == (item.split(".")[0], chosen)


@pytest.mark.parametrize("item, take, status, field, words", [
    ("cat", 0, 422, "take", "from 1 to 3"),
    ("cat", 4, 422, "take", "from 1 to 3"),
    ("dog", 3, 422, "take", "from 1 to 2"),
    ("cat", "dog.take-1", 422, "take", "not a take of 'cat'"),
    ("cat", "cat", 422, "take", "names the image, not one of its takes"),  # `farm pick JOB cat` without TAKE
    ("cat", True, 422, "take", "number (1 to 3)"),
    ("cat", 2.0, 422, "take", "number (1 to 3)"),
    ("solo", 1, 422, "item", "no takes"),
    ("cow", 1, 404, "item", "no item 'cow'"),
])
def test_a_pick_that_names_no_take_says_what_to_do(item, take, status, field, words):
    with pytest.raises(TakeError) as error:
        resolve_pick(job(), item, take)
    assert (error.value.status, error.value.field) == (status, field)
    assert error.value.value == (take if field == "take" else item)
    assert words in str(error.value)


def test_a_failed_or_cancelled_take_cannot_be_picked_and_the_error_survives_pickling():
    for state in ("failed", "cancelled"):
        with pytest.raises(TakeError) as error:
            resolve_pick(job(), "cat", 2, {"cat.take-2": state})
        assert state in str(error.value) and "pick another take" in str(error.value)
    assert resolve_pick(job(), "cat", 2, {"cat.take-2": "queued"}) == ("cat", "cat.take-2")  # chosen ahead
    copy = pickle.loads(pickle.dumps(TakeError("no", 404, "item", "x")))  # as Ray sends it
    assert (str(copy), copy.status, copy.field, copy.value) == ("no", 404, "item", "x")


def test_the_listing_shows_each_takes_seed_state_and_the_pick():
    spec = job()
    shared, takes = takes_of(spec, "cat.take-2")
    records = {"cat.take-1": {"state": "succeeded"}, "cat.take-3": {"state": "failed", "reason": "oom", "message": "m" * 900}}
    listing = takes_listing(shared, takes, records, {"cat": "cat.take-1", "dog": "dog.take-2"})
    assert listing["item"] == "cat" and listing["picked"] == "cat.take-1"
    rows = listing["takes"]
    assert [(r["id"], r["take"], r["seed"], r["state"], r["picked"]) for r in rows] == [
        ("cat.take-1", 1, 10, "succeeded", True), ("cat.take-2", 2, 11, "queued", False),
        ("cat.take-3", 3, 12, "failed", False)]
    assert rows[2]["reason"] == "oom" and len(rows[2]["message"]) <= 300
    assert takes_listing("dog", takes_of(spec, "dog")[1], {}, {})["picked"] is None


def test_picks_read_back_keep_only_takes_of_their_image():
    picks = {"cat": "cat.take-2", "dog": "cat.take-1", "solo": "solo", "cow": "cow.take-1", "x": 3}
    assert valid_picks(job(), picks) == {"cat": "cat.take-2"}
    assert valid_picks(job(), ["cat"]) == {} and valid_picks(job(), None) == {}


# --- the contact sheet ---------------------------------------------------------------------


def test_the_layout_has_a_row_per_image_and_a_column_per_take():
    spec = job()
    layout = contact_layout(spec, {"cat.take-1": "succeeded", "cat.take-2": "skipped", "dog.take-1": "failed"},
                            {"cat": "cat.take-2"})
    assert [row.label for row in layout.rows] == ["cat", "dog"]
    assert layout.width == PAD + 3 * (CELL_WIDTH + PAD)  # three takes: the most of any row
    cat, dog = layout.rows
    assert [c.item_id for c in cat.cells] == ["cat.take-1", "cat.take-2", "cat.take-3"]
    assert [c.x for c in cat.cells] == [PAD, PAD + CELL_WIDTH + PAD, PAD + 2 * (CELL_WIDTH + PAD)]
    assert [(c.rendered, c.picked) for c in cat.cells] == [(True, False), (True, True), (False, False)]
    assert cat.cells[1].labels == ("cat.take-2", "seed 11  PICKED") and cat.cells[0].labels == ("cat.take-1", "seed 10")
    assert {(c.width, c.height) for c in cat.cells} == {(256, 256)}
    assert {(c.width, c.height) for c in dog.cells} == {(256, 146)}  # 16:9 at 256 wide
    assert [c.state for c in dog.cells] == ["failed", "queued"] and not any(c.rendered for c in dog.cells)
    assert cat.cells[0].y == cat.y + ROW_LABEL_HEIGHT
    assert dog.y == cat.y + ROW_LABEL_HEIGHT + 256 + 2 * LINE_HEIGHT + PAD
    assert layout.height == dog.y + ROW_LABEL_HEIGHT + 146 + 2 * LINE_HEIGHT + PAD + PAD + FOOTER_LINE_HEIGHT * 2
    assert layout.footer == ("picked takes are outlined", "1 item(s) without takes are not shown")
    assert layout.title == "shoot: 2 image(s) with takes, 1 picked" and cat.y == TITLE_HEIGHT + PAD


def test_a_job_without_takes_has_no_sheet():
    document = {"version": 1, "name": "n", "model": "tiny", "output": "/tmp/u",
                "items": [{"id": "a", "image": "s3://in/a.png", "prompt": "p", "takes": 1}]}
    spec = parse_manifest(json.dumps(document), "json", base_dir=Path("/tmp"))
    assert contact_layout(spec, {}, {}) is None
    assert write_contact_sheet(None, spec) is None  # reads nothing


def big_job(images: int, takes: int) -> JobSpec:
    one = parse_manifest(json.dumps({"version": 1, "name": "big", "model": "tiny", "output": "/tmp/u", "items": [
        {"id": "x", "image": "s3://in/x.png", "prompt": "p", "takes": takes}]}), "json", base_dir=Path("/tmp"))
    items = [replace(item, index=n, id=f"img{n}.take-{item.take}", take_of=f"img{n}")
             for n in range(images) for item in one.items]
    return replace(one, items=items)


def test_rows_stop_at_the_cap_and_the_footer_says_so():
    layout = contact_layout(big_job(250, 2), {}, {}, max_pixels=10**12, max_height=10**7)
    assert len(layout.rows) == 200
    assert layout.footer[0].startswith("showing the first 200 of 250 images")


@pytest.mark.parametrize("takes", [2, 16])
def test_a_10000_image_job_keeps_a_bounded_sheet(takes):
    layout = contact_layout(big_job(10_000, takes), {}, {})
    assert 0 < len(layout.rows) <= 200 and layout.height <= MAX_HEIGHT and layout.width * layout.height <= MAX_PIXELS
    assert layout.footer[0].startswith(f"showing the first {len(layout.rows)} of 10000 images")


def jpeg(color, size=(256, 256)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG")
    return out.getvalue()


def test_the_drawing_has_the_layouts_size_thumbnails_grey_cells_and_the_picks_outline():
    layout = contact_layout(job(), {"cat.take-1": "succeeded", "cat.take-2": "succeeded"}, {"cat": "cat.take-2"})
    thumbnails = {"cat.take-1": jpeg((200, 30, 30)), "cat.take-2": b"not a jpeg"}
    sheet = Image.open(io.BytesIO(draw_contact_sheet(layout, thumbnails.get)))
    assert sheet.format == "JPEG" and sheet.size == (layout.width, layout.height)
    first, second, third = layout.rows[0].cells

    def near(pixel, color):
        return all(abs(a - b) <= 24 for a, b in zip(pixel, color))

    assert near(sheet.getpixel((first.x + 128, first.y + 40)), (200, 30, 30))  # its first frame
    assert near(sheet.getpixel((second.x + 128, second.y + 40)), contact.MISSING)  # unreadable thumbnail
    assert near(sheet.getpixel((third.x + 128, third.y + 40)), contact.MISSING)  # not rendered
    assert near(sheet.getpixel((second.x - 3, second.y + 100)), contact.PICKED)  # the pick's outline
    assert not near(sheet.getpixel((first.x - 3, first.y + 100)), contact.PICKED)


def committed_job(tmp_path) -> tuple[LocalStore, JobSpec]:
    store = LocalStore(str(tmp_path))
    spec = job()
    for n, item in enumerate(spec.items):
        store.put_bytes(f"shoot/{item.id}.jpg", jpeg((40 * n, 100, 100)), "image/jpeg")
    record = {"name": "shoot", "state": "succeeded", "picks": {},
              "items": {item.id: {"index": item.index, "state": "succeeded"} for item in spec.items}}
    store.put_bytes("shoot/job.json", json.dumps(record).encode(), "application/json")
    return store, spec


def test_the_sheet_is_written_from_the_record_and_only_again_when_it_changed(tmp_path):
    store, spec = committed_job(tmp_path)
    key = write_contact_sheet(store, spec)
    assert key == "shoot/contact.jpg"
    first = store.head(key)
    with Image.open(tmp_path / key) as sheet:
        assert sheet.size == (contact_layout(spec, {}, {}).width, contact_layout(spec, {}, {}).height)
    write_contact_sheet(store, spec)
    assert store.head(key) == first, "an identical sheet is not written again"
    record_picks(store, "shoot", {"dog": "dog.take-2"})
    write_contact_sheet(store, spec)
    assert store.head(key) != first, "a new pick rewrites it"


def test_record_picks_merges_and_survives_a_concurrent_writer(tmp_path):
    store, _ = committed_job(tmp_path)
    assert record_picks(store, "shoot", {"cat": "cat.take-1"}) == {"cat": "cat.take-1"}

    class Racing:
        """Another picker writes between this one's read and its conditional write, once."""

        def __init__(self, inner):
            self.inner, self.raced, self.conflicts = inner, False, 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def get_object(self, key):
            found = self.inner.get_object(key)
            if not self.raced:
                self.raced = True
                record = json.loads(found[0])
                record["picks"]["dog"] = "dog.take-1"
                self.inner.put_bytes(key, json.dumps(record).encode(), "application/json")
            return found

        def put_bytes(self, key, data, content_type="", **kwargs):
            try:
                return self.inner.put_bytes(key, data, content_type, **kwargs)
            except CommitConflict:
                self.conflicts += 1
                raise

    racing = Racing(store)
    assert record_picks(racing, "shoot", {"cat": "cat.take-3"}) == {"cat": "cat.take-3", "dog": "dog.take-1"}
    assert racing.conflicts == 1
    assert json.loads((tmp_path / "shoot" / "job.json").read_text())["picks"] == {"cat": "cat.take-3", "dog": "dog.take-1"}


# --- the worker's input cache ------------------------------------------------------------------


def test_consecutive_takes_of_one_image_read_it_once(tmp_path):
    from farm.core.contracts import RenderTask
    from farm.renderer import InputCache
    from farm.storage.inputs import InputImage, local_fingerprint

    image = tmp_path / "a.png"
    image.write_bytes(b"one")
    reads = []

    def reader(location):
        def read():
            reads.append(location)
            return InputImage(Path(location).read_bytes(), local_fingerprint(location))
        return read

    spec = parse_manifest(json.dumps({"version": 1, "name": "n", "model": "tiny", "output": str(tmp_path), "items": [
        {"id": "a", "image": "a.png", "prompt": "p", "takes": 3}]}), "json", base_dir=tmp_path)
    tasks = [replace(RenderTask.for_item(spec, item), job_id="j1") for item in spec.items]
    cache = InputCache()
    got = [cache.get(task, reader(task.image)) for task in tasks]
    assert len(reads) == 1 and cache.reads == 1 and got[0] is got[1] is got[2]
    assert cache.get(replace(tasks[0], job_id="j2"), reader(tasks[0].image)) is not got[0]  # another job
    assert len(reads) == 2
    os.utime(image, ns=(1, 1))  # the file changed: read again
    cache.get(replace(tasks[0], job_id="j2"), reader(tasks[0].image))
    assert len(reads) == 3
    for job_id in ("j3", "j4"):  # two newer inputs evict j1's
        cache.get(replace(tasks[0], job_id=job_id), reader(tasks[0].image))
    cache.get(tasks[0], reader(tasks[0].image))
    assert len(reads) == 6

    def failing():
        raise OSError("gone")

    with pytest.raises(OSError):
        cache.get(replace(tasks[0], job_id="j9"), failing)
    cache.get(replace(tasks[0], job_id="j9"), reader(tasks[0].image))  # the failure was not kept
    assert len(reads) == 7


# --- the HTTP routes, with a fake coordinator --------------------------------------------------


class FakeCoordinator:
    def __init__(self):
        self.calls = []

    async def call(self, method, *args):
        self.calls.append((method, *args))
        if args and args[0] != "j-000000000001":
            return None
        if method == "status":
            return {"id": args[0], "name": "shoot", "state": "running", "output": "/o", "picks": {"cat": "cat.take-2"}}
        if method in ("takes", "pick"):
            spec = job()
            if method == "pick":
                shared, take_id = resolve_pick(spec, args[1], args[2])
                picks = {shared: take_id}
            else:
                shared, picks = takes_of(spec, args[1])[0], {}
            return takes_listing(shared, takes_of(spec, shared)[1], {}, picks)
        raise AssertionError(method)


@pytest.fixture
def api():
    from fastapi.testclient import TestClient

    from farm.serve.app import ApiSettings, create_app

    fake = FakeCoordinator()
    client = TestClient(create_app(fake, ApiSettings(token="t0ken")), raise_server_exceptions=False)
    client.headers["Authorization"] = "Bearer t0ken"
    client.fake = fake
    return client


def test_the_takes_and_pick_routes(api):
    listing = api.get("/v1/jobs/j-000000000001/items/cat.take-2/takes")
    assert listing.status_code == 200 and listing.json()["item"] == "cat" and len(listing.json()["takes"]) == 3
    picked = api.post("/v1/jobs/j-000000000001/items/cat/pick", json={"take": 2})
    assert picked.status_code == 200 and picked.json()["picked"] == "cat.take-2"
    assert [t["picked"] for t in picked.json()["takes"]] == [False, True, False]
    assert api.fake.calls[-1] == ("pick", "j-000000000001", "cat", 2)
    assert api.post("/v1/jobs/j-000000000001/items/cat/pick", json={"take": "cat.take-3"}).json()["picked"] == "cat.take-3"


@pytest.mark.parametrize("path, body, status, words", [
    ("/v1/jobs/j-000000000001/items/cat/pick", {"take": 7}, 422, "from 1 to 3"),
    ("/v1/jobs/j-000000000001/items/cow/pick", {"take": 1}, 404, "no item 'cow'"),
    ("/v1/jobs/j-000000000001/items/solo/pick", {"take": 1}, 422, "no takes"),
    ("/v1/jobs/j-000000000002/items/cat/pick", {"take": 1}, 404, "no job"),
    ("/v1/jobs/j-000000000001/items/cat/pick", {}, 422, "take"),
    ("/v1/jobs/j-000000000001/items/cat/pick", {"take": 1, "extra": 2}, 422, "extra"),
    ("/v1/jobs/j-000000000001/items/cat/pick", {"take": [1]}, 422, "the take's number"),
    ("/v1/jobs/j-000000000001/items/cat/pick", {"take": "x" * 300}, 422, "at most 256 characters"),
    ("/v1/jobs/j-000000000001/items/job/pick", {"take": 1}, 404, "no item"),
    ("/v1/jobs/j-000000000001/items/contact/takes", None, 404, "no item"),
])
def test_bad_picks_are_4xx_that_say_why(api, path, body, status, words):
    response = api.post(path, json=body) if body is not None else api.get(path)
    assert response.status_code == status, response.text
    assert words in response.text
    if status == 422 and "from 1 to 3" in words:
        assert response.json()["errors"] == [{"field": "take", "value": 7, "message": response.json()["detail"]}]


def test_the_job_status_has_the_picks(api):
    assert api.get("/v1/jobs/j-000000000001").json()["picks"] == {"cat": "cat.take-2"}


def test_the_routes_need_the_token(api):
    del api.headers["Authorization"]
    assert api.get("/v1/jobs/j-000000000001/items/cat/takes").status_code == 401
    assert api.post("/v1/jobs/j-000000000001/items/cat/pick", json={"take": 1}).status_code == 401


def test_the_planner_plans_an_images_takes_once(monkeypatch):
    """Takes differ only in their seed: one plan per distinct parameters serves them all."""
    from farm.core import planner
    from farm.core.tiers import ClusterShape, TierTable

    calls = []
    original = planner.Planner._plan

    def counting(self, item_id, params, **kwargs):
        calls.append(item_id)
        return original(self, item_id, params, **kwargs)

    monkeypatch.setattr(planner.Planner, "_plan", counting)
    spec = job()
    plan = planner.plan_job(spec, ClusterShape({"24g": 1}), TierTable())
    assert calls == ["cat.take-1", "dog.take-1"]  # cat's takes and solo share parameters: one plan
    assert [p.item_id for p in plan.items] == [item.id for item in spec.items]
    by_id = plan.by_id
    assert by_id["cat.take-3"].settings == by_id["cat.take-1"].settings and by_id["cat.take-3"].tier == "24g"
