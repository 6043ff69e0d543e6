"""Bad HTTP requests (see tests/bad_inputs.py), against the FastAPI app in process with a fake
coordinator: each gets a 4xx that says why."""

import pytest
from bad_inputs import HTTP


class FakeCoordinator:
    """Stands in for the coordinator actor: the HTTP layer's validation is what is tested here."""

    def __init__(self):
        self.submitted = []

    async def call(self, method, *args, **kwargs):
        if method == "submit":
            self.submitted.append(args[0])
            return {"id": "j-fake"}
        if method in ("status", "cancel", "items", "video"):
            return None
        if method == "list_jobs":
            return {"jobs": [], "next_cursor": None}
        if method == "health":
            return {"ok": True}
        if method == "metrics_text":
            return b""
        raise AssertionError(method)


@pytest.fixture(scope="module")
def api():
    from fastapi.testclient import TestClient

    from farm.serve.app import ApiSettings, create_app

    settings = ApiSettings(token="t0ken", max_body_bytes=2 * 1024 * 1024, max_items=100, max_upload_bytes=1024 * 1024, max_upload_pixels=1_000_000)
    fake = FakeCoordinator()
    client = TestClient(create_app(fake, settings), raise_server_exceptions=False)
    client.headers["Authorization"] = "Bearer t0ken"
    client.fake = fake
    return client


@pytest.mark.parametrize("case, method, path, kwargs, status, fragment", HTTP, ids=[h[0] for h in HTTP])
def test_bad_requests_get_a_4xx_that_says_why(api, case, method, path, kwargs, status, fragment):
    response = api.request(method, path, **kwargs)
    assert response.status_code == status, (case, response.status_code, response.text[:300])
    assert fragment in response.text, response.text[:500]
