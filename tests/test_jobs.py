"""`process_job` outcomes on the database, with test-double engines (no Celery)."""

from __future__ import annotations

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image
from sqlalchemy import select

from clearmark.errors import StorageUnavailable, TransientError
from clearmark.workers import attempts
from clearmark.workers.attempts import process_job
from clearmark.workers.db import Job, JobEvent, JobMetrics, session_scope
from clearmark.workers.jobs import create_job, ensure_tenant
from clearmark.workers.storage import read_uri
from tests.test_pipeline import GreyRemover, MagentaDetector, fake_engines, marked
from tests.test_storage import disk_fills_up


def _job(settings, source_uri: str) -> str:
    with session_scope(settings.database_url) as session:
        job, _ = create_job(session, ensure_tenant(session), source_uri)
        return job.id


def _png(tmp_path) -> str:
    path = tmp_path / "photo.png"
    Image.fromarray(marked()).save(path)
    return path.as_uri()


def test_a_second_run_of_a_finished_job_changes_nothing(settings, tmp_path):
    job_id = _job(settings, _png(tmp_path))
    engines = fake_engines(MagentaDetector(), GreyRemover())
    assert process_job(job_id, engines, settings) == "succeeded"
    with session_scope(settings.database_url) as session:
        before = session.get(Job, job_id).updated_at
    assert process_job(job_id, engines, settings) is None
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert (job.attempts, job.updated_at) == (1, before)
        metrics = session.get(JobMetrics, job_id)
        # Every stage is timed in the job's metrics, the gate and the residual check included.
        assert metrics.ms_gate > 0 and metrics.ms_residual > 0
        assert metrics.ms_total >= metrics.ms_decode + metrics.ms_gate + metrics.ms_residual


class TimeoutRemover(GreyRemover):
    def run(self, batch):
        raise SoftTimeLimitExceeded()


class FlakyStorageRemover(GreyRemover):
    def run(self, batch):
        raise TransientError("storage blinked")


def test_soft_time_limit_fails_the_job_with_its_own_code(settings, tmp_path):
    job_id = _job(settings, _png(tmp_path))
    assert process_job(job_id, fake_engines(MagentaDetector(), TimeoutRemover()), settings) == "failed"
    with session_scope(settings.database_url) as session:
        assert session.get(Job, job_id).error_code == "time_limit"


def test_transient_error_releases_the_job_for_a_retry(settings, tmp_path):
    job_id = _job(settings, _png(tmp_path))
    with pytest.raises(TransientError):
        process_job(job_id, fake_engines(MagentaDetector(), FlakyStorageRemover()), settings)
    with session_scope(settings.database_url) as session:
        assert session.get(Job, job_id).status == "queued"
    assert process_job(job_id, fake_engines(MagentaDetector(), GreyRemover()), settings) == "succeeded"


def test_missing_source_fails_cleanly(settings, tmp_path):
    job_id = _job(settings, (tmp_path / "gone.png").as_uri())
    assert process_job(job_id, fake_engines(MagentaDetector(), GreyRemover()), settings) == "failed"
    with session_scope(settings.database_url) as session:
        assert session.get(Job, job_id).error_code == "source_missing"


def test_needs_review_reason_and_gate_verdicts_reach_the_job(settings, tmp_path, monkeypatch):
    """process_job stores the pipeline's review_reason on the job and its gate verdicts
    (numpy numbers and all) in the status event."""
    import numpy as np

    from clearmark.pipeline import process as pipeline

    reason = (
        "the gate put back a region the detector was sure of (0.91) at (10, 20, 300, 80):"
        " change not explained by one overlay colour (0.62 < 0.85)"
    )
    verdict = {
        "box": (10, 20, 300, 80),
        "pixels": np.int64(4200),
        "explained": np.float32(0.62),
        "opacity": 0.4,
        "colour": (250, 250, 250),
        "continues": np.float32("nan"),
        "flattened": 0.1,
        "confidence": np.float64(0.91),
        "passed": np.bool_(False),
        "reason": "change not explained by one overlay colour",
        "review_confident": 0.8,
    }
    metrics = dict(
        width=8,
        height=8,
        mask_area_fraction=0.1,
        detector_confidence=0.91,
        residual_score=0.1,
        ms_decode=1.0,
        ms_detect=1.0,
        ms_remove=1.0,
        ms_encode=1.0,
        ms_total=4.0,
    )

    def fake_process_image(data, engines, s, templates=(), deadline=None):
        return pipeline.PipelineResult(
            status="needs_review",
            image_bytes=data,
            extension=".png",
            mask_png=data,
            metrics=metrics,
            details={"gate": [verdict]},
            review_reason=reason,
        )

    monkeypatch.setattr(attempts, "process_image", fake_process_image)
    job_id = _job(settings, _png(tmp_path))
    engines = fake_engines(MagentaDetector(), GreyRemover())
    assert process_job(job_id, engines, settings) == "needs_review"
    with session_scope(settings.database_url) as session:
        assert session.get(Job, job_id).review_reason == reason
        event = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id.desc())
        ).first()
        assert (event.to_status, event.detail["review_reason"]) == ("needs_review", reason)
        gate = event.detail["gate"]
        assert gate[0]["box"] == [10, 20, 300, 80] and gate[0]["pixels"] == 4200
        assert gate[0]["passed"] is False and abs(gate[0]["explained"] - 0.62) < 1e-6
        assert gate[0]["continues"] is None  # NaN has no JSON form (PostgreSQL refuses it)


def test_a_jpeg_job_records_how_its_result_was_written(settings, tmp_path):
    """The status event says the upload's coefficients were kept and how many MCUs changed."""
    path = tmp_path / "photo.jpg"
    Image.fromarray(marked()).save(path, quality=95, subsampling=0)
    job_id = _job(settings, path.as_uri())
    assert process_job(job_id, fake_engines(MagentaDetector(), GreyRemover()), settings) == "succeeded"
    with session_scope(settings.database_url) as session:
        event = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id.desc())
        ).first()
        encoding = event.detail["encoding"]
    assert encoding["jpeg_exact"] is True
    assert 0 < encoding["jpeg_blocks_changed"] < encoding["jpeg_blocks_total"] == 20 * 15
    with session_scope(settings.database_url) as session:
        metrics = session.get(JobMetrics, job_id)
        assert metrics.jpeg_exact is True
        assert metrics.jpeg_blocks_changed == encoding["jpeg_blocks_changed"]


def test_a_storage_outage_spends_no_attempt(settings, tmp_path, monkeypatch):
    """A full disk for longer than CLEARMARK_MAX_ATTEMPTS retries: the job waits it out and
    then succeeds as its first attempt (it used to fail as too_many_attempts)."""
    job_id = _job(settings, _png(tmp_path))
    engines = fake_engines(MagentaDetector(), GreyRemover())
    with monkeypatch.context() as full:
        disk_fills_up(full)
        for _ in range(settings.max_attempts + 2):
            with pytest.raises(StorageUnavailable):
                process_job(job_id, engines, settings)
            with session_scope(settings.database_url) as session:
                assert (session.get(Job, job_id).status, session.get(Job, job_id).attempts) == ("queued", 0)
    assert process_job(job_id, engines, settings) == "succeeded"
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job.attempts == 1 and read_uri(job.result_uri)
        retries = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "retry"))
        assert [(e.detail["attempt_spent"], "No space left" in e.detail["reason"]) for e in retries] == [
            (False, True)
        ] * (settings.max_attempts + 2)


def test_a_job_that_gives_up_keeps_the_error_of_its_last_attempt(settings, tmp_path):
    """An output that cannot be written for a reason of its own (not an outage) spends the
    attempt; the too_many_attempts failure says what the write error was."""
    settings = settings.replace(max_attempts=1)
    job_id = _job(settings, _png(tmp_path))
    (tmp_path / "storage" / "results").parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "storage" / "results").write_text("a file where the results folder should be")
    engines = fake_engines(MagentaDetector(), GreyRemover())
    with pytest.raises(TransientError):
        process_job(job_id, engines, settings)
    assert process_job(job_id, engines, settings) == "failed"
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
    assert job.error_code == "too_many_attempts"
    assert "gave up after 1 attempts" in job.error_message
    assert "last error: cannot write" in job.error_message and "/results/" in job.error_message
