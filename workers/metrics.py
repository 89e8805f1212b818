"""Prometheus metrics.

Two sources, each exposed where it is true:
- the API's `/metrics` reads the shared state on every scrape: jobs by status and images
  finished per second (the jobs table), queue depth per queue (the broker);
- each worker serves what its processes measured on `CLEARMARK_METRICS_PORT` (0: off):
  jobs done by status (`rate()` gives images per second per worker), stage latency
  histograms and the backends in use.

Workers run prefork children, so worker metrics use prometheus_client's multiprocess mode:
the parent, before it forks (`worker_init`), points PROMETHEUS_MULTIPROC_DIR at a fresh
directory and serves the children's merged files from a thread; each child writes its own
file and marks it dead when it exits. The port thus stays one per worker node, whatever the
concurrency, and survives child replacement.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, TypedDict

from kombu.exceptions import ChannelError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from clearmark.pipeline.stages import STAGES
from clearmark.settings import Settings, get_settings
from clearmark.workers.celery_app import app
from clearmark.workers.db import Job, JobMetrics, JobStatus, session_scope, utcnow

if TYPE_CHECKING:  # annotation only: the API serves /metrics without loading any engine
    from clearmark.pipeline.process import Engines

log = logging.getLogger(__name__)
# Seconds; product photos take tens of ms (GPU) to tens of seconds (big images on CPU).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RATE_WINDOW_S = 60
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


# --- shared state, for the API's /metrics -------------------------------------------------


class StateCollector:
    """Jobs by status, images per second and queue depth, read at scrape time."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self.settings or get_settings()
        jobs = GaugeMetricFamily("clearmark_jobs", "Jobs by status (the jobs table)", labels=["status"])
        for status, n in status_counts(s.database_url).items():
            jobs.add_metric([status], n)
        yield jobs
        since = utcnow() - timedelta(seconds=RATE_WINDOW_S)
        with session_scope(s.database_url) as session:
            recent = session.scalar(select(func.count()).select_from(Job).where(Job.finished_at >= since))
        yield GaugeMetricFamily(
            "clearmark_images_per_second",
            f"Jobs finished per second over the last {RATE_WINDOW_S} s, all workers",
            value=(recent or 0) / RATE_WINDOW_S,
        )
        depth = GaugeMetricFamily("clearmark_queue_depth", "Tasks waiting on each queue", labels=["queue"])
        for queue, n in queue_depths(s).items():
            depth.add_metric([queue], n)
        yield depth


def status_counts(db_url: str) -> dict[str, int]:
    """Jobs by status, every status present (0 when none)."""
    with session_scope(db_url) as session:
        rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    counts = {s.value: 0 for s in JobStatus}
    counts.update({status: n for status, n in rows})
    return counts


def queue_depths(settings: Settings) -> dict[str, int]:
    """Messages waiting per queue; an empty dict when the broker cannot be reached."""
    depths: dict[str, int] = {}
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
            channel = conn.default_channel
            for queue in (settings.queue_uploads, settings.queue_bulk, settings.queue_webhooks):
                try:
                    depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
                except ChannelError:  # Redis: a queue with no messages has no key
                    depths[queue] = 0
    except Exception as exc:  # noqa: BLE001 - a scrape must not fail with the broker
        log.warning("queue depth unavailable: %s", exc)
    return depths


def render_state(settings: Settings | None = None) -> tuple[bytes, str]:
    """The API's /metrics body and content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(settings))
    return generate_latest(registry), CONTENT_TYPE_LATEST


# --- per worker ---------------------------------------------------------------------------


class WorkerMetrics(TypedDict):
    done: Counter
    stage: Histogram
    backend: Gauge


@lru_cache(maxsize=1)
def worker_metrics() -> WorkerMetrics:
    """The worker's metric objects, created on first use (after multiprocess set-up)."""
    return {
        "done": Counter("clearmark_worker_jobs", "Jobs this worker finished, by status", ["status"]),
        "stage": Histogram("clearmark_stage_seconds", "Time per pipeline stage", ["stage"], buckets=BUCKETS),
        "backend": Gauge(
            "clearmark_worker_backend_info",
            "Engines loaded by this worker (value 1)",
            ["detector", "remover", "pipeline_version"],
            multiprocess_mode="livemax",
        ),
    }


def start_worker_server(port: int) -> str | None:
    """In the worker's parent, before it forks: multiprocess mode on, HTTP server on `port`.
    Returns the directory it created (to remove at shutdown), or None."""
    created = None
    if not os.environ.get(MULTIPROC_ENV):
        created = tempfile.mkdtemp(prefix="clearmark-metrics-")
        os.environ[MULTIPROC_ENV] = created
    # prometheus_client chose its value class when imported, before the variable was set
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]  # untyped in prometheus_client
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped in prometheus_client
    try:
        start_http_server(port, registry=registry)
        log.info("worker metrics on port %s", port)
    except OSError as exc:  # a busy port must not stop the worker
        log.warning("worker metrics server not started on port %s: %s", port, exc)
    return created


def stop_worker_server(created: str | None) -> None:
    if created:
        shutil.rmtree(created, ignore_errors=True)


def child_exited(pid: int) -> None:
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]  # untyped in prometheus_client


def record_backend(engines: Engines) -> None:
    worker_metrics()["backend"].labels(engines.detector.key, engines.remover.key, engines.version).set(1)


def record_job(job_id: str, status: str | None, settings: Settings) -> None:
    """After a task: count the job, and observe its stage times when it produced a result."""
    if status is None:
        return
    m = worker_metrics()
    m["done"].labels(status).inc()
    if status == JobStatus.failed.value:
        return
    with session_scope(settings.database_url) as session:
        row = session.get(JobMetrics, job_id)
        times = {stage: getattr(row, f"ms_{stage}") for stage in (*STAGES, "total")} if row else {}
    for stage, ms in times.items():
        m["stage"].labels(stage).observe(ms / 1000.0)
