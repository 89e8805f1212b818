"""Operator views of the jobs table."""
from __future__ import annotations

from sqlalchemy import func, select

from workers.db import Job, JobStatus, session_scope


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
