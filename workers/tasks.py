"""Celery tasks: thin wrappers around `workers.attempts.process_job`.

The engines are loaded once per worker child (worker_process_init), never per task and
never in the parent, so CUDA state is not shared across fork (`clearmark worker` has
checked them in a process of their own before it starts, and built them there when
CLEARMARK_WORKER_BUILD_BUDGET_S allows). A child only loads: a build there could outlast
Celery's start-up timeout, and the next child would start it again. A child that cannot load them
exits, and has the worker stop with status 1: Celery would log the error and go on, with
every task then failing and the worker looking healthy. With CLEARMARK_METRICS_PORT
set, the parent serves Prometheus metrics that its children write (workers.metrics:
multiprocess mode, set up in worker_init, i.e. before the pool forks).

Only workers import this module (it loads the pipeline): everyone else sends jobs by task
name (`broker.enqueue`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

from celery import Task
from celery.platforms import EX_FAILURE
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)
from celery.worker import state as worker_state

from clearmark.errors import EngineUnavailable
from clearmark.pipeline.process import Engines
from clearmark.settings import get_settings
from clearmark.workers import broker, metrics
from clearmark.workers.attempts import process_job
from clearmark.workers.celery_app import app
from clearmark.workers.jobs import note_engine_unavailable
from clearmark.workers.reaper import reap
from clearmark.workers.transient import TRANSIENT_ERRORS, backoff_s, max_retries

log = logging.getLogger(__name__)
# What a pool process sends the worker's main process when it cannot load its engines (no
# Celery handler uses it; CELERY_RDBSIG, a debugging aid, would take it over).
ENGINES_FAILED = signal.SIGUSR2
_engines: Engines | None = None
_engines_lock = threading.Lock()  # the threads pool (CLEARMARK_JOBS_IN_FLIGHT > 1) shares them
_metrics_dir: str | None = None
_main_pid: int | None = None  # the worker's main process (worker_init), inherited by its children

# Celery is untyped: its decorators (tasks, signals) hide the functions' signatures from
# mypy, hence the `type: ignore[untyped-decorator]` on each.


def get_engines() -> Engines:
    """This process's engines, loaded on first use (once, whichever of its threads asks
    first); EngineUnavailable names why they cannot."""
    with _engines_lock:
        return _load_engines()


def _load_engines() -> Engines:
    global _engines
    if _engines is None:
        try:
            _engines = Engines.load(get_settings(), build=False)
        except Exception as exc:  # noqa: BLE001 - whatever the backend raised, said in one line
            raise EngineUnavailable.because(exc) from exc
        log.info("engines loaded: %s", _engines.version)
        if get_settings().metrics_port:
            metrics.record_backend(_engines)
    return _engines


def _stop_with_failure(_signum: int, _frame: FrameType | None) -> None:
    worker_state.should_stop = EX_FAILURE  # the warm shutdown SIGTERM starts, with status 1


def _stop_worker(exc: EngineUnavailable) -> None:
    """Have the worker stop with status 1: from a pool process, by signalling the main
    process; in the main process itself (the solo and threads pools), directly."""
    log.critical("worker stopping: engines cannot load: %s", exc.message)
    if _main_pid == os.getpid():
        worker_state.should_stop = EX_FAILURE
    elif _main_pid is not None:
        os.kill(_main_pid, ENGINES_FAILED)


@worker_init.connect  # type: ignore[untyped-decorator]
def _start_in_parent(**_kwargs: object) -> None:
    global _metrics_dir, _main_pid
    _main_pid = os.getpid()
    signal.signal(ENGINES_FAILED, _stop_with_failure)
    if get_settings().metrics_port:
        _metrics_dir = metrics.start_worker_server(get_settings().metrics_port)


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _stop_metrics(**_kwargs: object) -> None:
    metrics.stop_worker_server(_metrics_dir)


def _cleans_images() -> bool:
    """Whether this worker consumes a queue of image tasks (`-Q`; all queues without it):
    one that only delivers webhooks never needs the engines."""
    s = get_settings()
    consumed = app.amqp.queues.consume_from
    return any(q in consumed for q in (s.queue_uploads, s.queue_bulk))


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _load_engines_in_child(**_kwargs: object) -> None:
    if not _cleans_images():
        return
    try:
        get_engines()
    except EngineUnavailable as exc:
        _stop_worker(exc)
        if _main_pid not in (None, os.getpid()):
            # A pool process: gone, rather than take tasks it cannot run. The pool starts
            # another until the main process stops (within a second or so).
            os._exit(EX_FAILURE)


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
        engines = get_engines()
    except EngineUnavailable as exc:
        # Left queued with the reason on it; the reaper sends it again (another worker may
        # run it) and fails it after CLEARMARK_MAX_RESENDS.
        try:
            note_engine_unavailable(settings.database_url, job_id, exc.message)
        except Exception:  # noqa: BLE001 - the database is down too: the reaper still counts
            log.exception("job %s: cannot record that the engines cannot load", job_id)
        _stop_worker(exc)
        return None
    try:
        status = process_job(job_id, engines, settings)
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
