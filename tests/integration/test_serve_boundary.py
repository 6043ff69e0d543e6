"""The API's trust boundary against the real service (Ray Serve, the coordinator, the tiny model,
moto S3 on 127.0.0.1): confined outputs, a registry that survives planted files, event streams
that cannot starve the API, error bodies without internals, local images checked at submission
and opened without following symlinks, and the remote CLI's exit codes."""

import asyncio
import json
import re
import statistics
import subprocess
import sys
import time

import httpx
import pytest
import requests

from conftest import BUCKET, TOKEN, subprocess_env
from helpers import FAST, encode, pattern

pytestmark = pytest.mark.integration

INTERNALS = re.compile(r"Traceback|\x1b\[|\bpid=|\bip=|\d+\.\d+\.\d+\.\d+|\.py\b|site-packages|/tmp/")


def s3_manifest(name: str, count: int, **extra) -> dict:
    items = [{"id": f"i{n}", "image": f"s3://inputs/img{n % 3}.png", "prompt": f"motion {n}"} for n in range(count)]
    return {"version": 1, "name": name, "defaults": dict(FAST), "items": items, **extra}


def cancel(service, job_id: str) -> None:
    service.session.delete(f"{service.url}/v1/jobs/{job_id}", timeout=60)


def test_outputs_are_confined_and_the_state_folder_is_never_a_job_output(service):
    local = service.local
    cases = {
        "an absolute path elsewhere": {"output": "/var/tmp/farm-pwned"},
        "a relative climb": {"output": "../../../../../../var/tmp/farm-pwned"},
        "into the state folder": {"output": str(local), "name": "state"},
        "the registry itself": {"output": str(local / "state"), "name": "jobs"},
        "another bucket": {"output": "s3://inputs/x"},
        "a sibling prefix": {"output": f"s3://{BUCKET}/api2"},
        "dot-dot in S3": {"output": f"s3://{BUCKET}/api/../private"},
    }
    for case, header in cases.items():
        response = service.submit(s3_manifest("confined", 1) | header)
        assert response.status_code == 422, (case, response.status_code, response.text)
        assert not INTERNALS.search(response.json()["detail"]), response.text
    assert not (local / "state" / "spec.json").exists() and not (local / "state" / "jobs" / "jobs").exists()
    allowed = service.submit(s3_manifest("confined-ok", 1, output=str(local / "renders")))
    assert allowed.status_code == 202, allowed.text
    service.wait(allowed.json()["id"])
    assert (local / "renders" / "confined-ok" / "i0.mp4").is_file()
    # The file planted in the registry before the service started was skipped and is reported.
    health = requests.get(f"{service.url}/healthz", timeout=30).json()
    assert [r["key"] for r in health["skipped_job_records"]] == ["jobs/spec.json"], health
    metrics = requests.get(f"{service.url}/metrics", timeout=30).text
    assert "farm_job_records_skipped 1.0" in metrics


def test_a_hundred_event_streams_leave_health_and_status_responsive(service):
    job_id = service.submit(s3_manifest("streams", 40)).json()["id"]  # runs throughout (cancelled at the end)
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def scenario():
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=60, limits=limits) as client:
            streams, readers, first_events = [], [], []
            for _ in range(100):
                context = client.stream("GET", f"/v1/jobs/{job_id}/events")
                response = await context.__aenter__()
                assert response.status_code == 200
                streams.append((context, response))
            for _context, response in streams:  # every stream is live: its first event arrived
                lines = response.aiter_lines()
                readers.append(lines)  # kept: a dropped reader closes its stream
                while not (line := await lines.__anext__()).startswith("event:"):
                    pass
                first_events.append(line)
            latencies = []
            for _ in range(10):
                for path in ("/healthz", f"/v1/jobs/{job_id}"):
                    started = time.perf_counter()
                    answer = await client.get(path)
                    latencies.append(time.perf_counter() - started)
                    assert answer.status_code == 200, answer.text
            extra = [await client.send(client.build_request("GET", f"/v1/jobs/{job_id}/events"), stream=True)
                     for _ in range(10)]
            health = (await client.get("/healthz")).json()
            refused = await client.get(f"/v1/jobs/{job_id}/events")
            for response in extra:
                await response.aclose()
            for context, _response in streams:
                await context.__aexit__(None, None, None)
            return first_events, latencies, extra, refused, health

    first_events, latencies, extra, refused, health = asyncio.run(scenario())
    cancel(service, job_id)
    print(f"100 open streams: health/status median {statistics.median(latencies):.3f} s, max {max(latencies):.3f} s")
    assert all(event.startswith("event: progress") or event.startswith("event: end") for event in first_events)
    assert max(latencies) < 1.0, latencies
    assert all(response.status_code == 200 for response in extra)  # up to the per-client limit (110)
    assert health["event_streams"] == 110 and health["watched_jobs"] == 1, health  # 110 streams, one poller
    assert refused.status_code == 429 and "FARM_API_MAX_STREAMS_PER_CLIENT" in refused.json()["detail"]
    service.wait(job_id)
    # The streams closed: their slots are free again.
    with service.session.get(f"{service.url}/v1/jobs/{job_id}/events", stream=True, timeout=60) as again:
        assert again.status_code == 200


def test_a_conflict_says_why_without_rays_traceback(service):
    first = service.submit(s3_manifest("twice", 4))
    second = service.submit(s3_manifest("twice", 4))
    assert first.status_code == 202 and second.status_code == 409, second.text
    body = second.json()
    assert "not finished yet" in body["detail"] and not INTERNALS.search(second.text), second.text
    cancel(service, first.json()["id"])
    service.wait(first.json()["id"])


def test_the_jobs_own_files_are_not_items(service):
    job_id = service.submit(s3_manifest("own-files", 1)).json()["id"]
    service.wait(job_id)
    for name in ("job", "spec", "manifest"):
        response = service.session.get(f"{service.url}/v1/jobs/{job_id}/items/{name}/video", timeout=30)
        assert response.status_code == 404, (name, response.status_code, response.text)
    assert service.session.get(f"{service.url}/v1/jobs/{job_id}/items/i0/video", allow_redirects=False,
                               timeout=30).status_code == 307


@pytest.mark.parametrize(
    "body, field",
    [
        (b'{"version": 1, "items": [{"image": "s3://inputs/img0.png", "prompt": "p", "guidance_scale": NaN}]}', "guidance_scale"),
        (b'{"version": 1, "items": [{"image": "s3://inputs/img0.png", "prompt": "p", "guidance_scale": Infinity}]}', "guidance_scale"),
        (b'{"version": 1, "items": [{"image": "s3://inputs/img0.png", "prompt": "p", "steps": -Infinity}]}', "steps"),
        (b'{"version": 1, "items": [{"image": "s3://inputs/img0.png", "prompt": "p", "guidance_scale": 1e400}]}', "guidance_scale"),
        (b'{"version": 1, "items": [{"image": "s3://inputs/img0.png", "prompt": "\\ud800"}]}', "prompt"),
        (b'{"version": 1, "name": "\\udfff", "items": [{"image": "s3://inputs/img0.png", "prompt": "p"}]}', "name"),
    ],
    ids=["nan", "infinity", "minus-infinity", "overflow", "lone-surrogate-value", "lone-surrogate-name"],
)
def test_non_finite_numbers_and_invalid_unicode_are_422_with_the_field(service, body, field):
    response = service.session.post(f"{service.url}/v1/jobs", data=body, headers={"Content-Type": "application/json"},
                                    timeout=60)
    assert response.status_code == 422, response.text
    strict = json.loads(response.text, parse_constant=lambda token: pytest.fail(f"non-JSON constant {token}"))
    assert any(field in (issue.get("field") or "") for issue in strict["errors"]), strict


def test_yaml_non_finite_numbers_are_422(service):
    body = "version: 1\nitems:\n  - {image: s3://inputs/img0.png, prompt: p, guidance_scale: .inf}\n"
    response = service.session.post(f"{service.url}/v1/jobs", data=body, headers={"Content-Type": "application/yaml"},
                                    timeout=60)
    assert response.status_code == 422 and "guidance_scale" in response.text, response.text


def test_local_images_are_checked_at_submission_relative_to_the_local_base(service):
    missing = {"version": 1, "name": "local-missing", "defaults": dict(FAST),
               "items": [{"id": "ok", "image": "still.png", "prompt": "p"}, {"id": "gone", "image": "nope.png", "prompt": "p"}]}
    response = service.submit(missing)
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert [(e["item_index"], e["field"]) for e in errors] == [(1, "image")], errors
    accepted = service.submit({**missing, "name": "local-ok", "items": missing["items"][:1]})
    assert accepted.status_code == 202, accepted.text
    assert service.wait(accepted.json()["id"])["state"] == "succeeded"


def test_a_symlink_swapped_into_the_local_base_after_submission_is_not_followed(service, tmp_path):
    base = service.local / "images"
    secret = tmp_path / "outside.png"
    secret.write_bytes(encode(pattern(300, 300), "PNG"))
    (base / "swap.png").write_bytes(encode(pattern(320, 240), "PNG"))
    document = {"version": 1, "name": "swap", "defaults": dict(FAST), "items": [
        {"id": "first", "image": "still.png", "prompt": "p"},  # renders while the swap happens
        {"id": "swapped", "image": "swap.png", "prompt": "p"},
    ]}
    response = service.submit(document)
    assert response.status_code == 202, response.text
    (base / "swap.png").unlink()
    (base / "swap.png").symlink_to(secret)
    final = service.wait(response.json()["id"])
    items = {i["id"]: i for i in service.session.get(f"{service.url}/v1/jobs/{final['id']}/items", timeout=30).json()["items"]}
    assert items["first"]["state"] == "succeeded"
    assert items["swapped"]["state"] == "failed" and items["swapped"]["reason"] == "image_refused", items["swapped"]


def test_the_remote_cli_says_an_unknown_job_is_not_found_with_exit_2(service):
    env = subprocess_env(FARM_ENDPOINT=service.url, FARM_API_TOKEN=TOKEN)
    run = subprocess.run([sys.executable, "-m", "farm", "status", "j-000000000000"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert run.returncode == 2, (run.returncode, run.stderr)
    assert "no job" in run.stderr and "Traceback" not in run.stderr


# --- the OpenAPI document's every parameter and body field, with hostile values ------------------

HOSTILE = {
    # raw JSON tokens, spliced into bodies as written
    "nan": "NaN", "infinity": "Infinity", "minus-infinity": "-Infinity", "overflow": "1e400",
    "lone-surrogate": '"\\ud800"', "nul": '"a\\u0000b"', "long": json.dumps("x" * 100_000),
    "deep": "[" * 200 + "]" * 200, "huge-int": "1" + "0" * 400, "object": '{"$ref": "#/x"}',
}
# already percent-encoded: a lone surrogate (ED A0 80), NUL, invalid UTF-8, a climb
URL_VALUES = ["NaN", "inf", "-1e400", "%ED%A0%80", "a%00b", "x" * 6000, "..%2F..%2Fetc%2Fpasswd", "%ff%fe", "-1"]


def check_answer(response: requests.Response, what: str) -> None:
    assert response.status_code < 500, (what, response.status_code, response.text[:500])
    if response.headers.get("content-type", "").startswith("application/json"):
        json.loads(response.content, parse_constant=lambda token: pytest.fail(f"{what}: body holds {token}"))
        assert not INTERNALS.search(response.text), (what, response.text[:500])
        assert len(response.content) < 64 * 1024, (what, len(response.content))


def test_openapi_hostile_values_get_4xx_without_internals(service):
    """Beyond schemathesis (which only generates valid JSON and UTF-8): every path and query
    parameter of the OpenAPI document, and every field of the manifest body, with non-finite
    numbers, invalid Unicode, NUL, oversized and deeply nested values."""
    spec = requests.get(f"{service.url}/openapi.json", timeout=30).json()
    sent = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                for value in URL_VALUES:
                    if parameter["in"] == "path":
                        url = re.sub(r"\{[^}]+\}", "j-000000000000", path.replace("{" + parameter["name"] + "}", value))
                    else:
                        url = re.sub(r"\{[^}]+\}", "j-000000000000", path) + f"?{parameter['name']}={value}"
                    response = service.session.request(method.upper(), service.url + url, timeout=60)
                    check_answer(response, f"{method} {path} {parameter['name']}={value[:20]!r}")
                    sent += 1
    base = {"version": 1, "name": "hostile", "items": [{"image": "s3://inputs/img0.png", "prompt": "p"}]}
    body_schema = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    header_fields = [f for f in body_schema["properties"] if f != "items"]
    item_fields = list(body_schema["$defs"]["ItemSpec"]["properties"])
    for where, fields in (("header", header_fields), ("item", item_fields)):
        for field in fields:
            for case, token in HOSTILE.items():
                document = json.loads(json.dumps(base))
                target = document if where == "header" else document["items"][0]
                target[field] = "@@HOSTILE@@"
                body = json.dumps(document).replace('"@@HOSTILE@@"', token)
                response = service.session.post(f"{service.url}/v1/jobs", data=body.encode("utf-8", "surrogatepass"),
                                                headers={"Content-Type": "application/json"}, timeout=60)
                check_answer(response, f"{where} {field} = {case}")
                if response.status_code == 202:  # a value that is fine after all: do not render it
                    cancel(service, response.json()["id"])
                sent += 1
    assert sent > 250
