"""The HTTP API: a FastAPI app served by Ray Serve. It validates requests and forwards them to
the job coordinator actor; it holds no job state of its own.

Routes under /v1 need `Authorization: Bearer <FARM_API_TOKEN>` when that variable is set.
Limits (FARM_API_*): request body bytes, items per manifest, upload bytes and pixels, open event
streams. A submitted job writes only under the outputs the operator allows
(FARM_API_ALLOWED_OUTPUTS, default: the service's own default output), never into the state
folder. Bad input is a 4xx with every problem listed, never a 500; no response carries a
traceback, a process id, an address or a server path (errors are logged here instead, under the
id the response gives). Run it with `farm serve`, or with Ray Serve's own tooling:
`serve run farm.serve.app:app` (KubeRay's RayService uses the same import path).
"""


import asyncio
import hmac
import json
import logging
import uuid
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from farm import __version__
from farm.core.errors import (
    FarmError,
    ImageError,
    ItemCancelError,
    JobConflictError,
    ManifestError,
    ManifestIssue,
    QueueFullError,
    StorageError,
    TakeError,
    clip,
    excerpt,
    jsonable_excerpt,
)
from farm.core.job import FINAL_JOB_STATES, ITEM_STATES
from farm.core.ids import RESERVED_ITEM_IDS, is_safe_id
from farm.core.job import PostProgress
from farm.core.manifest import parse_manifest
from farm.media.deliverables import encoders_if_known
from farm.core.params import ASPECTS, PRESETS
from farm.serve.events import StatusFeed, StreamLimitError, StreamLimits
from farm.settings import ApiSettings, FarmSettings, absolute_location

log = logging.getLogger(__name__)

DETAIL_CHARS = 500  # an error's `detail` at most (a 1 MB value must not make a 1 MB answer)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


# --- response models (they make the OpenAPI document precise) ---------------------------------


class Accepted(BaseModel):
    id: str
    status_url: str


class JobStatus(BaseModel):
    id: str
    name: str
    state: str
    output: str
    model: str | None = None
    priority: int = 0
    items: int | None = None
    counts: dict[str, int] | None = None
    items_per_minute: float | None = None
    eta_seconds: float | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    message: str | None = None
    notify_url: str | None = None
    output_prefix: str | None = None
    held_by: str | None = None  # another coordinator runs the job (its lease holder), not the one asked
    lease_expires_at: float | None = None
    post: PostProgress | None = None  # deliverables, when the job has any
    picks: dict[str, str] | None = None  # a job with takes: an image's shared id -> the take chosen


class ItemCancelled(BaseModel):
    job_id: str
    item_id: str
    state: str  # cancelled, or cancelling (its render is being stopped; its job not started yet)
    job: JobStatus


class JobPage(BaseModel):
    jobs: list[JobStatus]
    next_cursor: str | None = None


class ItemPage(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: int | None = None


class Take(BaseModel):
    model_config = ConfigDict(extra="allow")  # `reason` and `message`, where the take failed

    id: str
    take: int
    seed: int
    state: str
    picked: bool


class Takes(BaseModel):
    item: str  # the takes' shared id
    takes: list[Take]
    picked: str | None = None  # the chosen take's id


class PickRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    take: int | str = Field(description="the take's number (1 for ITEM.take-1) or its id")

    @field_validator("take", mode="plain", json_schema_input_type=int | str)
    @classmethod
    def _number_or_id(cls, value):
        # One message for any other value (a union's would name each of its members); loose
        # bounds: the coordinator says what the job's takes are (1 to N, or their ids).
        if (type(value) is int and abs(value) <= 10**9) or (type(value) is str and 0 < len(value) <= 256):
            return value
        raise ValueError("give the take's number (1 for ITEM.take-1) or its id (at most 256 characters)")


class Problem(BaseModel):
    detail: str
    errors: list[dict[str, Any]] = Field(default_factory=list)


class CoordinatorClient:
    """The API's one way to the coordinator (`farm.runtime.service.CoordinatorClient`, which holds
    the Ray handle), its failures turned into HTTP answers. Tests fake this class, or the handle."""

    def __init__(self, handle=None, timeout_s: float | None = None, settings: FarmSettings | None = None):
        from farm.runtime.service import CoordinatorClient as RayCoordinatorClient

        self._client = RayCoordinatorClient(handle, timeout_s, settings)

    @property
    def timeout_s(self) -> float:
        return self._client.timeout_s

    async def call(self, method: str, *args, **kwargs):
        from farm.runtime.service import CoordinatorFailure, CoordinatorUnavailable

        try:
            return await self._client.call(method, *args, **kwargs)
        except CoordinatorUnavailable as error:
            raise HTTPException(503, str(error)) from None
        except CoordinatorFailure as error:
            raise InternalError(str(error)) from None


def clip_detail(text: str) -> str:
    return clip(text, DETAIL_CHARS)


class InternalError(Exception):
    """A failure that is the server's fault: logged in full, answered with an id only."""


def _problem(status: int, detail: str, errors: list[dict] | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"detail": clip_detail(detail), "errors": errors or []}
    return JSONResponse(status_code=status, content=body, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    """One JSON shape for every error, and no internals in any of them."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException):
        return _problem(error.status_code, str(error.detail), headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError):
        errors = [
            {
                "field": ".".join(str(part) for part in e.get("loc", ()) if part not in ("body", "query", "path")) or None,
                "message": clip_detail(str(e.get("msg", "invalid"))),
                "value": jsonable_excerpt(e.get("input")),
            }
            for e in error.errors()
        ]
        return _problem(422, "invalid request: " + "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, error: Exception):
        incident = uuid.uuid4().hex[:12]
        log.error("internal error %s: %s", incident, error, exc_info=not isinstance(error, InternalError))
        return _problem(500, f"internal error {incident}; the server's log has the details (search for the id)")


def create_app(
    client: CoordinatorClient | None = None,
    settings: ApiSettings | None = None,
    coordinator_settings: FarmSettings | None = None,
) -> FastAPI:
    """The FastAPI app. `settings`: the API's (FARM_API_*); `coordinator_settings`: the whole
    configuration, for a coordinator the app has to create (none running yet)."""
    settings = settings or (coordinator_settings.api if coordinator_settings else ApiSettings())
    client = client or CoordinatorClient(timeout_s=settings.call_timeout_s, settings=coordinator_settings)
    from farm.storage.config import UrlFetchConfig

    url_settings = coordinator_settings.url if coordinator_settings else UrlFetchConfig()  # webhooks, read once
    app = FastAPI(
        title="farm",
        version=__version__,
        description="A render farm for image-to-video generation: submit manifests, follow jobs, fetch videos.",
    )
    _install_error_handlers(app)
    streams = StreamLimits(per_client=settings.max_streams_per_client, total=settings.max_streams)

    async def public_status(job_id: str) -> dict | None:
        status = await client.call("status", job_id)
        return _status(status) if status is not None else None

    feed = StatusFeed(public_status, final_states=FINAL_JOB_STATES)
    allowed_outputs = settings.output_prefixes()  # canonical once: resolving them is file-system I/O

    def authorize(request: Request) -> None:
        if not settings.token:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])
    problems = {401: {"model": Problem}, 404: {"model": Problem}, 422: {"model": Problem}}

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise HTTPException(413, f"the body is over the {settings.max_body_bytes}-byte limit")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > settings.max_body_bytes:
                raise HTTPException(413, f"the body is over the {settings.max_body_bytes}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    def confine_output(spec) -> ManifestIssue | None:
        """Keep the job's writes under an allowed prefix (compared canonically); the spec then
        names its output canonically, so what was checked is what the workers open."""
        from farm.core.outputs import OutputRefused, check_allowed
        from farm.storage import canonical_output

        try:
            output = canonical_output(absolute_location(spec.output))
            check_allowed(output, allowed_outputs)
        except OutputRefused as refusal:
            return ManifestIssue(
                f"{refusal}; omit `output` to use this farm's default output ({settings.default_output}), "
                "or ask the operator to allow it (FARM_API_ALLOWED_OUTPUTS)",
                field="output",
                value=spec.output,
            )
        spec.output = output
        return None

    async def check_notify_url(spec) -> ManifestIssue | None:
        if not spec.notify_url:
            return None
        from farm.storage.inputs import check_url

        try:
            await asyncio.to_thread(check_url, spec.notify_url, url_settings)
        except FarmError as error:
            return ManifestIssue(str(error), field="notify_url", value=spec.notify_url)
        return None

    async def submit_spec(spec, manifest: tuple[str, bytes], dry_run: bool = False) -> JSONResponse | None:
        """Submit a validated job (`dry_run`: only check that it may run here; None if it may)."""
        if spec.total > settings.max_items:
            return _problem(422, f"the manifest has {spec.total} items; this farm accepts at most {settings.max_items}")
        issues = [issue for issue in (confine_output(spec), await check_notify_url(spec)) if issue is not None]
        if issues:
            return _problem(422, f"the job cannot run here: {', '.join(i.field for i in issues)}", [i.to_dict() for i in issues])
        if dry_run:
            return None
        try:
            entry = await client.call("submit", spec.to_dict(), manifest)
        except HTTPException:
            raise
        except QueueFullError as error:
            return _problem(429, str(error))
        except JobConflictError as error:
            return _problem(409, str(error))
        except FarmError as error:
            return _problem(422, str(error))
        return JSONResponse(status_code=202, content={"id": entry["id"], "status_url": f"/v1/jobs/{entry['id']}"})

    def parse(data: bytes, fmt: str):
        """Validate a submitted manifest. Local images only inside FARM_API_LOCAL_BASE (relative
        paths are relative to it), and they must exist now; a relative `output` is relative to
        the farm's default output. Run off the event loop: a big manifest takes seconds."""
        base = Path(settings.local_base) if settings.local_base else None
        return parse_manifest(
            data,
            fmt,  # type: ignore[arg-type]
            base_dir=base,
            default_name="job-" + uuid.uuid4().hex[:8],
            env_model=settings.model,
            local_images=False,
            check_files=base is not None,
            default_output=settings.default_output,
            output_base=settings.default_output,
            encoders=encoders_if_known() if b"deliverable" in data else None,
            source="request body",
        )

    @v1.post(
        "/jobs",
        status_code=202,
        response_model=Accepted,
        responses={**problems, 409: {"model": Problem}, 413: {"model": Problem}, 415: {"model": Problem}, 429: {"model": Problem}},
        openapi_extra={"requestBody": _manifest_body()},
    )
    async def submit_job(request: Request):
        """Submit a manifest (JSON, or YAML with Content-Type: application/yaml)."""
        body = await read_body(request)
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        fmt = "yaml" if kind in YAML_TYPES else "json"
        if kind not in YAML_TYPES and kind not in ("application/json", "text/json", ""):
            return _problem(415, f"content type {kind!r} is not accepted; send application/json or application/yaml")
        try:
            spec = await asyncio.to_thread(parse, body, fmt)
        except ManifestError as error:
            return _problem(422, f"invalid manifest: {len(error.issues)} error(s)", [i.to_dict() for i in error.issues])
        return await submit_spec(spec, (f"manifest.{'yaml' if fmt == 'yaml' else 'json'}", body))

    @v1.get("/jobs", response_model=JobPage, responses=problems)
    async def list_jobs(cursor: str | None = Query(None, max_length=64), limit: int = Query(50, ge=1, le=500)):
        page = await client.call("list_jobs", cursor, limit)
        return {"jobs": [_status(j) for j in page["jobs"]], "next_cursor": page["next_cursor"]}

    @v1.get("/jobs/{job_id}", response_model=JobStatus, responses=problems)
    async def job_status(job_id: str):
        status = await client.call("status", job_id)
        if status is None:
            raise HTTPException(404, f"no job {excerpt(job_id)}")
        return _status(status)

    @v1.get("/jobs/{job_id}/items", response_model=ItemPage, responses=problems)
    async def job_items(
        job_id: str,
        state: Literal[ITEM_STATES] | None = Query(None),  # type: ignore[valid-type]
        cursor: int | None = Query(None, ge=-1, le=10**9),
        limit: int = Query(100, ge=1, le=1000),
    ):
        page = await client.call("items", job_id, state, cursor, limit)
        if page is None:
            raise HTTPException(404, f"no job {excerpt(job_id)}")
        return page

    @v1.get("/jobs/{job_id}/events", responses={**problems, 429: {"model": Problem}})
    async def job_events(job_id: str, request: Request):
        """Server-sent events: `progress` on every change while the job runs, then one `end`
        (an `error` event if the coordinator cannot be reached; reconnect then)."""
        if await public_status(job_id) is None:
            raise HTTPException(404, f"no job {excerpt(job_id)}")
        who = request.client.host if request.client else "unknown"
        try:
            streams.acquire(who)
        except StreamLimitError as error:
            return _problem(429, error.message, headers={"Retry-After": "10"})

        async def stream():
            try:
                async for chunk in feed.follow(job_id):
                    yield chunk
            finally:
                streams.release(who)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @v1.delete("/jobs/{job_id}", status_code=202, response_model=JobStatus, responses=problems)
    async def cancel_job(job_id: str):
        """Cancel a job: queued items at once, rendering ones stopped at their next denoise step;
        committed results stay. `state` says `cancelling` until the job has ended."""
        status = await client.call("cancel", job_id)
        if status is None:
            raise HTTPException(404, f"no job {excerpt(job_id)}")
        return _status(status)

    @v1.delete("/jobs/{job_id}/items/{item_id}", status_code=202, response_model=ItemCancelled,
               responses={**problems, 409: {"model": Problem}, 503: {"model": Problem}})
    async def cancel_item(job_id: str, item_id: str):
        """Cancel one item: queued, at once (`cancelled`); rendering, stopped at its next denoise
        step (`cancelling`). 409 for an item that has ended or is committing (its result stays)."""
        if not is_safe_id(item_id) or item_id in RESERVED_ITEM_IDS:
            return _problem(404, f"no item {excerpt(item_id)}",
                            [{"field": "item", "value": jsonable_excerpt(item_id), "message": "not an item id"}])
        try:
            found = await client.call("cancel_item", job_id, item_id)
        except ItemCancelError as error:
            return _problem(error.status, str(error), [error.to_dict()])
        except StorageError as error:  # its text may name a server path: logged, not answered
            log.warning("cancel of item %s of job %s: %s", item_id, job_id, error)
            return _problem(503, "the job's output cannot be read now; retry later", headers={"Retry-After": "10"})
        if found is None:
            raise HTTPException(404, f"no job {excerpt(job_id)}")
        return {**found, "job": _status(found["job"])}

    async def take_call(method: str, job_id: str, item_id: str, *args):
        """A takes route's call: 404 for an unknown job or item, 422 for what is not a take of it."""
        if not is_safe_id(item_id) or item_id in RESERVED_ITEM_IDS:
            return _problem(404, f"no item {excerpt(item_id)}",
                            [{"field": "item", "value": jsonable_excerpt(item_id), "message": "not an item id"}])
        try:
            found = await client.call(method, job_id, item_id, *args)
        except TakeError as error:
            return _problem(error.status, str(error), [error.to_dict()])
        except JobConflictError as error:
            return _problem(409, str(error))
        except StorageError as error:  # its text may name a server path: logged, not answered
            log.warning("%s of job %s: %s", method, job_id, error)
            return _problem(503, "the job's output cannot be read or written now; retry later",
                            headers={"Retry-After": "10"})
        if found is None:
            raise HTTPException(404, f"no job {excerpt(job_id)}")
        return found

    @v1.get("/jobs/{job_id}/items/{item_id}/takes", response_model=Takes, responses=problems)
    async def item_takes(job_id: str, item_id: str):
        """An image's takes (`item_id`: their shared id, or one take's id), with their seeds and
        states, and the one picked."""
        return await take_call("takes", job_id, item_id)

    @v1.post("/jobs/{job_id}/items/{item_id}/pick", response_model=Takes,
             responses={**problems, 409: {"model": Problem}, 503: {"model": Problem}})
    async def pick_take(job_id: str, item_id: str, body: PickRequest):
        """Choose one take of an image (`{"take": 2}` or `{"take": "ITEM.take-2"}`); answers the
        takes listing. Kept in job.json's `picks`; `deliverables_for: picked` makes deliverables of
        picked takes only."""
        return await take_call("pick", job_id, item_id, body.take)

    @v1.get("/jobs/{job_id}/items/{item_id}/video", responses={**problems, 307: {"description": "redirect to the video"}})
    async def item_video(job_id: str, item_id: str, expires: int | None = Query(None, ge=1, le=7 * 24 * 3600)):
        if not is_safe_id(item_id) or item_id in RESERVED_ITEM_IDS:  # job.json & co. are not items
            raise HTTPException(404, f"no item {excerpt(item_id)}")
        found = await client.call("video", job_id, item_id, expires)
        if found is None:
            raise HTTPException(404, f"no job {excerpt(job_id)}")
        if not found["committed"]:
            raise HTTPException(404, f"item {item_id!r} has no committed video (yet)")
        if "url" in found:
            return RedirectResponse(found["url"], status_code=307)
        return FileResponse(found["path"], media_type="video/mp4", filename=f"{item_id}.mp4")

    @v1.post("/renders", status_code=202, response_model=Accepted, responses={**problems, 413: {"model": Problem}})
    async def render_upload(
        image: UploadFile = File(...),
        prompt: str = Form(..., min_length=1, max_length=2000),
        preset: Literal[tuple(PRESETS)] | None = Form(None),  # type: ignore[valid-type]
        resolution: str | None = Form(None, max_length=8),
        aspect: Literal[ASPECTS] | None = Form(None),  # type: ignore[valid-type]
        frames: int | None = Form(None, ge=-(10**6), le=10**6),
        fps: int | None = Form(None, ge=-(10**6), le=10**6),
        steps: int | None = Form(None, ge=-(10**6), le=10**6),
        guidance_scale: float | None = Form(None, ge=-(10**6), le=10**6),
        negative_prompt: str | None = Form(None, max_length=2000),
        seed: int | None = Form(None, ge=-(2**63), le=2**63),
    ):
        """One image and its parameters, as multipart/form-data: a one-item job."""
        data = await image.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            return _problem(413, f"the image is over the {settings.max_upload_bytes}-byte limit")
        from farm.media.images import ImageLimits, prepare_image

        name = image.filename or "upload"
        try:
            limits = ImageLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_upload_pixels)
            prepared = await asyncio.to_thread(prepare_image, data, 64, 64, name="upload", limits=limits)
        except ImageError as error:
            issue = ManifestIssue(str(error).replace("upload", name, 1), field="image", value=name)
            return _problem(422, "the image cannot be used", [issue.to_dict()])
        values = {
            "preset": preset, "resolution": resolution, "aspect": aspect, "frames": frames, "fps": fps,
            "steps": steps, "guidance_scale": guidance_scale, "negative_prompt": negative_prompt, "seed": seed,
        }
        item = {"id": "render", "image": "", "prompt": prompt, **{k: v for k, v in values.items() if v is not None}}
        job_name = "render-" + uuid.uuid4().hex[:10]
        output = settings.default_output
        try:
            # Validate the parameters first, with a placeholder image reference.
            parse(json.dumps({"version": 1, "name": job_name, "items": [{**item, "image": "s3://check/x"}]}).encode(), "json")
        except ManifestError as error:
            return _problem(422, "invalid parameters", [i.to_dict() for i in error.issues])
        extension = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[prepared.source_format]
        location = await asyncio.to_thread(_store_upload, output, f"{job_name}/inputs/render.{extension}", data)
        document = {"version": 1, "name": job_name, "output": output, "items": [{**item, "image": location}]}
        spec = parse_manifest(
            json.dumps(document).encode(), "json", base_dir=Path("/"), env_model=settings.model, source="upload",
        )
        return await submit_spec(spec, ("manifest.json", json.dumps(document).encode()))

    app.include_router(v1)
    # The web UI at / (farm.serve.ui): the same token, as a session cookie; submits through the
    # same validation and limits as POST /v1/jobs.
    from farm.serve.ui import mount_ui

    mount_ui(app, client, settings, parse=parse, submit_spec=submit_spec)

    @app.get("/healthz")
    async def healthz():
        """Liveness, with the cluster's and the storage's reachability."""
        try:
            health = await asyncio.wait_for(client.call("health"), timeout=10)
        except (HTTPException, asyncio.TimeoutError):
            return JSONResponse(status_code=503, content={"ok": False, "coordinator": False})
        content = {**health, "coordinator": True, "event_streams": streams.open, "watched_jobs": feed.polled_jobs}
        return JSONResponse(status_code=200 if health["ok"] else 503, content=content)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        """Prometheus text format: the farm's series, counted by the coordinator."""
        from prometheus_client import CONTENT_TYPE_LATEST

        text = await client.call("metrics_text")
        return PlainTextResponse(text.decode(), media_type=CONTENT_TYPE_LATEST)

    return app


def _manifest_body() -> dict:
    """The request body of POST /v1/jobs in the OpenAPI document: manifest v1 as JSON or YAML."""
    from farm.core.manifest import ItemSpec, ManifestHeader

    schema = ManifestHeader.model_json_schema(ref_template="#/$defs/{model}")
    schema["properties"]["items"] = {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/ItemSpec"}}
    schema.setdefault("$defs", {})["ItemSpec"] = ItemSpec.model_json_schema(ref_template="#/$defs/{model}")
    nested = schema["$defs"]["ItemSpec"].pop("$defs", {})
    schema["$defs"].update(nested)
    return {
        "required": True,
        "content": {
            "application/json": {"schema": schema},
            "application/yaml": {"schema": {"type": "string", "description": "the same manifest, in YAML"}},
        },
    }


def _store_upload(output: str, key: str, data: bytes) -> str:
    from farm.storage import open_store

    store = open_store(output)
    store.put_bytes(key, data, "application/octet-stream")
    return store.location(key)


def _status(status: dict) -> dict:
    data = {k: v for k, v in status.items() if k in JobStatus.model_fields}
    data["output_prefix"] = f"{status['output'].rstrip('/')}/{status['name']}/"
    return data


def build_app(args: dict | None = None):
    """Application builder for `serve run farm.serve.app:build_app` and RayService configs;
    `farm serve` hands its settings over as `{"settings": FarmSettings}`."""
    from farm.runtime.service import serve_deployment

    return serve_deployment((args or {}).get("settings")).bind()


def __getattr__(name: str):  # `farm.serve.app:app` without building it at import time
    if name == "app":
        return build_app()
    raise AttributeError(name)

