"""The review page (`/review`): its HTML, script and style (files in `review_static/`, served
by the app: no CDN), and the JSON and image routes it calls.

Every route but the page, its assets, `session` and `sign-in` needs a signed-in session
(workers.review_auth; 401 `signed_out` otherwise), and every POST its CSRF token in the
`X-CSRF-Token` header (403 `csrf_refused`). A session sees its own tenant's jobs only:
another tenant's job, or its images, is a 404 like one that does not exist. Images are
served here, behind the session cookie, never through a URL that carries a key. ApiGuard
adds the Content-Security-Policy and the other headers of every /review answer.
"""

from __future__ import annotations

import io
import mimetypes
from datetime import date
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from clearmark.errors import ServiceUnavailable
from clearmark.settings import get_settings
from clearmark.workers.api_errors import ApiError
from clearmark.workers.api_guard import admit_key
from clearmark.workers.db import WITH_RESULT, Job, JobStatus, session_scope
from clearmark.workers.review import Decision, decide
from clearmark.workers.review_auth import (
    COOKIE_PATH,
    CSRF_HEADER,
    SESSION_COOKIE,
    SESSION_TTL,
    SIGN_IN_COOKIE,
    Reviewer,
    close_session,
    new_token,
    open_session,
    same_token,
    session_for,
)
from clearmark.workers.review_mask import BadMask, ask_removal
from clearmark.workers.review_queue import (
    MAX_PER_PAGE,
    QUEUE_STATUSES,
    Order,
    QueueFilter,
    job_view,
    owned_job,
    queue,
)
from clearmark.workers.storage import iter_uri, job_source_uri, read_uri
from clearmark.workers.tenants import reviewer_for_key

STATIC = Path(__file__).resolve().parent / "review_static"
ASSETS = {"review.js": "text/javascript", "review.css": "text/css"}
# What a browser cannot show is sent as PNG (the stored file is untouched).
BROWSER_TYPES = {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp"}
IMAGES = ("source", "result", "mask")
MAX_BATCH = 200  # jobs decided in one request

page = APIRouter(prefix="/review", include_in_schema=False)


def _signed_in(request: Request) -> Reviewer:
    reviewer = session_for(get_settings().database_url, request.cookies.get(SESSION_COOKIE))
    if reviewer is None:
        raise ApiError(401, "signed_out", "not signed in (or the session ended): sign in again")
    return reviewer


def _changing(reviewer: Annotated[Reviewer, Depends(_signed_in)], request: Request) -> Reviewer:
    if not same_token(request.headers.get(CSRF_HEADER), reviewer.csrf):
        raise ApiError(403, "csrf_refused", f"a change needs this session's {CSRF_HEADER} header")
    return reviewer


SignedIn = Annotated[Reviewer, Depends(_signed_in)]
Changing = Annotated[Reviewer, Depends(_changing)]


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or get_settings().public_url.startswith("https:")


def _set_cookie(response: Response, request: Request, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


@page.get("")
def review_page() -> FileResponse:
    return FileResponse(STATIC / "review.html", media_type="text/html")


@page.get("/")
def review_page_slash() -> RedirectResponse:
    return RedirectResponse("/review", status_code=308)


@page.get("/static/{name}")
def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise ApiError(404, "not_found", f"no asset {name}")
    return FileResponse(STATIC / name, media_type=ASSETS[name])


@page.get("/api/session")
def current_session(request: Request) -> JSONResponse:
    """Who is signed in and the CSRF token for changes; signed out, the token for signing in
    (set in its cookie too)."""
    reviewer = session_for(get_settings().database_url, request.cookies.get(SESSION_COOKIE))
    if reviewer is not None:
        return JSONResponse(
            {
                "signed_in": True,
                "tenant": reviewer.tenant_name,
                "reviewer": reviewer.name,
                "csrf": reviewer.csrf,
            }
        )
    token = request.cookies.get(SIGN_IN_COOKIE) or new_token()
    response = JSONResponse({"signed_in": False, "csrf": token})
    _set_cookie(response, request, SIGN_IN_COOKIE, token, None)
    return response


class SignIn(BaseModel):
    key: str = Field(min_length=1, max_length=200)


@page.post("/api/sign-in")
def sign_in(body: SignIn, request: Request) -> JSONResponse:
    """A reviewer key (`clearmark tenants reviewer-key`) or the tenant's API key opens a
    session; wrong keys count against the address like the API's (429 past the limit)."""
    if not same_token(request.headers.get(CSRF_HEADER), request.cookies.get(SIGN_IN_COOKIE)):
        raise ApiError(403, "csrf_refused", f"signing in needs the {CSRF_HEADER} of /review/api/session")
    settings = get_settings()

    def lookup() -> tuple[str, str, str]:
        with session_scope(settings.database_url) as session:
            found = reviewer_for_key(session, body.key.strip())
            if found is None:
                raise ApiError(401, "unauthorized", "unknown key")
            return found[0].id, found[0].name, found[1]

    tenant_id, tenant_name, who = admit_key((request.client or ("unknown",))[0], settings, lookup)
    token = open_session(settings.database_url, tenant_id, who)
    response = JSONResponse({"signed_in": True, "tenant": tenant_name, "reviewer": who})
    _set_cookie(response, request, SESSION_COOKIE, token, int(SESSION_TTL.total_seconds()))
    response.delete_cookie(SIGN_IN_COOKIE, path=COOKIE_PATH)
    return response


@page.post("/api/sign-out")
def sign_out(_reviewer: Changing, request: Request) -> JSONResponse:
    close_session(get_settings().database_url, request.cookies.get(SESSION_COOKIE))
    response = JSONResponse({"signed_in": False})
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    return response


@page.get("/api/queue")
def review_queue(
    reviewer: SignedIn,
    status: Annotated[str, Query()] = "needs_review",
    reason: str = "",
    batch: str = "",
    since: date | None = None,
    until: date | None = None,
    version: str = "",
    order: Order = Order.oldest,
    page_number: Annotated[int, Query(alias="page", ge=1)] = 1,
    per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = 50,
) -> dict[str, Any]:
    chosen = next((s for s in QUEUE_STATUSES if s.value == status), None)
    if chosen is None:
        raise ApiError(422, "invalid_request", f"status must be one of {[s.value for s in QUEUE_STATUSES]}")
    f = QueueFilter(
        chosen, reason.strip(), batch.strip(), since, until, version.strip(), order, page_number, per_page
    )
    with session_scope(get_settings().database_url) as session:
        return queue(session, reviewer.tenant_id, f)


@page.get("/api/jobs/{job_id}")
def review_job(job_id: str, reviewer: SignedIn) -> dict[str, Any]:
    with session_scope(get_settings().database_url) as session:
        view = job_view(session, reviewer.tenant_id, job_id)
    if view is None:
        raise ApiError(404, "not_found", f"no job {job_id}")
    return view


def _image_uri(job: Job, which: str) -> str | None:
    if which == "source":
        return job_source_uri(job.source_uri, job.tenant_id)
    if JobStatus(job.status) not in WITH_RESULT:
        return None
    return job.result_uri if which == "result" else job.mask_uri


@page.get("/api/jobs/{job_id}/images/{which}")
def review_image(job_id: str, which: str, reviewer: SignedIn) -> Response:
    """The upload (`source`), the result or the mask, inline, at full resolution."""
    if which not in IMAGES:
        raise ApiError(404, "not_found", f"no image {which!r}: one of {', '.join(IMAGES)}")
    with session_scope(get_settings().database_url) as session:
        job = owned_job(session, reviewer.tenant_id, job_id)
        if job is None:
            raise ApiError(404, "not_found", f"no job {job_id}")
        uri = _image_uri(job, which)
    if not uri:
        raise ApiError(409, "not_ready", f"job {job_id} has no {which} yet")
    kind = mimetypes.guess_type(uri)[0] or "application/octet-stream"
    if kind not in BROWSER_TYPES:  # TIFF: shown as PNG
        buf = io.BytesIO()
        Image.open(io.BytesIO(read_uri(uri))).save(buf, "PNG")
        return Response(buf.getvalue(), media_type="image/png")
    try:
        return StreamingResponse(iter_uri(uri), media_type=kind)
    except FileNotFoundError:
        raise ApiError(404, "not_found", f"the {which} of job {job_id} is gone") from None


class DecisionBody(BaseModel):
    decision: Decision
    note: str = Field("", max_length=2000)


class Decisions(DecisionBody):
    job_ids: list[str] = Field(min_length=1, max_length=MAX_BATCH)


def _decide(reviewer: Reviewer, job_id: str, body: DecisionBody) -> str:
    try:
        return decide(
            job_id, body.decision, reviewer.name, body.note, tenant_id=reviewer.tenant_id, via="page"
        )
    except LookupError:
        raise ApiError(404, "not_found", f"no job {job_id}") from None
    except ValueError as exc:
        raise ApiError(409, "not_in_review", str(exc)) from None


@page.post("/api/jobs/{job_id}/decision")
def review_decision(job_id: str, body: DecisionBody, reviewer: Changing) -> dict[str, Any]:
    """Accept, reject or "no mark" one job (workers.review.decide: its event names the
    reviewer, and the job's webhook fires)."""
    return {"id": job_id, "status": _decide(reviewer, job_id, body)}


@page.post("/api/decisions")
def review_decisions(body: Decisions, reviewer: Changing) -> dict[str, Any]:
    """The same decision for several jobs; each answers on its own (its status, or the error)."""
    results: list[dict[str, Any]] = []
    for job_id in dict.fromkeys(body.job_ids):
        try:
            results.append({"id": job_id, "status": _decide(reviewer, job_id, body)})
        except ApiError as exc:
            results.append({"id": job_id, "error": {"code": exc.code, "message": exc.message}})
    return {"results": results}


@page.post("/api/jobs/{job_id}/mask", status_code=202)
async def review_mask(job_id: str, request: Request, reviewer: Changing) -> dict[str, Any]:
    """Remove with the reviewer's mask: the body is a PNG of the photo's size as shown
    (>= 128 inside). The job is queued as an attempt of its own (workers.review_mask) and
    comes back to needs_review with the new result; 422 for a mask it cannot use (not_png,
    mask_size, empty_mask), 409 for a job not in review."""
    limit = get_settings().max_bytes
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise ApiError(413, "too_large_bytes", f"the mask is over the limit of {limit} bytes")
    try:
        edit = await run_in_threadpool(
            lambda: ask_removal(job_id, bytes(data), reviewer.name, tenant_id=reviewer.tenant_id, via="page")
        )
    except LookupError:
        raise ApiError(404, "not_found", f"no job {job_id}") from None
    except BadMask as exc:
        raise ApiError(422, exc.code, str(exc)) from None
    except ValueError as exc:
        raise ApiError(409, "not_in_review", str(exc)) from None
    except ServiceUnavailable:
        raise ApiError(
            503,
            "broker_unavailable",
            "the workers' broker cannot be reached: nothing was changed, the job stays in review "
            "(a removal with a mask runs on a worker)",
        ) from None
    return {"id": job_id, "status": JobStatus.queued.value, "edit": edit}
