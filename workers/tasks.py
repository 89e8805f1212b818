"""Celery tasks: thin wrappers around `workers.jobs.process_job`.

The engines are loaded once per worker child (worker_process_init), never per task and
never in the parent, so CUDA state is not shared across fork. With CLEARMARK_METRICS_PORT
set, the parent serves Prometheus metrics that its children write (workers.metrics:
multiprocess mode, set up in worker_init, i.e. before the pool forks).
"""

from __future__ import annotations

import logging
import os

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

log = logging.getLogger(__name__)
_engines = None
_metrics_dir: str | None = None


def get_engines():
    global _engines
    if _engines is None:
        from clearmark.workers.pipeline import Engines

        _engines = Engines.load(get_settings())
        log.info("engines loaded: %s", _engines.version)
        if get_settings().metrics_port:
            metrics.record_backend(_engines)
    return _engines


@worker_init.connect
def _start_metrics_in_parent(**_kwargs) -> None:
    global _metrics_dir
    if get_settings().metrics_port:
        _metrics_dir = metrics.start_worker_server(get_settings().metrics_port)


@worker_shutdown.connect
def _stop_metrics(**_kwargs) -> None:
    metrics.stop_worker_server(_metrics_dir)


@worker_process_init.connect
def _load_engines_in_child(**_kwargs) -> None:
    get_engines()


@worker_process_shutdown.connect
def _child_exits(pid=None, **_kwargs) -> None:
    metrics.child_exited(pid or os.getpid())


@app.task(name=broker.CLEAN_TASK, bind=True, max_retries=None)
def clean_image(self, job_id: str) -> str | None:
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


@app.task(name="clearmark.reap")
def reap() -> str:
    """One reaper pass (Celery beat sends it every CLEARMARK_REAP_INTERVAL_S)."""
    from clearmark.workers.reaper import reap as reap_once

    return str(reap_once(get_settings()))


def queue_for(priority: str, settings: Settings | None = None) -> str:
    """Low-priority (bulk) jobs go to their own queue so they never delay uploads."""
    s = settings or get_settings()
    return s.queue_bulk if priority == Priority.low.value else s.queue_uploads


def enqueue(job_id: str, queue: str | None = None) -> None:
    """Send the job's task; ServiceUnavailable when the broker is down (the committed job
    is not lost: the reaper sends it when the broker is back)."""
    settings = get_settings()
    broker.publish(clean_image, job_id, queue or settings.queue_uploads, settings)
