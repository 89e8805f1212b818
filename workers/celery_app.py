"""The Celery application: Redis broker, late acks, one task at a time per child.

Settings follow the documented recipe for long, idempotent tasks (ARCHITECTURE.md, a job's
life): late acks + prefetch 1, requeue when a child dies, a Redis visibility timeout above
the hard time limit, and separate queues for uploads, bulk runs and webhooks.
"""

from __future__ import annotations

from celery import Celery
from kombu.entity import Queue

from clearmark.settings import Settings, get_settings


def configure(app: Celery, settings: Settings) -> None:
    # Sweep for abandoned (unacked) messages every few seconds, at most half the timeout.
    transport = {
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 2)),
        "unacked_restore_throttle": 1,
        "socket_connect_timeout": 5,
    }
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.result_backend or None,
        task_ignore_result=True,  # the jobs table is the record, not Celery's backend
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A hard time limit requeues the message instead of dropping it; the job's lease
        # runs out and the reaper decides (queue again, or fail after the last attempt).
        task_acks_on_timeout=False,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.soft_time_limit_s,
        task_time_limit=settings.hard_time_limit_s,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        visibility_timeout=settings.visibility_timeout_s,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a broker outage: reconnect until it is back
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_soft_shutdown_timeout=30.0,
        # Models load in the child at start-up; give it time before it counts as dead.
        worker_proc_alive_timeout=120.0,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_default_queue=settings.queue_uploads,
        # kombu ships py.typed but leaves Queue.__init__ unannotated.
        task_queues=[
            Queue(name)  # type: ignore[no-untyped-call]
            for name in (settings.queue_uploads, settings.queue_bulk, settings.queue_webhooks)
        ],
        task_routes={
            "clearmark.clean_image": {"queue": settings.queue_uploads},
            "clearmark.deliver_webhook": {"queue": settings.queue_webhooks},
            "clearmark.reap": {"queue": settings.queue_webhooks},
        },
        # `clearmark beat`: a reaper pass on the (light) webhooks queue; a pass that waited
        # longer than an interval is dropped, the next one does the same work.
        beat_schedule={
            "reap": {
                "task": "clearmark.reap",
                "schedule": settings.reap_interval_s,
                "options": {"expires": settings.reap_interval_s},
            }
        },
        beat_schedule_filename=str(settings.data_dir / "celerybeat-schedule"),
    )
    # Connection and producer pools made under earlier settings would go on talking to the
    # earlier broker (Celery caches both; it drops them the same way after a fork).
    app._pool = None
    app.amqp._producer_pool = None


# The modules whose tasks a worker runs (imported when it starts).
app = Celery(
    "clearmark",
    include=["clearmark.workers.tasks", "clearmark.workers.webhooks"],
)
configure(app, get_settings())
