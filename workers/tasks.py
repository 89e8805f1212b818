"""Celery tasks: thin wrappers around `workers.attempts.process_job`.

The engines are loaded once per worker child (worker_process_init), never per task and
never in the parent, so CUDA state is not shared across fork. With CLEARMARK_METRICS_PORT
set, the parent serves Prometheus metrics that its children write (workers.metrics:
multiprocess mode, set up in worker_init, i.e. before the pool forks).

Only workers import this module (it loads the pipeline): everyone else sends jobs by task
name (`broker.enqueue`).
"""

from __future__ import annotations

import logging
import os

from celery import Task
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from clearmark.pipeline.process import Engines
from clearmark.settings import get_settings
from clearmark.workers import broker, metrics
from clearmark.workers.attempts import process_job
from clearmark.workers.celery_app import app
from clearmark.workers.reaper import reap
from clearmark.workers.transient import TRANSIENT_ERRORS, backoff_s, max_retries

log = logging.getLogger(__name__)
_engines: Engines | None = None
_metrics_dir: str | None = None

# Celery is untyped: its decorators (tasks, signals) hide the functions' signatures from
# mypy, hence the `type: ignore[untyped-decorator]` on each.


def get_engines() -> Engines:
    global _engines
    if _engines is None:
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


@app.task(name="clearmark.reap")  # type: ignore[untyped-decorator]  # Celery is untyped
def reap_task() -> str:
    """One reaper pass (Celery beat sends it every CLEARMARK_REAP_INTERVAL_S)."""
    return str(reap(get_settings()))
