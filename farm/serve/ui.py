"""The web UI, served by the API's own app at / (same process, same port, same token).

Server-rendered pages (Jinja2, autoescaped: prompts and ids are hostile input) in
farm/serve/templates, with htmx (farm/serve/static, vendored: no CDN, no build step) polling
small fragments for live progress. Pages: Jobs (/), Job (/jobs/ID: live progress, the item grid
with filters and search, an item's video and sidecar, re-render failed, download), Takes
(/jobs/ID/takes/ITEM), Submit (/submit), Cluster (/cluster).

Access: the login form takes FARM_API_TOKEN and sets a signed session cookie (HttpOnly,
SameSite=Strict, Secure over https; farm.serve.ui_auth); an `Authorization: Bearer` header works
too. Without either, a page answers with the login page (a redirect), a fragment or a file with
401: never data. Every state-changing form carries a CSRF token (htmx sends it as a header) and
must come from this site (Origin, Sec-Fetch-Site). Static files are public (no data in them).
"""

# No `from __future__ import annotations` here: Ray Serve pickles the routes by value, and
# FastAPI could no longer resolve `request: Request` from a string annotation in the replica.
import asyncio
import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from farm.core.errors import ItemCancelError, JobConflictError, ManifestError, StorageError, TakeError
from farm.core.ids import RESERVED_ITEM_IDS, is_safe_id
from farm.core.params import PRESETS, RESOLUTIONS
from farm.serve import ui_files, ui_submit, ui_views
from farm.serve.app import _status
from farm.serve.ui_auth import CSRF_HEADER, LOGIN_COOKIE, SESSION_COOKIE, UiAuth, safe_next, same_origin

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC_TYPES = {"htmx.min.js": "text/javascript", "ui.js": "text/javascript", "ui.css": "text/css",
                "favicon.svg": "image/svg+xml"}
GRID_PAGE = 48  # items per page of the job page's grid
JOBS_PAGE = 50
POLL_S = 2  # how often a running job's fragments refresh
# Scripts and styles from this site only (no inline script: an injected one cannot run); media
# also from the presigned URLs an S3 output redirects to.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' https: http:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")


@functools.lru_cache(maxsize=1)
def templates():
    """The Jinja2 environment, made once per process (not pickled with the app by Ray Serve)."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(duration=ui_views.duration, ago=ui_views.ago, clock=ui_views.clock, size=ui_views.size)
    env.globals.update(progress=ui_views.progress, is_final=ui_views.is_final, advice=ui_views.advice,
                       filters=ui_views.ITEM_FILTERS, presets=list(PRESETS), resolutions=list(RESOLUTIONS),
                       committed=ui_views.COMMITTED_STATES, poll_s=POLL_S, quote=quote)
    return env


class UiDenied(Exception):
    """Not signed in (or a refused form): answered with `response` (login redirect, 401, 403)."""

    def __init__(self, response: Response):
        self.response = response


@dataclass
class Session:
    """Who is asking: a browser session (its nonce gives the CSRF token) or a bearer client."""

    nonce: str | None
    csrf: str = ""
    new_cookie: str | None = None  # an open farm's first visit: the session cookie to set


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"


def _hx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def _harden(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    # Not no-referrer: with it a browser sends `Origin: null` on this site's own forms. The
    # presigned S3 URLs a video redirects to are another origin, so they get no referrer.
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def mount_ui(app: FastAPI, client, settings, *, parse, submit_spec) -> None:
    """Add the UI's routes to the API's app. `client`: the coordinator client; `settings`: the
    API's; `parse` and `submit_spec`: the API's manifest validation and submission."""
    auth = UiAuth(settings.token)
    ui = APIRouter(include_in_schema=False)

    @app.exception_handler(UiDenied)
    async def denied(_request: Request, error: UiDenied):
        return _harden(error.response)

    # --- access -------------------------------------------------------------------------------

    def session_of(request: Request) -> Session | None:
        if auth.bearer_ok(request.headers.get("authorization")):
            return Session(nonce=None)
        nonce = auth.session_nonce(request.cookies.get(SESSION_COOKIE))
        if nonce is not None:
            return Session(nonce, auth.csrf_token(nonce))
        if auth.open:  # no token configured: a session for anyone (CSRF still checked)
            cookie = auth.new_session()
            nonce = auth.session_nonce(cookie)
            return Session(nonce, auth.csrf_token(nonce), new_cookie=cookie)
        return None

    def page_session(request: Request) -> Session:
        """A page: without a session, the login page (and back here after it)."""
        session = session_of(request)
        if session is None:
            if _hx(request):
                raise UiDenied(Response(status_code=401, headers={"HX-Redirect": "/login"}))
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise UiDenied(RedirectResponse("/login?" + urlencode({"next": target}), status_code=303))
        return session

    def file_session(request: Request) -> Session:
        """A file (thumbnail, video, sidecar, download): 401 without a session, never a page."""
        session = session_of(request)
        if session is None:
            raise UiDenied(PlainTextResponse("sign in first (or send Authorization: Bearer TOKEN)", status_code=401,
                                             headers={"WWW-Authenticate": "Bearer"}))
        return session

    async def form_session(request: Request) -> Session:
        """A state-changing form: a session, from this site, with its CSRF token (a bearer
        client needs none: browsers never add that header on their own)."""
        session = session_of(request)
        if session is None:
            raise UiDenied(PlainTextResponse("sign in first", status_code=401))
        if session.nonce is None:
            return session
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise UiDenied(PlainTextResponse(f"the form is over the {settings.max_body_bytes}-byte limit", status_code=413))
        if not same_origin(request.headers, request.headers.get("host")):
            raise UiDenied(PlainTextResponse("cross-site request refused", status_code=403))
        given = request.headers.get(CSRF_HEADER)
        if given is None:
            form = await request.form(max_files=settings.max_items, max_fields=2000,
                                      max_part_size=settings.max_body_bytes)
            given = form.get("csrf")
        if not isinstance(given, str) or not auth.csrf_ok(session.nonce, given):
            raise UiDenied(PlainTextResponse("the form's CSRF token is missing or wrong: reload the page and try again",
                                             status_code=403))
        return session

    def render(request: Request, session: Session | None, template: str, status: int = 200,
               headers: dict | None = None, **context: Any) -> HTMLResponse:
        html = templates().get_template(template).render(
            request=request, session=session, csrf=session.csrf if session else "", path=request.url.path,
            signed_in=session is not None and not auth.open, **context)
        response = HTMLResponse(html, status_code=status, headers=headers)
        if session is not None and session.new_cookie:
            _set_session(request, response, session.new_cookie)
        return _harden(response)

    def _set_session(request: Request, response: Response, value: str) -> None:
        response.set_cookie(SESSION_COOKIE, value, max_age=int(auth.ttl_s), httponly=True, samesite="strict",
                            secure=_secure(request), path="/")

    def go(request: Request, target: str) -> Response:
        """After a form: htmx follows HX-Redirect, a plain form the 303."""
        if _hx(request):
            return _harden(Response(status_code=204, headers={"HX-Redirect": target}))
        return _harden(RedirectResponse(target, status_code=303))

    async def job_or_404(job_id: str) -> dict:
        status = await client.call("status", job_id)
        if status is None:
            raise HTTPException(404, "no such job")
        return _status(status)  # what GET /v1/jobs/ID shows (no internal fields), with output_prefix

    def check_item(item_id: str) -> None:
        if not is_safe_id(item_id) or item_id in RESERVED_ITEM_IDS:
            raise HTTPException(404, "no such item")

    # --- login ----------------------------------------------------------------------------------

    @ui.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str = "/"):
        cookie, form_value = auth.login_pair()
        response = render(request, None, "login.html", next=safe_next(next), login_csrf=form_value, error=None)
        response.set_cookie(LOGIN_COOKIE, cookie, max_age=3600, httponly=True, samesite="strict",
                            secure=_secure(request), path="/login")
        return response

    @ui.post("/login")
    async def login(request: Request):
        form = await request.form(max_files=0, max_fields=10, max_part_size=10_000)
        target = safe_next(form.get("next") if isinstance(form.get("next"), str) else None)
        if not same_origin(request.headers, request.headers.get("host")):
            return _harden(PlainTextResponse("cross-site request refused", status_code=403))
        if not auth.login_ok(request.cookies.get(LOGIN_COOKIE), form.get("csrf") if isinstance(form.get("csrf"), str) else None):
            return _harden(PlainTextResponse("the login form expired: open /login again", status_code=403))
        token = form.get("token")
        if auth.open or not isinstance(token, str) or not auth.token_ok(token):
            if auth.open:
                return go(request, target)
            await asyncio.sleep(0.5)  # a little friction for guessing
            cookie, form_value = auth.login_pair()
            response = render(request, None, "login.html", status=401, next=target, login_csrf=form_value,
                              error="That is not this farm's token (FARM_API_TOKEN).")
            response.set_cookie(LOGIN_COOKIE, cookie, max_age=3600, httponly=True, samesite="strict",
                                secure=_secure(request), path="/login")
            return response
        response = RedirectResponse(target, status_code=303)
        _set_session(request, response, auth.new_session())
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return _harden(response)

    @ui.post("/logout")
    async def logout(request: Request, session: Session = Depends(form_session)):
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return _harden(response)

    @ui.get("/static/{name}")
    async def static(name: str):
        if name not in STATIC_TYPES:
            raise HTTPException(404, "no such file")
        return FileResponse(HERE / "static" / name, media_type=STATIC_TYPES[name],
                            headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})

    @ui.get("/favicon.ico")
    async def favicon():
        return FileResponse(HERE / "static" / "favicon.svg", media_type="image/svg+xml")

    # --- jobs -----------------------------------------------------------------------------------

    async def jobs_context(cursor: str | None) -> dict:
        page = await client.call("list_jobs", cursor, JOBS_PAGE)
        return {"jobs": [_status(job) for job in page["jobs"]], "next_cursor": page["next_cursor"], "cursor": cursor, "now": time.time()}

    @ui.get("/", response_class=HTMLResponse)
    async def jobs_page(request: Request, cursor: str | None = None, session: Session = Depends(page_session)):
        return render(request, session, "jobs.html", **await jobs_context(cursor))

    @ui.get("/fragments/jobs", response_class=HTMLResponse)
    async def jobs_fragment(request: Request, cursor: str | None = None, session: Session = Depends(page_session)):
        return render(request, session, "_jobs_table.html", **await jobs_context(cursor))

    @ui.post("/jobs/{job_id}/cancel")
    async def cancel(request: Request, job_id: str, session: Session = Depends(form_session)):
        if await client.call("cancel", job_id) is None:
            raise HTTPException(404, "no such job")
        if _hx(request):  # the polling fragments refresh at once
            return _harden(Response(status_code=204, headers={"HX-Trigger": "farm-refresh"}))
        return go(request, f"/jobs/{quote(job_id)}")

    @ui.post("/jobs/{job_id}/items/{item_id}/cancel")
    async def cancel_item(request: Request, job_id: str, item_id: str, session: Session = Depends(form_session)):
        """Stop one item: queued, dropped; rendering, stopped at its next denoise step."""
        try:
            answer = await client.call("cancel_item", job_id, item_id)
        except ItemCancelError as error:  # ended or committing: its result stands
            raise HTTPException(error.status, str(error)) from None
        if answer is None:
            raise HTTPException(404, "no such job")
        if _hx(request):
            return _harden(Response(status_code=204, headers={"HX-Trigger": "farm-refresh"}))
        return go(request, f"/jobs/{quote(job_id)}?{urlencode({'item': item_id})}")

    # --- one job --------------------------------------------------------------------------------

    def grid_cursor(cursor: str | None) -> int | None:
        return int(cursor) if cursor and cursor.lstrip("-").isdigit() and len(cursor) < 12 else None

    def grid_query(state: str | None, q: str | None) -> tuple[str | None, str]:
        state = state if state in ui_views.ITEM_FILTERS else None
        return state, (q or "").strip()[:200]

    async def grid_context(job_id: str, status: dict, state: str | None, q: str, cursor: int | None,
                           trail: str) -> dict:
        """One page of the grid. `trail`: the cursors of the pages before it ("f": the first), so
        that Previous works with any filter (a cursor is the index of a page's last item)."""
        page = await client.call("ui_items", job_id, state, cursor, GRID_PAGE, q or None) or {}
        back = [part for part in trail.split(",") if part] if trail else []
        params = {"state": state or "", "q": q}
        next_cursor, matches = page.get("next_cursor"), page.get("matches", 0)
        here = "f" if cursor is None else str(cursor)
        queries = {"self": urlencode({**params, **({"cursor": cursor} if cursor is not None else {}), "trail": trail})}
        if next_cursor is not None:
            queries["next"] = urlencode({**params, "cursor": next_cursor, "trail": ",".join([*back, here])})
        if back:
            queries["prev"] = urlencode({**params, **({"cursor": back[-1]} if back[-1] != "f" else {}),
                                         "trail": ",".join(back[:-1])})
        return {
            "rows": page.get("items", []), "matches": matches, "state": state or "", "q": q,
            "page_number": len(back) + 1, "pages": max(1, -(-matches // GRID_PAGE)), "queries": queries,
            "live": not ui_views.is_final(status),
        }

    @ui.get("/jobs/{job_id}", response_class=HTMLResponse)
    async def job_page(request: Request, job_id: str, state: str | None = None, q: str | None = None,
                       cursor: str | None = None, trail: str = "", session: Session = Depends(page_session)):
        status = await job_or_404(job_id)
        state, q = grid_query(state, q)
        grid = await grid_context(job_id, status, state, q, grid_cursor(cursor), trail[:8000])
        return render(request, session, "job.html", job=status, now=time.time(), grid=grid)

    @ui.get("/jobs/{job_id}/summary", response_class=HTMLResponse)
    async def job_summary(request: Request, job_id: str, session: Session = Depends(page_session)):
        return render(request, session, "_job_summary.html", job=await job_or_404(job_id), now=time.time())

    @ui.get("/jobs/{job_id}/grid", response_class=HTMLResponse)
    async def job_grid(request: Request, job_id: str, state: str | None = None, q: str | None = None,
                       cursor: str | None = None, trail: str = "", session: Session = Depends(page_session)):
        status = await job_or_404(job_id)
        state, q = grid_query(state, q)
        grid = await grid_context(job_id, status, state, q, grid_cursor(cursor), trail[:8000])
        return render(request, session, "_grid.html", job=status, grid=grid)

    @ui.get("/jobs/{job_id}/items/{item_id}", response_class=HTMLResponse)
    async def item_panel(request: Request, job_id: str, item_id: str, session: Session = Depends(page_session)):
        check_item(item_id)
        status = await job_or_404(job_id)
        row = await client.call("ui_item", job_id, item_id)
        if row is None:
            raise HTTPException(404, "no such item")
        sidecar = None
        if row["state"] in ui_views.COMMITTED_STATES:
            try:
                sidecar = await asyncio.to_thread(ui_files.sidecar, status["output"], status["name"], item_id)
            except StorageError as error:
                log.warning("sidecar of %s/%s not read: %s", job_id, item_id, error)
        view = ui_views.sidecar_view(sidecar) if sidecar else None
        context = {"job": status, "item": row, "sidecar": sidecar, "view": view}
        if _hx(request):
            return render(request, session, "_item.html", **context)
        return render(request, session, "item.html", **context)

    @ui.get("/jobs/{job_id}/items/{item_id}/thumb.jpg")
    async def thumbnail(job_id: str, item_id: str, session: Session = Depends(file_session)):
        check_item(item_id)
        status = await job_or_404(job_id)
        try:
            data = await asyncio.to_thread(ui_files.item_file, status["output"], status["name"], item_id, "thumbnail")
        except StorageError as error:
            log.warning("thumbnail of %s/%s not read: %s", job_id, item_id, error)
            raise HTTPException(503, "the job's output cannot be read now") from None
        if data is None:
            raise HTTPException(404, "no thumbnail (yet)")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300",
                                                                  "X-Content-Type-Options": "nosniff"})

    @ui.get("/jobs/{job_id}/items/{item_id}/sidecar.json")
    async def sidecar_file(job_id: str, item_id: str, session: Session = Depends(file_session)):
        check_item(item_id)
        status = await job_or_404(job_id)
        data = await asyncio.to_thread(ui_files.sidecar, status["output"], status["name"], item_id)
        if data is None:
            raise HTTPException(404, "no committed sidecar")
        return Response(json.dumps(data, indent=1), media_type="application/json",
                        headers={"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"})

    @ui.get("/jobs/{job_id}/items/{item_id}/video.mp4")
    async def video(job_id: str, item_id: str, session: Session = Depends(file_session)):
        check_item(item_id)
        found = await client.call("video", job_id, item_id, None)
        if found is None or not found["committed"]:
            raise HTTPException(404, "no committed video")
        if "url" in found:  # S3: the browser fetches it from there (presigned, expires)
            return RedirectResponse(found["url"], status_code=307, headers={"Cache-Control": "no-store"})
        return FileResponse(found["path"], media_type="video/mp4", headers={"Cache-Control": "private, max-age=300"})

    @ui.get("/jobs/{job_id}/download.zip")
    async def download_zip(job_id: str, session: Session = Depends(file_session)):
        status = await job_or_404(job_id)
        keys = await asyncio.to_thread(ui_files.output_keys, status["output"], status["name"])
        name = quote(status["name"])
        return StreamingResponse(ui_files.zip_stream(status["output"], status["name"], keys),
                                 media_type="application/zip",
                                 headers={"Content-Disposition": f"attachment; filename*=UTF-8''{name}.zip",
                                          "Cache-Control": "no-store"})

    @ui.get("/jobs/{job_id}/urls.txt")
    async def download_urls(job_id: str, session: Session = Depends(file_session)):
        status = await job_or_404(job_id)
        if not status["output"].startswith("s3://"):
            raise HTTPException(404, "a local output has no URLs: download the zip")
        keys = await asyncio.to_thread(ui_files.output_keys, status["output"], status["name"])
        text = await asyncio.to_thread(ui_files.url_list, status["output"], keys)
        return PlainTextResponse(text, headers={"Cache-Control": "no-store",
                                                "Content-Disposition": f"attachment; filename*=UTF-8''{quote(status['name'])}-urls.txt"})

    @ui.get("/jobs/{job_id}/rerender", response_class=HTMLResponse)
    async def rerender_form(request: Request, job_id: str, session: Session = Depends(page_session)):
        status = await job_or_404(job_id)
        return render(request, session, "rerender.html", job=status, errors=[], detail=None, values={})

    @ui.post("/jobs/{job_id}/rerender")
    async def rerender(request: Request, job_id: str, session: Session = Depends(form_session)):
        status = await job_or_404(job_id)
        form = await request.form()
        overrides, issues = ui_submit.form_params(form)
        try:
            found = await client.call("ui_spec", job_id)
        except StorageError:
            raise HTTPException(503, "the job's spec cannot be read now; retry later") from None
        document, missing = ui_submit.rerender_document(found["spec"], found["failed"], overrides)
        detail = None
        if not document["items"]:
            detail = "no failed item can be rendered again" + (
                f" ({len(missing)} were rejected at validation: fix them in the manifest)" if missing else "")
        errors = [i.to_dict() for i in issues]
        if not errors and detail is None:
            body = json.dumps(document).encode()
            try:
                spec = await asyncio.to_thread(parse, body, "json")
            except ManifestError as error:
                detail, errors = f"the new job is not valid: {len(error.issues)} error(s)", [i.to_dict() for i in error.issues]
            else:
                answer = await submit_spec(spec, ("manifest.json", body))
                if answer.status_code == 202:
                    return go(request, f"/jobs/{json.loads(bytes(answer.body))['id']}")
                detail, errors = ui_submit.problem_issues(answer)
        return render(request, session, "rerender.html", status=422, job=status, errors=errors, detail=detail,
                      values={k: v for k, v in form.items() if isinstance(v, str) and k != "csrf"})

    # --- takes ----------------------------------------------------------------------------------

    async def takes_of(job_id: str, item_id: str) -> dict:
        check_item(item_id)
        try:
            listing = await client.call("takes", job_id, item_id)
        except TakeError as error:
            raise HTTPException(error.status, str(error)) from None
        except StorageError:
            raise HTTPException(503, "the job's output cannot be read now; retry later") from None
        if listing is None:
            raise HTTPException(404, "no such job")
        return listing

    @ui.get("/jobs/{job_id}/takes/{item_id}", response_class=HTMLResponse)
    async def takes_page(request: Request, job_id: str, item_id: str, session: Session = Depends(page_session)):
        status = await job_or_404(job_id)
        return render(request, session, "takes.html", job=status, listing=await takes_of(job_id, item_id), error=None)

    @ui.post("/jobs/{job_id}/takes/{item_id}/pick")
    async def pick(request: Request, job_id: str, item_id: str, session: Session = Depends(form_session)):
        form = await request.form()
        take = form.get("take")
        if not isinstance(take, str) or not take or len(take) > 256:
            raise HTTPException(422, "say which take")
        check_item(item_id)
        try:
            await client.call("pick", job_id, item_id, int(take) if take.isdigit() else take)
        except (TakeError, JobConflictError) as error:
            status = await job_or_404(job_id)
            return render(request, session, "takes.html", status=409 if isinstance(error, JobConflictError) else 422,
                          job=status, listing=await takes_of(job_id, item_id), error=str(error))
        return go(request, f"/jobs/{quote(job_id)}/takes/{quote(item_id)}")

    # --- submit ---------------------------------------------------------------------------------

    @ui.get("/submit", response_class=HTMLResponse)
    async def submit_page(request: Request, session: Session = Depends(page_session)):
        return render(request, session, "submit.html", result=None, values={})

    @ui.post("/submit")
    async def submit(request: Request, session: Session = Depends(form_session)):
        form = await request.form(max_files=settings.max_items, max_fields=2000, max_part_size=settings.max_body_bytes)
        check_only = form.get("action") == "check"
        if form.get("mode") == "images":
            result = await submit_images(form, check_only)
        else:
            result = await submit_manifest(form, check_only)
        if result.get("id"):
            return go(request, f"/jobs/{result['id']}")
        values = {k: v for k, v in form.items() if isinstance(v, str) and k != "csrf"}
        if _hx(request):  # 200 with the errors: a 4xx answer to a fetch is a console error in the browser
            return render(request, session, "_submit_result.html", result=result,
                          headers={"X-Farm-Valid": "true" if result.get("ok") else "false"})
        status = 200 if result.get("ok") else 422
        return render(request, session, "submit.html", status=status, result=result, values=values)

    async def submit_manifest(form, check_only: bool) -> dict:
        upload = form.get("manifest")
        if upload is not None and not isinstance(upload, str) and upload.filename:
            body = await upload.read(settings.max_body_bytes + 1)
            file_name = upload.filename
        else:
            body = (form.get("manifest_text") or "").encode()
            file_name = None
        if not body.strip():
            return {"ok": False, "detail": "choose a manifest file or paste one", "errors": []}
        if len(body) > settings.max_body_bytes:
            return {"ok": False, "detail": f"the manifest is over the {settings.max_body_bytes}-byte limit", "errors": []}
        fmt = ui_submit.manifest_format(file_name, body)
        try:
            spec = await asyncio.to_thread(parse, body, fmt)
        except ManifestError as error:
            return {"ok": False, "detail": f"invalid manifest: {len(error.issues)} error(s)",
                    "errors": [i.to_dict() for i in error.issues]}
        answer = await submit_spec(spec, (f"manifest.{fmt}", body), dry_run=check_only)
        return outcome(answer, spec)

    def outcome(answer, spec) -> dict:
        if answer is None:
            return {"ok": True, "detail": f"valid: {spec.total} item(s) for job {spec.name!r}, output {spec.output}; "
                                          "nothing is rendered until you submit", "errors": []}
        if answer.status_code == 202:
            return {"ok": True, "id": json.loads(bytes(answer.body))["id"]}
        detail, errors = ui_submit.problem_issues(answer)
        return {"ok": False, "detail": detail, "errors": errors}

    async def submit_images(form, check_only: bool) -> dict:
        from farm.core.errors import ImageError, ManifestIssue
        from farm.core.manifest import parse_manifest
        from farm.media.images import ImageLimits, prepare_image
        from farm.serve.app import _store_upload

        files = [f for f in form.getlist("images") if not isinstance(f, str) and f.filename]
        template = (form.get("prompt_template") or "").strip()
        if not files:
            return {"ok": False, "detail": "drop a folder of images (or choose some)", "errors": []}
        if len(files) > settings.max_items:
            return {"ok": False, "detail": f"{len(files)} images; this farm accepts at most {settings.max_items}", "errors": []}
        params, issues = ui_submit.form_params(form)
        if not template:
            issues.append(ManifestIssue("type a prompt; {name} is replaced by each image's file name", field="prompt_template"))
        limits = ImageLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_upload_pixels)
        images = []
        for upload in files:
            data = await upload.read(settings.max_upload_bytes + 1)
            try:
                prepared = await asyncio.to_thread(prepare_image, data, 64, 64, name=upload.filename, limits=limits)
            except ImageError as error:
                issues.append(ManifestIssue(str(error), field="image", value=upload.filename))
                continue
            images.append((upload.filename, data, {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[prepared.source_format]))
        document = ui_submit.images_document([name for name, _, _ in images], template or "x", params,
                                             (form.get("name") or "").strip() or None)
        try:  # the parameters and names, with placeholder image locations
            await asyncio.to_thread(parse, json.dumps(document).encode(), "json")
        except ManifestError as error:
            issues.extend(error.issues)
        if issues:
            return {"ok": False, "detail": f"{len(issues)} problem(s); nothing was uploaded",
                    "errors": [i.to_dict() for i in issues]}
        output = settings.default_output
        if check_only:
            return {"ok": True, "detail": f"valid: {len(images)} image(s) for job {document['name']!r}, output {output}; "
                                          "nothing is uploaded or rendered until you submit", "errors": []}
        for item, (file_name, data, extension) in zip(document["items"], images):
            key = f"{document['name']}/inputs/{item['id']}.{extension}"
            item["image"] = await asyncio.to_thread(_store_upload, output, key, data)
        document["output"] = output
        body = json.dumps(document).encode()
        try:  # the stored images are in the farm's own output (as POST /v1/renders does)
            spec = await asyncio.to_thread(parse_manifest, body, "json", base_dir=Path("/"), env_model=settings.model,
                                           source="upload")
        except ManifestError as error:
            return {"ok": False, "detail": "invalid job", "errors": [i.to_dict() for i in error.issues]}
        return outcome(await submit_spec(spec, ("manifest.json", body)), spec)

    # --- cluster --------------------------------------------------------------------------------

    async def cluster_context() -> dict:
        cluster = await client.call("ui_cluster")
        groups: dict[tuple, list] = {}
        for worker in cluster["workers"]:
            groups.setdefault((worker["tier"] or "?", worker["node_id"] or "?"), []).append(worker)
        return {"cluster": cluster, "groups": sorted(groups.items())}

    @ui.get("/cluster", response_class=HTMLResponse)
    async def cluster_page(request: Request, session: Session = Depends(page_session)):
        return render(request, session, "cluster.html", **await cluster_context())

    @ui.get("/fragments/cluster", response_class=HTMLResponse)
    async def cluster_fragment(request: Request, session: Session = Depends(page_session)):
        return render(request, session, "_cluster.html", **await cluster_context())

    app.include_router(ui)

