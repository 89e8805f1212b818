"""Operator views of the jobs table."""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict

from sqlalchemy import func, select

from clearmark.settings import Settings
from clearmark.workers.celery_app import app
from clearmark.workers.db import FINISHED, Batch, Job, JobStatus, Tenant, session_scope
from clearmark.workers.metrics import queue_depths, status_counts
from clearmark.workers.preflight import safe_url


class BatchProgress(TypedDict):
    """A row of `batch_progress`."""

    id: str
    kind: str
    tenant: str
    created_at: datetime
    total: int
    counts: dict[str, int]


def status_text(db_url: str, failures: int = 10) -> str:
    lines = ["jobs by status:"]
    lines += [f"  {status:<13} {n}" for status, n in status_counts(db_url).items()]
    with session_scope(db_url) as session:
        failed = session.scalars(
            select(Job)
            .where(Job.status == JobStatus.failed.value)
            .order_by(Job.updated_at.desc())
            .limit(failures)
        ).all()
        if failed:
            lines.append(f"recent failures (newest first, up to {failures}):")
            lines += [f"  {j.id}  {j.error_code}: {j.error_message}  [{j.display_name}]" for j in failed]
    return "\n".join(lines)


def queue_consumers(settings: Settings, timeout_s: float = 1.0) -> dict[str, list[str]]:
    """Queue name -> the workers consuming it now (asked over the broker; a worker that does
    not answer within timeout_s counts as absent). Asked on `settings`' broker, over a
    connection of its own (the app's pooled ones may point at the broker of earlier
    settings)."""
    with app.connection_for_write(settings.broker_url) as connection:
        replies = app.control.inspect(timeout=timeout_s, connection=connection).active_queues() or {}
    consumers: dict[str, list[str]] = {}
    for worker, queues in replies.items():
        for queue in queues:
            consumers.setdefault(queue["name"], []).append(worker)
    return consumers


def embedded_text(settings: Settings) -> str:
    """What `status` says instead of the queues when no broker is set."""
    return (
        "embedded mode: no broker is set (CLEARMARK_BROKER_URL), so no queues or workers; "
        f"the jobs above are in {safe_url(settings.database_url)}"
    )


def queues_text(settings: Settings) -> str:
    """Each queue's waiting tasks and consumers, flagging a queue that nobody consumes."""
    depths = queue_depths(settings)
    if not depths:
        return f"queues: the broker {safe_url(settings.broker_url)} cannot be reached"
    consumers = queue_consumers(settings)
    lines = [f"queues on {safe_url(settings.broker_url)}:"]
    for queue, waiting in depths.items():
        who = (
            ", ".join(sorted(consumers.get(queue, [])))
            or "NO WORKER consumes it: start one (clearmark worker)"
        )
        lines.append(f"  {queue:<22} {waiting:>6} waiting   {who}")
    return "\n".join(lines)


def batch_progress(
    db_url: str, batch_ids: list[str] | None = None, tenant: str | None = None, limit: int = 20
) -> list[BatchProgress]:
    """Newest batches first: id, kind, tenant, created_at, total and job counts by status."""
    with session_scope(db_url) as session:
        q = select(Batch, Tenant.name).join(Tenant, Tenant.id == Batch.tenant_id)
        if batch_ids:
            q = q.where(Batch.id.in_(batch_ids))
        if tenant:
            q = q.where(Tenant.name == tenant)
        batches = session.execute(q.order_by(Batch.created_at.desc()).limit(limit)).all()
        ids = [b.id for b, _ in batches]
        counts = session.execute(
            select(Job.batch_id, Job.status, func.count())
            .where(Job.batch_id.in_(ids))
            .group_by(Job.batch_id, Job.status)
        ).all()
    by_batch: dict[str, dict[str, int]] = {i: {} for i in ids}
    for batch_id, status, n in counts:
        if batch_id is not None:  # always: the query selects jobs of these batches
            by_batch[batch_id][status] = n
    return [
        {
            "id": b.id,
            "kind": b.kind,
            "tenant": name,
            "created_at": b.created_at,
            "total": b.total,
            "counts": by_batch[b.id],
        }
        for b, name in batches
    ]


def batches_text(rows: list[BatchProgress]) -> str:
    """One line per batch: finished/jobs now in it, and the counts by status (a job that a
    later reprocess run took over counts in that run's batch)."""
    if not rows:
        return "no batches"
    width = max(6, *(len(r["tenant"]) for r in rows))
    lines = [f"{'batch':<32}  {'kind':<9} {'tenant':<{width}} {'created (UTC)':<16} {'done':>13}  by status"]
    for r in rows:
        done = sum(n for s, n in r["counts"].items() if s in {f.value for f in FINISHED})
        jobs = sum(r["counts"].values())
        counts = " ".join(f"{s}={n}" for s, n in sorted(r["counts"].items())) or "-"
        lines.append(
            f"{r['id']:<32}  {r['kind']:<9} {r['tenant']:<{width}} "
            f"{r['created_at']:%Y-%m-%d %H:%M} {done:>6}/{jobs:<6}  {counts}"
        )
    return "\n".join(lines)
