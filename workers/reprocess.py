"""Bulk reprocessing: select finished jobs and queue them again as a new batch.

A run is a `reprocess` batch whose description holds the selection (JSON), so
`--resume BATCH` continues it with the same selection. A batch belongs to one tenant and
takes only that tenant's jobs: a selection that names no tenant is split, one batch per
tenant whose jobs it selects (`plan`), each recording the selection narrowed to its tenant.
Restart safety, per chunk:
1. one transaction moves the chunk's jobs to `queued` with `batch_id` = the run's batch
   (`FOR UPDATE SKIP LOCKED`); a job in the batch is never selected again, and a job that
   is `queued` is not finished, so it is not selected either;
2. their tasks go to the bulk queue;
3. one transaction writes an `enqueued` event per job.
An interrupt (Ctrl-C, a broker error) still records what went out, so `--resume` (or
the same command again) sends exactly the batch's queued jobs without an `enqueued` event,
then goes on with the selection. Only a hard kill between 2 and 3 can send part of one
chunk twice, which the task absorbs (it is idempotent: a finished job is left alone).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

from sqlalchemy import ColumnExpressionArgument, bindparam, exists, func, or_, select
from sqlalchemy.sql import Select

from clearmark.pipeline.versions import current_version_pattern
from clearmark.settings import Settings, get_settings
from clearmark.workers import broker
from clearmark.workers.db import (
    FINISHED,
    Batch,
    Job,
    JobEvent,
    JobMetrics,
    JobStatus,
    Priority,
    Tenant,
    session_scope,
)
from clearmark.workers.jobs import create_batch, requeue_job

ENQUEUED = "enqueued"
SINGLE_IMAGE = "single-image"  # `method`: results the single-image pipeline made (no template)


@dataclass(frozen=True)
class Selection:
    tenant: str | None = None
    statuses: tuple[str, ...] = ()  # empty: every finished status
    since: str | None = None  # ISO 8601, created at or after
    until: str | None = None  # ISO 8601, created before
    outdated: bool = False  # made by other code or weights than the current
    version: str | None = None  # pipeline version prefix
    batch: str | None = None
    ids_file: str | None = None  # job ids or source URIs, one per line
    group: str | None = None  # uploads of this catalogue group (workers.groups)
    # How the result was made (metrics' `method`): a prefix such as "template:" (any
    # catalogue template) or "template:<id>", or SINGLE_IMAGE (no template)
    method: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        for added in ("group", "method"):  # as batches made before they were recorded (plan
            if data[added] is None:  # compares the text)
                del data[added]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Selection:
        data = json.loads(text)
        data["statuses"] = tuple(data.get("statuses") or ())
        return cls(**data)

    @overload
    def query(self) -> Select[Job]: ...
    @overload
    def query(self, *what: ColumnExpressionArgument[Any]) -> Select[*tuple[Any, ...]]: ...

    def query(self, *what: ColumnExpressionArgument[Any]) -> Select[*tuple[Any, ...]]:
        """Finished jobs (or `what` of them) matching the selection."""
        statuses = self.statuses or tuple(s.value for s in FINISHED)
        bad = set(statuses) - {s.value for s in FINISHED}
        if bad:
            raise ValueError(f"only finished jobs can be reprocessed, not {sorted(bad)}")
        q = select(*(what or (Job,))).where(Job.status.in_(statuses))
        if self.tenant:
            q = q.where(
                Job.tenant_id == select(Tenant.id).where(Tenant.name == self.tenant).scalar_subquery()
            )
        if self.since:
            q = q.where(Job.created_at >= _utc(self.since))
        if self.until:
            q = q.where(Job.created_at < _utc(self.until))
        if self.outdated:
            q = q.where(Job.pipeline_version.not_like(current_version_pattern()))  # NULL: never
        if self.version:
            q = q.where(Job.pipeline_version.startswith(self.version, autoescape=True))
        if self.batch:
            q = q.where(Job.batch_id == self.batch)
        if self.group:
            q = q.where(Job.catalogue_group == self.group)
        if self.method == SINGLE_IMAGE:
            q = q.where(~Job.metrics.has(JobMetrics.method.is_not(None)))
        elif self.method:
            q = q.where(Job.metrics.has(JobMetrics.method.startswith(self.method, autoescape=True)))
        if self.ids_file:
            keys = [
                line.strip()
                for line in Path(self.ids_file).read_text().splitlines()
                if line.strip() and not line.startswith("#")
            ]
            # Inline literals: a list of 100k ids is over PostgreSQL's 65,535 parameters.
            q = q.where(
                or_(
                    Job.id.in_(bindparam("ids", keys, expanding=True, literal_execute=True)),
                    Job.source_uri.in_(bindparam("uris", keys, expanding=True, literal_execute=True)),
                )
            )
        return q


def _utc(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def dry_run(selection: Selection, settings: Settings | None = None) -> dict[str, int]:
    """How many jobs the selection would queue, by current status."""
    s = settings or get_settings()
    with session_scope(s.database_url) as session:
        rows = session.execute(selection.query(Job.status, func.count()).group_by(Job.status)).all()
    return dict(sorted(rows))


@dataclass(frozen=True)
class Run:
    """One tenant's part of a reprocess command: its batch (None: not made yet), the jobs
    the selection holds for the tenant now, and those its batch holds queued but unsent."""

    tenant: str
    batch_id: str | None
    selected: int
    stranded: int = 0


def plan(selection: Selection, settings: Settings | None = None) -> list[Run]:
    """The selection's runs, one per tenant (by name) with selected jobs or with a batch of
    this same selection, narrowed to it, that stopped between commit and enqueue: that
    batch is resumed, so running the same command again finishes it."""
    s = settings or get_settings()
    with session_scope(s.database_url) as session:
        by_id = dict(
            session.execute(selection.query(Job.tenant_id, func.count()).group_by(Job.tenant_id)).all()
        )
        names = dict(session.execute(select(Tenant.id, Tenant.name).where(Tenant.id.in_(list(by_id)))).all())
        selected = {names[tenant_id]: n for tenant_id, n in by_id.items()}
        latest: dict[str, str] = {}  # tenant -> its latest batch of this selection
        for batch_id, description, tenant in session.execute(
            select(Batch.id, Batch.description, Tenant.name)
            .join(Tenant, Tenant.id == Batch.tenant_id)
            .where(Batch.kind == "reprocess")
            .order_by(Batch.created_at.desc(), Batch.id)
        ):
            if tenant not in latest and description == replace(selection, tenant=tenant).to_json():
                latest[tenant] = batch_id
        stranded = {
            tenant: n
            for tenant, batch_id in latest.items()
            if (n := session.scalar(select(func.count()).select_from(_stranded(batch_id).subquery())))
        }
    return [
        Run(
            tenant,
            latest[tenant] if tenant in stranded else None,
            selected.get(tenant, 0),
            stranded.get(tenant, 0),
        )
        for tenant in sorted(selected.keys() | stranded.keys())
    ]


def start(selection: Selection, settings: Settings | None = None) -> str:
    """A new reprocess batch of the tenant the selection names, recording the selection;
    returns its id."""
    s = settings or get_settings()
    selection.query()  # validate before creating anything
    if not selection.tenant:
        raise ValueError("a reprocess batch is one tenant's: narrow the selection to one (plan)")
    with session_scope(s.database_url) as session:
        owner = session.scalar(select(Tenant).where(Tenant.name == selection.tenant))
        if owner is None:
            raise LookupError(f"no tenant {selection.tenant}")
        return create_batch(session, owner, "reprocess", selection.to_json()).id


def load(batch_id: str, settings: Settings | None = None) -> Selection:
    """The batch's selection, narrowed to the batch's tenant (a batch made before batches
    were split by tenant may record none)."""
    s = settings or get_settings()
    with session_scope(s.database_url) as session:
        row = session.execute(
            select(Batch, Tenant.name).join(Tenant, Tenant.id == Batch.tenant_id).where(Batch.id == batch_id)
        ).first()
        if row is None or row[0].kind != "reprocess":
            raise LookupError(f"no reprocess batch {batch_id}")
        batch, tenant = row
        if batch.description is None:  # `start` always records it
            raise LookupError(f"reprocess batch {batch_id} records no selection")
        return replace(Selection.from_json(batch.description), tenant=tenant)


def resumed(batch_id: str, settings: Settings | None = None) -> Run:
    """The run that `--resume BATCH` continues (LookupError: no such reprocess batch)."""
    s = settings or get_settings()
    selection = load(batch_id, s)
    assert selection.tenant is not None  # load narrows it to the batch's tenant
    with session_scope(s.database_url) as session:
        rest = selection.query(Job.id).where(or_(Job.batch_id.is_(None), Job.batch_id != batch_id))
        selected = session.scalar(select(func.count()).select_from(rest.subquery()))
        stranded = session.scalar(select(func.count()).select_from(_stranded(batch_id).subquery()))
    return Run(selection.tenant, batch_id, selected or 0, stranded or 0)


def _stranded(batch_id: str) -> Select[str]:
    """Ids of the batch's queued jobs that no run has enqueued."""
    sent = exists().where(
        JobEvent.job_id == Job.id, JobEvent.kind == ENQUEUED, JobEvent.detail["batch"].as_string() == batch_id
    )
    return select(Job.id).where(Job.batch_id == batch_id, Job.status == JobStatus.queued.value, ~sent)


def _mark_enqueued(db_url: str, batch_id: str, job_ids: Sequence[str]) -> None:
    with session_scope(db_url) as session:
        session.add_all(JobEvent(job_id=j, kind=ENQUEUED, detail={"batch": batch_id}) for j in job_ids)


def _send(job_ids: Sequence[str], batch_id: str, s: Settings, pace: Callable[[], None]) -> None:
    sent = []
    try:
        for job_id in job_ids:
            pace()
            broker.enqueue(job_id, s.queue_bulk)  # looked up on the module: tests replace it
            sent.append(job_id)
    finally:  # interrupted (Ctrl-C, broker error): record what did go out
        _mark_enqueued(s.database_url, batch_id, sent)


def _pacer(rate: float) -> Callable[[], None]:
    """Sleeps so that calls happen at most `rate` times per second (0: no limit)."""
    state = {"next": time.monotonic()}

    def pace() -> None:
        if rate > 0:
            now = time.monotonic()
            if state["next"] > now:
                time.sleep(state["next"] - now)
            state["next"] = max(now, state["next"]) + 1.0 / rate

    return pace


def run(batch_id: str, chunk: int = 500, rate: float = 0, settings: Settings | None = None) -> Iterator[int]:
    """Queue the batch's selection chunk by chunk; yields the number sent per chunk.
    First sends the batch's queued jobs that have no `enqueued` event (an earlier run of
    this batch stopped between its commit and its enqueue)."""
    s = settings or get_settings()
    selection, pace = load(batch_id, s), _pacer(rate)
    if rate:  # a paced chunk is sent within half the reaper's grace, or the reaper would send it
        chunk = min(chunk, max(1, int(rate * s.reap_grace_s / 2)))
    with session_scope(s.database_url) as session:
        stranded = session.scalars(_stranded(batch_id)).all()
    for i in range(0, len(stranded), chunk):
        _send(stranded[i : i + chunk], batch_id, s, pace)
        yield len(stranded[i : i + chunk])
    while True:
        with session_scope(s.database_url) as session:
            jobs = session.scalars(
                selection.query()
                .where(or_(Job.batch_id.is_(None), Job.batch_id != batch_id))
                .order_by(Job.created_at, Job.id)
                .limit(chunk)
                .with_for_update(skip_locked=True)
            ).all()
            for job in jobs:
                requeue_job(session, job, reason=f"reprocess batch {batch_id}")
                job.batch_id, job.priority = batch_id, Priority.low.value
            batch = session.get(Batch, batch_id)
            assert batch is not None  # `load` found it (only an empty submit batch is deleted)
            batch.total += len(jobs)
            job_ids = [job.id for job in jobs]
        if not job_ids:
            return
        _send(job_ids, batch_id, s, pace)
        yield len(job_ids)
