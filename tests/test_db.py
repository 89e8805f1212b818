"""Schema, migrations and the job status machine, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import pytest
from sqlalchemy import JSON, column, create_engine, inspect, select, table, text
from sqlalchemy.exc import IntegrityError

from clearmark.workers import migrate
from clearmark.workers.db import (
    IllegalTransition,
    Job,
    JobEvent,
    JobStatus,
    check_transition,
    session_scope,
)
from clearmark.workers.jobs import TooManyAttempts, claim_job, create_job, ensure_tenant, fail_job, finish_job

TABLES = {
    "tenants",
    "jobs",
    "job_metrics",
    "batches",
    "job_events",
    "mark_templates",
    "catalogue_groups",
    "alembic_version",
}


@pytest.mark.parametrize("backend", ["sqlite_url", "pg_url"])
def test_migrations_upgrade_and_downgrade(request, backend):
    url = request.getfixturevalue(backend)
    migrate.upgrade(url)
    engine = create_engine(url)
    inspector = inspect(engine)
    assert TABLES <= set(inspector.get_table_names())
    index_names = {ix["name"] for ix in inspector.get_indexes("jobs")}
    assert {
        "ix_jobs_status_created_at",
        "ix_jobs_tenant_id_created_at",
        "uq_jobs_tenant_id_idempotency_key",
    } <= index_names
    columns = {c["name"]: c for c in inspector.get_columns("jobs")}
    assert columns["review_reason"]["nullable"] and columns["lease_expires_at"]["nullable"]
    assert columns["source_name"]["nullable"]
    assert not columns["webhook_pending"]["nullable"]
    assert "ix_jobs_webhook_pending" in index_names
    metrics_columns = {c["name"]: c for c in inspector.get_columns("job_metrics")}
    assert metrics_columns["jpeg_exact"]["nullable"] and metrics_columns["jpeg_blocks_changed"]["nullable"]
    assert metrics_columns["ms_gate"]["nullable"] and metrics_columns["ms_residual"]["nullable"]
    assert metrics_columns["method"]["nullable"]
    assert "ix_mark_templates_tenant_id_created_at" in {
        ix["name"] for ix in inspector.get_indexes("mark_templates")
    }
    assert {"reviewer_keys", "review_sessions"} <= set(inspector.get_table_names())
    assert columns["catalogue_group"]["nullable"] and "ix_jobs_tenant_id_catalogue_group" in index_names
    migrate.downgrade(url, "0011")  # 0012 alone: the upload groups go
    assert "catalogue_groups" not in inspect(engine).get_table_names()
    assert "catalogue_group" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
    migrate.downgrade(url, "0010")  # 0011 alone: the templates and the method go
    assert "mark_templates" not in inspect(engine).get_table_names()
    assert "method" not in {c["name"] for c in inspect(engine).get_columns("job_metrics")}
    assert "ms_gate" in {c["name"] for c in inspect(engine).get_columns("job_metrics")}
    migrate.downgrade(url, "0009")  # 0010 alone: the review page's tables go
    assert not {"reviewer_keys", "review_sessions"} & set(inspect(engine).get_table_names())
    migrate.downgrade(url, "0008")  # 0009 alone: the gate and residual times go
    assert not {"ms_gate", "ms_residual"} & {c["name"] for c in inspect(engine).get_columns("job_metrics")}
    migrate.downgrade(url, "0007")  # 0008 changes data only
    assert "source_name" in {c["name"] for c in inspect(engine).get_columns("jobs")}
    migrate.downgrade(url, "0006")  # 0007 alone: the file names go
    assert "source_name" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
    assert "jpeg_exact" in {c["name"] for c in inspect(engine).get_columns("job_metrics")}
    migrate.downgrade(url, "0005")  # 0006 alone: the JPEG metrics go
    assert not {"jpeg_exact", "jpeg_blocks_changed"} & {
        c["name"] for c in inspect(engine).get_columns("job_metrics")
    }
    assert "lease_expires_at" in {c["name"] for c in inspect(engine).get_columns("jobs")}
    migrate.downgrade(url, "0004")  # 0005 alone: the lease and webhook flag go
    jobs_columns = {c["name"] for c in inspect(engine).get_columns("jobs")}
    assert "review_reason" in jobs_columns and not {"lease_expires_at", "webhook_pending"} & jobs_columns
    migrate.downgrade(url, "0003")  # 0004 alone: the column goes, the rest stays
    inspector = inspect(engine)
    assert TABLES - {"mark_templates", "catalogue_groups"} <= set(inspector.get_table_names())
    assert "review_reason" not in {c["name"] for c in inspector.get_columns("jobs")}
    migrate.downgrade(url, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(url)  # and back up again cleanly
    assert TABLES <= set(inspect(engine).get_table_names())
    assert "review_reason" in {c["name"] for c in inspect(engine).get_columns("jobs")}
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite_url", "pg_url"])
def test_file_names_move_from_the_first_event_into_the_job(request, backend):
    """Before 0007 a job's file name was kept in its creation event's detail (when known):
    the migration copies it into jobs.source_name, and leaves the jobs without one empty."""
    url = request.getfixturevalue(backend)
    migrate.upgrade(url, "0006")
    tenants = table("tenants", column("id"), column("name"), column("created_at"))
    jobs = table(
        "jobs",
        *(
            column(c)
            for c in ("id", "tenant_id", "source_uri", "status", "attempts", "created_at", "updated_at")
        ),
    )
    events = table(
        "job_events",
        *(column(c) for c in ("job_id", "kind", "from_status", "to_status", "created_at")),
        column("detail", JSON),
    )
    now = datetime.now(UTC)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(tenants.insert().values(id="t", name="t", created_at=now))
        for job_id in ("named", "unnamed", "api"):
            conn.execute(
                jobs.insert().values(
                    id=job_id,
                    tenant_id="t",
                    source_uri=f"s3://b/{job_id}",
                    status="queued",
                    attempts=0,
                    created_at=now,
                    updated_at=now,
                )
            )
        conn.execute(
            events.insert(),
            [
                # A webhook event has no from_status either, and comes first here.
                {
                    "job_id": "named",
                    "kind": "webhook",
                    "from_status": None,
                    "to_status": None,
                    "detail": {"source_name": "not this"},
                    "created_at": now,
                },
                {
                    "job_id": "named",
                    "kind": "status",
                    "from_status": None,
                    "to_status": "queued",
                    "detail": {"priority": "low", "source_name": "catalogue/2026/shoe ü.jpg"},
                    "created_at": now,
                },
                {
                    "job_id": "unnamed",
                    "kind": "status",
                    "from_status": None,
                    "to_status": "queued",
                    "detail": {"priority": "low"},
                    "created_at": now,
                },
                {
                    "job_id": "api",
                    "kind": "status",
                    "from_status": None,
                    "to_status": "queued",
                    "detail": None,
                    "created_at": now,
                },
            ],
        )
    migrate.upgrade(url)
    with engine.connect() as conn:
        names = dict(conn.execute(text("SELECT id, source_name FROM jobs")).all())
    engine.dispose()
    assert names == {"named": "catalogue/2026/shoe ü.jpg", "unnamed": None, "api": None}


@pytest.mark.parametrize("backend", ["sqlite_url", "pg_url"])
def test_reprocess_batches_move_to_their_jobs_tenant(request, backend):
    """Before 0008 a reprocess run without --tenant made its batch the default tenant's:
    such a batch holding one tenant's jobs becomes that tenant's; one with several tenants'
    jobs or none, and every other kind of batch, keeps its owner."""
    url = request.getfixturevalue(backend)
    migrate.upgrade(url, "0007")
    now = datetime.now(UTC)
    tenants = table("tenants", column("id"), column("name"), column("created_at"))
    batches = table("batches", *(column(c) for c in ("id", "tenant_id", "kind", "total", "created_at")))
    jobs = table(
        "jobs",
        *(column(c) for c in ("id", "tenant_id", "batch_id", "source_uri", "status", "attempts")),
        column("created_at"),
        column("updated_at"),
    )
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(tenants.insert(), [{"id": t, "name": t, "created_at": now} for t in ("local", "a", "b")])
        conn.execute(
            batches.insert(),
            [
                {"id": b, "tenant_id": "local", "kind": kind, "total": 0, "created_at": now}
                for b, kind in (
                    ("one", "reprocess"),
                    ("mixed", "reprocess"),
                    ("empty", "reprocess"),
                    ("bulk", "bulk"),
                )
            ],
        )
        conn.execute(
            jobs.insert(),
            [
                {
                    "id": f"{batch}-{i}",
                    "tenant_id": tenant,
                    "batch_id": batch,
                    "source_uri": "x",
                    "status": "queued",
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                }
                for batch, owners in (("one", "aa"), ("mixed", "ab"), ("bulk", "bb"))
                for i, tenant in enumerate(owners)
            ],
        )
    migrate.upgrade(url)
    with engine.connect() as conn:
        owners = dict(conn.execute(text("SELECT id, tenant_id FROM batches")).all())
    engine.dispose()
    assert owners == {"one": "a", "mixed": "local", "empty": "local", "bulk": "local"}


def test_transitions():
    check_transition("queued", "running")
    check_transition("running", "succeeded")
    check_transition("running", "running")  # take-over after a dead worker
    check_transition("failed", "queued")  # operator retry
    for old, new in [
        ("queued", "succeeded"),
        ("succeeded", "running"),
        ("failed", "succeeded"),
        ("no_watermark", "failed"),
    ]:
        with pytest.raises(IllegalTransition):
            check_transition(old, new)


def test_status_check_constraint(db_url):
    with pytest.raises(IntegrityError):
        with session_scope(db_url) as session:
            tenant = ensure_tenant(session, "t")
            session.add(Job(tenant_id=tenant.id, source_uri="x", status="exploded", attempts=0))


def test_idempotency_key_unique_per_tenant(db_url):
    with session_scope(db_url) as session:
        a, b = ensure_tenant(session, "a"), ensure_tenant(session, "b")
        job1, created1 = create_job(session, a, "file:///x.jpg", idempotency_key="k")
        job2, created2 = create_job(session, a, "file:///x.jpg", idempotency_key="k")
        job3, created3 = create_job(session, b, "file:///x.jpg", idempotency_key="k")
        create_job(session, a, "file:///y.jpg")
        create_job(session, a, "file:///y.jpg")  # no key: no uniqueness
    assert created1 and not created2 and created3
    assert job1.id == job2.id != job3.id
    with pytest.raises(IntegrityError):
        with session_scope(db_url) as session:
            session.add(
                Job(
                    tenant_id=job1.tenant_id, source_uri="z", idempotency_key="k", status="queued", attempts=0
                )
            )


METRICS = dict(
    width=10,
    height=10,
    mask_area_fraction=0.1,
    detector_confidence=0.9,
    residual_score=0.0,
    ms_decode=1,
    ms_detect=1,
    ms_remove=1,
    ms_encode=1,
    ms_total=4,
)


def _new_job(db_url) -> str:
    with session_scope(db_url) as session:
        job, _ = create_job(session, ensure_tenant(session), "file:///x.jpg")
        return job.id


def test_claim_finish_is_guarded_and_logged(db_url):
    job_id = _new_job(db_url)
    first = claim_job(db_url, job_id, max_attempts=3, lease_s=0)  # its worker dies
    takeover = claim_job(db_url, job_id, max_attempts=3)  # the lease has run out
    assert (first.attempt, takeover.attempt) == (1, 2)
    # The dead worker's late result is discarded; the live one is recorded once.
    assert not finish_job(
        db_url,
        first,
        JobStatus.succeeded,
        result_uri="r",
        mask_uri="m",
        metrics=METRICS,
        pipeline_version="v",
    )
    assert finish_job(
        db_url,
        takeover,
        JobStatus.succeeded,
        result_uri="r",
        mask_uri="m",
        metrics=METRICS,
        pipeline_version="v",
    )
    assert claim_job(db_url, job_id, max_attempts=3) is None  # finished: nothing to do
    assert not fail_job(db_url, takeover, "x", "late failure")
    with session_scope(db_url) as session:
        job = session.get(Job, job_id)
        assert job.status == "succeeded" and job.attempts == 2 and job.metrics.width == 10
        events = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()
        assert [(e.kind, e.to_status) for e in events] == [
            ("status", "queued"),
            ("status", "running"),
            ("takeover", "running"),
            ("status", "succeeded"),
        ]


REASON = (
    "the gate put back a region the detector was sure of (0.91) at (10, 20, 300, 80): "
    "change not explained by one overlay colour (0.62 < 0.85)"
)
GATE = [
    {
        "box": (10, 20, 300, 80),
        "pixels": 4200,
        "explained": 0.62,
        "opacity": 0.4,
        "colour": (250, 250, 250),
        "continues": 0.05,
        "flattened": 0.1,
        "confidence": 0.91,
        "passed": False,
        "reason": "change not explained by one overlay colour (0.62 < 0.85)",
        "review_confident": 0.8,
    }
]


def _status_events(session, job_id: str) -> list[JobEvent]:
    return session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "status").order_by(JobEvent.id)
    ).all()


def test_review_reason_is_stored_with_needs_review_only(db_url):
    """finish_job keeps the reason (and the gate's verdicts, in the status event) for a
    needs_review job; reprocessing clears it and a later clean finish leaves it empty."""
    from clearmark.workers.jobs import requeue_job

    job_id = _new_job(db_url)
    claim = claim_job(db_url, job_id, max_attempts=3)
    assert finish_job(
        db_url,
        claim,
        JobStatus.needs_review,
        result_uri="r",
        mask_uri="m",
        metrics=METRICS,
        pipeline_version="v",
        review_reason=REASON,
        gate=GATE,
    )
    with session_scope(db_url) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.review_reason) == ("needs_review", REASON)
        detail = _status_events(session, job_id)[-1].detail
        assert detail["review_reason"] == REASON
        assert detail["gate"][0]["box"] == [10, 20, 300, 80] and not detail["gate"][0]["passed"]
        requeue_job(session, job, reason="reprocess")
        assert job.review_reason is None
    claim = claim_job(db_url, job_id, max_attempts=3)
    # A reason handed over with another status is not stored.
    assert finish_job(
        db_url,
        claim,
        JobStatus.succeeded,
        result_uri="r",
        mask_uri="m",
        metrics=METRICS,
        pipeline_version="v",
        review_reason="stale",
    )
    with session_scope(db_url) as session:
        assert session.get(Job, job_id).review_reason is None
        assert "review_reason" not in (_status_events(session, job_id)[-1].detail or {})


def test_a_new_attempt_clears_the_review_reason(db_url):
    """A needs_review job whose reason was set, claimed again (e.g. put back to queued by
    hand) and failed, no longer claims to need review for that reason."""
    job_id = _new_job(db_url)
    claim = claim_job(db_url, job_id, max_attempts=3)
    finish_job(
        db_url,
        claim,
        JobStatus.needs_review,
        result_uri="r",
        mask_uri="m",
        metrics=METRICS,
        pipeline_version="v",
        review_reason=REASON,
    )
    with session_scope(db_url) as session:
        job = session.get(Job, job_id)
        job.status = JobStatus.queued.value  # bypass requeue_job, which clears it itself
    claim = claim_job(db_url, job_id, max_attempts=3)
    with session_scope(db_url) as session:
        assert session.get(Job, job_id).review_reason is None  # cleared by the new attempt
    assert fail_job(db_url, claim, "internal_error", "boom")
    with session_scope(db_url) as session:
        assert (session.get(Job, job_id).status, session.get(Job, job_id).review_reason) == ("failed", None)


def test_poison_job_fails_after_max_attempts(db_url):
    job_id = _new_job(db_url)
    for _ in range(2):  # each worker dies; its lease (0 s) runs out at once
        assert claim_job(db_url, job_id, max_attempts=2, lease_s=0) is not None
    with pytest.raises(TooManyAttempts):
        claim_job(db_url, job_id, max_attempts=2)
    with session_scope(db_url) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.error_code) == ("failed", "too_many_attempts")
    assert claim_job(db_url, job_id, max_attempts=2) is None  # finished: nothing to do


def test_giving_up_is_a_finished_attempt(db_url, monkeypatch):
    """process_job reports the job it failed as too_many_attempts as finished, so its
    webhook is sent like any other final status."""
    from clearmark.settings import Settings
    from clearmark.workers import webhooks
    from clearmark.workers.attempts import process_job

    notified = []
    monkeypatch.setattr(webhooks, "notify_finished", lambda job_id, s: notified.append(job_id))
    job_id = _new_job(db_url)
    settings = Settings(database_url=db_url, max_attempts=1)
    assert claim_job(db_url, job_id, max_attempts=1, lease_s=0) is not None  # that worker died
    assert process_job(job_id, engines=None, settings=settings) == "failed"
    assert notified == [job_id]
    assert process_job(job_id, engines=None, settings=settings) is None  # nothing left to do
    assert notified == [job_id]


@pytest.mark.parametrize("backend", ["sqlite_url", "pg_url"])
def test_every_tenant_gets_a_webhook_secret(request, backend):
    """Tenants from before 0003 get a secret from the migration, new ones from the model,
    so no webhook is ever signed with an empty key."""
    from sqlalchemy import text

    url = request.getfixturevalue(backend)
    migrate.upgrade(url, "0002")
    engine = create_engine(url)
    with engine.begin() as conn:
        for name in ("old-a", "old-b"):
            conn.execute(
                text("INSERT INTO tenants (id, name, created_at) VALUES (:n, :n, :t)"),
                {"n": name, "t": "2026-01-01T00:00:00+00:00"},
            )
    migrate.upgrade(url)
    with engine.begin() as conn:
        secrets = dict(conn.execute(text("SELECT id, webhook_secret FROM tenants")).all())
    assert len(set(secrets.values())) == 2 and all(len(s) >= 32 for s in secrets.values())
    with session_scope(url) as session:
        assert len(ensure_tenant(session, "new").webhook_secret) >= 32
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite_url", "pg_url"])
def test_gate_and_residual_times_move_from_the_status_event_into_the_metrics(request, backend):
    """Jobs finished before 0007 kept these two times in their status event's detail only;
    the migration copies their last finish's into job_metrics (none recorded: NULL)."""
    url = request.getfixturevalue(backend)
    migrate.upgrade(url, "0006")
    engine = create_engine(url)
    row = {"t": "2026-01-01T00:00:00+00:00", **METRICS}
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('t', 't', :t)"), row)
        columns = ", ".join(METRICS)
        for job in ("timed", "untimed"):
            conn.execute(
                text(
                    "INSERT INTO jobs (id, tenant_id, source_uri, status, attempts, created_at,"
                    " updated_at, webhook_pending, priority)"
                    " VALUES (:j, 't', 'x', 'succeeded', 1, :t, :t, false, 'normal')"
                ),
                {**row, "j": job},
            )
            conn.execute(
                text(
                    f"INSERT INTO job_metrics (job_id, created_at, {columns})"
                    f" VALUES (:j, :t, {', '.join(':' + c for c in METRICS)})"
                ),
                {**row, "j": job},
            )
        finishes = [
            {"ms": {"ms_gate": 5.5, "ms_residual": 7.25}},
            {"ms": {"ms_gate": 2.5, "ms_residual": 3.0}},
        ]
        # The last finish counts; a status event without times (a review, say) changes nothing.
        for detail in [{"attempt": 1}, *finishes, {"reviewer": "ana"}]:
            conn.execute(
                text(
                    "INSERT INTO job_events (job_id, kind, to_status, detail, created_at)"
                    " VALUES ('timed', 'status', 'succeeded', :d, :t)"
                ),
                {**row, "d": json.dumps(detail)},
            )
    migrate.upgrade(url)
    with engine.begin() as conn:
        times = conn.execute(text("SELECT job_id, ms_gate, ms_residual FROM job_metrics ORDER BY job_id"))
        assert [tuple(r) for r in times] == [("timed", 2.5, 3.0), ("untimed", None, None)]
    engine.dispose()


def test_a_forked_child_never_reuses_the_parents_connection(pg_url):
    """A worker parent that touched the database before forking its pool (the preflight
    does) must not hand its pooled connection to the children."""

    def backend_pid() -> int:
        with session_scope(pg_url) as session:
            return session.scalar(text("SELECT pg_backend_pid()"))

    parent = backend_pid()  # the connection goes back to the pool, open
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.write(write, str(backend_pid()).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    seen_by_child = int(os.read(read, 32) or b"0")
    os.close(read)
    assert seen_by_child and seen_by_child != parent
    assert backend_pid() == parent  # the parent's own connection still works
