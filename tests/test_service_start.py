"""Starting the service: a worker refuses settings that would strand jobs, a default
worker consumes every queue (and `clearmark status` shows a queue nobody consumes), and
submitting known files again leaves no empty batch behind and sends nothing (a job whose
task was lost is the reaper's: tests/test_reaper.py)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from clearmark.settings import set_settings
from clearmark.workers.cli import cli
from clearmark.workers.db import Batch, session_scope
from clearmark.workers.metrics import queue_depths
from clearmark.workers.reports import queues_text
from clearmark.workers.submit import submit_files
from tests.services import product_photo, wait_for


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean CLEARMARK_* environment; set variables with env.setenv."""
    for name in ("CLEARMARK_DATABASE_URL", "CLEARMARK_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLEARMARK_DATA_DIR", str(tmp_path / "data"))
    set_settings(None)
    yield monkeypatch
    set_settings(None)


def _worker(env) -> str:
    set_settings(None)
    result = CliRunner().invoke(cli, ["worker"])
    assert result.exit_code == 1, result.output
    return result.output


def test_worker_refuses_a_broker_without_its_database(env, redis_url):
    env.setenv("CLEARMARK_BROKER_URL", redis_url)
    out = _worker(env)
    assert "worker not started" in out and "set CLEARMARK_DATABASE_URL" in out


def test_worker_refuses_a_database_without_its_broker(env, pg_url):
    env.setenv("CLEARMARK_DATABASE_URL", pg_url)
    out = _worker(env)
    assert "worker not started" in out and "set CLEARMARK_BROKER_URL" in out
    assert "broker   redis://127.0.0.1:6379/0 (default; set CLEARMARK_BROKER_URL" in out


def test_worker_refuses_an_unmigrated_database(env, pg_url, redis_url):
    env.setenv("CLEARMARK_DATABASE_URL", pg_url)
    env.setenv("CLEARMARK_BROKER_URL", redis_url)
    out = _worker(env)
    assert "is at migration (none)" in out and "run `clearmark db upgrade`" in out


def test_default_worker_consumes_every_queue(service, workers):
    queues = (service.queue_uploads, service.queue_bulk, service.queue_webhooks)
    before = queues_text(service)
    assert all(f"{q}" in before for q in queues)
    assert before.count("NO WORKER consumes it") == 3, before
    workers(service, "default")  # `clearmark worker` without -Q

    def consumed():
        text = queues_text(service)
        return text if "NO WORKER" not in text else None

    after = wait_for(consumed, 120, "the worker to consume every queue", interval=1)
    assert after.count("default@") == 3, after


def test_submitting_known_files_again_makes_no_batch(service, tmp_path):
    photo = tmp_path / "p.png"
    product_photo(3, size=(160, 120)).save(photo)

    def batches() -> int:
        with session_scope(service.database_url) as session:
            return session.scalar(select(func.count()).select_from(Batch))

    first = list(submit_files([photo]))
    assert batches() == 1
    assert queue_depths(service)[service.queue_uploads] == 1
    assert list(submit_files([photo])) == first
    assert batches() == 1
    assert queue_depths(service)[service.queue_uploads] == 1  # not sent twice
