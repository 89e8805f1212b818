"""Job life cycle on the database: create, claim, finish, fail, retry, with an event per change.

`attempts.process_job` runs one attempt with these steps (this module imports no pipeline:
the API uses it too). Every step is safe to run twice: a finished job is left alone, a job found
`running` is taken over only once its lease has expired (its worker died or hung), and only
the attempt that holds the claim may record a result (guarded update on status + attempt
number). Each attempt writes its own result keys, so a late loser never overwrites the
winner's files.
"""

from __future__ import annotations

import logging
import math
import socket
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeGuard

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clearmark.errors import EngineUnavailable
from clearmark.settings import get_settings
from clearmark.workers.db import (
    FINISHED,
    JPEG_METRIC_FIELDS,
    METHOD_FIELD,
    METRIC_FIELDS,
    Batch,
    Job,
    JobEvent,
    JobMetrics,
    JobStatus,
    Priority,
    Tenant,
    as_utc,
    check_transition,
    session_scope,
    utcnow,
)

log = logging.getLogger(__name__)
DEFAULT_TENANT = "local"


def set_status(session: Session, job: Job, new: JobStatus, kind: str = "status", **detail: Any) -> None:
    """Move a job to `new` (raises IllegalTransition when the machine forbids it)."""
    old = job.status
    check_transition(old, new)
    job.status = new.value
    job.updated_at = utcnow()
    session.add(
        JobEvent(job_id=job.id, kind=kind, from_status=old, to_status=new.value, detail=detail or None)
    )


def ensure_tenant(session: Session, name: str = DEFAULT_TENANT) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def readable_name(name: str | None, limit: int = 1000) -> str | None:
    """A file name as it may be shown in a terminal or a page: control and format characters
    (escape sequences, bidi overrides) become U+FFFD, and a longer name keeps its last
    `limit` characters (a path's end names the file). None for no name."""
    if not name:
        return None
    clean = "".join("\ufffd" if unicodedata.category(c) in ("Cc", "Cf") else c for c in name)
    return clean if len(clean) <= limit else "…" + clean[-(limit - 1) :]


def create_batch(session: Session, tenant: Tenant, kind: str, description: str = "", total: int = 0) -> Batch:
    batch = Batch(tenant_id=tenant.id, kind=kind, description=description, total=total)
    session.add(batch)
    session.flush()
    return batch


def create_job(
    session: Session,
    tenant: Tenant,
    source_uri: str,
    *,
    batch: Batch | None = None,
    idempotency_key: str | None = None,
    result_uri: str | None = None,
    mask_uri: str | None = None,
    source_sha256: str | None = None,
    callback_url: str | None = None,
    priority: str = Priority.normal.value,
    source_name: str | None = None,
    catalogue_group: str | None = None,
) -> tuple[Job, bool]:
    """A queued job, or the tenant's existing job with the same idempotency key.
    Returns (job, created). `source_name` is the file's name as its owner knows it (the
    source URI may be a storage hash), kept as people may be shown it (readable_name);
    `catalogue_group` the upload's group (workers.groups)."""
    if idempotency_key:
        existing = session.scalar(
            select(Job).where(Job.tenant_id == tenant.id, Job.idempotency_key == idempotency_key)
        )
        if existing is not None:
            return existing, False
    job = Job(
        tenant_id=tenant.id,
        source_uri=source_uri,
        source_name=readable_name(source_name),
        batch_id=batch.id if batch else None,
        idempotency_key=idempotency_key,
        result_uri=result_uri,
        mask_uri=mask_uri,
        source_sha256=source_sha256,
        status=JobStatus.queued.value,
        attempts=0,
        callback_url=callback_url,
        priority=priority,
        catalogue_group=catalogue_group,
    )
    try:
        with session.begin_nested():
            session.add(job)
            session.flush()
    except IntegrityError:  # lost a race on the idempotency key
        existing = session.scalar(
            select(Job).where(Job.tenant_id == tenant.id, Job.idempotency_key == idempotency_key)
        )
        if existing is None:
            raise
        return existing, False
    # The priority asked for stays here: a reprocess run may change job.priority, and an
    # Idempotency-Key replay is compared with the request as it was.
    session.add(
        JobEvent(
            job_id=job.id,
            kind="status",
            from_status=None,
            to_status=JobStatus.queued.value,
            detail={"priority": priority},
        )
    )
    return job, True


@dataclass(frozen=True)
class Claim:
    job_id: str
    attempt: int
    source_uri: str
    result_uri: str | None
    mask_uri: str | None
    tenant_id: str
    # A reviewer's mask this attempt removes with instead of detecting: (edit number, URI).
    given_mask: tuple[int, str] | None = None
    catalogue_group: str | None = None


MASK_EVENT = "mask_edit"  # a reviewer's mask queued the job (workers.review_mask)


def queued_mask(session: Session, job: Job) -> tuple[int, str] | None:
    """(edit number, mask URI) of the reviewer's mask the job was queued with since it last
    finished (its `mask_edit` event), or None: the pipeline detects as usual. Read at each
    claim, so a retry or a reaped attempt of that stay runs with the same mask."""
    finished = (
        select(func.max(JobEvent.id))
        .where(JobEvent.job_id == job.id, JobEvent.to_status.in_([s.value for s in FINISHED]))
        .scalar_subquery()
    )
    detail = session.scalar(
        select(JobEvent.detail)
        .where(JobEvent.job_id == job.id, JobEvent.kind == MASK_EVENT)
        .where(JobEvent.id > func.coalesce(finished, 0))
        .order_by(JobEvent.id.desc())
        .limit(1)
    )
    return (int(detail["edit"]), str(detail["mask_uri"])) if detail else None


def _locked_job(session: Session, job_id: str) -> Job | None:
    # FOR UPDATE on PostgreSQL; SQLite serialises writers anyway.
    return session.scalar(select(Job).where(Job.id == job_id).with_for_update())


class TooManyAttempts(Exception):
    """claim_job just failed the job as `too_many_attempts` (committed); it is finished now."""


def mark_finished(session: Session, job: Job) -> None:
    """Bookkeeping of every finish: no lease any more, and a webhook due when the job or
    its tenant has a callback URL (set in the same transaction, so a crash after the commit
    cannot lose it: the reaper sends what no task carries)."""
    job.finished_at = utcnow()
    job.lease_expires_at = None
    job.webhook_pending = bool(
        job.callback_url or session.scalar(select(Tenant.webhook_url).where(Tenant.id == job.tenant_id))
    )


def give_up(session: Session, job: Job) -> None:
    """Fail a job whose attempts are used up, for good; the message keeps the error of the
    last attempt released by a transient error (release_for_retry), if any."""
    last = session.scalar(
        select(JobEvent.detail)
        .where(JobEvent.job_id == job.id, JobEvent.kind == "retry")
        .order_by(JobEvent.id.desc())
        .limit(1)
    )
    set_status(session, job, JobStatus.failed, attempts=job.attempts)
    job.error_code = "too_many_attempts"
    job.error_message = (
        f"gave up after {job.attempts} attempts (the worker died, hung or a "
        "transient error repeated each time)"
    )
    if last and "attempt" in last:  # requeue_job's retry events (a fresh budget) have none
        job.error_message = f"{job.error_message}; last error: {last['reason']}"[:2000]
    mark_finished(session, job)


ENGINE_EVENT = "engine_unavailable"  # a worker took the job's task and could not load its engines


def note_engine_unavailable(db_url: str, job_id: str, reason: str) -> None:
    """Record on a queued job that the worker its task reached cannot load its engines (the
    task then ends; the reaper sends it again, and counts: `fail_unclaimed`)."""
    with session_scope(db_url) as session:
        job = _locked_job(session, job_id)
        if job is not None and job.status == JobStatus.queued.value:
            detail = {"reason": reason, "worker": socket.gethostname()}
            session.add(JobEvent(job_id=job_id, kind=ENGINE_EVENT, detail=detail))


def events_since_queued(session: Session, job: Job) -> Sequence[JobEvent]:
    """The job's events after it last became queued (created, retried, its lease reaped),
    oldest first: what happened during its current stay in the queue."""
    entered = (
        select(func.max(JobEvent.id))
        .where(JobEvent.job_id == job.id, JobEvent.to_status == JobStatus.queued.value)
        .scalar_subquery()
    )
    return session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job.id, JobEvent.id > func.coalesce(entered, 0))
        .order_by(JobEvent.id)
    ).all()


def fail_unclaimed(session: Session, job: Job, resends: int, since: Sequence[JobEvent]) -> None:
    """Fail a queued job whose task the reaper sent `resends` times without any worker
    claiming it: `engine_unavailable` when a worker that took it said it cannot load its
    engines (`since`: events_since_queued), else `not_claimed`."""
    reasons = [e.detail["reason"] for e in since if e.kind == ENGINE_EVENT and e.detail]
    set_status(session, job, JobStatus.failed, resends=resends)
    if reasons:
        job.error_code = EngineUnavailable.code
        job.error_message = (
            f"sent {resends} times and never run: the worker that took it cannot load its engines "
            f"({reasons[-1]})"
        )[:2000]
    else:
        job.error_code = "not_claimed"
        job.error_message = (
            f"sent {resends} times and never run: no worker took it up (its task was lost each time)"
        )
    mark_finished(session, job)


def lease_held(job: Job) -> bool:
    """A running job whose lease has not expired yet: its attempt is alive."""
    return (
        job.status == JobStatus.running.value
        and job.lease_expires_at is not None
        and as_utc(job.lease_expires_at) > utcnow()
    )


def claim_job(db_url: str, job_id: str, max_attempts: int, lease_s: float | None = None) -> Claim | None:
    """Mark the job running for this attempt, holding a lease for `lease_s` (default
    CLEARMARK_LEASE_S), or None when there is nothing to do: the job is finished, or running
    under a lease that has not expired (a second delivery never takes over a live attempt).
    Raises TooManyAttempts after failing (and committing) a job whose attempts are used up."""
    lease_s = get_settings().lease_s if lease_s is None else lease_s
    with session_scope(db_url) as session:
        job = _locked_job(session, job_id)
        if job is None:
            log.warning("job %s does not exist; nothing to do", job_id)
            return None
        if JobStatus(job.status) in FINISHED:
            log.info("job %s already %s; nothing to do", job_id, job.status)
            return None
        if lease_held(job):
            log.info(
                "job %s: attempt %s holds it until %s; not taken over",
                job_id,
                job.attempts,
                job.lease_expires_at,
            )
            return None
        gave_up = job.attempts >= max_attempts
        if gave_up:
            give_up(session, job)
        else:
            kind = "takeover" if job.status == JobStatus.running.value else "status"
            set_status(
                session,
                job,
                JobStatus.running,
                kind=kind,
                attempt=job.attempts + 1,
                worker=socket.gethostname(),
            )
            job.attempts += 1
            job.started_at = utcnow()
            job.lease_expires_at = job.started_at + timedelta(seconds=lease_s)
            job.review_reason = None  # a new attempt: an earlier review reason no longer holds
            job.worker_host = socket.gethostname()
        claim = Claim(
            job.id,
            job.attempts,
            job.source_uri,
            job.result_uri,
            job.mask_uri,
            job.tenant_id,
            None if gave_up else queued_mask(session, job),
            job.catalogue_group,
        )
    if gave_up:
        raise TooManyAttempts(f"job {job_id}: {claim.attempt} attempts used up")
    return claim


def _holds_claim(job: Job | None, claim: Claim) -> TypeGuard[Job]:
    return job is not None and job.status == JobStatus.running.value and job.attempts == claim.attempt


def _json_safe(value: object) -> Any:
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


def finish_job(
    db_url: str,
    claim: Claim,
    status: JobStatus,
    *,
    result_uri: str | None,
    mask_uri: str | None,
    metrics: dict[str, Any],
    pipeline_version: str,
    review_reason: str | None = None,
    gate: list[dict[str, Any]] | None = None,
    encoding: dict[str, Any] | None = None,
    suspects: list[dict[str, Any]] | None = None,
    given_mask: dict[str, Any] | None = None,
) -> bool:
    """Record the result; False (and nothing written) when this attempt lost its claim.
    `review_reason` is stored only with needs_review. The status event's detail gets
    `gate` (the do-no-harm gate's per-region verdicts) and `encoding` (how the result file
    was written: for JPEG, whether the upload's coefficients were kept and how many MCUs
    changed) and `suspects` (each region a detector flagged: detector, box, scores and what
    the pipeline did there, its `fate`; the review page draws them) and `given_mask` (an
    attempt with a reviewer's mask: its edit number and URI, and this attempt's result
    and mask URIs, so every attempt stays on the job)."""
    with session_scope(db_url) as session:
        job = _locked_job(session, claim.job_id)
        if not _holds_claim(job, claim):
            log.warning("job %s: attempt %s lost its claim; result discarded", claim.job_id, claim.attempt)
            return False
        reason = review_reason if status == JobStatus.needs_review else None
        extra: dict[str, Any] = {}
        if reason:
            extra["review_reason"] = reason
        if gate:
            extra["gate"] = _json_safe(gate)
        if encoding:
            extra["encoding"] = _json_safe(encoding)
        if suspects:
            extra["suspects"] = [
                _json_safe({k: v for k, v in x.items() if k != "evidence"}) for x in suspects
            ]
        if given_mask:
            extra["given_mask"] = given_mask | {"result_uri": result_uri, "mask_uri": mask_uri}
        set_status(session, job, status, attempt=claim.attempt, **extra)
        job.result_uri, job.mask_uri = result_uri, mask_uri
        job.pipeline_version = pipeline_version
        job.error_code = job.error_message = None
        job.review_reason = reason
        mark_finished(session, job)
        row = session.get(JobMetrics, job.id) or JobMetrics(job_id=job.id)
        for name in (*METRIC_FIELDS, *JPEG_METRIC_FIELDS, METHOD_FIELD):
            setattr(row, name, metrics.get(name))  # the jpeg_* ones and the method are optional
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
        mark_finished(session, job)
        return True


def release_for_retry(db_url: str, claim: Claim, reason: str, attempt_spent: bool = True) -> None:
    """Transient fault: back to queued so the retried task can claim it again. An outage
    (`attempt_spent` False: the storage is read-only or full) gives the attempt back, as a
    database or broker outage spends none: waiting one out must not use up the job's
    CLEARMARK_MAX_ATTEMPTS. The next claim then takes this attempt's number (and its output
    keys) again: no other live attempt can have it, as this one held the claim."""
    with session_scope(db_url) as session:
        job = _locked_job(session, claim.job_id)
        if _holds_claim(job, claim):
            set_status(
                session,
                job,
                JobStatus.queued,
                kind="retry",
                attempt=claim.attempt,
                reason=reason[:500],
                attempt_spent=attempt_spent,
            )
            job.lease_expires_at = None
            if not attempt_spent:
                job.attempts = claim.attempt - 1


def requeue_job(session: Session, job: Job, reason: str) -> None:
    """Queue a finished job again (a retry by its owner or an operator) with a fresh
    attempt budget; the caller enqueues its task after the commit."""
    set_status(session, job, JobStatus.queued, kind="retry", reason=reason)
    job.attempts = 0
    job.error_code = job.error_message = None
    job.review_reason = None
    job.finished_at = None
    job.lease_expires_at = None
    job.webhook_pending = False
