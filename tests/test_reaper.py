"""Leases, the reaper and the gap between commit and publish, on the real Redis broker (and
SQLite and PostgreSQL in turn); one end-to-end run through a worker started with --reap."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
import redis
from PIL import Image
from sqlalchemy import select

from clearmark.errors import BadInput
from clearmark.settings import Settings, set_settings
from clearmark.workers import broker
from clearmark.workers.attempts import _run_claimed, output_uris
from clearmark.workers.celery_app import app, configure
from clearmark.workers.db import Job, JobEvent, JobStatus, session_scope
from clearmark.workers.jobs import Claim, claim_job, create_job, ensure_tenant, finish_job, requeue_job
from clearmark.workers.leases import Heartbeat, renew_lease
from clearmark.workers.reaper import reap
from clearmark.workers.storage import read_uri
from tests.services import Service, all_done, product_photo, service_env, statuses, wait_for
from tests.test_db import METRICS
from tests.test_pipeline import GreyRemover, MagentaDetector, fake_engines, marked


@pytest.fixture
def reaping(settings, redis_url):
    """The test's settings with no grace: the reaper acts at once."""
    s = settings.replace(reap_grace_s=0)
    set_settings(s)
    configure(app, s)
    return s


def _service(service: Settings, **changes) -> Settings:
    """The service's settings with no grace and `changes`."""
    s = service.replace(reap_grace_s=0, **changes)
    set_settings(s)
    configure(app, s)
    return s


def _job(s, callback_url: str | None = None) -> str:
    with session_scope(s.database_url) as session:
        job, _ = create_job(session, ensure_tenant(session), "file:///x.png", callback_url=callback_url)
        return job.id


def _job_row(s, job_id: str) -> Job:
    return statuses(s.database_url, [job_id])[job_id]


def _kinds(s, job_id: str) -> list[str]:
    with session_scope(s.database_url) as session:
        return [
            e.kind
            for e in session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        ]


def test_a_valid_lease_is_never_taken_over(settings):
    job_id = _job(settings)
    first = claim_job(settings.database_url, job_id, max_attempts=3, lease_s=300)
    assert claim_job(settings.database_url, job_id, max_attempts=3) is None  # second delivery
    job = _job_row(settings, job_id)
    assert (job.status, job.attempts) == ("running", 1)
    # The heartbeat keeps renewing the lease; a stale attempt cannot renew it.
    held = job.lease_expires_at
    with Heartbeat(settings.database_url, first, lease_s=600, every_s=0.05):
        wait_for(
            lambda: _job_row(settings, job_id).lease_expires_at > held,
            30,
            "the heartbeat to renew the lease",
            interval=0.05,
        )
    stale = Claim(job_id, 0, "file:///x.png", None, None, "t")
    assert not renew_lease(settings.database_url, stale, 600)
    assert renew_lease(settings.database_url, first, 0)  # the lease runs out now
    second = claim_job(settings.database_url, job_id, max_attempts=3)
    assert second.attempt == 2 and _kinds(settings, job_id)[-1] == "takeover"


def test_a_heartbeat_stops_at_its_limit_and_the_lease_runs_out(settings):
    """An attempt hung where its pool cannot stop it (Celery's threads pool) renews its lease
    only up to the hard time limit; then the job can be taken over."""
    job_id = _job(settings)
    first = claim_job(settings.database_url, job_id, max_attempts=3, lease_s=1)
    with Heartbeat(settings.database_url, first, lease_s=1, every_s=0.05, max_s=0.3):
        second = wait_for(
            lambda: claim_job(settings.database_url, job_id, max_attempts=3), 30, "the lease to run out"
        )
    assert second.attempt == 2 and _kinds(settings, job_id)[-1] == "takeover"


class SlowDetector(MagentaDetector):
    def run(self, batch):
        time.sleep(1.5)
        return super().run(batch)


def test_an_attempt_past_its_soft_time_limit_fails_without_a_pool_to_stop_it(settings, tmp_path):
    """Run as the threads pool runs it (no Celery signal): the pipeline stops at the end of
    the stage that ended past the soft time limit, and the job fails as `time_limit`."""
    path = tmp_path / "photo.png"
    Image.fromarray(marked()).save(path)
    with session_scope(settings.database_url) as session:
        job, _ = create_job(session, ensure_tenant(session), path.as_uri())
    s = settings.replace(soft_time_limit_s=1, hard_time_limit_s=30)
    claim = claim_job(s.database_url, job.id, 3)
    assert _run_claimed(claim, fake_engines(SlowDetector(), GreyRemover()), s) == "failed"
    row = _job_row(s, job.id)
    assert row.error_code == "time_limit" and "soft time limit (1 s)" in row.error_message


def test_each_attempt_writes_its_own_keys_and_the_loser_changes_nothing(settings, tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(marked()).save(path)
    with session_scope(settings.database_url) as session:
        job, _ = create_job(session, ensure_tenant(session), path.as_uri())
    engines = fake_engines(MagentaDetector(), GreyRemover())
    loser = claim_job(settings.database_url, job.id, 3, lease_s=0)  # hangs, lease runs out
    winner = claim_job(settings.database_url, job.id, 3)
    assert _run_claimed(winner, engines, settings) == "succeeded"
    stored = _job_row(settings, job.id)
    assert stored.result_uri == output_uris(winner, ".png")[0] != output_uris(loser, ".png")[0]
    kept = read_uri(stored.result_uri)
    assert _run_claimed(loser, engines, settings) is None  # the late loser is discarded
    again = _job_row(settings, job.id)
    assert (again.result_uri, again.attempts, read_uri(again.result_uri)) == (stored.result_uri, 2, kept)
    with pytest.raises(BadInput, match="not found"):
        read_uri(output_uris(loser, ".png")[0])  # it removed its own files


def test_reaper(reaping):
    s = reaping
    expired = _job(s)
    claim_job(s.database_url, expired, s.max_attempts, lease_s=0)
    used_up = _job(s, callback_url="https://example.com/hook")
    for _ in range(s.max_attempts):
        claim_job(s.database_url, used_up, s.max_attempts, lease_s=0)
    alive = _job(s)
    claim_job(s.database_url, alive, s.max_attempts, lease_s=300)
    unsent = _job(s)  # committed, then the publisher died
    sent = _job(s)
    from clearmark.workers.broker import enqueue

    enqueue(sent, s.queue_uploads)
    hook = _job(s, callback_url="https://example.com/hook")  # its worker died before notifying
    claim = claim_job(s.database_url, hook, s.max_attempts)
    assert finish_job(
        s.database_url,
        claim,
        JobStatus.succeeded,
        result_uri="r",
        mask_uri="m",
        metrics=METRICS,
        pipeline_version="v",
    )

    reaped = reap(s)
    assert (reaped.expired, reaped.gave_up, reaped.unsent, reaped.webhooks) == (
        [expired],
        [used_up],
        [unsent],
        [hook],
    )
    jobs = statuses(s.database_url, [expired, used_up, alive, unsent, sent, hook])
    assert jobs[expired].status == "queued" and jobs[expired].lease_expires_at is None
    assert (jobs[used_up].status, jobs[used_up].error_code) == ("failed", "too_many_attempts")
    assert jobs[alive].status == "running" and jobs[sent].status == "queued"
    on_broker = broker.jobs_with_tasks(s)
    assert {expired, unsent, sent} <= on_broker[broker.CLEAN_TASK]
    assert {used_up, hook} <= on_broker[broker.WEBHOOK_TASK]  # the failure is announced too
    assert "reaped" in _kinds(s, expired) and "reaped" not in _kinds(s, sent)
    # Everything now has its task: a second pass finds nothing to do.
    again = reap(s)
    assert not (again.expired or again.unsent or again.gave_up or again.webhooks)


def test_a_task_that_keeps_vanishing_unrun_fails_its_job(reaping):
    """The reaper sends a queued job's lost task CLEARMARK_MAX_RESENDS times in one stay in
    the queue, then fails the job (`not_claimed`: no worker said why), with its webhook; a
    retry starts the count again."""
    s = reaping.replace(max_resends=2)
    job_id = _job(s, callback_url="https://example.com/hook")
    client = redis.Redis.from_url(s.broker_url)
    for _ in range(2):
        assert reap(s).unsent == [job_id]
        assert client.delete(s.queue_uploads) == 1  # the task is lost again
    reaped = reap(s)
    assert (reaped.unclaimed, reaped.unsent) == ([job_id], [])
    job = _job_row(s, job_id)
    assert (job.status, job.error_code) == ("failed", "not_claimed") and job.finished_at
    assert job.error_message.startswith("sent 2 times and never run: no worker took it up")
    assert job_id in broker.jobs_with_tasks(s)[broker.WEBHOOK_TASK]
    with session_scope(s.database_url) as session:
        requeue_job(session, session.get(Job, job_id), reason="retry")
    assert reap(s).unsent == [job_id]  # a fresh stay in the queue: sent again, not failed
    assert _job_row(s, job_id).status == "queued"


@pytest.mark.integration
@pytest.mark.slow
def test_crash_between_commit_and_publish_is_recovered(service, workers, tmp_path):
    """`clearmark submit` is SIGKILLed right after its commit, before any task is published;
    a worker started with --reap still finishes every job, exactly once."""
    s = _service(service, lease_s=10, reap_interval_s=1)
    for i in range(2):
        product_photo(i, size=(160, 120)).save(tmp_path / f"p{i}.png")
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        import clearmark.workers.broker
        from clearmark.workers.submit import submit_files
        clearmark.workers.broker.enqueue = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        list(submit_files(sorted(Path({str(tmp_path)!r}).glob("p*.png"))))
    """)
    killed = subprocess.run([sys.executable, "-c", script], env=service_env(s), capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    with session_scope(s.database_url) as session:
        job_ids = list(session.scalars(select(Job.id)))
    assert len(job_ids) == 2 and {j.status for j in statuses(s.database_url, job_ids).values()} == {"queued"}
    on_broker = broker.jobs_with_tasks(s)
    assert not set(job_ids) & on_broker.get(broker.CLEAN_TASK, set()), "nothing was published"

    workers(s, "reaping", "--reap")
    jobs = wait_for(lambda: all_done(s.database_url, job_ids), 240, "both jobs")
    assert {j.status for j in jobs.values()} <= {"succeeded", "no_watermark", "needs_review"}
    for job_id in job_ids:
        kinds = _kinds(s, job_id)
        assert "reaped" in kinds and jobs[job_id].attempts == 1
        assert kinds.count("status") == 3  # queued, running, finished: once each


def _submit(env: dict, path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clearmark", "submit", str(path)], env=env, capture_output=True, text=True
    )


@pytest.mark.integration
@pytest.mark.slow
def test_submit_with_the_broker_or_database_down(service, tmp_path):
    """One error line and exit 75, no traceback; the job already recorded is sent by the
    reaper (or by submitting again) once the broker is back."""
    from tests.test_api import free_port

    s = _service(service)
    photo = tmp_path / "p.png"
    product_photo(0, size=(160, 120)).save(photo)
    no_broker = s.replace(broker_url=f"redis://127.0.0.1:{free_port()}/0")
    run = _submit(service_env(no_broker), photo)
    assert run.returncode == 75, run.stderr
    assert run.stdout == "" and "Traceback" not in run.stderr
    assert run.stderr.startswith("Error: broker unavailable") and run.stderr.count("\n") == 1
    assert "1 job(s) recorded but not sent" in run.stderr
    with session_scope(s.database_url) as session:
        (job_id,) = session.scalars(select(Job.id))
    assert _job_row(s, job_id).status == "queued"
    assert reap(s).unsent == [job_id]  # the broker is back: the reaper sends it
    again = _submit(service_env(s), photo)  # and a second submit gives the same job
    assert again.returncode == 0 and again.stdout.split("\t")[0] == job_id

    no_database = s.replace(database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing")
    run = _submit(service_env(no_database), photo)
    assert run.returncode == 75 and "Traceback" not in run.stderr
    assert run.stderr.startswith("Error: database unavailable") and run.stderr.count("\n") == 1


def test_task_retries_outlast_a_five_minute_outage():
    from clearmark.workers.transient import backoff_s, max_retries

    s = Settings()
    delays = [backoff_s(n, s, jitter=False) for n in range(max_retries(s))]
    assert max(delays) == s.retry_backoff_max_s and sum(delays) <= s.transient_retry_s
    assert 0.75 * sum(delays) >= 300  # even with the shortest jitter


@pytest.mark.integration
@pytest.mark.slow
def test_api_upload_with_the_broker_down_answers_503_and_keeps_the_job(service, tmp_path):
    """A real `clearmark api` whose broker is down: 503, the job stays queued (not failed),
    the same upload again returns it, and the reaper sends it once the broker is back."""
    import httpx

    from clearmark.workers.tenants import create_tenant
    from tests.test_api import free_port, png
    from tests.test_compose import compose_command

    s = _service(service)
    with session_scope(s.database_url) as session:
        _, key = create_tenant(session, "shop")
    port = str(free_port())
    server = Service(
        s.replace(broker_url=f"redis://127.0.0.1:{free_port()}/0"),
        tmp_path / "api.log",
        *compose_command("api", {"--host": "127.0.0.1", "--port": port}),
    )
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=30, headers={"Authorization": f"Bearer {key}"}
        ) as http:
            wait_for(lambda: _answers(http, "/healthz"), 60, "the API", interval=0.2)
            upload = {"files": {"file": ("p.png", png(3), "image/png")}}
            r = http.post("/v1/images", **upload)
            assert r.status_code == 503 and r.json()["error"]["code"] == "broker_unavailable"
            with session_scope(s.database_url) as session:
                (job_id,) = session.scalars(select(Job.id))
            assert _job_row(s, job_id).status == "queued"
            again = http.post("/v1/images", **upload)
            assert again.status_code == 200 and again.json()["id"] == job_id
    finally:
        server.stop()
    assert reap(s).unsent == [job_id]
    assert job_id in broker.jobs_with_tasks(s)[broker.CLEAN_TASK]


def _answers(http, path: str) -> bool:
    try:
        return http.get(path).status_code == 200
    except Exception:  # noqa: BLE001 - not listening yet
        return False
