"""End to end through real Celery worker processes on the real Redis broker and PostgreSQL."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from sqlalchemy import func, select

from clearmark.settings import Settings, set_settings
from clearmark.workers.celery_app import app, configure
from clearmark.workers.commands.common import find_images
from clearmark.workers.db import FINISHED, Job, JobEvent, JobMetrics, session_scope
from clearmark.workers.local import clean_folder
from clearmark.workers.storage import read_uri
from clearmark.workers.submit import submit_files
from tests.badfiles import bad_files

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DONE = {s.value for s in FINISHED}


def product_photo(seed: int, size=(640, 480)) -> Image.Image:
    """A bright studio shot with a product-like box and an overlaid semi-transparent mark."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.full((h, w, 3), 235, np.float32) + rng.normal(0, 2, (h, w, 3))
    img[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = rng.uniform(40, 200, 3)
    mark = np.zeros((h, w), bool)
    mark[h // 2 - 20 : h // 2 + 20, 40 : w - 40 : 3] = True
    img[mark] = 0.5 * img[mark] + 0.5 * 255
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


@pytest.fixture(params=["postgresql"])
def db_url(request, pg_url):
    from clearmark.workers import migrate

    migrate.upgrade(pg_url)
    return pg_url


def unique_queues() -> dict[str, str]:
    """Queue names of this test alone, so concurrent test runs on one Redis never take
    each other's tasks."""
    run = uuid.uuid4().hex[:8]
    return {f"queue_{q}": f"clearmark.{q}.{run}" for q in ("uploads", "bulk", "webhooks")}


@pytest.fixture
def service(tmp_path, db_url, redis_url):
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        storage_uri=(tmp_path / "storage").as_uri(),
        broker_url=redis_url,
        visibility_timeout_s=120,  # above the hard time limit (a task still running is not re-delivered)
        soft_time_limit_s=100,
        hard_time_limit_s=110,
        **unique_queues(),
    )
    set_settings(settings)
    configure(app, settings)
    yield settings
    set_settings(None)


def service_env(settings: Settings) -> dict[str, str]:
    """The environment of a `clearmark` subprocess that uses `settings`."""
    return dict(
        os.environ,
        CLEARMARK_DATABASE_URL=settings.database_url,
        CLEARMARK_BROKER_URL=settings.broker_url,
        CLEARMARK_STORAGE_URI=settings.storage_uri,
        CLEARMARK_DATA_DIR=str(settings.data_dir),
        CLEARMARK_VISIBILITY_TIMEOUT_S=str(settings.visibility_timeout_s),
        CLEARMARK_SOFT_TIME_LIMIT_S=str(settings.soft_time_limit_s),
        CLEARMARK_HARD_TIME_LIMIT_S=str(settings.hard_time_limit_s),
        CLEARMARK_RETRY_BACKOFF_MAX_S=str(settings.retry_backoff_max_s),
        CLEARMARK_QUEUE_UPLOADS=settings.queue_uploads,
        CLEARMARK_QUEUE_BULK=settings.queue_bulk,
        CLEARMARK_QUEUE_WEBHOOKS=settings.queue_webhooks,
        CLEARMARK_WEBHOOK_ALLOW_HOSTS=",".join(settings.webhook_allow_hosts),
        CLEARMARK_WEBHOOK_BACKOFF_S=str(settings.webhook_backoff_s),
        CLEARMARK_WEBHOOK_MAX_ATTEMPTS=str(settings.webhook_max_attempts),
        CLEARMARK_LEASE_S=str(settings.lease_s),
        CLEARMARK_REAP_INTERVAL_S=str(settings.reap_interval_s),
        CLEARMARK_REAP_GRACE_S=str(settings.reap_grace_s),
        CLEARMARK_MAX_RESENDS=str(settings.max_resends),
        CLEARMARK_BACKEND=settings.backend,
        CLEARMARK_ENGINE_DIR=settings.engine_dir,
        CLEARMARK_WORKER_BUILD_BUDGET_S=str(settings.worker_build_budget_s),
    )


class Service:
    """A `clearmark ARGV...` process in its own process group, so SIGKILL takes parent and
    children."""

    def __init__(self, settings: Settings, log_path: Path, *argv: str):
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clearmark", *argv],
            env=service_env(settings),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


class Worker(Service):
    """`clearmark worker`, one child; extra options (e.g. -Q, -P) go in args."""

    def __init__(self, settings: Settings, log_path: Path, name: str, *args: str):
        super().__init__(settings, log_path, "worker", "-c", "1", "-n", f"{name}@%h", *args)


@pytest.fixture
def workers(tmp_path):
    started = []

    def start(settings, name="w", *args):
        """A worker; extra `clearmark worker` options (e.g. -Q, -P) go in args."""
        worker = Worker(settings, tmp_path / f"{name}-{len(started)}.log", name, *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def statuses(db_url, job_ids) -> dict[str, Job]:
    with session_scope(db_url) as session:
        return {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(job_ids)))}


def all_done(db_url, job_ids):
    jobs = statuses(db_url, job_ids)
    return jobs if all(j.status in DONE for j in jobs.values()) else None


def test_worker_processes_good_and_bad_files(service, workers, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    expected = {}
    for i in range(3):
        product_photo(i).save(inputs / f"photo{i}.png")
        expected[f"photo{i}.png"] = None
    for name, (data, code) in bad_files().items():
        (inputs / name).write_bytes(data)
        expected[name] = code
    worker = workers(service)
    submitted = dict(submit_files(sorted(inputs.iterdir())))
    jobs = wait_for(lambda: all_done(service.database_url, list(submitted)), 240, "all jobs")
    assert worker.alive(), "a bad file must never kill the worker"

    for job_id, path in submitted.items():
        job, code = jobs[job_id], expected[path.name]
        if code is not None:
            assert (job.status, job.error_code) == ("failed", code), path.name
            assert job.error_message
            continue
        assert job.status in {"succeeded", "no_watermark", "needs_review"}, (path.name, job.error_message)
        out = Image.open(io.BytesIO(read_uri(job.result_uri)))
        source = Image.open(path)
        # As displayed (EXIF orientation applied): a JPEG keeps its orientation tag, other
        # cleaned images are stored upright, an unchanged one (no_watermark) is the input's
        # own bytes; the mask is stored and tagged like the result.
        upright_size = ImageOps.exif_transpose(source).size
        assert ImageOps.exif_transpose(out).size == upright_size and out.format == source.format
        mask = Image.open(io.BytesIO(read_uri(job.mask_uri)))
        assert ImageOps.exif_transpose(mask).size == upright_size and mask.size == out.size
        assert job.attempts == 1 and job.pipeline_version
    with session_scope(service.database_url) as session:
        good = [j for j in submitted if expected[submitted[j].name] is None]
        assert session.scalar(
            select(func.count()).select_from(JobMetrics).where(JobMetrics.job_id.in_(good))
        ) == len(good)

    # The embedded mode (in-process, SQLite) gives the same bytes as the service.
    set_settings(service.replace(database_url=f"sqlite:///{tmp_path / 'local.db'}"))
    clean_folder(find_images([inputs], recursive=False), tmp_path / "local-out", None)
    for job_id, path in submitted.items():
        if jobs[job_id].status != "failed":
            assert (tmp_path / "local-out" / path.name).read_bytes() == read_uri(jobs[job_id].result_uri), (
                path.name
            )


def test_sigkilled_worker_job_finishes_exactly_once(service, workers, tmp_path):
    # A short lease, so the reaper (run by the second worker) queues the job again within
    # seconds, and a visibility timeout as short as the time limits allow (settings refuse
    # one not above the hard limit and every retry delay), so Redis may hand the dead
    # worker's task on as well.
    service = service.replace(
        visibility_timeout_s=31,
        soft_time_limit_s=25,
        hard_time_limit_s=30,
        webhook_backoff_s=1,
        lease_s=4,
        reap_interval_s=1,
        reap_grace_s=0,
    )
    big = tmp_path / "big.png"
    rng = np.random.default_rng(0)
    # Noise makes PNG decode/encode slow enough to kill the worker mid-task.
    Image.fromarray(rng.integers(0, 255, (2400, 3200, 3), dtype=np.uint8)).save(big)
    first = workers(service, "first")
    ((job_id, _),) = submit_files([big])

    def running():
        job = statuses(service.database_url, [job_id])[job_id]
        return job.status == "running"

    wait_for(running, 120, "the first worker to start the job", interval=0.01)
    first.kill()
    job = statuses(service.database_url, [job_id])[job_id]
    assert (job.status, job.attempts) == ("running", 1), "the kill must land mid-task"

    workers(service, "second", "--reap")
    jobs = wait_for(lambda: all_done(service.database_url, [job_id]), 180, "the job to finish")
    job = jobs[job_id]
    assert job.status in {"succeeded", "no_watermark", "needs_review"}, job.error_message
    assert job.attempts == 2
    with session_scope(service.database_url) as session:
        assert (
            session.scalar(select(func.count()).select_from(JobMetrics).where(JobMetrics.job_id == job_id))
            == 1
        )
        events = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()
    kinds = [e.kind for e in events]
    # Taken over once its lease ran out (by the redelivered message or the reaper's), and
    # finished once.
    assert kinds.count("takeover") + kinds.count("reaped") >= 1 and kinds[-1] == "status"
    assert sum(e.to_status in DONE for e in events) == 1
    assert Image.open(io.BytesIO(read_uri(job.result_uri))).size == (3200, 2400)
