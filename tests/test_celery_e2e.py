"""End to end through real Celery worker processes on the real Redis broker and PostgreSQL."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps
from sqlalchemy import func, select

from clearmark.settings import set_settings
from clearmark.workers.commands.common import find_images
from clearmark.workers.db import FINISHED, JobEvent, JobMetrics, JobStatus, session_scope
from clearmark.workers.local import clean_folder
from clearmark.workers.storage import read_uri
from clearmark.workers.submit import submit_files
from tests.badfiles import bad_files
from tests.services import all_done, product_photo, statuses, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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
    assert sum(e.to_status is not None and JobStatus(e.to_status) in FINISHED for e in events) == 1
    assert Image.open(io.BytesIO(read_uri(job.result_uri))).size == (3200, 2400)
