"""The review loop: jobs in `needs_review` wait for a person's accept or reject.

The pipeline sends a job there when its residual score or detector confidence falls in the
rules of `pipeline.verdict` cannot promise `succeeded` or `no_watermark`; `Job.review_reason`
says why (it stays on the job after the decision). Three decisions:

- accept: the delivered result is good. A result with something removed becomes
  `succeeded`; a result that is the upload unchanged (nothing was removed) becomes
  `no_watermark`, recorded as an accepted unchanged upload, never as a removal;
- reject: `failed` (error code `rejected_in_review`), to retry or reprocess;
- no mark (a false alarm): `no_watermark`, and the job delivers the upload itself with an
  empty mask, whatever the pipeline changed.

Each is a `review` event with who decided, what and why, and the job's webhook fires again
with the final status.
"""

from __future__ import annotations

import enum
import io

import numpy as np
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from clearmark.settings import Settings, get_settings
from clearmark.workers import webhooks
from clearmark.workers.db import Job, JobMetrics, JobStatus, Tenant, session_scope
from clearmark.workers.jobs import mark_finished, set_status
from clearmark.workers.storage import get_storage

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


class Decision(enum.StrEnum):
    accept = "accept"
    reject = "reject"
    no_mark = "no_mark"


def locked_in_review(session: Session, job_id: str, tenant_id: str | None) -> Job:
    """The job, locked for this transaction. LookupError for an unknown job (or, with
    `tenant_id`, another tenant's), ValueError for one that is not in needs_review."""
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None or (tenant_id is not None and job.tenant_id != tenant_id):
        raise LookupError(f"no job {job_id}")
    if job.status != JobStatus.needs_review.value:
        raise ValueError(f"job {job_id} is {job.status}, not needs_review")
    return job


def decide(
    job_id: str,
    decision: Decision,
    reviewer: str = "",
    note: str = "",
    settings: Settings | None = None,
    *,
    tenant_id: str | None = None,
    via: str = "cli",
) -> str:
    """Close a review; returns the job's new status. Raises LookupError for an unknown job
    (or, with `tenant_id`, another tenant's) and ValueError for one that is not in
    needs_review. `via` (cli, api, page) is kept in the event with who decided."""
    s = settings or get_settings()
    with session_scope(s.database_url) as session:
        job = locked_in_review(session, job_id, tenant_id)
        metrics = session.get(JobMetrics, job.id)
        unchanged = metrics is None or not metrics.mask_area_fraction
        detail: dict[str, object] = {
            "decision": decision.value,
            "reviewer": reviewer or None,
            "note": note or None,
            "via": via,
        }
        if decision is Decision.reject:
            new = JobStatus.failed
            job.error_code, job.error_message = REJECTED, note or "rejected by a reviewer"
        elif decision is Decision.accept and not unchanged:
            new = JobStatus.succeeded
        else:
            new, detail["unchanged_upload"] = JobStatus.no_watermark, True
            if decision is Decision.no_mark and not unchanged:
                _deliver_the_upload(job, metrics)
        set_status(session, job, new, kind="review", **detail)
        mark_finished(session, job)
    webhooks.notify_finished(job_id, s)
    return new.value


def _deliver_the_upload(job: Job, metrics: JobMetrics | None) -> None:
    """The job's result becomes its upload, its mask empty: nothing was a mark."""
    w, h = (int(metrics.width), int(metrics.height)) if metrics else (1, 1)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w), np.uint8), "L").save(buf, "PNG")
    job.mask_uri = get_storage().put(f"masks/{job.id}-no-mark.png", buf.getvalue())
    job.result_uri = job.source_uri
    if metrics is not None:
        metrics.mask_area_fraction = 0.0
