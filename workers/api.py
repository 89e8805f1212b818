"""The storefront HTTP API (FastAPI; `clearmark api` serves it with uvicorn).

Every `/v1` route needs `Authorization: Bearer <api key>` (`clearmark tenants create`),
checked with the tenant's limits before any byte of the body is read (workers.api_guard),
and a tenant sees only its own jobs: another tenant's job is a 404. Errors are JSON, each
status declared in the OpenAPI document at /v1/openapi.json (workers.api_errors). An upload
is checked from its image header alone (bytes, format, dimensions; the worker decodes the
pixels) before anything is stored or queued.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import mimetypes
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    Header,
    Query,
    Request,
    Response,
    UploadFile,
)
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, BeforeValidator, Field
from sqlalchemy import select, text, tuple_
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException

from clearmark.errors import BadInput, ServiceUnavailable
from clearmark.pipeline.imaging import probe_image
from clearmark.pipeline.versions import pipeline_fingerprint
from clearmark.settings import Settings, get_settings
from clearmark.workers import broker
from clearmark.workers.api_errors import (
    OUTAGE_RETRY_AFTER_S,
    OUTAGE_TYPES,
    REQUEST_ID_HEADER,
    ApiError,
    documented,
    error_response,
    outage,
)
from clearmark.workers.api_guard import DOCS_ASSETS, ApiGuard
from clearmark.workers.celery_app import app as celery_app
from clearmark.workers.db import (
    WITH_RESULT,
    Job,
    JobEvent,
    JobStatus,
    Priority,
    Tenant,
    get_engine,
    session_scope,
)
from clearmark.workers.job_document import JobDocument, JobPage, job_document
from clearmark.workers.jobs import create_job, requeue_job
from clearmark.workers.metrics import render_state
from clearmark.workers.review import Decision, decide
from clearmark.workers.review_web import page as review_page
from clearmark.workers.storage import get_storage, iter_uri, read_uri, tenant_source_uri
from clearmark.workers.webhooks import check_callback_url

# Upload rejections by probe_image's code; any other bad input is a 422.
UPLOAD_STATUS = {
    "too_large_bytes": 413,
    "too_many_pixels": 413,
    "decompression_bomb": 413,
    "not_an_image": 415,
}
IMAGE_TYPES = {
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/bmp",
    "image/tiff",
    "application/octet-stream",
}
# What OpenAPI cannot infer from the parameters: exactly one of the two sources, and `file`
# as a file part (a text field there is a 422 not_a_file).
UPLOAD_BODY = {
    "schema": {"oneOf": [{"required": ["file"]}, {"required": ["source_uri"]}]},
    "encoding": {"file": {"contentType": ", ".join(sorted(IMAGE_TYPES))}},
}
log = logging.getLogger(__name__)

# The docs page's Swagger UI assets come from the installed fastapi-offline package, not a
# CDN, so /v1/docs works behind a firewall.
app = FastAPIOffline(
    title="clearmark",
    version="1",
    description="Removes visible watermarks from product photos.",
    openapi_url="/v1/openapi.json",
    docs_url="/v1/docs",
    redoc_url=None,
    static_url=DOCS_ASSETS.rstrip("/"),
)
app.add_middleware(ApiGuard)
v1 = APIRouter(prefix="/v1", tags=["jobs"], responses=documented(401, 408, 422, 429, 500, 503))
bearer = HTTPBearer(auto_error=False, description="API key from `clearmark tenants create`")


@app.exception_handler(ApiError)
async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status_code, exc.code, exc.message, exc.headers)


@app.exception_handler(HTTPException)
async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
    return error_response(exc.status_code, f"http_{exc.status_code}", str(exc.detail), exc.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    details = jsonable_encoder(exc.errors())
    if any(error["loc"] == ["body", "file"] for error in details):  # a text field, not a file
        message = "'file' must be a file part (with a filename), not a text field"
        return error_response(422, "not_a_file", message, details=details)
    return error_response(422, "invalid_request", "the request's parameters are invalid", details=details)


async def _failure(request: Request, exc: Exception) -> JSONResponse:
    """A database, broker or storage outage is a 503; anything else unexpected a 500 that names the
    request id (also in the log line with the traceback)."""
    error = outage(exc)
    if error is not None:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return error_response(error.status_code, error.code, error.message, error.headers)
    request_id = getattr(request.state, "request_id", None) or uuid.uuid4().hex
    log.error("request %s failed", request_id, exc_info=exc)
    return error_response(
        500,
        "internal_error",
        "unexpected error: quote the request id when you report it",
        {REQUEST_ID_HEADER: request_id},
        request_id=request_id,
    )


for _type in (*OUTAGE_TYPES, Exception):
    app.add_exception_handler(_type, _failure)


def current_tenant(
    request: Request, _credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> Tenant:
    """The tenant ApiGuard authenticated (the dependency declares the key in OpenAPI)."""
    tenant: Tenant = request.state.tenant
    return tenant


def _base_url(request: Request) -> str:
    return get_settings().public_url or str(request.base_url)


def _owned_job(session: Session, tenant: Tenant, job_id: str, lock: bool = False) -> Job:
    query = select(Job).where(Job.id == job_id, Job.tenant_id == tenant.id)
    job = session.scalar(query.with_for_update() if lock else query)
    if job is None:
        raise ApiError(404, "not_found", f"no job {job_id}")
    return job


def _enqueue(job_id: str, priority: str, settings: Settings) -> None:
    """Send the job's task. With the broker down: 503, and the job stays queued (the reaper
    sends it when the broker is back; the same request again returns the job)."""
    try:
        broker.enqueue(job_id, broker.queue_for(priority, settings))
    except ServiceUnavailable as exc:  # the job stays queued: the reaper sends it
        log.warning("job %s could not be queued yet: %s", job_id, exc)
        raise ApiError(
            503,
            exc.code,
            f"job {job_id} is recorded but could not be queued "
            "yet (the broker is down); it is sent when the broker is back",
            {"Retry-After": str(OUTAGE_RETRY_AFTER_S)},
        ) from None


def _read_source(
    tenant: Tenant, file: UploadFile | None, source_uri: str | None, settings: Settings
) -> tuple[bytes, str | None]:
    """The image's bytes, and for a `source_uri` the canonical URI the job records."""
    if (file is None) == (source_uri is None):
        raise ApiError(422, "invalid_request", "send exactly one of 'file' or 'source_uri'")
    if file is not None:
        if file.content_type and file.content_type not in IMAGE_TYPES:
            raise ApiError(
                415,
                "unsupported_media_type",
                f"content type {file.content_type!r} is not an accepted image type",
            )
        return file.file.read(settings.max_bytes + 1), None
    assert source_uri is not None  # exactly one of the two, checked above
    try:
        canonical = tenant_source_uri(source_uri, tenant.id)
        return read_uri(canonical, max_bytes=settings.max_bytes), canonical
    except BadInput as exc:
        raise ApiError(UPLOAD_STATUS.get(exc.code, 422), exc.code, exc.message) from None


def _same_request(session: Session, job: Job, request: dict[str, Any]) -> bool:
    """Whether `job` was created by this request (its image, source and parameters); the
    priority is the one it was created with (a reprocess run may have changed it since)."""
    created = session.scalar(
        select(JobEvent.detail).where(
            JobEvent.job_id == job.id, JobEvent.kind == "status", JobEvent.from_status.is_(None)
        )
    )
    priority = (created or {}).get("priority", job.priority)
    return request == {
        "source_sha256": job.source_sha256,
        "source_uri": job.source_uri,
        "callback_url": job.callback_url,
        "priority": priority,
        "group": job.catalogue_group,
    }


def _existing_job(
    session: Session, tenant: Tenant, key: str, request: dict[str, Any], client_key: bool
) -> Job | None:
    """The tenant's job for this idempotency key; an Idempotency-Key the client reuses for a
    different request is a 422 (Stripe's rule), never the old job."""
    job = session.scalar(select(Job).where(Job.tenant_id == tenant.id, Job.idempotency_key == key))
    if job is not None and client_key and not _same_request(session, job, request):
        raise ApiError(
            422,
            "idempotency_conflict",
            f"Idempotency-Key {key!r} was used for a different request (another "
            f"image or other parameters): job {job.id}",
        )
    return job


@v1.post(
    "/images",
    status_code=202,
    responses={
        200: {"model": JobDocument, "description": "An existing job (same idempotency key or image)"},
        **documented(400, 413, 415),
    },
    openapi_extra={"requestBody": {"content": {"multipart/form-data": UPLOAD_BODY}}},
)
def upload_image(
    request: Request,
    response: Response,
    file: UploadFile | None = File(None, description="The image (multipart)"),
    source_uri: str | None = Form(
        None, description="Or: an object already in storage under sources/<tenant id>/"
    ),
    callback_url: str | None = Form(None, description="Webhook URL for this job (default: the tenant's)"),
    priority: Priority = Form(Priority.normal, description="normal or low (bulk)"),
    group: str | None = Form(
        None,
        max_length=200,
        description="Photos that carry one mark at one place (a listing, a catalogue): once the "
        "group has CLEARMARK_TEMPLATE_MIN_GROUP uploads, the mark is learned from them as a "
        "template and the group's jobs that went to review or found no mark are cleaned again "
        "with it",
    ),
    idempotency_key: str | None = Header(None, max_length=200),
    tenant: Tenant = Depends(current_tenant),
) -> JobDocument:
    """Queue an image for cleaning, sent as exactly one of `file` (a file part) or
    `source_uri`: 202 with the new job, or 200 with the existing job for the same
    Idempotency-Key and request (or, without a key, the same image and pipeline version);
    422 for neither or both, a `file` sent as a text field (`not_a_file`), or a key reused
    with another image or other parameters."""
    settings = get_settings()
    data, source_uri = _read_source(tenant, file, source_uri, settings)
    try:
        if callback_url:
            check_callback_url(callback_url, settings)
        header = probe_image(data, settings)
    except BadInput as exc:
        raise ApiError(UPLOAD_STATUS.get(exc.code, 422), exc.code, exc.message) from None
    digest = hashlib.sha256(data).hexdigest()
    storage_key = f"sources/{tenant.id}/{digest}{header.input_extension}"
    if file is not None:
        source_uri = get_storage().uri(storage_key)
    assert source_uri is not None  # the upload's, or the one given (_read_source)
    key = idempotency_key or f"sha256:{digest}@{pipeline_fingerprint()}"
    asked = {
        "source_sha256": digest,
        "source_uri": source_uri,
        "callback_url": callback_url or None,
        "priority": priority.value,
        "group": group or None,
    }
    with session_scope(settings.database_url) as session:
        job = _existing_job(session, tenant, key, asked, bool(idempotency_key))
        created = job is None
        if job is None:
            if file is not None:
                get_storage().put(storage_key, data)
            job, created = create_job(
                session,
                session.get_one(Tenant, tenant.id),
                source_uri,
                source_sha256=digest,
                idempotency_key=key,
                source_name=file.filename if file is not None else None,
                callback_url=callback_url or None,
                priority=priority.value,
                catalogue_group=group or None,
            )
            if not created:  # another request with this key won the race: the same row,
                # checked (422) to come from the same request
                job = _existing_job(session, tenant, key, asked, bool(idempotency_key)) or job
        document = job_document(job, _base_url(request))
    if created:
        _enqueue(job.id, job.priority, settings)
    response.status_code = 202 if created else 200
    response.headers["Location"] = document.links.self
    return document


@v1.get("/jobs/{job_id}", responses=documented(404))
def get_job(job_id: str, request: Request, tenant: Tenant = Depends(current_tenant)) -> JobDocument:
    """The job: status, error, metrics, and links to the result and mask when done."""
    with session_scope(get_settings().database_url) as session:
        return job_document(_owned_job(session, tenant, job_id), _base_url(request))


def _stream(tenant: Tenant, job_id: str, which: str) -> StreamingResponse:
    with session_scope(get_settings().database_url) as session:
        job = _owned_job(session, tenant, job_id)
        uri = job.result_uri if which == "result" else job.mask_uri
        if JobStatus(job.status) not in WITH_RESULT or not uri:
            raise ApiError(409, "not_ready", f"job {job_id} is {job.status}: no {which}")
    try:
        chunks = iter_uri(uri)
    except FileNotFoundError:
        raise ApiError(404, "not_found", f"the {which} of job {job_id} is gone") from None
    name = f"{job_id}{'' if which == 'result' else '-mask'}{uri[uri.rfind('.') :]}"
    return StreamingResponse(
        chunks,
        media_type=mimetypes.guess_type(uri)[0],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@v1.get("/jobs/{job_id}/result", response_class=StreamingResponse, responses=documented(404, 409))
def get_result(job_id: str, tenant: Tenant = Depends(current_tenant)) -> StreamingResponse:
    """The cleaned image, in the upload's format (409 until the job is done)."""
    return _stream(tenant, job_id, "result")


@v1.get("/jobs/{job_id}/mask", response_class=StreamingResponse, responses=documented(404, 409))
def get_mask(job_id: str, tenant: Tenant = Depends(current_tenant)) -> StreamingResponse:
    """The mask of what was changed: 8-bit grey PNG, 0 = untouched."""
    return _stream(tenant, job_id, "mask")


def _cursor(job: Job) -> str:
    return base64.urlsafe_b64encode(json.dumps([job.created_at.isoformat(), job.id]).encode()).decode()


def _after(cursor: str) -> tuple[datetime, str]:
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(created), str(job_id)
    except (ValueError, TypeError):
        raise ApiError(422, "bad_cursor", "cursor is not one this API returned") from None


def _iso_time(value: object) -> object:
    """ISO 8601 text only: pydantic alone also takes a number as a Unix time (`since=0.5`)."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


@v1.get("/jobs")
def list_jobs(
    request: Request,
    status: JobStatus | None = None,
    since: Annotated[datetime, BeforeValidator(_iso_time)] | None = Query(
        None, description="created at or after (ISO 8601; UTC without an offset)"
    ),
    limit: int = Query(50, ge=1, le=200),
    cursor: str | None = Query(None, description="`next_cursor` of the page before"),
    tenant: Tenant = Depends(current_tenant),
) -> JobPage:
    """The tenant's jobs, oldest first; pass `next_cursor` back as `cursor` for the next page."""
    query = select(Job).where(Job.tenant_id == tenant.id)
    if status:
        query = query.where(Job.status == status.value)
    if since:
        query = query.where(Job.created_at >= (since if since.tzinfo else since.replace(tzinfo=UTC)))
    if cursor:
        query = query.where(tuple_(Job.created_at, Job.id) > tuple_(*_after(cursor)))
    with session_scope(get_settings().database_url) as session:
        jobs = session.scalars(query.order_by(Job.created_at, Job.id).limit(limit + 1)).all()
        base = _base_url(request)
        return JobPage(
            jobs=[job_document(job, base) for job in jobs[:limit]],
            next_cursor=_cursor(jobs[limit - 1]) if len(jobs) > limit else None,
        )


@v1.post("/jobs/{job_id}/retry", status_code=202, responses=documented(404, 409))
def retry_job(job_id: str, request: Request, tenant: Tenant = Depends(current_tenant)) -> JobDocument:
    """Queue a failed job again (409 for a job that has not failed)."""
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        job = _owned_job(session, tenant, job_id, lock=True)
        if job.status != JobStatus.failed.value:
            raise ApiError(409, "not_failed", f"job {job_id} is {job.status}; only failed jobs retry")
        requeue_job(session, job, reason="retry requested through the API")
        document = job_document(job, _base_url(request))
    _enqueue(job.id, job.priority, settings)
    return document


class ReviewDecision(BaseModel):
    decision: Decision = Field(
        description="accept: the result is good (succeeded; no_watermark when nothing was removed); "
        "reject: failed with rejected_in_review; no_mark: no_watermark, the upload itself delivered"
    )
    note: str = Field(
        "", max_length=2000, description="Why (kept in the job's events; a rejection's message)"
    )
    reviewer: str = Field(
        "", max_length=200, description="Who decided, as your tool knows them (default: api:<tenant name>)"
    )


@v1.post("/jobs/{job_id}/review", responses=documented(404, 409))
def review_job(
    job_id: str, body: ReviewDecision, request: Request, tenant: Tenant = Depends(current_tenant)
) -> JobDocument:
    """Decide on a `needs_review` job, as the review page and `clearmark review` do (409 for a
    job in any other status). The decision is a `review` event naming the reviewer, and the
    job's webhook fires again with its new status."""
    reviewer = body.reviewer.strip() or f"api:{tenant.name}"
    try:
        decide(job_id, body.decision, reviewer, body.note, tenant_id=tenant.id, via="api")
    except LookupError:
        raise ApiError(404, "not_found", f"no job {job_id}") from None
    except ValueError:
        raise ApiError(409, "not_in_review", f"job {job_id} is not in needs_review") from None
    with session_scope(get_settings().database_url) as session:
        return job_document(_owned_job(session, tenant, job_id), _base_url(request))


app.include_router(v1)
app.include_router(review_page)


@app.get("/healthz", tags=["health"], responses=documented(500))
def healthz() -> dict[str, Any]:
    """The process is up."""
    return {"status": "ok"}


@app.get("/metrics", tags=["health"], response_class=Response, responses=documented(500, 503))
def prometheus_metrics() -> Response:
    """Prometheus text format: jobs by status, images per second, queue depth per queue
    (no auth, like /healthz: keep it off the public interface)."""
    body, content_type = render_state()
    return Response(body, media_type=content_type)


@app.get(
    "/readyz",
    tags=["health"],
    responses={503: {"description": "Not ready: `checks` names what cannot be reached"}, **documented(500)},
)
def readyz() -> JSONResponse:
    """Database, broker and storage are reachable (503 naming what is not; the error itself,
    which names hosts and ports, goes to the log only: this route has no key)."""
    settings = get_settings()

    def database() -> None:
        with get_engine(settings.database_url).connect() as conn:
            conn.execute(text("SELECT 1"))

    def broker() -> None:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)

    def storage() -> None:
        get_storage().put("health/readyz", b"ok")

    checks: dict[str, str] = {}
    for name, check in (("database", database), ("broker", broker), ("storage", storage)):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - report any failure
            log.warning("readyz: %s unavailable: %s: %s", name, type(exc).__name__, exc)
            checks[name] = "unavailable"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
