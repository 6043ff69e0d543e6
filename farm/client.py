"""The remote CLI's HTTP client: submit manifests to a `farm serve` endpoint and follow jobs.

Endpoint from `--endpoint` or FARM_ENDPOINT, token from FARM_API_TOKEN. JSON and YAML
manifests are sent as they are; JSONL and CSV are turned into a JSON manifest first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import requests

from farm.core.errors import FarmError
from farm.core.manifest import item_rows

DEFAULT_ENDPOINT = "http://127.0.0.1:8000"


class ApiError(FarmError):
    def __init__(self, status: int, detail: str, errors: list[dict] | None = None):
        self.status = status
        self.errors = errors or []
        lines = [f"HTTP {status}: {detail}"] + [
            f"  - {_where(e)}: {e.get('message')}" for e in self.errors
        ]
        super().__init__("\n".join(lines))


def _where(error: dict) -> str:
    parts = []
    if error.get("item_index") is not None:
        parts.append(f"items[{error['item_index']}]" + (f" (id {error['item_id']!r})" if error.get("item_id") else ""))
    if error.get("field"):
        parts.append(f"field {error['field']!r}")
    return ", ".join(parts) or "manifest"


class FarmClient:
    """A farm service's HTTP API, for the remote CLI and scripts. Unset arguments come from
    `settings` (farm.settings.ClientSettings: FARM_ENDPOINT, FARM_API_TOKEN; read from the
    environment when none are given)."""

    def __init__(self, endpoint: str | None = None, token: str | None = None, timeout_s: float = 60.0, settings=None):
        from farm.settings import ClientSettings

        settings = settings or ClientSettings()
        self.endpoint = (endpoint or settings.endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self.token = token if token is not None else settings.token
        self.timeout_s = timeout_s
        self.session = requests.Session()
        if self.token:
            self.session.headers["Authorization"] = f"Bearer {self.token}"

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout_s)
        try:
            response = self.session.request(method, self.endpoint + path, **kwargs)
        except requests.RequestException as exc:
            raise FarmError(f"cannot reach {self.endpoint}: {type(exc).__name__}; check --endpoint / FARM_ENDPOINT") from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"detail": response.text[:500]}
            detail = body.get("detail")
            if isinstance(detail, list):  # FastAPI's own validation errors
                detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
            raise ApiError(response.status_code, str(detail), body.get("errors"))
        return response

    def submit(self, manifest: Path) -> dict:
        suffix = manifest.suffix.lower()
        data = manifest.read_bytes()
        if suffix in (".yaml", ".yml"):
            headers = {"Content-Type": "application/yaml"}
        elif suffix == ".json":
            headers = {"Content-Type": "application/json"}
        elif suffix in (".jsonl", ".ndjson", ".csv"):
            items = item_rows(data.decode("utf-8-sig"), "csv" if suffix == ".csv" else "jsonl")
            data = json.dumps({"version": 1, "name": manifest.stem, "items": items}).encode()
            headers = {"Content-Type": "application/json"}
        else:
            raise FarmError(f"{manifest}: unknown manifest extension {suffix!r}; use .yaml, .json, .jsonl or .csv")
        return self._request("POST", "/v1/jobs", data=data, headers=headers).json()

    def status(self, job_id: str) -> dict:
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def jobs(self, limit: int = 50, cursor: str | None = None) -> dict:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        return self._request("GET", "/v1/jobs", params=params).json()

    def cancel(self, job_id: str) -> dict:
        """Cancel a job; its status after (`cancelling` until it has ended)."""
        return self._request("DELETE", f"/v1/jobs/{job_id}").json()

    def cancel_item(self, job_id: str, item_id: str) -> dict:
        """Cancel one item: {job_id, item_id, state (cancelled or cancelling), job}. ApiError 409
        for an item that has ended or is committing."""
        return self._request("DELETE", f"/v1/jobs/{job_id}/items/{quote(item_id, safe='')}").json()

    def takes(self, job_id: str, item_id: str) -> dict:
        """An image's takes (`item_id`: their shared id or one take's id) and the one picked."""
        return self._request("GET", f"/v1/jobs/{job_id}/items/{quote(item_id, safe='')}/takes").json()

    def pick(self, job_id: str, item_id: str, take: int | str) -> dict:
        """Choose take `take` (K from 1, or the take's id) of an image; the takes listing after."""
        return self._request("POST", f"/v1/jobs/{job_id}/items/{quote(item_id, safe='')}/pick", json={"take": take}).json()

    def events(self, job_id: str) -> Iterator[tuple[str, dict]]:
        """(event, status) pairs from the server-sent event stream, until the job ends."""
        response = self._request("GET", f"/v1/jobs/{job_id}/events", stream=True, timeout=(self.timeout_s, None))
        event = "message"
        for raw in response.iter_lines(decode_unicode=True):
            if raw.startswith("event:"):
                event = raw.split(":", 1)[1].strip()
            elif raw.startswith("data:"):
                data = json.loads(raw.split(":", 1)[1])
                if event == "error":  # the server lost the job's status; the job itself goes on
                    raise FarmError(f"{data.get('detail')}; follow the job again with `farm status {job_id}`")
                yield event, data
                if event == "end":
                    return
