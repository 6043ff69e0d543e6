"""DELETE /v1/jobs/{job}/items/{item} and DELETE /v1/jobs/{job} against the FastAPI app in
process with a fake coordinator: the answers (cancelled, cancelling), 404 for an unknown job or
item, 409 for an item that has ended, and no internals in any of them."""

import pytest
from fastapi.testclient import TestClient

from farm.core.errors import ItemCancelError
from farm.serve.app import ApiSettings, create_app

JOB = {"id": "j-0123456789ab", "name": "spring", "state": "cancelling", "output": "s3://renders/api",
       "counts": {"total": 3, "succeeded": 1, "running": 1, "cancelled": 1}, "cancel_requested": True}


class Fake:
    def __init__(self):
        self.calls = []

    async def call(self, method, *args):
        self.calls.append((method, *args))
        job_id = args[0]
        if job_id != JOB["id"]:
            return None
        if method == "cancel":
            return JOB
        if method == "cancel_item":
            item = args[1]
            if item == "done":
                raise ItemCancelError(f"item 'done' of job {job_id} has already ended (succeeded); nothing to cancel",
                                      409, item, "succeeded")
            if item == "nope":
                raise ItemCancelError(f"job {job_id} has no item 'nope'", 404, item)
            return {"job_id": job_id, "item_id": item, "state": "cancelling" if item == "busy" else "cancelled",
                    "job": JOB}
        raise AssertionError(method)


@pytest.fixture
def api():
    fake = Fake()
    client = TestClient(create_app(fake, ApiSettings(token="t0ken", default_output="s3://renders/api")),
                        raise_server_exceptions=False)
    client.headers["Authorization"] = "Bearer t0ken"
    client.fake = fake
    return client


def test_a_job_cancel_answers_cancelling_until_the_job_has_ended(api):
    response = api.delete(f"/v1/jobs/{JOB['id']}")
    assert response.status_code == 202
    body = response.json()
    assert body["state"] == "cancelling" and body["counts"]["cancelled"] == 1
    assert "cancel_requested" not in body
    assert api.delete("/v1/jobs/j-000000000000").status_code == 404


@pytest.mark.parametrize("item, state", [("queued", "cancelled"), ("busy", "cancelling")])
def test_an_item_cancel_says_what_became_of_the_item_and_the_job(api, item, state):
    response = api.delete(f"/v1/jobs/{JOB['id']}/items/{item}")
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["item_id"], body["state"]) == (item, state)
    assert body["job"]["state"] == "cancelling" and body["job"]["output_prefix"] == "s3://renders/api/spring/"
    assert api.fake.calls[-1] == ("cancel_item", JOB["id"], item)


def test_an_item_that_has_ended_is_a_409_naming_it_and_its_state(api):
    response = api.delete(f"/v1/jobs/{JOB['id']}/items/done")
    assert response.status_code == 409
    body = response.json()
    assert "already ended (succeeded)" in body["detail"]
    assert body["errors"] == [{"field": "item", "value": "done", "message": body["detail"], "state": "succeeded"}]


@pytest.mark.parametrize("path", [f"/v1/jobs/{JOB['id']}/items/nope", "/v1/jobs/j-000000000000/items/a",
                                  f"/v1/jobs/{JOB['id']}/items/job", f"/v1/jobs/{JOB['id']}/items/..%2Fx"])
def test_an_unknown_job_or_item_is_a_404(api, path):
    response = api.delete(path)
    assert response.status_code == 404, response.text
    assert "Traceback" not in response.text
