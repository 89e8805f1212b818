"""`clearmark bench --through-queue`: the same photos through a real worker on Redis and
PostgreSQL and through the pipeline in one process."""

from __future__ import annotations

import re

import redis
from click.testing import CliRunner
from sqlalchemy import select

from clearmark.workers.commands.engines import bench_command
from clearmark.workers.db import Job, Tenant, session_scope


def test_through_queue_runs_the_photos_both_ways_and_prints_the_ratio(service):
    result = CliRunner().invoke(bench_command, ["--through-queue", "2", "--size", "256"])
    assert result.exit_code == 0, result.output
    in_process, queued, ratio = result.output.splitlines()[-3:]
    rate = r"\s+2 images\s+[\d.]+ s\s+([\d.]+) images/s  \((.+)\)"
    local, remote = (
        re.match("in one process" + rate, in_process),
        re.match("through queue \\+ database" + rate, queued),
    )
    assert local and remote, result.output
    assert local.group(2) == remote.group(2)  # the same photos, the same statuses
    assert float(ratio.split(": ")[1]) == round(float(remote.group(1)) / float(local.group(1)), 2)
    with session_scope(
        service.database_url
    ) as session:  # 2 timed jobs and the warm-up, finished by the worker
        jobs = session.scalars(select(Job).join(Tenant).where(Tenant.name == "bench")).all()
        assert len(jobs) == 3 and all(j.attempts == 1 and j.finished_at for j in jobs)
    with redis.Redis.from_url(service.broker_url) as client:  # its queues are gone
        assert not list(client.scan_iter(match="*clearmark.bench-*"))


def test_through_queue_needs_the_service(tmp_path):
    from clearmark.settings import Settings, set_settings

    set_settings(Settings(data_dir=tmp_path))
    try:
        result = CliRunner().invoke(bench_command, ["--through-queue", "1"])
    finally:
        set_settings(None)
    assert result.exit_code == 1
    assert (
        "--through-queue needs the service: set CLEARMARK_BROKER_URL and CLEARMARK_DATABASE_URL"
        in result.output
    )
