"""A worker that cannot load its engines does not look healthy (issue 35): it refuses to
start, or stops with status 1 when a new child of it cannot load them, saying why in one
line; a job that no worker can run fails as `engine_unavailable` after
CLEARMARK_MAX_RESENDS, with its webhook. Real `clearmark worker` processes on Redis and
PostgreSQL; the broken backend is TensorRT, which this machine does not have."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from clearmark.engine_build.onnx_export import export_onnx
from clearmark.models.weights import KINDS, weights_sha256
from clearmark.settings import set_settings
from clearmark.workers import broker, tasks
from clearmark.workers.celery_app import app
from clearmark.workers.db import JobEvent, session_scope
from clearmark.workers.reaper import reap
from tests.services import statuses, wait_for
from tests.test_api import (  # noqa: F401 - fixtures used here
    _webhook_events,
    api_settings,
    receiver,
)
from tests.test_reaper import _job

pytestmark = [pytest.mark.integration, pytest.mark.slow]
without_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed: its backend loads here"
)
NO_TENSORRT = (
    "BackendUnavailable: tensorrt backend unavailable: tensorrt not importable "
    "(ModuleNotFoundError: No module named 'tensorrt')"
)


def take_task(s, queue: str) -> str:
    """Take the one task waiting on `queue`, as a worker would, and return its job id."""
    raw = redis.Redis.from_url(s.broker_url).rpop(queue)
    assert raw is not None, f"no task on {queue}"
    task, job_id = broker._task_and_job(raw)
    assert task == broker.CLEAN_TASK
    return job_id


def pool_children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@without_tensorrt
def test_a_worker_whose_engines_cannot_load_does_not_start(api_settings, workers):
    s = api_settings.replace(backend="tensorrt")
    job_id = _job(s)
    broker.enqueue(job_id, s.queue_uploads)
    started = time.monotonic()
    worker = workers(s, "broken", "-Q", s.queue_uploads)
    assert worker.proc.wait(60) == 1 and time.monotonic() - started < 60
    lines = Path(worker.log.name).read_text().splitlines()
    assert lines[-1] == f"Error: worker not started: engines cannot load: {NO_TENSORRT}", lines
    assert not any("Traceback" in line for line in lines)
    # Nothing was taken: the job waits, queued with its task, for a worker that can run it.
    assert statuses(s.database_url, [job_id])[job_id].status == "queued"
    assert job_id in broker.jobs_with_tasks(s)[broker.CLEAN_TASK]


def test_a_worker_only_loads_and_names_the_command_for_a_missing_engine(api_settings, workers, tmp_path):
    """A worker does not build its engines (a cold TensorRT build outlasts a child's start):
    without their files it refuses to start at once, naming `clearmark engines build`;
    with them (as that command leaves them) it starts."""
    engines = tmp_path / "engines"
    s = api_settings.replace(engine_dir=str(engines), worker_build_budget_s=0)
    started = time.monotonic()
    worker = workers(s, "unbuilt", "-Q", s.queue_uploads)
    assert worker.proc.wait(60) == 1 and time.monotonic() - started < 60
    last = Path(worker.log.name).read_text().splitlines()[-1]
    assert last.startswith(
        "Error: worker not started: engines cannot load: EngineNotBuilt: no ONNX export of the detector "
        f"(fp32, weights {weights_sha256('detector')[:12]}) in {engines / 'onnx'} (not exported yet): "
        "build it with `clearmark engines build`"
    ), last
    assert not engines.exists()  # a worker that only loads writes nothing there

    for kind in KINDS:  # as `clearmark engines build` leaves them (the run's exports)
        export_onnx(kind, "fp32", os.environ["CLEARMARK_ENGINE_DIR"])
    shutil.copytree(os.environ["CLEARMARK_ENGINE_DIR"], engines)
    name = f"built{uuid.uuid4().hex[:8]}"
    worker = workers(s, name, "-Q", s.queue_uploads)
    wait_for(
        lambda: app.control.ping(destination=[f"{name}@{socket.gethostname()}"], timeout=0.5),
        180,
        "the worker to answer",
    )
    log = Path(worker.log.name)
    wait_for(lambda: "engines loaded" in log.read_text(), 120, "the child to load its engines", interval=0.5)


def test_a_worker_stops_when_a_new_child_cannot_load_its_engines(api_settings, workers, tmp_path):
    """The engines loaded at start-up; the child that replaces a dead one cannot load them
    (the engine folder is gone): the worker stops with status 1 and the child's reason,
    instead of going on with children that fail every task."""
    engines = tmp_path / "engines"
    shutil.copytree(os.environ["CLEARMARK_ENGINE_DIR"], engines)  # the run's exports: no new one
    s = api_settings.replace(engine_dir=str(engines))
    name = f"respawn{uuid.uuid4().hex[:8]}"
    worker = workers(s, name, "-Q", s.queue_uploads)
    log = Path(worker.log.name)
    node = [f"{name}@{socket.gethostname()}"]
    # Running (past Celery's own start-up check of its pool), its child's engines loaded.
    wait_for(lambda: app.control.ping(destination=node, timeout=0.5), 180, "the worker to answer")
    wait_for(lambda: "engines loaded" in log.read_text(), 120, "the child to load its engines", interval=0.5)
    shutil.rmtree(engines)
    engines.write_text("not a folder")
    (child,) = pool_children(worker.proc.pid)
    os.kill(child, signal.SIGKILL)
    assert worker.proc.wait(60) == 1  # not a pool starting children that fail, for ever
    stopping = [line for line in log.read_text().splitlines() if "worker stopping" in line]
    gone = "engines cannot load: EngineNotBuilt: no ONNX export of the detector"  # a child only loads
    assert stopping and all(gone in line for line in stopping)


@without_tensorrt
def test_a_job_no_worker_can_run_fails_as_engine_unavailable(api_settings, receiver, workers, monkeypatch):
    """Each time the reaper sends the job, a worker that cannot load its engines takes the
    task (the task itself runs here), says so on the job and lets it go; after
    CLEARMARK_MAX_RESENDS the job fails with its own code, and its webhook goes out."""
    s = api_settings.replace(reap_grace_s=0, max_resends=2)
    set_settings(s)
    job_id = _job(s, callback_url=receiver.url)  # committed; its task is the reaper's to send
    monkeypatch.setattr(tasks, "_engines", None)
    for _ in range(s.max_resends):
        assert reap(s).unsent == [job_id]
        assert take_task(s, s.queue_uploads) == job_id
        set_settings(s.replace(backend="tensorrt"))
        assert tasks.clean_image.apply(args=[job_id]).get() is None
        set_settings(s)
        assert statuses(s.database_url, [job_id])[job_id].status == "queued"
    reaped = reap(s)
    assert (reaped.unclaimed, reaped.unsent) == ([job_id], [])
    job = statuses(s.database_url, [job_id])[job_id]
    assert (job.status, job.error_code) == ("failed", "engine_unavailable")
    assert job.error_message.startswith("sent 2 times and never run") and NO_TENSORRT in job.error_message
    with session_scope(s.database_url) as session:
        notes = session.scalars(
            select(JobEvent.detail).where(JobEvent.job_id == job_id, JobEvent.kind == "engine_unavailable")
        ).all()
    assert [n["reason"] for n in notes] == [NO_TENSORRT] * 2

    workers(s, "hooks", "-Q", s.queue_webhooks, "-P", "threads")  # no engines needed there
    wait_for(lambda: receiver.requests, 60, "the webhook")
    document = json.loads(receiver.requests[0][1])["job"]
    assert document["status"] == "failed" and document["error"]["code"] == "engine_unavailable"
    # the worker records the attempt after the receiver has answered
    wait_for(lambda: _webhook_events(s, job_id), 60, "the webhook's attempt to be recorded")
    assert [e["outcome"] for e in _webhook_events(s, job_id)] == ["delivered"]
    assert not reap(s).unsent, "a failed job is not sent again"
