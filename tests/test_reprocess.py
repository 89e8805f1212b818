"""Bulk operations on real PostgreSQL and Redis: reprocess selection and dry-run counts,
restart after an interrupt, bulk import, batches, and uploads overtaking a bulk backlog."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from clearmark.pipeline.versions import current_version_pattern
from clearmark.workers import reprocess as rp
from clearmark.workers.cli import cli
from clearmark.workers.db import Batch, Job, JobEvent, Tenant, session_scope
from clearmark.workers.jobs import create_batch, create_job, ensure_tenant
from clearmark.workers.submit import submit_files
from tests.services import all_done, product_photo, wait_for

pytestmark = [pytest.mark.integration]
OLD = "pipeline-0+detector:000000000000:torch+remover:000000000000:torch"


def current_version() -> str:
    return current_version_pattern().replace("%", "onnxruntime")


def seed(url: str) -> dict[str, list[str]]:
    """Two tenants' finished jobs: statuses, versions, dates and a batch to select by."""
    groups: dict[str, list[str]] = {}
    rows = [  # (group, tenant, status, version, created)
        *[("a_old_ok", "a", "succeeded", OLD, "2026-01-10")] * 4,
        *[("a_new_ok", "a", "succeeded", "current", "2026-03-01")] * 3,
        *[("a_failed", "a", "failed", None, "2026-03-02")] * 2,  # no result, no version
        *[("a_review", "a", "needs_review", OLD, "2026-02-01")] * 1,
        *[("a_running", "a", "running", OLD, "2026-01-05")] * 2,  # never selected
        *[("b_old", "b", "no_watermark", OLD, "2026-01-20")] * 3,
    ]
    with session_scope(url) as session:
        tenants = {name: ensure_tenant(session, name) for name in ("a", "b")}
        batch = create_batch(session, tenants["b"], "bulk")
        for i, (group, tenant, status, version, created) in enumerate(rows):
            job, _ = create_job(
                session,
                tenants[tenant],
                f"file:///src/{group}/{i}.png",
                batch=batch if tenant == "b" else None,
            )
            job.status = status
            job.pipeline_version = current_version() if version == "current" else version
            job.created_at = datetime.fromisoformat(created).replace(tzinfo=UTC)
            groups.setdefault(group, []).append(job.id)
        groups["b_batch"] = [batch.id]
    return groups


def test_selection_and_dry_run_counts(service, tmp_path):
    g = seed(service.database_url)
    count = lambda **kw: rp.dry_run(rp.Selection(**kw))  # noqa: E731
    assert count() == {"failed": 2, "needs_review": 1, "no_watermark": 3, "succeeded": 7}
    assert count(outdated=True) == {"needs_review": 1, "no_watermark": 3, "succeeded": 4}
    assert count(tenant="a", outdated=True) == {"needs_review": 1, "succeeded": 4}
    assert count(tenant="a", statuses=("failed",)) == {"failed": 2}
    assert count(since="2026-01-15", until="2026-02-15") == {"needs_review": 1, "no_watermark": 3}
    assert count(version="pipeline-0+") == count(outdated=True)
    assert count(batch=g["b_batch"][0]) == {"no_watermark": 3}
    ids = tmp_path / "ids.txt"
    ids.write_text(
        "\n".join([g["a_failed"][0], "file:///src/b_old/12.png", g["a_running"][0], "# a comment"]) + "\n"
    )
    assert count(ids_file=str(ids)) == {"failed": 1, "no_watermark": 1}
    with pytest.raises(ValueError):
        count(statuses=("running",))

    result = CliRunner().invoke(cli, ["reprocess", "--dry-run", "--outdated", "--tenant", "a"])
    assert result.exit_code == 0, result.output
    assert "needs_review 1, succeeded 4 (total 5)" in result.output
    with session_scope(service.database_url) as session:  # a dry run changes nothing
        assert session.scalar(select(Batch).where(Batch.kind == "reprocess")) is None
    # --until takes what --since takes: an age (every seeded job is older than an hour)...
    aged = CliRunner().invoke(cli, ["reprocess", "--dry-run", "--until", "1h"])
    assert aged.exit_code == 0 and "(total 13)" in aged.output, aged.output
    # ... and says which option it could not read, as --since does.
    bad = CliRunner().invoke(cli, ["reprocess", "--dry-run", "--until", "soon"])
    assert bad.exit_code == 2 and "--until" in bad.output and "Traceback" not in bad.output


def test_interrupted_run_resumes_without_enqueueing_twice(service, monkeypatch):
    g = seed(service.database_url)
    selected = set(g["a_old_ok"] + g["a_review"] + g["b_old"])  # --outdated: 5 of a's, 3 of b's
    sent: list[tuple[str, str]] = []
    interrupts = {4, 6}  # Ctrl-C at the 5th and the 7th enqueue (chunks of 3)

    def enqueue(job_id, queue=None):
        if len(sent) in interrupts:
            interrupts.remove(len(sent))
            raise KeyboardInterrupt
        sent.append((job_id, queue))

    monkeypatch.setattr("clearmark.workers.broker.enqueue", enqueue)
    run = lambda *args: CliRunner().invoke(cli, ["reprocess", "--chunk", "3", *args])  # noqa
    first = run("--outdated")
    assert first.exit_code == 1 and "Aborted" in first.output and len(sent) == 4
    assert "one batch per tenant: a 5, b 3" in first.output
    a_batch = first.output.split("batch ")[2].split()[0]
    assert f"batch {a_batch} (tenant a)" in first.output and "(tenant b)" not in first.output
    with session_scope(service.database_url) as session:  # a's 2nd chunk committed, one job unsent
        in_batch = session.scalars(select(Job).where(Job.batch_id == a_batch)).all()
        assert len(in_batch) == 5 and {j.status for j in in_batch} == {"queued"}
        assert {j.priority for j in in_batch} == {"low"}

    second = run("--outdated")  # the same command again picks a's run up, then does b's
    assert f"resuming batch {a_batch}: its last run stopped with 1 jobs" in second.output
    assert second.exit_code == 1 and len(sent) == 6
    b_batch = second.output.split("(tenant b)")[0].split("batch ")[-1].strip()
    third = run("--resume", b_batch)
    assert third.exit_code == 0, third.output
    assert f"queued 2 jobs in batch {b_batch}" in third.output
    assert Counter(j for j, _ in sent) == Counter(selected)  # each exactly once
    assert {q for _, q in sent} == {service.queue_bulk}
    with session_scope(service.database_url) as session:
        batches = session.execute(
            select(Batch.id, Tenant.name, Batch.total)
            .join(Tenant, Tenant.id == Batch.tenant_id)
            .where(Batch.kind == "reprocess")
        ).all()
        assert sorted(batches) == sorted([(a_batch, "a", 5), (b_batch, "b", 3)])
        owners = dict(session.execute(select(Job.batch_id, Job.tenant_id).where(Job.id.in_(selected))).all())
        tenants = {name: session.scalar(select(Tenant.id).where(Tenant.name == name)) for name in "ab"}
        assert owners == {a_batch: tenants["a"], b_batch: tenants["b"]}  # one tenant per batch
        kinds = Counter(
            e.kind for e in session.scalars(select(JobEvent).where(JobEvent.job_id.in_(selected)))
        )
    assert kinds["enqueued"] == 8 and kinds["retry"] == 8

    # The same selection again finds nothing: those jobs are queued now, not finished.
    again = run("--outdated")
    assert "(total 0)" in again.output and "resuming" not in again.output and len(sent) == 8
    assert "no reprocess batch" in run("--resume", "nope").output


def test_a_reprocess_batch_belongs_to_its_jobs_tenant(service, monkeypatch):
    """Without --tenant, a run over one tenant's jobs makes that tenant's batch (never one of
    the default tenant's), and a batch recorded without a tenant takes only its owner's jobs."""
    g = seed(service.database_url)
    monkeypatch.setattr("clearmark.workers.broker.enqueue", lambda job_id, queue=None: None)
    result = CliRunner().invoke(cli, ["reprocess", "--batch", g["b_batch"][0]])
    assert result.exit_code == 0, result.output
    assert "one batch per tenant" not in result.output and "(tenant b)" in result.output
    listed = CliRunner().invoke(cli, ["batches", "--tenant", "b"]).output
    assert listed.count("reprocess") == 1 and "0/3" in listed  # queued, none done yet
    assert "reprocess" not in CliRunner().invoke(cli, ["batches", "--tenant", "a"]).output
    with session_scope(service.database_url) as session:
        assert session.scalar(select(Tenant).where(Tenant.name == "local")) is None

    # A batch from before runs were split by tenant records a selection without one: resumed,
    # it takes its owner's jobs only (a's 7 succeeded, not the 3 of b's that are finished).
    with session_scope(service.database_url) as session:
        for job in session.scalars(select(Job).where(Job.id.in_(g["b_old"]))):
            job.status = "succeeded"
        owner = session.scalar(select(Tenant).where(Tenant.name == "a"))
        legacy = create_batch(session, owner, "reprocess", rp.Selection(statuses=("succeeded",)).to_json())
    resumed = CliRunner().invoke(cli, ["reprocess", "--resume", legacy.id])
    assert resumed.exit_code == 0 and f"queued 7 jobs in batch {legacy.id}" in resumed.output
    with session_scope(service.database_url) as session:
        queued = session.scalars(select(Job).where(Job.batch_id == legacy.id)).all()
        assert {j.tenant_id for j in queued} == {owner.id}


def test_upload_overtakes_bulk_backlog(service, workers, tmp_path):
    """One worker on both queues (uploads listed first): an upload queued behind a bulk
    backlog starts after at most the bulk task that was already running, not after the
    backlog. (Celery polls the queues round robin, so this holds for one worker; dedicated
    upload workers, as in compose.yaml, give uploads a worker of their own.)"""
    backlog, uploads = tmp_path / "backlog", tmp_path / "uploads"
    backlog.mkdir(), uploads.mkdir()
    for i in range(8):
        product_photo(i, size=(256, 192)).save(backlog / f"b{i}.png")
    product_photo(99, size=(256, 192)).save(uploads / "u.png")
    result = CliRunner().invoke(cli, ["bulk", str(backlog), "--tenant", "shop"])
    assert result.exit_code == 0, result.output
    assert "8 images, 8 new jobs" in result.output
    with session_scope(service.database_url) as session:
        bulk_ids = session.scalars(select(Job.id).where(Job.priority == "low")).all()
    assert len(bulk_ids) == 8

    workers(service)
    first_done = lambda: [j for j in _jobs(service, bulk_ids) if j.finished_at]  # noqa: E731
    wait_for(first_done, 120, "a first bulk job to finish")
    ((upload_id, _),) = submit_files([uploads / "u.png"], tenant="shop")
    jobs = wait_for(lambda: all_done(service.database_url, bulk_ids + [upload_id]), 240, "backlog and upload")
    upload = jobs.pop(upload_id)
    started_after_upload_queued = [
        j for j in jobs.values() if upload.created_at < j.started_at < upload.started_at
    ]
    assert len(started_after_upload_queued) <= 1
    assert sum(j.started_at > upload.started_at for j in jobs.values()) >= 4, (
        "the upload must start well before the backlog drains"
    )

    out = CliRunner().invoke(cli, ["batches", "--tenant", "shop"]).output
    assert "bulk" in out and "submit" in out and "8/8" in out


def _jobs(service, ids):
    with session_scope(service.database_url) as session:
        return session.scalars(select(Job).where(Job.id.in_(ids))).all()


def test_bulk_import_of_a_uri_prefix(service, tmp_path):
    """A bucket prefix (here a file:// URI) is imported in place, once."""
    from clearmark.workers.metrics import queue_depths

    bucket = tmp_path / "bucket" / "2026"
    bucket.mkdir(parents=True)
    for i in range(3):
        product_photo(i, size=(64, 48)).save(bucket / f"p{i}.jpg")
    (bucket / "notes.txt").write_text("not an image")
    uri = bucket.parent.as_uri()
    first = CliRunner().invoke(cli, ["bulk", uri, "--tenant", "shop", "--chunk", "2"])
    assert first.exit_code == 0, first.output
    assert "3 images, 3 new jobs, 0 already known" in first.output
    again = CliRunner().invoke(cli, ["bulk", uri, "--tenant", "shop"])
    assert "all 3 images are already known: no new batch" in again.output
    with session_scope(service.database_url) as session:
        jobs = session.scalars(select(Job)).all()
    assert sorted(j.source_uri for j in jobs) == [(bucket / f"p{i}.jpg").as_uri() for i in range(3)]
    assert {j.priority for j in jobs} == {"low"}
    assert queue_depths(service)[service.queue_bulk] == 3


def test_bulk_and_submit_jobs_keep_their_file_names(service, tmp_path):
    """Storage keys are hashes: each job keeps the name its file was given, and `review
    list`, `status` and the report show that name."""
    from clearmark.workers.db import METRIC_FIELDS, JobMetrics

    folder = tmp_path / "catalogue" / ("spring collection " * 6).strip() / "shoes"
    folder.mkdir(parents=True)
    product_photo(1, size=(64, 48)).save(folder / "red shoe #1.png")
    product_photo(2, size=(64, 48)).save(tmp_path / "hat.png")
    assert CliRunner().invoke(cli, ["bulk", str(tmp_path / "catalogue"), "--tenant", "shop"]).exit_code == 0
    submitted = CliRunner().invoke(cli, ["submit", str(tmp_path / "hat.png"), "--tenant", "shop"])
    assert submitted.exit_code == 0, submitted.output
    names = {str(folder / "red shoe #1.png"), str(tmp_path / "hat.png")}
    with session_scope(service.database_url) as session:
        jobs = session.scalars(select(Job)).all()
        assert {j.source_name for j in jobs} == names
        assert not any(j.source_name in j.source_uri for j in jobs)  # stored under their sha256
        for job in jobs:
            job.status = "needs_review" if job.priority == "low" else "failed"
            job.error_code = "corrupt_image" if job.status == "failed" else None
            job.review_reason = "a mark is left"
            session.add(JobMetrics(job_id=job.id, **dict.fromkeys(METRIC_FIELDS, 0.5)))

    listed = CliRunner().invoke(cli, ["review", "list"]).output
    assert f"{folder / 'red shoe #1.png'}  -" in listed
    assert f"[{tmp_path / 'hat.png'}]" in CliRunner().invoke(cli, ["status"]).output
    out = tmp_path / "report.html"
    assert CliRunner().invoke(cli, ["report", "--out", str(out)]).exit_code == 0
    review = out.read_text().split("<h2>Needs review</h2>")[1].split("<h2>")[0]
    assert f">{folder / 'red shoe #1.png'}</span>" in review
