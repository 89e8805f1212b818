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
    worker_init, worker_process_init, worker_process_shutdown, worker_shutdown,
)
from sqlalchemy.exc import OperationalError

from workers import metrics
from workers.celery_app import app
from workers.db import Priority
from workers.errors import TransientError
from workers.jobs import process_job
from workers.settings import Settings, get_settings

log = logging.getLogger(__name__)
_engines = None
_metrics_dir: str | None = None


def get_engines():
    global _engines
    if _engines is None:
        from workers.pipeline import Engines

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


@app.task(name="clearmark.clean_image", bind=True,
          autoretry_for=(TransientError, OperationalError),
          retry_backoff=2, retry_backoff_max=60, retry_jitter=True,
          max_retries=get_settings().max_attempts)
def clean_image(self, job_id: str) -> str | None:
    """Clean one job's image; the argument is the job id (never image bytes)."""
    settings = get_settings()
    status = process_job(job_id, get_engines(), settings)
    if settings.metrics_port:
        metrics.record_job(job_id, status, settings)
    return status


def queue_for(priority: str, settings: Settings | None = None) -> str:
    """Low-priority (bulk) jobs go to their own queue so they never delay uploads."""
    s = settings or get_settings()
    return s.queue_bulk if priority == Priority.low.value else s.queue_uploads


def enqueue(job_id: str, queue: str | None = None) -> None:
    clean_image.apply_async(args=[job_id], queue=queue or get_settings().queue_uploads)
