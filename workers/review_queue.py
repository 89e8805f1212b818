"""What the review page shows: a tenant's queue (filtered, ordered, paged, with counts) and
one job with its regions and history. Every query is scoped to one tenant: another
tenant's job is not found (`job_view` gives None), never shown."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from clearmark.workers.db import WITH_RESULT, Batch, Job, JobEvent, JobMetrics, JobStatus, as_utc
from clearmark.workers.job_document import iso

# The statuses the page opens: the review queue and, for spot checks, the finished ones.
QUEUE_STATUSES = (JobStatus.needs_review, JobStatus.succeeded, JobStatus.no_watermark)
MAX_PER_PAGE = 200
_Query = TypeVar("_Query", bound=Select[*tuple[Any, ...]])


class Order(enum.StrEnum):
    oldest = "oldest"  # the longest waiting first (finished earliest)
    uncertain = "uncertain"  # the lowest detector confidence first


@dataclass(frozen=True)
class QueueFilter:
    status: JobStatus = JobStatus.needs_review
    reason: str = ""  # text inside the review reason (case-insensitive)
    batch: str = ""  # a batch id
    since: date | None = None  # created on or after this day (UTC)
    until: date | None = None  # created on or before this day (UTC)
    version: str = ""  # text inside the pipeline version
    order: Order = Order.oldest
    page: int = 1
    per_page: int = 50


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _filtered(query: _Query, tenant_id: str, f: QueueFilter) -> _Query:
    query = query.where(Job.tenant_id == tenant_id, Job.status == f.status.value)
    if f.reason:
        query = query.where(Job.review_reason.ilike(_like(f.reason), escape="\\"))
    if f.batch:
        query = query.where(Job.batch_id == f.batch)
    if f.version:
        query = query.where(Job.pipeline_version.ilike(_like(f.version), escape="\\"))
    if f.since:
        query = query.where(Job.created_at >= datetime.combine(f.since, time.min, tzinfo=UTC))
    if f.until:
        query = query.where(
            Job.created_at < datetime.combine(f.until + timedelta(days=1), time.min, tzinfo=UTC)
        )
    return query


def queue(session: Session, tenant_id: str, f: QueueFilter) -> dict[str, Any]:
    """One page of the tenant's jobs in `f.status` matching `f`, the number matching, the
    tenant's counts by status, and its recent batches and pipeline versions (the filters'
    choices)."""
    total = session.scalar(_filtered(select(func.count()).select_from(Job), tenant_id, f)) or 0
    rows = select(Job, JobMetrics).outerjoin(JobMetrics, JobMetrics.job_id == Job.id)
    order: tuple[Any, ...]
    if f.order is Order.uncertain:
        order = (JobMetrics.detector_confidence.is_(None), JobMetrics.detector_confidence, Job.id)
    else:
        order = (Job.finished_at, Job.id)
    page = session.execute(
        _filtered(rows, tenant_id, f).order_by(*order).offset((f.page - 1) * f.per_page).limit(f.per_page)
    ).all()
    counts = dict(
        session.execute(
            select(Job.status, func.count()).where(Job.tenant_id == tenant_id).group_by(Job.status)
        ).all()
    )
    batches = session.execute(
        select(Batch.id, Batch.kind, Batch.description, Batch.created_at)
        .where(Batch.tenant_id == tenant_id)
        .order_by(Batch.created_at.desc())
        .limit(50)
    ).all()
    versions = session.scalars(
        select(Job.pipeline_version)
        .where(Job.tenant_id == tenant_id, Job.pipeline_version.is_not(None))
        .group_by(Job.pipeline_version)
        .order_by(func.max(Job.finished_at).desc())
        .limit(20)
    ).all()
    return {
        "total": total,
        "page": f.page,
        "per_page": f.per_page,
        "counts": {s.value: int(counts.get(s.value, 0)) for s in JobStatus},
        "jobs": [_item(job, m) for job, m in page],
        "batches": [
            {"id": b.id, "kind": b.kind, "description": b.description, "created_at": iso(b.created_at)}
            for b in batches
        ],
        "versions": list(versions),
    }


def _item(job: Job, m: JobMetrics | None) -> dict[str, Any]:
    return {
        "id": job.id,
        "name": job.display_name,
        "status": job.status,
        "review_reason": job.review_reason,
        "batch_id": job.batch_id,
        "pipeline_version": job.pipeline_version,
        "created_at": iso(job.created_at),
        "finished_at": iso(job.finished_at),
        "confidence": m.detector_confidence if m else None,
        "residual": m.residual_score if m else None,
        "width": m.width if m else None,
        "height": m.height if m else None,
    }


def owned_job(session: Session, tenant_id: str, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))


def _kind(fate: str) -> str:
    if fate.startswith("doubted"):  # pipeline.process.DOUBTED: removed in a proposal
        return "doubted"
    if fate.startswith(("removed", "partly removed")):
        return "removed"
    return "put_back" if "put back" in fate else "not_removed"


def regions(events: list[JobEvent]) -> list[dict[str, Any]]:
    """Each region a detector flagged in the latest finished attempt (its status event's
    `suspects`), with what the pipeline did there: `label` in full, `short` for drawing on
    the photo. A job finished before suspects were recorded shows its gate verdicts."""
    latest = next(
        (e.detail for e in reversed(events) if e.detail and ("suspects" in e.detail or "gate" in e.detail)),
        {},
    )
    out: list[dict[str, Any]] = []
    for s in latest.get("suspects") or []:
        after = "" if s.get("after") is None else f" -> {s['after']:.2f} after"
        fate = str(s.get("fate", ""))
        out.append(
            {
                "kind": _kind(fate),
                "box": s["box"],
                "label": f"{s['detector']} {s['score']:.2f}{after}: {fate}",
                "short": f"{s['detector']}: {fate.split(':')[0]}",
            }
        )
    if not out:
        for v in latest.get("gate") or []:
            what = "kept" if v.get("passed") else "put back"
            out.append(
                {
                    "kind": "removed" if v.get("passed") else "put_back",
                    "box": v["box"],
                    "label": f"{what}: {v.get('reason', '')}",
                    "short": what,
                }
            )
    return out


def _event(e: JobEvent) -> dict[str, Any]:
    d = e.detail or {}
    return {
        "kind": e.kind,
        "from": e.from_status,
        "to": e.to_status,
        "at": iso(as_utc(e.created_at)),
        **{
            k: d[k]
            for k in ("decision", "reviewer", "note", "via", "attempt", "review_reason", "edit", "pixels")
            if k in d
        },
    }


def job_view(session: Session, tenant_id: str, job_id: str) -> dict[str, Any] | None:
    """The job as the page shows it, or None when the tenant has no such job."""
    job = owned_job(session, tenant_id, job_id)
    if job is None:
        return None
    m = session.get(JobMetrics, job.id)
    events = list(session.scalars(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id)))
    done = JobStatus(job.status) in WITH_RESULT
    return {
        **_item(job, m),
        "mask_area_fraction": m.mask_area_fraction if m else None,
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "has_result": bool(done and job.result_uri),
        "has_mask": bool(done and job.mask_uri),
        "regions": regions(events),
        "events": [_event(e) for e in events],
    }
