"""Job life cycle on the database: create, claim, finish, fail, retry, with an event per change.

`process_job` is the whole of one attempt, used alike by the Celery task and the in-process
`clearmark clean`. Every step is safe to run twice: a finished job is left alone, a job found
`running` (its worker died) is taken over, and only the attempt that holds the claim may
record a result (guarded update on status + attempt number).
"""
from __future__ import annotations

import logging
import math
import socket
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from workers.db import (
    FINISHED, JPEG_METRIC_FIELDS, METRIC_FIELDS, Batch, Job, JobEvent, JobMetrics, JobStatus,
    Priority, Tenant, check_transition, session_scope, utcnow,
)
from workers.errors import BadInput, ClearmarkError, TransientError
from workers.settings import Settings, get_settings
from workers.storage import get_storage, read_uri, write_uri

log = logging.getLogger(__name__)
DEFAULT_TENANT = "local"


def set_status(session: Session, job: Job, new: JobStatus, kind: str = "status",
               **detail) -> None:
    """Move a job to `new` (raises IllegalTransition when the machine forbids it)."""
    old = job.status
    check_transition(old, new)
    job.status = new.value
    job.updated_at = utcnow()
    session.add(JobEvent(job_id=job.id, kind=kind, from_status=old, to_status=new.value,
                         detail=detail or None))


def ensure_tenant(session: Session, name: str = DEFAULT_TENANT) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_batch(session: Session, tenant: Tenant, kind: str, description: str = "",
                 total: int = 0) -> Batch:
    batch = Batch(tenant_id=tenant.id, kind=kind, description=description, total=total)
    session.add(batch)
    session.flush()
    return batch


def create_job(session: Session, tenant: Tenant, source_uri: str, *, batch: Batch | None = None,
               idempotency_key: str | None = None, result_uri: str | None = None,
               mask_uri: str | None = None, source_sha256: str | None = None,
               callback_url: str | None = None, priority: str = Priority.normal.value,
               source_name: str | None = None) -> tuple[Job, bool]:
    """A queued job, or the tenant's existing job with the same idempotency key.
    Returns (job, created). `source_name`, the file's name as its owner knows it (the
    source URI may be a storage hash), goes into the first event's detail."""
    if idempotency_key:
        existing = session.scalar(select(Job).where(Job.tenant_id == tenant.id,
                                                    Job.idempotency_key == idempotency_key))
        if existing is not None:
            return existing, False
    job = Job(tenant_id=tenant.id, source_uri=source_uri, batch_id=batch.id if batch else None,
              idempotency_key=idempotency_key, result_uri=result_uri, mask_uri=mask_uri,
              source_sha256=source_sha256, status=JobStatus.queued.value, attempts=0,
              callback_url=callback_url, priority=priority)
    try:
        with session.begin_nested():
            session.add(job)
            session.flush()
    except IntegrityError:  # lost a race on the idempotency key
        existing = session.scalar(select(Job).where(Job.tenant_id == tenant.id,
                                                    Job.idempotency_key == idempotency_key))
        if existing is None:
            raise
        return existing, False
    # The priority asked for stays here: a reprocess run may change job.priority, and an
    # Idempotency-Key replay is compared with the request as it was.
    session.add(JobEvent(job_id=job.id, kind="status", from_status=None,
                         to_status=JobStatus.queued.value,
                         detail={"priority": priority,
                                 **({"source_name": source_name} if source_name else {})}))
    return job, True


@dataclass(frozen=True)
class Claim:
    job_id: str
    attempt: int
    source_uri: str
    result_uri: str | None
    mask_uri: str | None


def _locked_job(session: Session, job_id: str) -> Job | None:
    # FOR UPDATE on PostgreSQL; SQLite serialises writers anyway.
    return session.scalar(select(Job).where(Job.id == job_id).with_for_update())


class TooManyAttempts(Exception):
    """claim_job just failed the job as `too_many_attempts` (committed); it is finished now."""


def claim_job(db_url: str, job_id: str, max_attempts: int) -> Claim | None:
    """Mark the job running for this attempt, or None when there is nothing to do.
    Raises TooManyAttempts after failing (and committing) a job whose attempts are used up."""
    with session_scope(db_url) as session:
        job = _locked_job(session, job_id)
        if job is None:
            log.warning("job %s does not exist; nothing to do", job_id)
            return None
        if JobStatus(job.status) in FINISHED:
            log.info("job %s already %s; nothing to do", job_id, job.status)
            return None
        gave_up = job.attempts >= max_attempts
        if gave_up:
            set_status(session, job, JobStatus.failed, attempts=job.attempts)
            job.error_code = "too_many_attempts"
            job.error_message = (f"gave up after {job.attempts} attempts (the worker died or a "
                                 "transient error repeated each time)")
            job.finished_at = utcnow()
        else:
            kind = "takeover" if job.status == JobStatus.running.value else "status"
            set_status(session, job, JobStatus.running, kind=kind, attempt=job.attempts + 1,
                       worker=socket.gethostname())
            job.attempts += 1
            job.started_at = utcnow()
            job.review_reason = None  # a new attempt: an earlier review reason no longer holds
            job.worker_host = socket.gethostname()
        claim = Claim(job.id, job.attempts, job.source_uri, job.result_uri, job.mask_uri)
    if gave_up:
        raise TooManyAttempts(f"job {job_id}: {claim.attempt} attempts used up")
    return claim


def _holds_claim(job: Job | None, claim: Claim) -> bool:
    return (job is not None and job.status == JobStatus.running.value
            and job.attempts == claim.attempt)


def _json_safe(value):
    """`value` as plain JSON types for an event's detail: numpy scalars and arrays become
    Python numbers and lists, tuples lists, NaN/inf None (PostgreSQL's json has neither)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalar or array
        return _json_safe(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def finish_job(db_url: str, claim: Claim, status: JobStatus, *, result_uri: str | None,
               mask_uri: str | None, metrics: dict, pipeline_version: str,
               review_reason: str | None = None, gate: list[dict] | None = None,
               encoding: dict | None = None, stage_ms: dict | None = None) -> bool:
    """Record the result; False (and nothing written) when this attempt lost its claim.
    `review_reason` is stored only with needs_review. The status event's detail gets
    `gate` (the do-no-harm gate's per-region verdicts), `encoding` (how the result file was
    written: for JPEG, whether the upload's coefficients were kept and how many MCUs
    changed) and `stage_ms` (stage times job_metrics has no column for: ms_gate,
    ms_residual)."""
    with session_scope(db_url) as session:
        job = _locked_job(session, claim.job_id)
        if not _holds_claim(job, claim):
            log.warning("job %s: attempt %s lost its claim; result discarded",
                        claim.job_id, claim.attempt)
            return False
        reason = review_reason if status == JobStatus.needs_review else None
        extra = {}
        if reason:
            extra["review_reason"] = reason
        if gate:
            extra["gate"] = _json_safe(gate)
        if encoding:
            extra["encoding"] = _json_safe(encoding)
        if stage_ms:
            extra["ms"] = _json_safe(stage_ms)
        set_status(session, job, status, attempt=claim.attempt, **extra)
        job.result_uri, job.mask_uri = result_uri, mask_uri
        job.pipeline_version = pipeline_version
        job.error_code = job.error_message = None
        job.review_reason = reason
        job.finished_at = utcnow()
        row = session.get(JobMetrics, job.id) or JobMetrics(job_id=job.id)
        for name in METRIC_FIELDS + JPEG_METRIC_FIELDS:
            setattr(row, name, metrics.get(name))   # the jpeg_* ones are optional
        session.add(row)
        return True


def fail_job(db_url: str, claim: Claim, code: str, message: str) -> bool:
    with session_scope(db_url) as session:
        job = _locked_job(session, claim.job_id)
        if not _holds_claim(job, claim):
            return False
        set_status(session, job, JobStatus.failed, attempt=claim.attempt, error_code=code)
        job.error_code, job.error_message = code, message[:2000]
        job.review_reason = None
        job.finished_at = utcnow()
        return True


def release_for_retry(db_url: str, claim: Claim, reason: str) -> None:
    """Transient fault: back to queued so the retried task can claim it again."""
    with session_scope(db_url) as session:
        job = _locked_job(session, claim.job_id)
        if _holds_claim(job, claim):
            set_status(session, job, JobStatus.queued, kind="retry", attempt=claim.attempt,
                       reason=reason[:500])


def requeue_job(session: Session, job: Job, reason: str) -> None:
    """Queue a finished job again (a retry by its owner or an operator) with a fresh
    attempt budget; the caller enqueues its task after the commit."""
    set_status(session, job, JobStatus.queued, kind="retry", reason=reason)
    job.attempts = 0
    job.error_code = job.error_message = None
    job.review_reason = None
    job.finished_at = None


def output_uris(claim: Claim, extension: str) -> tuple[str, str]:
    """Where the result and mask go: preset on the job (clean), else keys in storage."""
    storage = get_storage()
    result = claim.result_uri or storage.uri(f"results/{claim.job_id}{extension}")
    mask = claim.mask_uri or storage.uri(f"masks/{claim.job_id}.png")
    return result, mask


def process_job(job_id: str, engines, settings: Settings | None = None) -> str | None:
    """One attempt at a job. Returns the final status, or None when nothing was done.
    Bad input fails the job; TransientError propagates (after releasing the job) so the
    caller can retry; any other exception fails the job with `internal_error`. A job this
    attempt finished gets its webhook enqueued (when it has a callback URL)."""
    settings = settings or get_settings()
    status = _attempt(job_id, engines, settings)
    if status is not None:
        from workers.webhooks import notify_finished  # lazy: Celery only when needed

        notify_finished(job_id, settings)
    return status


def _attempt(job_id: str, engines, settings: Settings) -> str | None:
    from workers.pipeline import process_image

    db_url = settings.database_url
    try:
        claim = claim_job(db_url, job_id, settings.max_attempts)
    except TooManyAttempts as exc:
        log.warning("%s: failed as too_many_attempts", exc)
        return JobStatus.failed.value  # finished now: its webhook goes out like any other
    if claim is None:
        return None
    try:
        data = read_uri(claim.source_uri, max_bytes=settings.max_bytes)
        result = process_image(data, engines, settings)
        result_uri, mask_uri = output_uris(claim, result.extension)
        write_uri(result_uri, result.image_bytes)
        write_uri(mask_uri, result.mask_png)
    except BadInput as exc:
        log.info("job %s failed: %s (%s)", job_id, exc.message, exc.code)
        return JobStatus.failed.value if fail_job(db_url, claim, exc.code, exc.message) else None
    except TransientError as exc:
        release_for_retry(db_url, claim, str(exc))
        raise
    except ClearmarkError as exc:
        return JobStatus.failed.value if fail_job(db_url, claim, exc.code, exc.message) else None
    except SoftTimeLimitExceeded:
        message = f"took longer than the soft time limit ({settings.soft_time_limit_s} s)"
        return JobStatus.failed.value if fail_job(db_url, claim, "time_limit", message) else None
    except Exception as exc:  # a bug or an unexpected library error: fail this job only
        log.exception("job %s: unexpected error", job_id)
        message = f"{type(exc).__name__}: {exc}"
        return JobStatus.failed.value if fail_job(db_url, claim, "internal_error", message) else None
    status = JobStatus(result.status)
    if finish_job(db_url, claim, status, result_uri=result_uri, mask_uri=mask_uri,
                  metrics=result.metrics, pipeline_version=engines.version,
                  review_reason=result.review_reason, gate=result.details.get("gate"),
                  encoding=result.encoding,
                  stage_ms={k: result.details[k] for k in ("ms_gate", "ms_residual")
                            if k in result.details}):
        log.info("job %s %s in %.0f ms", job_id, status.value, result.metrics["ms_total"])
        return status.value
    return None
