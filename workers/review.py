"""The review loop: jobs in `needs_review` wait for a person's accept or reject.

The pipeline sends a job there when its residual score or detector confidence falls in the
configured band (CLEARMARK_REVIEW_RESIDUAL_MIN / CLEARMARK_REVIEW_CONFIDENCE_MAX) or the
do-no-harm gate put back a region the detector was sure of; `Job.review_reason` says which
(it stays on the job after the decision). Accept
makes it `succeeded`, reject makes it `failed` (error code `rejected_in_review`); either
way a `review` event records who decided and why, and the job's webhook fires again with
the final status.
"""

from __future__ import annotations

from sqlalchemy import select

from clearmark.settings import Settings, get_settings
from clearmark.workers import webhooks
from clearmark.workers.db import Job, JobMetrics, JobStatus, Tenant, session_scope
from clearmark.workers.jobs import mark_finished, set_status

REJECTED = "rejected_in_review"


def pending(
    tenant: str | None = None, limit: int = 50, settings: Settings | None = None
) -> list[tuple[Job, JobMetrics | None]]:
    """Jobs waiting for review, oldest first, with their metrics."""
    s = settings or get_settings()
    q = (
        select(Job, JobMetrics)
        .outerjoin(JobMetrics, JobMetrics.job_id == Job.id)
        .where(Job.status == JobStatus.needs_review.value)
    )
    if tenant:
        q = q.join(Tenant, Tenant.id == Job.tenant_id).where(Tenant.name == tenant)
    with session_scope(s.database_url) as session:
        rows = session.execute(q.order_by(Job.finished_at, Job.id).limit(limit))
        return [(job, metrics) for job, metrics in rows]


def decide(
    job_id: str, accept: bool, reviewer: str = "", note: str = "", settings: Settings | None = None
) -> str:
    """Close a review; returns the job's new status. Raises LookupError for an unknown job
    and ValueError for one that is not in needs_review."""
    s = settings or get_settings()
    new = JobStatus.succeeded if accept else JobStatus.failed
    with session_scope(s.database_url) as session:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None:
            raise LookupError(f"no job {job_id}")
        if job.status != JobStatus.needs_review.value:
            raise ValueError(f"job {job_id} is {job.status}, not needs_review")
        set_status(session, job, new, kind="review", reviewer=reviewer or None, note=note or None)
        if not accept:
            job.error_code, job.error_message = REJECTED, note or "rejected by a reviewer"
        mark_finished(session, job)
    webhooks.notify_finished(job_id, s)
    return new.value
