"""Operator views of the jobs table."""
from __future__ import annotations

from sqlalchemy import func, select

from workers.db import FINISHED, Job, JobStatus, session_scope


def status_counts(db_url: str) -> dict[str, int]:
    with session_scope(db_url) as session:
        rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    counts = {s.value: 0 for s in JobStatus}
    counts.update({status: n for status, n in rows})
    return counts


def status_text(db_url: str, failures: int = 10) -> str:
    lines = ["jobs by status:"]
    lines += [f"  {status:<13} {n}" for status, n in status_counts(db_url).items()]
    with session_scope(db_url) as session:
        failed = session.scalars(select(Job).where(Job.status == JobStatus.failed.value)
                                 .order_by(Job.updated_at.desc()).limit(failures)).all()
        if failed:
            lines.append(f"recent failures (newest first, up to {failures}):")
            lines += [f"  {j.id}  {j.error_code}: {j.error_message}  [{j.source_uri}]"
                      for j in failed]
    return "\n".join(lines)


def batch_progress(db_url: str, batch_ids: list[str] | None = None, tenant: str | None = None,
                   limit: int = 20) -> list[dict]:
    """Newest batches first: id, kind, tenant, created_at, total and job counts by status."""
    from workers.db import Batch, Tenant

    with session_scope(db_url) as session:
        q = select(Batch, Tenant.name).join(Tenant, Tenant.id == Batch.tenant_id)
        if batch_ids:
            q = q.where(Batch.id.in_(batch_ids))
        if tenant:
            q = q.where(Tenant.name == tenant)
        batches = session.execute(q.order_by(Batch.created_at.desc()).limit(limit)).all()
        ids = [b.id for b, _ in batches]
        counts = session.execute(select(Job.batch_id, Job.status, func.count())
                                 .where(Job.batch_id.in_(ids))
                                 .group_by(Job.batch_id, Job.status)).all()
    by_batch: dict[str, dict[str, int]] = {i: {} for i in ids}
    for batch_id, status, n in counts:
        by_batch[batch_id][status] = n
    return [{"id": b.id, "kind": b.kind, "tenant": name, "created_at": b.created_at,
             "total": b.total, "counts": by_batch[b.id]} for b, name in batches]


def batches_text(rows: list[dict]) -> str:
    """One line per batch: finished/jobs now in it, and the counts by status (a job that a
    later reprocess run took over counts in that run's batch)."""
    if not rows:
        return "no batches"
    lines = [f"{'batch':<32}  {'kind':<9} {'tenant':<12} {'created (UTC)':<16} "
             f"{'done':>13}  by status"]
    for r in rows:
        done = sum(n for s, n in r["counts"].items() if s in {f.value for f in FINISHED})
        jobs = sum(r["counts"].values())
        counts = " ".join(f"{s}={n}" for s, n in sorted(r["counts"].items())) or "-"
        lines.append(f"{r['id']:<32}  {r['kind']:<9} {r['tenant'][:12]:<12} "
                     f"{r['created_at']:%Y-%m-%d %H:%M} {done:>6}/{jobs:<6}  {counts}")
    return "\n".join(lines)
