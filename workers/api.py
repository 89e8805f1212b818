"""The storefront HTTP API (FastAPI; `clearmark api` serves it with uvicorn).

Every `/v1` route needs `Authorization: Bearer <api key>` (`clearmark tenants create`), and a
tenant sees only its own jobs: another tenant's job is a 404. Errors are JSON:
`{"error": {"code": ..., "message": ...}}`. An upload is checked (bytes, content type,
decodable image within the pixel limits) before anything is stored or queued. The OpenAPI
document is at /v1/openapi.json.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import mimetypes
from datetime import datetime, timezone

from fastapi import Depends, FastAPI, File, Form, Header, Query, Request, Response, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select, text, tuple_
from starlette.exceptions import HTTPException

from workers.db import Job, JobStatus, Priority, Tenant, get_engine, session_scope
from workers.errors import BadInput, ServiceUnavailable
from workers.imaging import decode_image
from workers.jobs import create_job, requeue_job
from workers.settings import Settings, get_settings
from workers.storage import check_key, get_storage, iter_uri, read_uri
from workers.tenants import tenant_for_key
from workers.webhooks import DONE_OK, check_callback_url, job_document

# Upload rejections by decode_image's code; any other bad input is a 422.
UPLOAD_STATUS = {"too_large_bytes": 413, "too_many_pixels": 413, "decompression_bomb": 413,
                 "not_an_image": 415}
IMAGE_TYPES = {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff",
               "application/octet-stream"}
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and small fields around the file
log = logging.getLogger(__name__)

app = FastAPI(title="clearmark", version="1",
              description="Removes visible watermarks from product photos.",
              openapi_url="/v1/openapi.json", docs_url="/v1/docs", redoc_url=None)
bearer = HTTPBearer(auto_error=False, description="API key from `clearmark tenants create`")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _error(status: int, code: str, message: str, headers: dict | None = None, **extra):
    return JSONResponse({"error": {"code": code, "message": message, **extra}},
                        status_code=status, headers=headers)


@app.exception_handler(ApiError)
async def _api_error(_request: Request, exc: ApiError):
    return _error(exc.status, exc.code, exc.message, exc.headers)


@app.exception_handler(HTTPException)
async def _http_error(_request: Request, exc: HTTPException):
    return _error(exc.status_code, f"http_{exc.status_code}", str(exc.detail), exc.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, exc: RequestValidationError):
    return _error(422, "invalid_request", "the request's parameters are invalid",
                  details=jsonable_encoder(exc.errors()))


@app.middleware("http")
async def _limit_upload_size(request: Request, call_next):
    """Refuse an oversize upload from its Content-Length, before its body is read."""
    length = request.headers.get("content-length", "")
    limit = get_settings().max_bytes
    if request.url.path == "/v1/images" and length.isdigit() and int(length) > limit + FORM_OVERHEAD:
        return _error(413, "too_large_bytes", f"upload is over the limit of {limit} bytes")
    return await call_next(request)


def current_tenant(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Tenant:
    unauthorized = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ApiError(401, "unauthorized", "missing 'Authorization: Bearer <api key>'", unauthorized)
    with session_scope(get_settings().database_url) as session:
        tenant = tenant_for_key(session, credentials.credentials)
    if tenant is None:
        raise ApiError(401, "unauthorized", "invalid API key", unauthorized)
    return tenant


def _base_url(request: Request) -> str:
    return get_settings().public_url or str(request.base_url)


def _owned_job(session, tenant: Tenant, job_id: str, lock: bool = False) -> Job:
    query = select(Job).where(Job.id == job_id, Job.tenant_id == tenant.id)
    job = session.scalar(query.with_for_update() if lock else query)
    if job is None:
        raise ApiError(404, "not_found", f"no job {job_id}")
    return job


def _pipeline_fingerprint() -> str:
    from workers.pipeline import pipeline_fingerprint  # lazy: the API loads no engines

    return pipeline_fingerprint()


def _enqueue(job_id: str, priority: str, settings: Settings) -> None:
    """Send the job's task. With the broker down: 503, and the job stays queued (the reaper
    sends it when the broker is back; the same request again returns the job)."""
    from workers.tasks import enqueue, queue_for

    try:
        enqueue(job_id, queue_for(priority, settings))
    except ServiceUnavailable as exc:
        log.warning("job %s could not be queued yet: %s", job_id, exc)
        raise ApiError(503, exc.code, f"job {job_id} is recorded but could not be queued "
                       "yet (the broker is down); it is sent when the broker is back") from None


def _read_source(tenant: Tenant, file: UploadFile | None, source_uri: str | None,
                 settings: Settings) -> bytes:
    if (file is None) == (source_uri is None):
        raise ApiError(400, "bad_request", "send exactly one of 'file' or 'source_uri'")
    if file is not None:
        if file.content_type and file.content_type not in IMAGE_TYPES:
            raise ApiError(415, "unsupported_media_type",
                           f"content type {file.content_type!r} is not an accepted image type")
        return file.file.read(settings.max_bytes + 1)
    root, prefix = get_storage().root_uri + "/", f"sources/{tenant.id}/"
    key = source_uri[len(root):] if source_uri.startswith(root) else ""
    try:
        inside = check_key(key).startswith(prefix)
    except BadInput:
        inside = False
    if not inside:
        raise ApiError(422, "invalid_source_uri",
                       f"source_uri must be inside the storage under {root}{prefix}")
    try:
        return read_uri(source_uri, max_bytes=settings.max_bytes)
    except BadInput as exc:
        raise ApiError(UPLOAD_STATUS.get(exc.code, 422), exc.code, exc.message) from None


@app.post("/v1/images", status_code=202, tags=["jobs"],
          responses={200: {"description": "An existing job (same idempotency key or image)"},
                     401: {}, 413: {}, 415: {}, 422: {}, 503: {}})
def upload_image(request: Request, response: Response,
                 file: UploadFile | None = File(None, description="The image (multipart)"),
                 source_uri: str | None = Form(None, description="Or: an object already in "
                                               "storage under sources/<tenant id>/"),
                 callback_url: str | None = Form(None, description="Webhook URL for this job "
                                                 "(default: the tenant's)"),
                 priority: Priority = Form(Priority.normal, description="normal or low (bulk)"),
                 idempotency_key: str | None = Header(None, max_length=200),
                 tenant: Tenant = Depends(current_tenant)) -> dict:
    """Queue an image for cleaning: 202 with the new job, or 200 with the existing job
    for the same Idempotency-Key (or, without one, the same image and pipeline version)."""
    settings = get_settings()
    data = _read_source(tenant, file, source_uri, settings)
    try:
        if callback_url:
            check_callback_url(callback_url, settings)
        decoded = decode_image(data, settings)
    except BadInput as exc:
        raise ApiError(UPLOAD_STATUS.get(exc.code, 422), exc.code, exc.message) from None
    digest = hashlib.sha256(data).hexdigest()
    if file is not None:
        key = f"sources/{tenant.id}/{digest}{decoded.input_extension}"
        source_uri = get_storage().put(key, data)
    with session_scope(settings.database_url) as session:
        job, created = create_job(
            session, session.get(Tenant, tenant.id), source_uri, source_sha256=digest,
            idempotency_key=idempotency_key or f"sha256:{digest}@{_pipeline_fingerprint()}",
            callback_url=callback_url, priority=priority.value)
        document = job_document(job, _base_url(request))
    if created:
        _enqueue(job.id, job.priority, settings)
    response.status_code = 202 if created else 200
    response.headers["Location"] = document["links"]["self"]
    return document


@app.get("/v1/jobs/{job_id}", tags=["jobs"])
def get_job(job_id: str, request: Request, tenant: Tenant = Depends(current_tenant)) -> dict:
    """The job: status, error, metrics, and links to the result and mask when done."""
    with session_scope(get_settings().database_url) as session:
        return job_document(_owned_job(session, tenant, job_id), _base_url(request))


def _stream(tenant: Tenant, job_id: str, which: str) -> StreamingResponse:
    with session_scope(get_settings().database_url) as session:
        job = _owned_job(session, tenant, job_id)
        uri = job.result_uri if which == "result" else job.mask_uri
        if job.status not in DONE_OK or not uri:
            raise ApiError(409, "not_ready", f"job {job_id} is {job.status}: no {which}")
    try:
        chunks = iter_uri(uri)
    except FileNotFoundError:
        raise ApiError(404, "not_found", f"the {which} of job {job_id} is gone") from None
    name = f"{job_id}{'' if which == 'result' else '-mask'}{uri[uri.rfind('.'):]}"
    return StreamingResponse(chunks, media_type=mimetypes.guess_type(uri)[0],
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


@app.get("/v1/jobs/{job_id}/result", tags=["jobs"], response_class=StreamingResponse)
def get_result(job_id: str, tenant: Tenant = Depends(current_tenant)):
    """The cleaned image, in the upload's format (409 until the job is done)."""
    return _stream(tenant, job_id, "result")


@app.get("/v1/jobs/{job_id}/mask", tags=["jobs"], response_class=StreamingResponse)
def get_mask(job_id: str, tenant: Tenant = Depends(current_tenant)):
    """The mask of what was changed: 8-bit grey PNG, 0 = untouched."""
    return _stream(tenant, job_id, "mask")


def _cursor(job: Job) -> str:
    return base64.urlsafe_b64encode(json.dumps([job.created_at.isoformat(), job.id]).encode()).decode()


def _after(cursor: str) -> tuple[datetime, str]:
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(created), str(job_id)
    except (ValueError, TypeError):
        raise ApiError(400, "bad_cursor", "cursor is not one this API returned") from None


@app.get("/v1/jobs", tags=["jobs"])
def list_jobs(request: Request, status: JobStatus | None = None,
              since: datetime | None = Query(None, description="created at or after (ISO 8601)"),
              limit: int = Query(50, ge=1, le=200), cursor: str | None = None,
              tenant: Tenant = Depends(current_tenant)) -> dict:
    """The tenant's jobs, oldest first; pass `next_cursor` back as `cursor` for the next page."""
    query = select(Job).where(Job.tenant_id == tenant.id)
    if status:
        query = query.where(Job.status == status.value)
    if since:
        query = query.where(Job.created_at >= (since if since.tzinfo else
                                               since.replace(tzinfo=timezone.utc)))
    if cursor:
        query = query.where(tuple_(Job.created_at, Job.id) > tuple_(*_after(cursor)))
    with session_scope(get_settings().database_url) as session:
        jobs = session.scalars(query.order_by(Job.created_at, Job.id).limit(limit + 1)).all()
        base = _base_url(request)
        return {"jobs": [job_document(job, base) for job in jobs[:limit]],
                "next_cursor": _cursor(jobs[limit - 1]) if len(jobs) > limit else None}


@app.post("/v1/jobs/{job_id}/retry", status_code=202, tags=["jobs"])
def retry_job(job_id: str, request: Request, tenant: Tenant = Depends(current_tenant)) -> dict:
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


@app.get("/healthz", tags=["health"])
def healthz() -> dict:
    """The process is up."""
    return {"status": "ok"}


@app.get("/metrics", tags=["health"], response_class=Response)
def prometheus_metrics() -> Response:
    """Prometheus text format: jobs by status, images per second, queue depth per queue
    (no auth, like /healthz: keep it off the public interface)."""
    from workers.metrics import render_state

    body, content_type = render_state()
    return Response(body, media_type=content_type)


@app.get("/readyz", tags=["health"])
def readyz() -> JSONResponse:
    """Database, broker and storage are reachable (503 naming what is not)."""
    from workers.celery_app import app as celery_app

    settings = get_settings()

    def database():
        with get_engine(settings.database_url).connect() as conn:
            conn.execute(text("SELECT 1"))

    def broker():
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)

    def storage():
        get_storage().put("health/readyz", b"ok")

    checks = {}
    for name, check in (("database", database), ("broker", broker), ("storage", storage)):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - report any failure
            checks[name] = f"{type(exc).__name__}: {exc}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
