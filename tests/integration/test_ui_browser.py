"""The web UI in a real headless browser (Debian's chromium, driven by Playwright, started here
with a fresh profile) against a real `farm serve` on 127.0.0.1 (the `service` fixture: Ray,
the coordinator, the tiny model, moto's S3). One browser session walks through the UI in order:
sign in; Submit shows a bad manifest's errors inline, then runs 4 good items and 1 bad one; the
job page reaches its end without a reload; the failed item shows its reason and what to do; a
video plays as long as its sidecar says; filters and search narrow the grid; takes play side by
side and one is picked; the failed item is re-rendered as a new job; a running job is cancelled
from the Jobs page; the Cluster page lists the worker. Then a browser with a wrong token sees
no page and no file, and the first session's console showed no error.

Screenshots of each page go to the test's tmp folder (printed), and also to $FARM_UI_SCREENSHOTS
when set (`FARM_UI_SCREENSHOTS=docs/ui python3 dev.py test tests/integration/test_ui_browser.py`
refreshes the README's).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import yaml
from conftest import BUCKET, TOKEN
from helpers import FAST

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("FARM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip("no chromium for the browser tests: `apt-get install chromium` (python3 dev.py test installs it "
                "when run as root), or point FARM_CHROMIUM at one", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")

# A closed network: nothing of Chromium's own may reach out (and fail, logging errors).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
                 "--autoplay-policy=no-user-gesture-required"]
FINAL = ("succeeded", "partial", "failed", "cancelled")
ROOT = Path(__file__).resolve().parents[2]
GOOD = [("i0", 0, "a red kite over the hills"), ("i1", 1, "waves on a pebble beach"),
        ("i2", 2, "a lighthouse blinking at dusk"), ("i3", 0, "steam rising from a cup")]


def manifest(name: str, **item_extra) -> str:
    items = [{"id": item_id, "image": f"s3://inputs/img{n}.png", "prompt": prompt, **item_extra} for item_id, n, prompt in GOOD]
    items.append({"id": "broken", "image": "s3://inputs/missing.png", "prompt": "an image that is not there"})
    return yaml.safe_dump({"version": 1, "name": name, "defaults": dict(FAST), "items": items}, sort_keys=False)


class Ui:
    """The shared browser session: its page, what its console said, and what the tests found."""

    def __init__(self, service, browser, shots: Path):
        self.service, self.shots = service, shots
        self.docs = Path(os.environ["FARM_UI_SCREENSHOTS"]) if os.environ.get("FARM_UI_SCREENSHOTS") else None
        if self.docs is not None and not self.docs.is_absolute():
            self.docs = ROOT / self.docs
        self.context = browser.new_context(base_url=service.url, viewport={"width": 1360, "height": 860})
        self.context.set_default_timeout(30_000)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        self.found: dict = {}

    def shot(self, name: str, full_page: bool = False) -> None:
        """The page (from its top) as NAME.png; for docs/ a 256-colour copy (a third of the
        size, the same to the eye)."""
        path = self.shots / f"{name}.png"
        self.page.evaluate("window.scrollTo(0, 0)")
        self.page.screenshot(path=str(path), full_page=full_page)
        if self.docs is not None:
            from PIL import Image

            self.docs.mkdir(parents=True, exist_ok=True)
            image = Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
            image.save(self.docs / path.name, optimize=True)

    def wait_js(self, expression: str, timeout_s: float = 30, arg=None) -> None:
        try:
            self.page.wait_for_function(expression, arg=arg, timeout=timeout_s * 1000, polling=200)
        except sync_api.Error as error:  # (a timeout, a script error) what the page shows, for the report
            self.page.screenshot(path=str(self.shots / "failure.png"))
            raise AssertionError(f"{expression}: {error}\n{self.page.url}\n{self.page.inner_text('body')[:3000]}") from None

    def grid_ids(self) -> list[str]:
        return self.page.eval_on_selector_all("#grid .card", "cards => cards.map(c => c.dataset.item)")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def ui(service, browser, tmp_path_factory):
    shots = tmp_path_factory.mktemp("ui-screenshots")
    session = Ui(service, browser, shots)
    yield session
    print(f"\nweb UI screenshots: {shots}")
    session.context.close()


def test_sign_in_submit_with_inline_errors_and_watch_the_job_end_without_a_reload(ui):
    page = ui.page
    page.goto("/")
    assert "/login" in page.url, page.content()[:3000]
    ui.shot("login")
    page.fill("#token", TOKEN)
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert page.url == f"{ui.service.url}/", page.inner_text("body")
    assert page.locator("h1").inner_text() == "Jobs"
    jobs_before = len(ui.service.session.get(f"{ui.service.url}/v1/jobs", timeout=30).json()["jobs"])

    page.goto("/submit")
    page.fill("#manifest-text", manifest("ui-bad").replace("frames: 8", "frames: 99").replace("prompt: an image that is not there", "prompt: ''"))
    page.click("#manifest-check")
    errors = page.locator("#manifest-result .errors")
    errors.wait_for()
    assert "frames" in errors.inner_text() and "prompt" in errors.inner_text()
    ui.shot("submit")
    page.click("#manifest-submit")  # the same errors: nothing is submitted
    page.wait_for_timeout(500)
    assert "/submit" in page.url
    assert len(ui.service.session.get(f"{ui.service.url}/v1/jobs", timeout=30).json()["jobs"]) == jobs_before

    name = f"ui-{int(time.time())}"
    page.fill("#manifest-text", manifest(name))
    page.click("#manifest-check")
    page.locator("#manifest-result .ok").wait_for()
    assert "valid: 5 item(s)" in page.locator("#manifest-result").inner_text()
    page.click("#manifest-submit")
    page.wait_for_url("**/jobs/j-*")
    job_id = page.url.rsplit("/", 1)[-1]
    ui.found.update(job=job_id, name=name)
    # A second job, of takes, renders after it (for the takes test).
    takes = {"version": 1, "name": f"{name}-takes", "defaults": dict(FAST),
             "items": [{"id": "cat", "image": "s3://inputs/img1.png", "prompt": "a cat turns its head", "takes": 2}]}
    accepted = ui.service.submit(takes)
    assert accepted.status_code == 202, accepted.text
    ui.found["takes_job"] = accepted.json()["id"]

    page.evaluate("window.farmNotReloaded = true")
    ui.wait_js(f"() => {list(FINAL)}.includes(document.querySelector('#summary')?.dataset.state)", timeout_s=300)
    ui.wait_js("() => !document.querySelector('#grid').hasAttribute('hx-trigger')"
               " && document.querySelectorAll('#grid .card[data-state=succeeded] img').length === 4")
    assert page.evaluate("window.farmNotReloaded") is True  # live updates, no reload
    assert page.locator("#job-state").inner_text() == "partial"
    assert "4 succeeded" in page.locator("#summary .counts").inner_text()
    assert "1 failed" in page.locator("#summary .counts").inner_text()
    assert page.evaluate("document.querySelector('#job-progress').value") == 5
    assert sorted(ui.grid_ids()) == ["broken", "i0", "i1", "i2", "i3"]
    ui.wait_js("() => [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)")


def test_the_failed_item_shows_its_reason_and_a_video_plays_as_long_as_its_sidecar_says(ui):
    page, job_id = ui.page, ui.found["job"]
    page.click("#grid .card[data-item=broken]")
    page.locator("#item-panel[data-item=broken]").wait_for()
    assert page.locator(".failure .reason").inner_text() == "image_not_found"
    assert "missing.png" in page.locator(".failure .message").inner_text()
    assert "What to do" in page.locator(".failure .advice").inner_text()

    page.click("#grid .card[data-item=i2]")
    page.locator("#item-panel[data-item=i2] video#player").wait_for()
    ui.wait_js("() => document.querySelector('#player').readyState >= 2", timeout_s=30)
    ui.wait_js("() => document.querySelector('#player').currentTime > 0", timeout_s=30)  # it plays
    duration = page.evaluate("document.querySelector('#player').duration")
    assert page.evaluate("document.querySelector('#player').error") is None
    import json

    sidecar = json.loads(ui.service.s3().get_object(Bucket=BUCKET, Key=f"api/{ui.found['name']}/i2.json")["Body"].read())
    outputs = sidecar["outputs"]
    assert abs(duration - outputs["frames"] / outputs["fps"]) <= 1 / outputs["fps"], (duration, outputs)
    panel = page.locator("#item-panel").inner_text()
    assert "Parameters" in panel and "Timings" in panel and "Tier" in panel and "Node" in panel
    assert page.locator("table.params tbody tr").count() >= 5
    assert job_id in page.url
    ui.shot("job")
    page.goto(f"/jobs/{job_id}/items/i2")  # the item's own page (what the panel shows, without JavaScript too)
    ui.wait_js("() => document.querySelector('#player').readyState >= 2")
    assert "Parameters" in page.locator("#item-panel").inner_text()
    ui.shot("item", full_page=True)
    page.goto(f"/jobs/{job_id}")


def test_filters_and_search_narrow_the_grid(ui):
    page = ui.page

    def shows(*ids: str) -> None:
        """The grid comes to hold exactly these items (and says how many match)."""
        ui.wait_js("ids => { const grid = document.querySelector('#grid');"
                   " const shown = [...grid.querySelectorAll('.card')].map(c => c.dataset.item).sort();"
                   " return grid.dataset.matches === String(ids.length) && JSON.stringify(shown) === JSON.stringify(ids); }",
                   arg=sorted(ids))

    page.click("#filters label:has(input[value=failed])")
    shows("broken")
    page.click("#filters label:has(input[value=succeeded])")
    shows("i0", "i1", "i2", "i3")
    page.click("#filters label:has(input[value=running])")
    shows()
    page.click("#filters label:has(input[value=''])")
    shows("broken", "i0", "i1", "i2", "i3")
    page.fill("#q", "LIGHTHOUSE")  # a prompt's word, any case
    shows("i2")
    page.fill("#q", "brok")  # an id
    shows("broken")
    page.click("#filters label:has(input[value=succeeded])")  # a state and a search together
    shows()
    page.fill("#q", "")
    page.click("#filters label:has(input[value=''])")
    shows("broken", "i0", "i1", "i2", "i3")


def test_takes_play_side_by_side_and_one_is_picked(ui):
    page, job_id = ui.page, ui.found["takes_job"]
    ui.service.wait(job_id, timeout=300)
    page.goto(f"/jobs/{job_id}/takes/cat")
    assert page.locator("video.take-video").count() == 2
    page.click("#play-all")
    ui.wait_js("() => [...document.querySelectorAll('video.take-video')].every(v => v.readyState >= 2 && !v.paused"
               " && v.currentTime > 0)")
    page.click("figure[data-take='cat.take-2'] button.pick")
    page.locator("figure.picked[data-take='cat.take-2']").wait_for()
    page.click("#play-all")
    ui.wait_js("() => [...document.querySelectorAll('video.take-video')].every(v => v.readyState >= 2 && v.currentTime > 0)")
    ui.shot("takes")
    assert ui.service.status(job_id)["picks"] == {"cat": "cat.take-2"}


def test_re_render_failed_items_makes_a_new_job_of_them(ui):
    page = ui.page
    page.goto(f"/jobs/{ui.found['job']}")
    page.click("#rerender")
    page.wait_for_url("**/rerender")
    page.fill("input[name=steps]", "12")
    page.click("#rerender-submit")
    page.wait_for_url(lambda url: "/jobs/j-" in url and ui.found["job"] not in url)
    assert "-rerender-" in page.locator("#summary h1").inner_text()
    ui.wait_js(f"() => {list(FINAL)}.includes(document.querySelector('#summary')?.dataset.state)", timeout_s=120)
    assert page.locator("#job-state").inner_text() == "failed"  # its image is still missing
    ui.wait_js("() => document.querySelectorAll('#grid .card').length === 1")
    assert ui.grid_ids() == ["broken"]


def test_cancel_a_running_job_from_the_jobs_page(ui):
    page = ui.page
    document = {"version": 1, "name": f"{ui.found['name']}-cancel", "defaults": dict(FAST),
                "items": [{"id": f"c{n}", "image": f"s3://inputs/img{n % 3}.png", "prompt": f"motion {n}"} for n in range(8)]}
    accepted = ui.service.submit(document)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    page.goto("/")
    row = page.locator(f"tr.job[data-job={job_id}]")
    row.locator(".badge.state-running").wait_for(timeout=120_000)
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button.cancel").click()
    row.locator(".badge.state-cancelled").wait_for(timeout=120_000)
    status = ui.service.status(job_id)
    assert status["state"] == "cancelled" and status["counts"]["cancelled"] > 0
    ui.shot("jobs")


def test_the_cluster_page_lists_the_workers(ui):
    page = ui.page
    page.goto("/cluster")
    page.locator("tr.worker").first.wait_for()
    assert page.locator("tr.worker").count() >= 1
    assert page.locator("tr.worker .badge").first.inner_text() in ("idle", "rendering", "switching", "draining")
    ui.shot("cluster")


def test_a_wrong_token_sees_no_page_and_no_file(ui, browser):
    job_id, name = ui.found["job"], ui.found["name"]
    context = browser.new_context(base_url=ui.service.url)
    try:
        page = context.new_page()
        page.goto("/")
        page.fill("#token", "not-the-token")
        page.click("button[type=submit]")
        page.locator(".error").wait_for()
        assert "not this farm" in page.locator(".error").inner_text()
        for path in ("/", f"/jobs/{job_id}", f"/jobs/{job_id}/items/i2", f"/jobs/{job_id}/takes/cat", "/cluster", "/submit"):
            page.goto(path)
            assert "/login" in page.url, path
            assert name not in page.content()
        files = [f"/jobs/{job_id}/items/i2/{f}" for f in ("thumb.jpg", "video.mp4", "sidecar.json")]
        files += [f"/jobs/{job_id}/download.zip", f"/jobs/{job_id}/urls.txt", f"/jobs/{job_id}/grid", "/fragments/jobs"]
        context.add_cookies([{"name": "farm_session", "value": TOKEN, "url": ui.service.url}])  # the raw token is no cookie
        for path in files:
            for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": TOKEN}):
                response = context.request.get(path, headers=headers, max_redirects=0)
                assert response.status in (401, 303), (path, headers, response.status)
                assert name not in response.text() and b"ftyp" not in response.body()[:16], path
        posted = context.request.post(f"/jobs/{job_id}/cancel", form={"csrf": "x"}, max_redirects=0)
        assert posted.status == 401
    finally:
        context.close()


def test_the_console_showed_no_errors(ui):
    assert ui.found.get("job"), "the walk through the UI did not run"
    assert ui.errors == []
