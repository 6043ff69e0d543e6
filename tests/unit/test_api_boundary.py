"""The API's trust boundary, with the FastAPI app in process and a fake coordinator: where a
submitted job may write, what an error body may say, and the routes' reserved names."""

import json
import re

import pytest
from fastapi.testclient import TestClient

from farm.core.errors import FarmError, JobConflictError
from farm.serve.app import ApiSettings, CoordinatorClient, create_app

S3_ITEM = {"image": "s3://in/a.png", "prompt": "p"}
# What no error body may carry: a traceback, ANSI colour codes, a pid, an address, a source path.
INTERNALS = re.compile(r"Traceback|\x1b\[|\bpid=|\bip=|\d+\.\d+\.\d+\.\d+|\.py\b|site-packages")


class Fake:
    """The coordinator: records submissions; `fail` makes a call raise what it holds."""

    def __init__(self):
        self.submitted = []
        self.fail: dict[str, BaseException] = {}

    async def call(self, method, *args, **kwargs):
        if method in self.fail:
            raise self.fail[method]
        if method == "submit":
            self.submitted.append(args[0])
            return {"id": "j-fake"}
        if method == "status":
            return {"id": args[0], "name": "n", "state": "running", "output": "s3://renders/api"} if args[0] == "j-fake" else None
        if method == "video":
            return {"committed": False}
        raise AssertionError(method)


@pytest.fixture
def api(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (tmp_path / "outside").mkdir()
    (allowed / "escape").symlink_to(tmp_path / "outside")
    settings = ApiSettings(
        token="t0ken", default_output="s3://renders/api", allowed_outputs=f"s3://renders/api,{allowed}",
    )
    fake = Fake()
    client = TestClient(create_app(fake, settings), raise_server_exceptions=False)
    client.headers["Authorization"] = "Bearer t0ken"
    client.fake, client.allowed, client.base = fake, allowed, tmp_path
    return client


def submit(api, **header):
    return api.post("/v1/jobs", json={"version": 1, "name": "job", "items": [S3_ITEM], **header})


@pytest.mark.parametrize(
    "output",
    [
        "/etc/farm-pwned",
        "{base}/outside",
        "{allowed}/../outside",
        "{allowed}/escape",  # a symlink inside the allowed folder that points out of it
        "{allowed}/escape/deeper",
        "s3://other-bucket/api",
        "s3://renders/api2",
        "s3://renders/api/../private",
        "s3://renders",
        "gs://renders/api",
    ],
)
def test_outputs_outside_the_allowed_prefixes_are_422_naming_the_field(api, output):
    output = output.format(base=api.base, allowed=api.allowed)
    response = submit(api, output=output)
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert [e["field"] for e in errors] == ["output"], errors
    assert "FARM_API_ALLOWED_OUTPUTS" in errors[0]["message"]
    assert not api.fake.submitted


@pytest.mark.parametrize("output", ["s3://renders/api", "s3://renders/api/sub/", "{allowed}", "{allowed}/deeper/./x"])
def test_outputs_under_an_allowed_prefix_are_accepted_in_canonical_form(api, output):
    response = submit(api, output=output.format(allowed=api.allowed))
    assert response.status_code == 202, response.text
    written = api.fake.submitted[-1]["output"]
    assert written in ("s3://renders/api", "s3://renders/api/sub", str(api.allowed), f"{api.allowed}/deeper/x")


def test_a_manifest_without_output_gets_the_default(api):
    assert submit(api).status_code == 202
    assert api.fake.submitted[-1]["output"] == "s3://renders/api"


def test_internal_errors_are_an_id_and_nothing_else(api, caplog):
    api.fake.fail["submit"] = RuntimeError("boom at /srv/farm/secret.py line 3, pid=4242, 10.1.2.3")
    response = submit(api)
    assert response.status_code == 500
    body = response.json()
    match = re.fullmatch(r"internal error ([0-9a-f]{12}); .*", body["detail"])
    assert set(body) == {"detail", "errors"} and match
    assert not INTERNALS.search(response.text)
    incident = match.group(1)
    assert any(incident in record.getMessage() and "boom" in record.getMessage() for record in caplog.records)


def test_the_coordinators_errors_arrive_without_rays_traceback():
    from ray.exceptions import RayTaskError

    remote_trace = "Traceback (most recent call last):\n  File \"/srv/farm/runtime/coordinator.py\", line 1\n pid=77 ip=10.0.0.5"

    class Handle:
        def __init__(self, error):
            self.error = error

        def __getattr__(self, method):
            error = self.error

            class Method:
                async def remote(self, *args, **kwargs):
                    raise RayTaskError(method, remote_trace, error).as_instanceof_cause()

            return Method()

    settings = ApiSettings(token=None, default_output="s3://renders/api")
    for error, status in ((JobConflictError("job j-1 with the same name and output is not finished yet"), 409),
                          (FarmError("this farm renders with model 'tiny', not 'x'"), 422),
                          (ZeroDivisionError("division by zero"), 500)):
        client = TestClient(create_app(CoordinatorClient(Handle(error)), settings), raise_server_exceptions=False)
        response = client.post("/v1/jobs", json={"version": 1, "items": [S3_ITEM]})
        assert response.status_code == status, response.text
        assert not INTERNALS.search(response.text), response.text
        if status != 500:
            assert str(error) in response.json()["detail"]


@pytest.mark.parametrize("reserved", ["job", "spec", "manifest"])
def test_the_jobs_own_files_are_not_items(api, reserved):
    response = api.get(f"/v1/jobs/j-fake/items/{reserved}/video")
    assert response.status_code == 404 and "no item" in response.text


def test_echoed_values_in_errors_are_short(api):
    huge = "x" * 1_000_000
    responses = [
        api.get(f"/v1/jobs/{'j' * 5000}"),
        api.get(f"/v1/jobs/j-fake/items?limit={huge[:5000]}"),
        api.post("/v1/jobs", json={"version": 1, "items": [{**S3_ITEM, "prompt": huge}]}),
        api.post("/v1/jobs", json={"version": 1, "items": [{**S3_ITEM, huge: 1}]}),
    ]
    for response in responses:
        assert 400 <= response.status_code < 500, response.text[:300]
        assert len(response.content) < 8192, (response.status_code, len(response.content))
        json.loads(response.content)


def test_event_streams_past_the_per_client_limit_get_a_429(tmp_path):
    settings = ApiSettings(token=None, default_output="s3://renders/api", max_streams_per_client=1, max_streams=5)
    client = TestClient(create_app(Fake(), settings), raise_server_exceptions=False)
    with client.stream("GET", "/v1/jobs/j-fake/events") as first:
        assert first.status_code == 200
        second = client.get("/v1/jobs/j-fake/events")
        assert second.status_code == 429 and "FARM_API_MAX_STREAMS_PER_CLIENT" in second.json()["detail"]
        assert second.headers["retry-after"]
    assert client.get("/v1/jobs/j-nope/events").status_code == 404
