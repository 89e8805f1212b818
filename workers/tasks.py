"""Celery tasks: thin wrappers around `workers.jobs.process_job`.

The engines are loaded once per worker child (worker_process_init), never per task and
never in the parent, so CUDA state is not shared across fork. With CLEARMARK_METRICS_PORT
set, the parent serves Prometheus metrics that its children write (workers.metrics:
multiprocess mode, set up in worker_init, i.e. before the pool forks).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from celery import Task
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from clearmark.settings import Settings, get_settings
from clearmark.workers import broker, metrics
from clearmark.workers.celery_app import app
from clearmark.workers.db import Priority
from clearmark.workers.jobs import process_job
from clearmark.workers.transient import TRANSIENT_ERRORS, backoff_s, max_retries

if TYPE_CHECKING:
    from clearmark.workers.pipeline import Engines

log = logging.getLogger(__name__)
_engines: Engines | None = None
_metrics_dir: str | None = None

# Celery is untyped: its decorators (tasks, signals) hide the functions' signatures from
# mypy, hence the `type: ignore[untyped-decorator]` on each.


def get_engines() -> Engines:
    global _engines
    if _engines is None:
        # Imported here, not at the top: the pipeline pulls in torch, OpenCV and the
        # engines, and this module is also imported by the API and `clearmark submit`
        # (enqueue), which never run a job.
        from clearmark.workers.pipeline import Engines

        _engines = Engines.load(get_settings())
        log.info("engines loaded: %s", _engines.version)
        if get_settings().metrics_port:
            metrics.record_backend(_engines)
    return _engines


@worker_init.connect  # type: ignore[untyped-decorator]
def _start_metrics_in_parent(**_kwargs: object) -> None:
    global _metrics_dir
    if get_settings().metrics_port:
        _metrics_dir = metrics.start_worker_server(get_settings().metrics_port)


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _stop_metrics(**_kwargs: object) -> None:
    metrics.stop_worker_server(_metrics_dir)


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _load_engines_in_child(**_kwargs: object) -> None:
    get_engines()


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _child_exits(pid: int | None = None, **_kwargs: object) -> None:
    metrics.child_exited(pid or os.getpid())


@app.task(name=broker.CLEAN_TASK, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
def clean_image(self: Task, job_id: str) -> str | None:
    """Clean one job's image; the argument is the job id (never image bytes).

    A transient fault (database, broker, storage) retries with doubling delays for
    CLEARMARK_TRANSIENT_RETRY_S in all; after that the task ends and the reaper, which
    finds the job queued without a task (or running with an expired lease), takes over."""
    settings = get_settings()
    try:
        status = process_job(job_id, get_engines(), settings)
    except TRANSIENT_ERRORS as exc:
        retries = self.request.retries
        if retries >= max_retries(settings):
            log.warning(
                "job %s: still failing after %d retries (%s); left to the reaper", job_id, retries, exc
            )
            return None
        raise self.retry(countdown=backoff_s(retries, settings), exc=exc)
    if settings.metrics_port:
        metrics.record_job(job_id, status, settings)
    return status


def queue_for(priority: str, settings: Settings | None = None) -> str:
    """Low-priority (bulk) jobs go to their own queue so they never delay uploads."""
    s = settings or get_settings()
    return s.queue_bulk if priority == Priority.low.value else s.queue_uploads


def enqueue(job_id: str, queue: str | None = None) -> None:
    """Send the job's task; ServiceUnavailable when the broker is down (the committed job
    is not lost: the reaper sends it when the broker is back)."""
    settings = get_settings()
    broker.publish(clean_image, job_id, queue or settings.queue_uploads, settings)
