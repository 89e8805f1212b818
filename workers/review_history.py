"""Every review decision taken, read back from the job events: when, what, by whom, how long
the photo waited in review and how many masks the reviewer painted first. What
`clearmark review export` and the report's review section read.

A review's time runs from the job's first `needs_review` of that stay in review to the
decision: a removal with the reviewer's mask (`mask_edit`, back to needs_review when done)
is part of the review, while a retry or a reprocessing run starts a new stay.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from clearmark.workers.db import Job, JobEvent, JobStatus, Tenant, as_utc
from clearmark.workers.jobs import MASK_EVENT

CHUNK = 500  # job ids per IN (...) query
ENDS = {JobStatus.succeeded.value, JobStatus.no_watermark.value, JobStatus.failed.value}


@dataclass(frozen=True)
class Review:
    job_id: str
    decision: str  # accept | reject | no_mark
    status: str  # what the decision made the job: succeeded | no_watermark | failed
    reviewer: str | None
    via: str | None
    at: datetime  # UTC
    waited_s: float | None  # from needs_review to the decision; None when not recorded
    masks_painted: int  # removals with the reviewer's mask in this review
    event_id: int


def reviews(
    session: Session, tenant: str | None = None, since: datetime | None = None, created_since: bool = False
) -> list[Review]:
    """Every decision, oldest first: of one tenant (by name) or all; `since` on the
    decision's time, or with `created_since` on the job's creation (the report's scope)."""
    query = select(JobEvent.job_id).join(Job, Job.id == JobEvent.job_id).where(JobEvent.kind == "review")
    if tenant:
        query = query.join(Tenant, Tenant.id == Job.tenant_id).where(Tenant.name == tenant)
    if since is not None:
        query = query.where((Job.created_at if created_since else JobEvent.created_at) >= since)
    job_ids = list(dict.fromkeys(session.scalars(query)))
    found: list[Review] = []
    for start in range(0, len(job_ids), CHUNK):
        events = session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id.in_(job_ids[start : start + CHUNK]))
            .order_by(JobEvent.job_id, JobEvent.id)
        )
        found += [r for r in _walk(events) if created_since or since is None or r.at >= since]
    return sorted(found, key=lambda r: (r.at, r.event_id))


def _walk(events: Iterable[JobEvent]) -> Iterator[Review]:
    job, painted, editing = None, 0, False
    waiting: datetime | None = None
    for e in events:
        if e.job_id != job:
            job, waiting, painted, editing = e.job_id, None, 0, False
        d = e.detail or {}
        if e.kind == "review":
            at = as_utc(e.created_at)
            waited = (at - waiting).total_seconds() if waiting else None
            decision, status = str(d.get("decision")), str(e.to_status)
            yield Review(
                e.job_id, decision, status, d.get("reviewer"), d.get("via"), at, waited, painted, e.id
            )
            waiting, painted = None, 0
        elif e.kind == MASK_EVENT:
            painted, editing = painted + 1, True
        elif e.to_status == JobStatus.needs_review.value:
            waiting, editing = waiting or as_utc(e.created_at), False
        elif e.to_status in ENDS or (e.to_status == JobStatus.queued.value and not editing):
            waiting, painted, editing = None, 0, False  # finished unreviewed, or queued anew
