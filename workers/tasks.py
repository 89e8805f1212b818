"""Celery tasks: thin wrappers around `workers.jobs.process_job`.

The engines are loaded once per worker child (worker_process_init), never per task and
never in the parent, so CUDA state is not shared across fork.
"""
from __future__ import annotations

import logging

from celery.signals import worker_process_init
from sqlalchemy.exc import OperationalError

from workers.celery_app import app
from workers.errors import TransientError
from workers.jobs import process_job
from workers.settings import get_settings

log = logging.getLogger(__name__)
_engines = None


def get_engines():
    global _engines
    if _engines is None:
        from workers.pipeline import Engines

        _engines = Engines.load(get_settings())
        log.info("engines loaded: %s", _engines.version)
    return _engines


@worker_process_init.connect
def _load_engines_in_child(**_kwargs) -> None:
    get_engines()


@app.task(name="clearmark.clean_image", bind=True,
          autoretry_for=(TransientError, OperationalError),
          retry_backoff=2, retry_backoff_max=60, retry_jitter=True,
          max_retries=get_settings().max_attempts)
def clean_image(self, job_id: str) -> str | None:
    """Clean one job's image; the argument is the job id (never image bytes)."""
    return process_job(job_id, get_engines(), get_settings())


def enqueue(job_id: str, queue: str | None = None) -> None:
    clean_image.apply_async(args=[job_id], queue=queue or get_settings().queue_uploads)
