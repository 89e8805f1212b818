"""Publishing jobs' tasks, and reading back which jobs have a task on the broker.

The reaper compares the second with the jobs table: a queued job (or a due webhook) with no
task anywhere on the broker lost its message (a crash between commit and publish, a Redis
restart without persistence) and is sent again. Read on Redis (kombu's transport): the
queue lists, their priority lists, and the hash of delivered but unacknowledged messages
(which also holds tasks waiting for a retry countdown in a worker).
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict

import redis

from clearmark.errors import ServiceUnavailable
from clearmark.settings import Settings, get_settings
from clearmark.workers.celery_app import app
from clearmark.workers.db import Priority
from clearmark.workers.transient import BROKER_ERRORS

CLEAN_TASK = "clearmark.clean_image"
WEBHOOK_TASK = "clearmark.deliver_webhook"
PRIORITY_SEP, PRIORITY_STEPS = "\x06\x16", (0, 3, 6, 9)  # kombu.transport.redis defaults
UNACKED_KEY = "unacked"
CHUNK = 1000


def publish(task: str, job_id: str, queue: str, settings: Settings) -> None:
    """Send the task named `task` for `job_id`; ServiceUnavailable (one line, no traceback)
    when the broker is down. The job is already committed, so it is not lost: the reaper
    sends it later. Sent by name, so that senders (the API, `submit`) never import the
    tasks' module and the pipeline behind it; no result is awaited (the jobs table is the
    record)."""
    try:
        app.send_task(task, args=[job_id], queue=queue, ignore_result=True)
    except BROKER_ERRORS as exc:
        raise ServiceUnavailable("broker", f"{_where(settings.broker_url)}: {exc}") from None


def check_reachable(settings: Settings, timeout_s: float = 3.0) -> None:
    """ServiceUnavailable unless the broker answers now: for a change that must not be
    recorded when its task cannot be sent (the reaper would only send it once a worker and
    its broker run)."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
    except (*BROKER_ERRORS, OSError) as exc:
        raise ServiceUnavailable("broker", f"{_where(settings.broker_url)}: {exc}") from None


def queue_for(priority: str, settings: Settings | None = None) -> str:
    """Low-priority (bulk) jobs go to their own queue so they never delay uploads."""
    s = settings or get_settings()
    return s.queue_bulk if priority == Priority.low.value else s.queue_uploads


def enqueue(job_id: str, queue: str | None = None) -> None:
    """Send the job's clean task; ServiceUnavailable when the broker is down (the committed
    job is not lost: the reaper sends it when the broker is back)."""
    settings = get_settings()
    publish(CLEAN_TASK, job_id, queue or settings.queue_uploads, settings)


def _where(url: str) -> str:
    return url.rsplit("@", 1)[-1]  # no password in messages


def _task_and_job(raw: bytes | str) -> tuple[str, str] | None:
    """(task name, job id) of one kombu message, or None for one that names no task or job."""
    message = json.loads(raw)
    if isinstance(message, list):  # unacked: [message, exchange, routing key]
        message = message[0]
    body = message.get("body", "")
    if (message.get("properties") or {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    try:
        args = json.loads(body)[0]
        task = (message.get("headers") or {}).get("task")
        return (task, str(args[0])) if isinstance(task, str) else None
    except (ValueError, IndexError, KeyError, TypeError):
        return None


def jobs_with_tasks(settings: Settings) -> dict[str, set[str]] | None:
    """{task name: job ids} of every clearmark task on the broker, or None when the broker
    cannot be read this way (not Redis)."""
    if not settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        return None
    client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=5, socket_timeout=60)
    found: dict[str, set[str]] = defaultdict(set)

    def add(raw: bytes | str) -> None:
        hit = _task_and_job(raw)
        if hit:
            found[hit[0]].add(hit[1])

    with client:
        for queue in (settings.queue_uploads, settings.queue_bulk, settings.queue_webhooks):
            for step in PRIORITY_STEPS:
                key = queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}"
                for start in range(0, client.llen(key), CHUNK):
                    for raw in client.lrange(key, start, start + CHUNK - 1):
                        add(raw)
        # Read after the lists: a message taken from a list meanwhile is found here.
        for _, raw in client.hscan_iter(UNACKED_KEY, count=CHUNK):
            add(raw)
    return found
