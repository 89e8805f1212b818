"""`process_job` outcomes on the database, with test-double engines (no Celery)."""
from __future__ import annotations


import pytest
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from tests.test_pipeline import GreyRemover, MagentaDetector, fake_engines, marked
from workers.db import Job, JobMetrics, session_scope
from workers.errors import TransientError
from workers.jobs import create_job, ensure_tenant, process_job


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
        assert session.get(JobMetrics, job_id) is not None


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
