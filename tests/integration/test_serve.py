"""The HTTP API over real HTTP on 127.0.0.1: Ray Serve + FastAPI, the coordinator actor, the tiny
model, and S3 results on moto's server; plus the remote CLI and an OpenAPI-driven fuzz."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import requests
import yaml

from conftest import BUCKET, TOKEN, subprocess_env
from helpers import FAST, encode, pattern

pytestmark = pytest.mark.integration

def manifest(name: str, count: int, **extra) -> dict:
    items = [{"id": f"i{n}", "image": f"s3://inputs/img{n % 3}.png", "prompt": f"motion {n}"} for n in range(count)]
    return {"version": 1, "name": name, "defaults": dict(FAST), "items": items, **extra}


def test_submit_follow_events_and_fetch_the_video(service):
    body = yaml.safe_dump(manifest("events", 2) | {"defaults": {**FAST, "deliverables": ["web", "poster"]}})
    response = service.session.post(
        f"{service.url}/v1/jobs", data=body, headers={"Content-Type": "application/yaml"}, timeout=60
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status_url"] == f"/v1/jobs/{accepted['id']}"
    events = []
    with service.session.get(f"{service.url}{accepted['status_url']}/events", stream=True, timeout=300) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((kind, json.loads(line[5:])))
                if kind == "end":
                    break
    assert events[-1][0] == "end" and events[-1][1]["state"] == "succeeded"
    status = service.status(accepted["id"])
    assert status["counts"]["succeeded"] == 2 and status["output_prefix"] == f"s3://{BUCKET}/api/events/"
    # The job ended after its deliverables, made by Ray tasks without a GPU, committed on S3.
    assert (status["post"]["made"], status["post"]["failed"], status["post"]["queued"]) == (4, 0, 0), status["post"]
    poster = service.s3().get_object(Bucket=BUCKET, Key="api/events/deliverables/poster/i0.png")["Body"].read()
    assert poster[:8] == b"\x89PNG\r\n\x1a\n"
    items = service.session.get(f"{service.url}/v1/jobs/{accepted['id']}/items", timeout=30).json()
    assert [i["state"] for i in items["items"]] == ["succeeded", "succeeded"]
    video = service.session.get(f"{service.url}/v1/jobs/{accepted['id']}/items/i0/video", allow_redirects=False, timeout=30)
    assert video.status_code == 307 and "X-Amz-Signature=" in video.headers["location"]
    data = requests.get(video.headers["location"], timeout=30).content
    assert data[4:8] == b"ftyp"
    missing = service.session.get(f"{service.url}/v1/jobs/{accepted['id']}/items/nope/video", timeout=30)
    assert missing.status_code == 404
    metrics = requests.get(f"{service.url}/metrics", timeout=30).text  # the coordinator's series
    succeeded = [line for line in metrics.splitlines() if line.startswith("farm_items_total{") and 'outcome="succeeded"' in line]
    assert succeeded and sum(float(line.rsplit(" ", 1)[1]) for line in succeeded) >= 2
    assert 'farm_jobs{state="succeeded"}' in metrics and "farm_render_seconds_bucket" in metrics


def test_the_remote_cli_and_plain_curl(service, tmp_path):
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(manifest("cli", 2)))
    env = subprocess_env(FARM_ENDPOINT=service.url, FARM_API_TOKEN=TOKEN)
    run = subprocess.run([sys.executable, "-m", "farm", "submit", str(path), "--wait"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    job_id = run.stdout.strip().splitlines()[0]
    assert job_id.startswith("j-") and "succeeded" in run.stdout
    status = subprocess.run([sys.executable, "-m", "farm", "status", job_id, "--json"], capture_output=True, text=True, env=env)
    assert json.loads(status.stdout)["state"] == "succeeded"
    jobs = subprocess.run([sys.executable, "-m", "farm", "jobs"], capture_output=True, text=True, env=env)
    assert job_id in jobs.stdout
    curl = shutil.which("curl")
    if curl:  # the README's curl lines: submit YAML, follow the status, download the video
        auth = ["-H", f"Authorization: Bearer {TOKEN}"]
        posted = subprocess.run(
            [curl, "-s", *auth, "-H", "Content-Type: application/yaml", "--data-binary", f"@{path}", f"{service.url}/v1/jobs"],
            capture_output=True, text=True, check=True,
        )
        curl_job = json.loads(posted.stdout)["id"]
        service.wait(curl_job)
        out = subprocess.run([curl, "-s", *auth, f"{service.url}/v1/jobs/{curl_job}"], capture_output=True, text=True, check=True)
        assert json.loads(out.stdout)["state"] == "succeeded"
        video = tmp_path / "clip.mp4"
        subprocess.run(
            [curl, "-s", "-L", *auth, "-o", str(video), f"{service.url}/v1/jobs/{curl_job}/items/i0/video"], check=True
        )
        assert video.read_bytes()[4:8] == b"ftyp"
    bad = subprocess.run([sys.executable, "-m", "farm", "status", job_id], capture_output=True, text=True, env={**env, "FARM_API_TOKEN": "wrong"})
    assert bad.returncode != 0 and "401" in bad.stderr


def test_every_v1_route_needs_the_token(service):
    spec = requests.get(f"{service.url}/openapi.json", timeout=30).json()
    routes = [(method, path) for path, ops in spec["paths"].items() if path.startswith("/v1") for method in ops]
    assert len(routes) >= 8
    for method, path in routes:
        url = service.url + path.replace("{job_id}", "j-x").replace("{item_id}", "x")
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            response = requests.request(method.upper(), url, headers=headers, timeout=30)
            assert response.status_code == 401, (method, path, headers, response.status_code)
    assert requests.get(f"{service.url}/healthz", timeout=30).status_code == 200


@pytest.mark.parametrize(
    "body, content_type, status, needles",
    [
        (b"version: 1\nitems: [\n", "application/yaml", 422, ["invalid YAML at line"]),
        (json.dumps({"version": 1, "items": [{"image": "s3://inputs/img0.png", "prompt": "p", "frames": 99, "colour": 1}]}).encode(),
         "application/json", 422, ["frames", "colour"]),
        (json.dumps({"version": 1, "items": [{"image": "/etc/passwd", "prompt": "p"}]}).encode(), "application/json", 422,
         ["leaves the folder this farm reads local images from"]),
        (json.dumps({"version": 1, "items": [{"image": "s3://inputs/img0.png", "prompt": "p"}], "notify_url": "http://169.254.169.254/x"}).encode(),
         "application/json", 422, ["notify_url"]),
        (b"<xml/>", "application/xml", 415, ["content type"]),
        (b"x" * (9 * 1024 * 1024), "application/json", 413, ["limit"]),
        (b"{}", "application/json", 422, ["version"]),
    ],
    ids=["yaml-syntax", "range-and-unknown", "local-path", "ssrf-webhook", "content-type", "too-big", "empty"],
)
def test_invalid_submissions_are_4xx_with_every_error(service, body, content_type, status, needles):
    response = service.session.post(f"{service.url}/v1/jobs", data=body, headers={"Content-Type": content_type}, timeout=60)
    assert response.status_code == status, response.text[:500]
    text = response.text
    for needle in needles:
        assert needle in text


def test_10001_items_are_over_the_limit_and_10000_are_accepted(service):
    too_many = service.submit(manifest("big", 10_001))
    assert too_many.status_code == 422 and "at most 10000" in too_many.text
    accepted = service.submit(manifest("big", 10_000))
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    cancelled = service.session.delete(f"{service.url}/v1/jobs/{job_id}", timeout=60)
    assert cancelled.status_code == 202
    final = service.wait(job_id, timeout=300)
    assert final["state"] == "cancelled" and final["counts"]["cancelled"] > 9_000


def test_cancel_mid_job_keeps_what_is_committed(service):
    job_id = service.submit(manifest("cancel", 6)).json()["id"]
    deadline = time.time() + 300
    while time.time() < deadline and not service.sidecars("api/cancel/"):
        time.sleep(0.5)
    response = service.session.delete(f"{service.url}/v1/jobs/{job_id}", timeout=60)
    assert response.status_code == 202
    final = service.wait(job_id)
    counts = final["counts"]
    assert final["state"] == "cancelled"
    assert counts["succeeded"] >= 1 and counts["cancelled"] >= 1, counts
    assert counts["succeeded"] + counts["cancelled"] + counts["running"] == 6
    assert len(service.sidecars("api/cancel/")) == counts["succeeded"]


def test_cancelling_one_item_through_the_api_cancels_it_and_the_job_goes_on(service):
    job_id = service.submit(manifest("one-off", 4)).json()["id"]
    response = service.session.delete(f"{service.url}/v1/jobs/{job_id}/items/i3", timeout=60)
    assert response.status_code == 202, response.text
    answer = response.json()
    # queued: cancelled at once; the job not admitted yet: cancelled when it is
    assert answer["item_id"] == "i3" and answer["state"] in ("cancelled", "cancelling"), answer
    assert answer["job"]["id"] == job_id
    unknown = service.session.delete(f"{service.url}/v1/jobs/{job_id}/items/nope", timeout=60)
    assert unknown.status_code == 404 and "no item 'nope'" in unknown.json()["detail"]
    final = service.wait(job_id)
    assert final["state"] == "partial" and final["counts"]["cancelled"] == 1 and final["counts"]["succeeded"] == 3
    assert "api/one-off/i3.json" not in service.sidecars("api/one-off/")
    again = service.session.delete(f"{service.url}/v1/jobs/{job_id}/items/i0", timeout=60)
    assert again.status_code == 409 and "already ended (succeeded)" in again.json()["detail"], again.text


@pytest.mark.slow  # over a minute, or repeated by tests/chaos: `python3 dev.py test -m slow`
def test_killing_the_coordinator_mid_job_renders_nothing_twice(service):
    import ray

    job_id = service.submit(manifest("durable", 6)).json()["id"]
    deadline = time.time() + 300
    while time.time() < deadline and not service.sidecars("api/durable/"):
        time.sleep(0.5)
    before = service.sidecars("api/durable/")
    assert 1 <= len(before) < 6
    from farm.runtime.coordinator import COORDINATOR_NAME, NAMESPACE

    ray.kill(ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE), no_restart=False)  # Ray restarts it
    final = service.wait(job_id, timeout=600)
    assert final["state"] == "succeeded", final
    after = service.sidecars("api/durable/")
    assert len(after) == 6
    for key, etag in before.items():
        assert after[key] == etag, f"{key} was rendered again"
    record = json.loads(service.s3().get_object(Bucket=BUCKET, Key="api/durable/job.json")["Body"].read())
    # The adopted worker may commit the item it was rendering after `before` was read: skipped
    # then counts it too. Every item is counted once either way.
    counts = record["counts"]
    assert counts["skipped"] >= len(before) and counts["skipped"] + counts["succeeded"] == 6, counts


def test_an_upload_is_a_one_item_job(service):
    files = {"image": ("still.png", encode(pattern(320, 200), "PNG"), "image/png")}
    data = {"prompt": "a slow pan", "resolution": "256", "frames": "8", "steps": "10", "aspect": "16:9"}
    response = service.session.post(f"{service.url}/v1/renders", files=files, data=data, timeout=60)
    assert response.status_code == 202, response.text
    final = service.wait(response.json()["id"])
    assert final["state"] == "succeeded" and final["counts"]["succeeded"] == 1
    bad = service.session.post(
        f"{service.url}/v1/renders", files={"image": ("x.png", b"not an image", "image/png")}, data={"prompt": "p"}, timeout=60
    )
    assert bad.status_code == 422 and "not a recognisable image" in bad.text
    wrong = service.session.post(f"{service.url}/v1/renders", files=files, data={"prompt": "p", "frames": "99"}, timeout=60)
    assert wrong.status_code == 422 and "frames" in wrong.text


def test_openapi_fuzz_finds_no_server_errors(service):
    schemathesis = shutil.which("schemathesis") or os.path.join(os.path.dirname(sys.executable), "schemathesis")
    result = subprocess.run(
        [
            schemathesis, "run", f"{service.url}/openapi.json",
            "--checks", "not_a_server_error",
            "--header", f"Authorization: Bearer {TOKEN}",
            "--max-examples", "25",
            "--generation-deterministic",
            "--exclude-path", "/v1/jobs/{job_id}/events",
        ],
        capture_output=True, text=True, timeout=900, env=subprocess_env(),
    )
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-4000:]


def test_a_webhook_is_called_once_when_the_job_ends(service):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received = []

    class Hook(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        job_id = service.submit(manifest("hooked", 1, notify_url=url)).json()["id"]
        final = service.wait(job_id)
        deadline = time.time() + 30
        while not received and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        assert len(received) == 1, received
        assert received[0]["id"] == job_id and received[0]["state"] == final["state"] == "succeeded"
        assert received[0]["counts"]["succeeded"] == 1
    finally:
        server.shutdown()
        server.server_close()
