"""Tables (SQLAlchemy 2.x), the job status machine, and sessions.

The same code runs on SQLite (embedded default) and PostgreSQL (production). The schema
itself is created only by Alembic migrations (`clearmark db upgrade`).
"""

from __future__ import annotations

import base64
import enum
import os
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    false,
    text,
)
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from clearmark.pipeline.stages import STAGES

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """`value` with its time zone (SQLite gives back naive datetimes, stored in UTC)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def new_webhook_secret() -> str:
    """32 random bytes in the Standard Webhooks form (`whsec_` + base64), which its
    libraries take as they are (workers.webhooks signs with both schemes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def new_id() -> str:
    return uuid.uuid4().hex


class Priority(str, enum.Enum):
    """Which queue a job goes to: normal -> uploads, low -> bulk (DESIGN: queues, not numbers)."""

    normal = "normal"
    low = "low"


class JobStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    no_watermark = "no_watermark"
    needs_review = "needs_review"
    failed = "failed"


# A finished job stays in its status until a retry, a reprocessing run or a review.
FINISHED = frozenset({JobStatus.succeeded, JobStatus.no_watermark, JobStatus.needs_review, JobStatus.failed})
# Finished with a result and a mask to deliver: every finished status but failed.
WITH_RESULT = FINISHED - {JobStatus.failed}

# Which status may follow which. running -> running is a take-over of a job whose worker
# died; finished -> queued is an operator's retry, a reprocessing run or (from needs_review)
# a removal with a reviewer's mask; needs_review ends with a person's accept (succeeded) or
# reject (failed).
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.queued: frozenset({JobStatus.running, JobStatus.failed}),
    JobStatus.running: frozenset({JobStatus.running, JobStatus.queued, *FINISHED}),
    JobStatus.succeeded: frozenset({JobStatus.queued}),
    JobStatus.no_watermark: frozenset({JobStatus.queued}),
    JobStatus.needs_review: frozenset(
        {JobStatus.queued, JobStatus.succeeded, JobStatus.no_watermark, JobStatus.failed}
    ),
    JobStatus.failed: frozenset({JobStatus.queued}),
}


class IllegalTransition(ValueError):
    pass


def check_transition(old: JobStatus | str, new: JobStatus | str) -> None:
    old, new = JobStatus(old), JobStatus(new)
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"job status cannot go from {old.value} to {new.value}")


_STATUS_VALUES = ", ".join(f"'{s.value}'" for s in JobStatus)
_PRIORITY_VALUES = ", ".join(f"'{p.value}'" for p in Priority)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: DateTime(timezone=True)}


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    api_key_hash: Mapped[str | None] = mapped_column(String(128))
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # Every tenant signs its webhooks, whichever way it was created (migration 0003 filled
    # the rows from before this default).
    webhook_secret: Mapped[str | None] = mapped_column(String(128), default=new_webhook_secret)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("uq_tenants_api_key_hash", "api_key_hash", unique=True),)


class Batch(Base):
    __tablename__ = "batches"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))  # clean | submit | bulk | reprocess
    description: Mapped[str | None] = mapped_column(Text)
    total: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id", ondelete="SET NULL"))
    source_uri: Mapped[str] = mapped_column(Text)
    # The file's name as its owner knows it (the upload's file name, the path or URI given
    # to submit, bulk or clean); source_uri may be a storage hash. None when not given.
    source_name: Mapped[str | None] = mapped_column(Text)
    source_sha256: Mapped[str | None] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.queued.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # Why the pipeline sent the job to needs_review (None otherwise); kept after a review.
    review_reason: Mapped[str | None] = mapped_column(Text)
    result_uri: Mapped[str | None] = mapped_column(Text)
    mask_uri: Mapped[str | None] = mapped_column(Text)
    pipeline_version: Mapped[str | None] = mapped_column(Text)
    worker_host: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    callback_url: Mapped[str | None] = mapped_column(Text)  # else the tenant's webhook_url
    # A running attempt holds the job until then (its heartbeat renews it); past it, the
    # reaper queues the job again.
    lease_expires_at: Mapped[datetime | None]
    # Finished with a callback URL and its webhook not yet delivered (or given up): the
    # reaper sends it again when no webhook task for it is on the broker.
    webhook_pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    priority: Mapped[str] = mapped_column(
        String(16), default=Priority.normal.value, server_default=Priority.normal.value
    )
    # The upload's `group`: the tenant's photos that carry one mark (a listing, a
    # catalogue); K of them make a template (workers.groups). None: not grouped.
    catalogue_group: Mapped[str | None] = mapped_column(String(200))

    metrics: Mapped[JobMetrics | None] = relationship(back_populates="job", uselist=False)

    @property
    def display_name(self) -> str:
        """What people are shown for the job's source: its name, else its URI."""
        return self.source_name or self.source_uri

    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUS_VALUES})", name="status_valid"),
        CheckConstraint(f"priority IN ({_PRIORITY_VALUES})", name="priority_valid"),
        Index("ix_jobs_status_created_at", "status", "created_at"),
        Index("ix_jobs_tenant_id_created_at", "tenant_id", "created_at"),
        Index("ix_jobs_batch_id", "batch_id"),
        Index(
            "ix_jobs_tenant_id_catalogue_group",
            "tenant_id",
            "catalogue_group",
            postgresql_where=text("catalogue_group IS NOT NULL"),
            sqlite_where=text("catalogue_group IS NOT NULL"),
        ),
        Index(
            "ix_jobs_webhook_pending",
            "webhook_pending",
            postgresql_where=text("webhook_pending"),
            sqlite_where=text("webhook_pending"),
        ),
        Index(
            "uq_jobs_tenant_id_idempotency_key",
            "tenant_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
            sqlite_where=text("idempotency_key IS NOT NULL"),
        ),
    )


class JobMetrics(Base):
    __tablename__ = "job_metrics"
    # One row per job: the primary key is the job id, so a job can never hold two.
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    mask_area_fraction: Mapped[float] = mapped_column(Float)
    detector_confidence: Mapped[float] = mapped_column(Float)
    residual_score: Mapped[float] = mapped_column(Float)
    ms_decode: Mapped[float] = mapped_column(Float)
    ms_detect: Mapped[float] = mapped_column(Float)
    ms_remove: Mapped[float] = mapped_column(Float)
    ms_encode: Mapped[float] = mapped_column(Float)
    # None only for jobs finished before 0007 that left no time for them in their events.
    ms_gate: Mapped[float | None] = mapped_column(Float)
    ms_residual: Mapped[float | None] = mapped_column(Float)
    ms_total: Mapped[float] = mapped_column(Float)
    # JPEG results: whether the upload's coefficients were kept, and how many of its MCUs
    # changed (None for other formats and for results that are the upload itself).
    jpeg_exact: Mapped[bool | None] = mapped_column(Boolean)
    jpeg_blocks_changed: Mapped[int | None] = mapped_column(Integer)
    # `template:<mark template id>` when a catalogue template cleaned the photo; None for
    # the single-image pipeline (and every job before 0011).
    method: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="metrics")


class MarkTemplate(Base):
    """A tenant's catalogue mark (`pipeline.catalogue.Template`): alpha and a*W in storage
    (`data_uri`, an NPZ), where it sits, and how well the photos it came from supported it."""

    __tablename__ = "mark_templates"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    data_uri: Mapped[str] = mapped_column(Text)
    rule: Mapped[str] = mapped_column(String(16))  # absolute | relative (to the frame's size)
    frame_width: Mapped[int] = mapped_column(Integer)
    frame_height: Mapped[int] = mapped_column(Integer)
    box_x0: Mapped[int] = mapped_column(Integer)
    box_y0: Mapped[int] = mapped_column(Integer)
    box_x1: Mapped[int] = mapped_column(Integer)
    box_y1: Mapped[int] = mapped_column(Integer)
    images: Mapped[int] = mapped_column(Integer)  # photos the estimate used
    quality: Mapped[float] = mapped_column(Float)
    sources: Mapped[list[str] | None] = mapped_column(JSON)  # the photos' names
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        CheckConstraint("rule IN ('absolute', 'relative')", name="rule_valid"),
        Index("ix_mark_templates_tenant_id_created_at", "tenant_id", "created_at"),
    )


class CatalogueGroup(Base):
    """What learning from an upload group came to (workers.groups): its template once one
    was learned, else the photos the last try had and why it refused them."""

    __tablename__ = "catalogue_groups"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    template_id: Mapped[str | None] = mapped_column(ForeignKey("mark_templates.id", ondelete="SET NULL"))
    tried_with: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("tenant_id", "name"),)


class JobEvent(Base):
    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))  # status | retry | takeover | reaped | webhook
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str | None] = mapped_column(String(20))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_job_events_job_id_created_at", "job_id", "created_at"),)


class ReviewerKey(Base):
    """A key that signs a person in to the review page for one tenant (`clearmark tenants
    reviewer-key`); only its sha256 is kept, like an API key's. `name` is who the page
    records as the reviewer."""

    __tablename__ = "reviewer_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("uq_reviewer_keys_key_hash", "key_hash", unique=True),)


class ReviewSession(Base):
    """A signed-in review page: the cookie holds a random token, the row its sha256, the
    tenant, who signed in and the CSRF token every change must carry. Signing out deletes it."""

    __tablename__ = "review_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    reviewer: Mapped[str] = mapped_column(String(200))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


METRIC_FIELDS = (
    "width",
    "height",
    "mask_area_fraction",
    "detector_confidence",
    "residual_score",
    *(f"ms_{stage}" for stage in STAGES),
    "ms_total",
)
# Optional (None unless the result is a JPEG the pipeline wrote), so kept apart from the
# numbers that reports average.
JPEG_METRIC_FIELDS = ("jpeg_exact", "jpeg_blocks_changed")
# Which cleaning made the result (None: the single-image pipeline), kept apart likewise.
METHOD_FIELD = "method"


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


_ENGINES: list[SqlEngine] = []


@lru_cache(maxsize=8)
def get_engine(url: str) -> SqlEngine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    _ENGINES.append(engine)
    return engine


def _forget_pooled_connections() -> None:
    """In a forked child (a Celery pool process): drop the parent's pooled connections
    without closing them. Two processes on one PostgreSQL connection corrupt each other's
    state (seen as `prepared statement "_pg3_0" already exists` once the worker parent had
    opened a connection before forking its pool)."""
    for engine in _ENGINES:
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_pooled_connections)


@lru_cache(maxsize=8)
def _sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A transaction: commits on success, rolls back on error."""
    session = _sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
