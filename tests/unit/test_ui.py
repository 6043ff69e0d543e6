"""The web UI in process (FastAPI's TestClient, a fake coordinator, no Ray): sessions and their
cookie, CSRF and same-origin checks, that nothing but the login page and 401s reach a visitor
without the token, escaping of hostile text, inline validation on Submit, re-rendering failed
items, the zip download; and the coordinator's item search over a 10,000-item job. The real
browser against a real `farm serve` is tests/integration/test_ui_browser.py."""

from __future__ import annotations

import io
import json
import re
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from farm.serve.app import ApiSettings, create_app
from farm.serve.ui_auth import SESSION_COOKIE, UiAuth, safe_next, same_origin

TOKEN = "ui-t0ken-123"
JOB = "j-0123456789ab"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


class Fake:
    """The coordinator as the UI calls it: one running job of three items, one failed."""

    def __init__(self, output: str):
        self.calls: list[tuple] = []
        self.submitted: list[dict] = []
        self.status = {
            "id": JOB, "name": "job-" + HOSTILE, "state": "running", "output": output, "model": "tiny", "priority": 3,
            "items": 3, "submitted_at": time.time() - 60, "started_at": time.time() - 50,
            "items_per_minute": 2.0, "eta_seconds": 30.0,
            "counts": {"queued": 1, "running": 0, "succeeded": 1, "failed": 1, "skipped": 0, "cancelled": 0,
                       "total": 3, "degraded": 0},
        }
        self.rows = [
            {"id": "ok", "index": 0, "state": "succeeded", "attempts": 1, "prompt": "a calm sea", "take_of": None},
            {"id": "bad", "index": 1, "state": "failed", "attempts": 1, "reason": "image_not_found",
             "message": "image s3://in/missing.png: " + HOSTILE, "prompt": HOSTILE, "take_of": None},
            {"id": "later", "index": 2, "state": "queued", "attempts": 0, "prompt": "a windmill", "take_of": None},
        ]

    async def call(self, method, *args, **kwargs):
        self.calls.append((method, *args))
        if method == "status":
            return self.status if args[0] == JOB else None
        if method == "list_jobs":
            return {"jobs": [self.status], "next_cursor": None}
        if method == "ui_items":
            return {"items": self.rows, "next_cursor": None, "matches": len(self.rows)}
        if method == "ui_item":
            return next((r for r in self.rows if r["id"] == args[1]), None)
        if method == "cancel":
            return self.status if args[0] == JOB else None
        if method == "cancel_item":
            from farm.core.errors import ItemCancelError

            if args[1] == "ok":
                raise ItemCancelError("item ok has ended (succeeded); its result stands", 409, "ok", "succeeded")
            return {"job_id": JOB, "item_id": args[1], "state": "cancelled", "job": self.status} if args[0] == JOB else None
        if method == "video":
            return {"committed": False}
        if method == "submit":
            self.submitted.append(args[0])
            return {"id": "j-000000000new"}
        if method == "ui_spec":
            return {"failed": ["bad"], "spec": {
                "name": "job", "model": "tiny", "output": "s3://renders/api", "priority": 3, "items": [
                    {"id": "bad", "index": 1, "image": "s3://in/fixed.png", "prompt": "a lighthouse",
                     "requested": {"frames": 8},  # the item's own; the rest came from the defaults
                     "params": {"resolution": 256, "aspect": "1:1", "frames": 8, "fps": 8, "steps": 10,
                                "guidance_scale": 9.0, "negative_prompt": "", "seed": None, "degrade": "allowed"}},
                ]}}
        if method == "ui_cluster":
            return {"workers": [], "starting": [], "start_errors": [], "requested": {}, "unprovidable": [], "model": "tiny"}
        raise AssertionError(method)


@pytest.fixture
def farm(tmp_path):
    settings = ApiSettings(token=TOKEN, default_output="s3://renders/api", allowed_outputs="s3://renders/api", model="tiny")
    fake = Fake(str(tmp_path / "out"))
    client = TestClient(create_app(fake, settings), raise_server_exceptions=False, follow_redirects=False)
    client.fake = fake
    return client


def login(client, token: str = TOKEN):
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return client.post("/login", data={"token": token, "csrf": csrf, "next": f"/jobs/{JOB}"})


def csrf_of(client) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', client.get(f"/jobs/{JOB}").text).group(1)


def ui_routes(app) -> list[tuple[str, str]]:
    """Every UI route but the public ones, with ids filled in."""
    public = {"/login", "/static/{name}", "/favicon.ico", "/healthz", "/metrics"}
    def flat(routes):  # FastAPI >= 0.16x keeps an included router's routes inside it
        for route in routes:
            inner = getattr(route, "original_router", None)
            yield from flat(inner.routes) if inner is not None else [route]

    routes = []
    for route in flat(app.routes):
        path = getattr(route, "path", "")
        if path.startswith(("/v1", "/docs", "/redoc", "/openapi")) or path in public:
            continue
        for method in sorted(set(getattr(route, "methods", None) or ()) - {"HEAD"}):
            routes.append((method, path.replace("{job_id}", JOB).replace("{item_id}", "ok")))
    return routes


# --- sessions and tokens ------------------------------------------------------------------------


def test_a_session_is_signed_expires_and_ends_when_the_token_changes():
    auth = UiAuth(TOKEN, ttl_s=100)
    cookie = auth.new_session(now=1000)
    assert TOKEN not in cookie
    nonce = auth.session_nonce(cookie, now=1050)
    assert nonce and auth.csrf_ok(nonce, auth.csrf_token(nonce))
    assert auth.session_nonce(cookie, now=1101) is None  # expired
    assert auth.session_nonce(cookie, now=900) is None  # from the future
    assert UiAuth("another-token").session_nonce(cookie, now=1050) is None
    issued, rest = cookie.split(".", 1)
    assert auth.session_nonce(f"{int(issued) + 1}.{rest}", now=1050) is None  # tampered
    assert not auth.csrf_ok(nonce, "0" * 64) and not auth.csrf_ok(nonce, None)
    assert not UiAuth("another-token").csrf_ok(nonce, auth.csrf_token(nonce))
    value, form = auth.login_pair()
    assert auth.login_ok(value, form) and not auth.login_ok(value + "x", form)


def test_next_stays_on_this_site_and_cross_site_requests_are_told_apart():
    assert safe_next("/jobs/j-1?state=failed") == "/jobs/j-1?state=failed"
    for bad in ("//evil.example/x", "https://evil.example", "/\\evil", "javascript:alert(1)", "", None, "/a\nb"):
        assert safe_next(bad) == "/"
    assert same_origin({"origin": "http://farm:8000", "sec-fetch-site": "same-origin"}, "farm:8000")
    assert same_origin({}, "farm:8000")  # curl: no browser headers
    assert not same_origin({"origin": "http://evil.example"}, "farm:8000")
    assert not same_origin({"sec-fetch-site": "cross-site"}, "farm:8000")
    assert not same_origin({"origin": "null"}, "farm:8000")


def test_login_sets_an_httponly_samesite_cookie_that_is_not_the_token(farm):
    response = login(farm)
    assert response.status_code == 303 and response.headers["location"] == f"/jobs/{JOB}"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and TOKEN not in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    page = farm.get(f"/jobs/{JOB}")
    assert page.status_code == 200 and "a calm sea" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"


def test_over_https_the_cookie_is_secure(tmp_path):
    settings = ApiSettings(token=TOKEN, default_output="s3://renders/api")
    client = TestClient(create_app(Fake(str(tmp_path)), settings), base_url="https://farm.example",
                        follow_redirects=False)
    assert "Secure" in login(client).headers["set-cookie"]


def test_a_wrong_token_gets_the_login_page_again(farm):
    response = login(farm, "wrong-token")
    assert response.status_code == 401 and "not this farm&#39;s token" in response.text
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
    assert farm.get("/").status_code == 303


def test_a_login_form_from_another_site_or_without_its_pair_is_refused(farm):
    assert farm.post("/login", data={"token": TOKEN, "csrf": "forged"}).status_code == 403
    page = farm.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    cross = farm.post("/login", data={"token": TOKEN, "csrf": csrf}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403 and SESSION_COOKIE not in cross.headers.get("set-cookie", "")


@pytest.mark.parametrize("credentials", ["none", "wrong-bearer", "forged-cookie", "other-token-cookie", "raw-token-cookie"])
def test_without_the_token_no_page_fragment_or_file_shows_data(farm, credentials):
    headers, cookies = {}, {}
    if credentials == "wrong-bearer":
        headers["Authorization"] = "Bearer wrong"
    elif credentials == "forged-cookie":
        cookies[SESSION_COOKIE] = f"{int(time.time())}.abc.{'0' * 64}"
    elif credentials == "other-token-cookie":
        cookies[SESSION_COOKIE] = UiAuth("other").new_session()
    elif credentials == "raw-token-cookie":
        cookies[SESSION_COOKIE] = TOKEN
    farm.cookies.update(cookies)
    routes = ui_routes(farm.app)
    assert len(routes) >= 20, routes
    for method, path in routes:
        response = farm.request(method, path, headers=headers)
        files = path.endswith((".jpg", ".mp4", ".json", ".zip", ".txt"))
        if method == "GET" and not files:
            assert response.status_code == 303 and response.headers["location"].startswith("/login?next="), (method, path)
            fragment = farm.get(path, headers={**headers, "HX-Request": "true"})
            assert fragment.status_code == 401 and fragment.headers["hx-redirect"] == "/login", path
        else:
            assert response.status_code == 401, (method, path, response.status_code)
        for needle in ("a calm sea", "job-", "image_not_found"):
            assert needle not in response.text, (path, needle)
    assert not any(c[0] in ("cancel", "submit", "pick") for c in farm.fake.calls)


def test_a_bearer_header_opens_pages_and_files_and_needs_no_csrf(farm):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert farm.get("/", headers=auth).status_code == 200
    assert farm.post(f"/jobs/{JOB}/cancel", headers=auth).status_code == 303
    assert ("cancel", JOB) in farm.fake.calls


def test_a_sidecar_reads_as_requested_against_effective_with_the_ladder_highlighted():
    from farm.serve.ui_views import sidecar_view

    view = sidecar_view({
        "requested": {"resolution": "768p", "frames": 24, "steps": 30},
        "effective": {"resolution": 512, "frames": 16, "steps": 30, "fps": 8, "memory_savers": ["vae_tiling"]},
        "degradations": [{"step": "resolution", "from": 768, "to": 512, "why": "OOM on 24g"}],
        "ooms": [{"phase": "denoise", "tier": "24g", "size": "1344x768", "frames": 24, "savers": [], "message": "CUDA OOM"}],
        "timings_seconds": {"denoise": 75.5, "encode": 0.4},
        "tier": {"planned": "24g", "ran_on": "48g"},
        "device": {"worker": "gpu-48g-0", "node_id": "f" * 56},
        "outputs": {"frames": 16, "fps": 8, "width": 512, "height": 512},
    })
    rows = {row["name"]: row for row in view["parameters"]}
    assert rows["resolution"]["changed"] and rows["frames"]["changed"] and not rows["steps"]["changed"]
    assert rows["fps"]["requested"] == "" and not rows["fps"]["changed"]  # not asked: a default, not a change
    assert rows["memory_savers"]["effective"] == "vae_tiling"
    assert view["degradations"][0]["to"] == 512 and view["ooms"][0]["tier"] == "24g"
    assert view["timings"] == [("denoise", "1 min 16 s"), ("encode", "0.4 s")]
    assert ("node id", "ffffffffffff…") in view["node"] and ("ran on", "48g") in view["tier"]
    assert view["clip"]["seconds"] == 2.0


# --- forms ----------------------------------------------------------------------------------------


def test_forms_need_their_csrf_token_and_this_origin(farm):
    login(farm)
    csrf = csrf_of(farm)
    assert farm.post(f"/jobs/{JOB}/cancel").status_code == 403
    assert farm.post(f"/jobs/{JOB}/cancel", data={"csrf": "0" * 64}).status_code == 403
    assert farm.post(f"/jobs/{JOB}/cancel", data={"csrf": csrf}, headers={"Origin": "https://evil.example"}).status_code == 403
    assert farm.post(f"/jobs/{JOB}/cancel", data={"csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert not any(c[0] == "cancel" for c in farm.fake.calls)
    done = farm.post(f"/jobs/{JOB}/cancel", data={"csrf": csrf}, headers={"Origin": "http://testserver"})
    assert done.status_code == 303 and done.headers["location"] == f"/jobs/{JOB}"
    by_htmx = farm.post(f"/jobs/{JOB}/cancel", headers={"X-CSRF-Token": csrf, "HX-Request": "true"})
    assert by_htmx.status_code == 204 and by_htmx.headers["hx-trigger"] == "farm-refresh"
    assert [c for c in farm.fake.calls if c[0] == "cancel"] == [("cancel", JOB)] * 2


def test_hostile_prompts_messages_and_names_are_escaped(farm):
    login(farm)
    for path in ("/", f"/jobs/{JOB}", f"/jobs/{JOB}/items/bad", f"/jobs/{JOB}/grid?q=%3Cscript%3E"):
        page = farm.get(path)
        assert page.status_code == 200, path
        assert "<script>alert" not in page.text and "<img src=x" not in page.text, path
    panel = farm.get(f"/jobs/{JOB}/items/bad", headers={"HX-Request": "true"}).text
    assert "&lt;script&gt;" in panel and "image_not_found" in panel and "What to do" in panel


def test_a_just_submitted_job_with_few_fields_renders_on_every_page(farm):
    farm.fake.status = {"id": JOB, "name": "fresh", "state": "queued", "output": "s3://renders/api", "items": 3,
                        "submitted_at": time.time()}
    login(farm)
    for path in ("/", f"/jobs/{JOB}", f"/jobs/{JOB}/summary", f"/jobs/{JOB}/items/later", f"/jobs/{JOB}/rerender"):
        page = farm.get(path)
        assert page.status_code == 200 and "fresh" in page.text, (path, page.text[:300])


def test_submit_shows_every_validation_error_inline_and_renders_nothing(farm):
    login(farm)
    csrf = csrf_of(farm)
    bad = "version: 1\nitems:\n  - {image: s3://in/a.png, prompt: p, frames: 99}\n  - {image: s3://in/b.png}\n"
    response = farm.post("/submit", data={"csrf": csrf, "mode": "manifest", "action": "check", "manifest_text": bad},
                         headers={"HX-Request": "true"})
    assert response.status_code == 200 and response.headers["x-farm-valid"] == "false"
    assert "frames" in response.text and "prompt" in response.text and "items[1]" in response.text
    good = "version: 1\nname: fine\nitems:\n  - {image: s3://in/a.png, prompt: p, frames: 8}\n"
    checked = farm.post("/submit", data={"csrf": csrf, "mode": "manifest", "action": "check"},
                        files={"manifest": ("m.yaml", good.encode(), "application/yaml")}, headers={"HX-Request": "true"})
    assert checked.status_code == 200 and "valid: 1 item(s)" in checked.text
    plain = farm.post("/submit", data={"csrf": csrf, "mode": "manifest", "action": "submit", "manifest_text": bad})
    assert plain.status_code == 422 and "frames" in plain.text  # without JavaScript: the page again, with them
    assert not farm.fake.submitted
    sent = farm.post("/submit", data={"csrf": csrf, "mode": "manifest", "action": "submit", "manifest_text": good},
                     headers={"HX-Request": "true"})
    assert sent.status_code == 204 and sent.headers["hx-redirect"] == "/jobs/j-000000000new"
    assert [s["name"] for s in farm.fake.submitted] == ["fine"]


def test_re_rendering_failed_items_submits_a_new_job_with_the_changed_parameters(farm):
    login(farm)
    csrf = csrf_of(farm)
    response = farm.post(f"/jobs/{JOB}/rerender", data={"csrf": csrf, "frames": "16", "steps": ""})
    assert response.status_code == 303 and response.headers["location"] == "/jobs/j-000000000new"
    (spec,) = farm.fake.submitted
    (item,) = spec["items"]
    assert spec["name"].startswith("job-rerender-") and item["id"] == "bad" and item["image"] == "s3://in/fixed.png"
    assert item["params"]["frames"] == 16 and item["params"]["steps"] == 10 and item["params"]["resolution"] == 256
    assert item["requested"]["frames"] == 16
    refused = farm.post(f"/jobs/{JOB}/rerender", data={"csrf": csrf, "frames": "999"})
    assert refused.status_code == 422 and "frames" in refused.text and len(farm.fake.submitted) == 1


def test_the_zip_download_streams_the_job_folder_without_its_staging(farm, tmp_path):
    farm.fake.status["name"] = "zipjob"
    folder = tmp_path / "out" / "zipjob"
    (folder / ".staging").mkdir(parents=True)
    (folder / "ok.mp4").write_bytes(b"\0\0\0\x18ftypmp42" + b"x" * 2_000_000)
    (folder / "ok.json").write_text('{"item_id": "ok"}')
    (folder / ".staging" / "ok.tmp.mp4").write_bytes(b"partial")
    login(farm)
    response = farm.get(f"/jobs/{JOB}/download.zip")
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    name = farm.fake.status["name"]
    assert sorted(archive.namelist()) == [f"{name}/ok.json", f"{name}/ok.mp4"]
    assert archive.read(f"{name}/ok.mp4")[4:8] == b"ftyp"
    assert farm.get(f"/jobs/{JOB}/urls.txt").status_code == 404  # a local output: the zip only


def test_static_files_are_public_and_vendored():
    from farm.serve.ui import HERE

    htmx = (HERE / "static" / "htmx.min.js").read_text()
    assert htmx.startswith("/* htmx 2.0.11") and "var htmx=" in htmx
    assert "Zero-Clause BSD" in (HERE / "static" / "NOTICE").read_text()
    pyproject = (HERE.parents[1] / "pyproject.toml").read_text()
    assert '"farm.serve" = ["templates/*.html", "static/*"]' in pyproject  # they ship in the wheel


# --- the coordinator's side -------------------------------------------------------------------


def test_item_search_filters_and_pages_a_10000_item_job():
    from farm.core.job import JobState
    from farm.core.manifest import parse_manifest
    from farm.runtime.coordinator import Coordinator

    items = [{"id": f"i{n}", "image": "s3://in/a.png", "prompt": "a lighthouse at dusk" if n % 1000 == 7 else f"scene {n}"}
             for n in range(10_000)]
    spec = parse_manifest(json.dumps({"version": 1, "name": "big", "model": "tiny", "output": "s3://o/p", "items": items}),
                          "json", base_dir=Path("/"), local_images=False)
    state = JobState(spec)
    state.items["i3"].state, state.items["i5"].degradations = "failed", [{"step": "frames"}]
    me = SimpleNamespace(lock=threading.RLock(), states={"j": state}, entries={"j": {"id": "j"}}, _load_state=None)
    page = Coordinator.ui_items(me, "j", None, None, 60, "LIGHTHOUSE")
    assert page["matches"] == 10 and [r["id"] for r in page["items"]][:2] == ["i7", "i1007"]
    assert page["items"][0]["prompt"] == "a lighthouse at dusk" and page["next_cursor"] is None
    first = Coordinator.ui_items(me, "j", None, None, 48)
    second = Coordinator.ui_items(me, "j", None, first["next_cursor"], 48)
    assert first["matches"] == 10_000 and [r["id"] for r in second["items"]][:1] == ["i48"]
    assert [r["id"] for r in Coordinator.ui_items(me, "j", "failed", None, 48)["items"]] == ["i3"]
    assert [r["id"] for r in Coordinator.ui_items(me, "j", "degraded", None, 48)["items"]] == ["i5"]
    assert Coordinator.ui_items(me, "j", None, None, 48, "i999")["matches"] == 11  # i999, i9990..i9999
    assert Coordinator.ui_item(me, "j", "i7")["prompt"] == "a lighthouse at dusk"
    assert Coordinator.ui_item(me, "j", "nope") is None



def test_a_dropped_folder_of_images_is_checked_then_stored_and_submitted(tmp_path):
    from helpers import encode, pattern

    out = tmp_path / "renders"
    settings = ApiSettings(token=TOKEN, default_output=str(out), allowed_outputs=str(out), model="tiny")
    fake = Fake(str(out))
    client = TestClient(create_app(fake, settings), follow_redirects=False)
    login(client)
    csrf = csrf_of(client)
    png = encode(pattern(320, 240), "PNG")
    form = {"csrf": csrf, "mode": "images", "prompt_template": "a slow pan across {name}", "preset": "quick",
            "frames": "8", "name": "shoot"}
    bad = client.post("/submit", data={**form, "action": "check"}, headers={"HX-Request": "true"},
                      files=[("images", ("shoot/cat.png", png, "image/png")), ("images", ("shoot/notes.png", b"text", "image/png"))])
    assert bad.headers["x-farm-valid"] == "false" and "notes.png" in bad.text and "nothing was uploaded" in bad.text
    good = [("images", ("shoot/cat.png", png, "image/png")), ("images", ("shoot/dog.png", png, "image/png"))]
    checked = client.post("/submit", data={**form, "action": "check"}, headers={"HX-Request": "true"}, files=good)
    assert checked.headers["x-farm-valid"] == "true" and "valid: 2 image(s)" in checked.text
    assert not out.exists() and not fake.submitted
    sent = client.post("/submit", data={**form, "action": "submit"}, headers={"HX-Request": "true"}, files=good)
    assert sent.status_code == 204 and sent.headers["hx-redirect"] == "/jobs/j-000000000new"
    (spec,) = fake.submitted
    assert [(i["id"], i["prompt"]) for i in spec["items"]] == [("cat", "a slow pan across cat"), ("dog", "a slow pan across dog")]
    assert spec["items"][0]["image"] == str(out / "shoot" / "inputs" / "cat.png") and (out / "shoot" / "inputs" / "dog.png").exists()
    assert spec["items"][0]["params"]["steps"] == 30  # the preset's


def test_pick_and_the_cluster_page(farm):
    calls = []

    async def call(method, *args, **kwargs):
        calls.append((method, *args))
        if method == "takes":
            return {"item": "cat", "picked": None, "takes": [
                {"id": "cat.take-1", "take": 1, "seed": 1, "state": "succeeded", "picked": False},
                {"id": "cat.take-2", "take": 2, "seed": 2, "state": "failed", "picked": False, "message": "oom"}]}
        if method == "pick":
            return {}
        return await Fake.call(farm.fake, method, *args, **kwargs)

    farm.fake.call = call
    login(farm)
    page = farm.get(f"/jobs/{JOB}/takes/cat")
    assert page.status_code == 200 and page.text.count("video.mp4") == 1 and "Pick take 1" in page.text
    assert "Pick take 2" not in page.text  # a failed take cannot be picked
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    picked = farm.post(f"/jobs/{JOB}/takes/cat/pick", data={"csrf": csrf, "take": "1"})
    assert picked.status_code == 303 and ("pick", JOB, "cat", 1) in calls
    assert farm.get("/cluster").status_code == 200


def test_the_grid_pages_forward_and_back_with_its_filter(farm):
    seen = []

    async def call(method, *args, **kwargs):
        if method == "ui_items":
            seen.append(args)
            cursor = args[2]
            return {"items": farm.fake.rows, "next_cursor": (cursor or -1) + 48, "matches": 10_000}
        return await Fake.call(farm.fake, method, *args, **kwargs)

    farm.fake.call = call
    login(farm)
    first = farm.get(f"/jobs/{JOB}/grid?state=failed&q=sea").text
    assert "page 1 of 209" in first and "Previous" not in first
    next_query = re.search(r'hx-get="/jobs/[^/]+/grid\?([^"]+)" hx-target="#grid" hx-swap="outerHTML">Next', first)
    next_query = next_query.group(1).replace("&amp;", "&")
    assert "cursor=47" in next_query and "trail=f" in next_query and "state=failed" in next_query
    second = farm.get(f"/jobs/{JOB}/grid?{next_query}").text
    assert "page 2 of 209" in second and seen[-1] == (JOB, "failed", 47, 48, "sea")
    back = re.search(r'href="/jobs/[^?]+\?([^"]+)" hx-get="[^"]+" hx-target="#grid" hx-swap="outerHTML">← Previous', second)
    farm.get(f"/jobs/{JOB}?{back.group(1).replace('&amp;', '&')}")  # the whole page (without JavaScript)
    assert seen[-1] == (JOB, "failed", None, 48, "sea")  # the first page again


def test_an_item_can_be_stopped_from_its_panel_with_the_csrf_token_only(farm):
    login(farm)
    panel = farm.get(f"/jobs/{JOB}/items/later").text
    assert f'action="/jobs/{JOB}/items/later/cancel"' in panel and "Stop this item" in panel
    assert farm.post(f"/jobs/{JOB}/items/later/cancel").status_code == 403  # no CSRF token
    csrf = csrf_of(farm)
    done = farm.post(f"/jobs/{JOB}/items/later/cancel", data={"csrf": csrf}, headers={"Origin": "http://testserver"})
    assert done.status_code == 303 and ("cancel_item", JOB, "later") in farm.fake.calls
    ended = farm.post(f"/jobs/{JOB}/items/ok/cancel", data={"csrf": csrf}, headers={"Origin": "http://testserver"})
    assert ended.status_code == 409
