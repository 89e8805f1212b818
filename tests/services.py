"""Real service processes for the tests: `clearmark` commands run as subprocesses (workers,
the API) on a test's settings, waiting for jobs to finish, and the marked product photo
they clean. The fixtures that start them are in conftest.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from clearmark.settings import Settings
from clearmark.workers.db import FINISHED, Job, JobStatus, session_scope


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


def service_env(settings: Settings) -> dict[str, str]:
    """The environment of a `clearmark` subprocess that uses `settings`."""
    return dict(
        os.environ,
        **settings.environment(
            "database_url",
            "broker_url",
            "storage_uri",
            "data_dir",
            "visibility_timeout_s",
            "soft_time_limit_s",
            "hard_time_limit_s",
            "retry_backoff_max_s",
            "queue_uploads",
            "queue_bulk",
            "queue_webhooks",
            "webhook_allow_hosts",
            "webhook_backoff_s",
            "webhook_max_attempts",
            "lease_s",
            "reap_interval_s",
            "reap_grace_s",
            "max_resends",
            "backend",
            "engine_dir",
            "worker_build_budget_s",
        ),
    )


class Service:
    """A `clearmark ARGV...` process in its own process group, so SIGKILL takes parent and
    children."""

    def __init__(self, settings: Settings, log_path: Path, *argv: str):
        self.killed = False
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
        self.killed = True
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
        self.node = f"{name}@{socket.gethostname()}"  # Celery's name for it (`-n name@%h`)
        super().__init__(settings, log_path, "worker", "-c", "1", "-n", self.node, *args)


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
    return jobs if all(JobStatus(j.status) in FINISHED for j in jobs.values()) else None
