"""`clearmark bench --through-queue N`: what the service adds to the pipeline's own cost.

The same N uploads run twice, back to back: through `process_image` in this process, and
as jobs through a real `clearmark worker` (one child) on the configured broker and
database: stored, recorded, sent, claimed under a lease, cleaned, written back and
finished. The ratio of the two rates is the queue's and the database's overhead (1.0:
none). The worker consumes queues of this run alone (`clearmark.bench-<run>.*`), so a
running service neither takes its tasks nor gives it its own; its jobs stay in the
database under the tenant `bench`, without callbacks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import redis
from sqlalchemy import select

from clearmark.pipeline.process import Engines, process_image
from clearmark.settings import Settings
from clearmark.workers.broker import CLEAN_TASK, publish
from clearmark.workers.db import FINISHED, Job, JobStatus, session_scope
from clearmark.workers.jobs import create_job, ensure_tenant
from clearmark.workers.storage import get_storage, write_uri

TENANT = "bench"
POLL_S = 0.1


@dataclass
class Side:
    seconds: float = 0.0
    images: int = 0
    statuses: Counter[str] = field(default_factory=Counter)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


@dataclass
class QueueBench:
    in_process: Side
    queued: Side

    @property
    def ratio(self) -> float:
        return (
            self.queued.images_per_s / self.in_process.images_per_s if self.in_process.images_per_s else 0.0
        )

    def render(self) -> str:
        def line(name: str, side: Side) -> str:
            statuses = ", ".join(f"{k} {v}" for k, v in sorted(side.statuses.items()))
            return (
                f"{name:<26} {side.images:>3} images {side.seconds:7.1f} s "
                f"{side.images_per_s:6.3f} images/s  ({statuses})"
            )

        return "\n".join(
            [
                line("in one process", self.in_process),
                line("through queue + database", self.queued),
                f"ratio (queue / in process): {self.ratio:.2f}",
            ]
        )


def run_in_process(uploads: list[bytes], settings: Settings) -> Side:
    """`process_image` on every upload, after one untimed run of the first."""
    engines = Engines.load(settings)
    process_image(uploads[0], engines, settings)
    side = Side(images=len(uploads))
    start = time.perf_counter()
    for data in uploads:
        side.statuses[process_image(data, engines, settings).status] += 1
    side.seconds = time.perf_counter() - start
    return side


def bench_settings(settings: Settings, run: str) -> Settings:
    return settings.replace(
        **{f"queue_{q}": f"clearmark.bench-{run}.{q}" for q in ("uploads", "bulk", "webhooks")}
    )


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment of a worker that sees what these settings name."""
    return dict(
        os.environ,
        **settings.environment(
            "database_url",
            "broker_url",
            "storage_uri",
            "data_dir",
            "engine_dir",
            "backend",
            "device",
            "queue_uploads",
            "queue_bulk",
            "queue_webhooks",
        ),
    )


def submit(uploads: list[bytes], settings: Settings, run: str, tag: str) -> list[str]:
    """Store each upload, record its job (one transaction) and send its task, as `submit`
    does; the job ids."""
    storage = get_storage()
    with session_scope(settings.database_url) as session:
        tenant = ensure_tenant(session, TENANT)
        uris = [storage.uri(f"sources/{tenant.id}/{run}-{tag}-{i}.jpg") for i in range(len(uploads))]
        for uri, data in zip(uris, uploads):
            write_uri(uri, data)
        ids = [create_job(session, tenant, uri, source_name=uri.rsplit("/", 1)[-1])[0].id for uri in uris]
    for job_id in ids:
        publish(CLEAN_TASK, job_id, settings.queue_uploads, settings)
    return ids


def wait_finished(
    settings: Settings, ids: list[str], worker: subprocess.Popen[bytes], timeout_s: float
) -> Counter[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        with session_scope(settings.database_url) as session:
            done = session.scalars(select(Job.status).where(Job.id.in_(ids))).all()
        if len(done) == len(ids) and all(JobStatus(s) in FINISHED for s in done):
            return Counter(done)
        if worker.poll() is not None:
            raise RuntimeError(f"the bench worker exited with status {worker.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs not finished after {timeout_s:.0f} s")
        time.sleep(POLL_S)


def run_through_queue(uploads: list[bytes], settings: Settings, log_path: Path, timeout_s: float) -> Side:
    """The uploads as jobs through a `clearmark worker -c 1` started here, timed from the
    first upload stored to the last job finished, after one untimed job (the worker's
    start and its engines' first run)."""
    run = uuid.uuid4().hex[:10]
    s = bench_settings(settings, run)
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clearmark",
                "worker",
                "-c",
                "1",
                "-Q",
                s.queue_uploads,
                "-n",
                f"bench-{run}@%h",
            ],
            env=worker_env(s),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_finished(s, submit(uploads[:1], s, run, "warmup"), worker, timeout_s)
            side = Side(images=len(uploads))
            start = time.perf_counter()
            ids = submit(uploads, s, run, "timed")
            side.statuses = wait_finished(s, ids, worker, timeout_s)
            side.seconds = time.perf_counter() - start
            return side
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
                try:
                    worker.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait()
            forget_queues(s.broker_url, run)


def forget_queues(broker_url: str, run: str) -> None:
    """The keys the run's queues left on Redis (kombu's bindings, any task left)."""
    with redis.Redis.from_url(broker_url) as client:
        keys = list(client.scan_iter(match=f"*bench-{run}*", count=1000))
        if keys:
            client.delete(*keys)


def bench_through_queue(
    uploads: list[bytes], settings: Settings, log_path: Path, timeout_s: float = 900.0
) -> QueueBench:
    return QueueBench(
        run_in_process(uploads, settings), run_through_queue(uploads, settings, log_path, timeout_s)
    )
