"""The reaper: every job that is queued or running has something that will finish it.

One pass (`reap`), safe to run in several places at once (rows are taken with
`FOR UPDATE SKIP LOCKED` and every change is guarded by the job's status):
- a `running` job whose lease expired (its worker died, hung past the hard time limit or
  lost the broker) goes back to `queued` and its task is sent again; one whose attempts are
  used up fails for good as `too_many_attempts`, with its webhook;
- a `queued` job with no task on the broker (a crash between commit and publish, a Redis
  restart without persistence, a submit while the broker was down) gets its task again, at
  most CLEARMARK_MAX_RESENDS times in one stay in the queue: a task that keeps vanishing
  unrun (taken by workers that cannot load their engines, say) then fails the job as
  `engine_unavailable` or `not_claimed`, with its webhook;
- a finished job whose webhook is still due and has no task on the broker gets one again.
Jobs changed in the last CLEARMARK_REAP_GRACE_S are left alone (their publish may be under
way). Sending is after the commit; a crash in between leaves jobs the next pass finds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import ColumnElement, Select, or_, select
from sqlalchemy.orm import Session

from clearmark.errors import ServiceUnavailable
from clearmark.settings import Settings, get_settings
from clearmark.workers import broker
from clearmark.workers.db import Job, JobEvent, JobStatus, session_scope, utcnow
from clearmark.workers.jobs import events_since_queued, fail_unclaimed, give_up, set_status
from clearmark.workers.transient import BROKER_ERRORS, DATABASE_ERRORS

log = logging.getLogger(__name__)
LIMIT = 1000  # rows per kind per pass


@dataclass
class Reaped:
    expired: list[str] = field(default_factory=list)  # lease expired: queued again
    unsent: list[str] = field(default_factory=list)  # queued without a task: sent again
    gave_up: list[str] = field(default_factory=list)  # attempts used up: failed
    unclaimed: list[str] = field(default_factory=list)  # sent too often, never run: failed
    webhooks: list[str] = field(default_factory=list)  # due webhook without a task: sent
    not_sent: int = 0  # broker down: the next pass sends them

    def __str__(self) -> str:
        return (
            f"reaped: {len(self.expired)} expired leases requeued, {len(self.unsent)} "
            f"queued jobs re-sent, {len(self.gave_up)} failed (attempts used up), "
            f"{len(self.unclaimed)} failed (sent too often, never run), "
            f"{len(self.webhooks)} webhooks re-sent"
            + (f", {self.not_sent} not sent (broker down)" if self.not_sent else "")
        )


def _locked(session: Session, query: Select[Job]) -> Sequence[Job]:
    return session.scalars(
        query.order_by(Job.updated_at).limit(LIMIT).with_for_update(skip_locked=True)
    ).all()


def _without_task(session: Session, due: ColumnElement[bool], on_broker: set[str]) -> Sequence[Job]:
    """The jobs matching `due` whose id has no task on the broker, locked (ids are read
    first, unlocked: a backlog of queued jobs with tasks costs a read, not a lock each)."""
    missing = [i for i in session.scalars(select(Job.id).where(due)) if i not in on_broker]
    return _locked(session, select(Job).where(Job.id.in_(missing[:LIMIT]), due)) if missing else []


def reap(settings: Settings | None = None) -> Reaped:
    """One pass; raises ServiceUnavailable when the broker or database is down."""
    s = settings or get_settings()
    out, to_send = Reaped(), list[tuple[str, Job]]()
    now = utcnow()
    cutoff = now - timedelta(seconds=s.reap_grace_s)
    try:
        on_broker = broker.jobs_with_tasks(s)  # read before the table: see the grace above
    except BROKER_ERRORS as exc:
        raise ServiceUnavailable("broker", str(exc)) from None
    try:
        with session_scope(s.database_url) as session:
            for job in _locked(
                session,
                select(Job).where(
                    Job.status == JobStatus.running.value,
                    or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now),
                ),
            ):
                if job.attempts >= s.max_attempts:
                    give_up(session, job)
                    out.gave_up.append(job.id)
                    if job.webhook_pending:
                        to_send.append((broker.WEBHOOK_TASK, job))
                    continue
                set_status(
                    session,
                    job,
                    JobStatus.queued,
                    kind="reaped",
                    reason="lease expired",
                    attempt=job.attempts,
                )
                job.lease_expires_at = None
                out.expired.append(job.id)
                to_send.append((broker.CLEAN_TASK, job))
            if on_broker is not None:
                queued = (Job.status == JobStatus.queued.value) & (Job.updated_at < cutoff)
                for job in _without_task(session, queued, on_broker.get(broker.CLEAN_TASK, set())):
                    since = events_since_queued(session, job)
                    resends = sum(e.kind == "reaped" for e in since)
                    if resends >= s.max_resends:
                        fail_unclaimed(session, job, resends, since)
                        out.unclaimed.append(job.id)
                        if job.webhook_pending:
                            to_send.append((broker.WEBHOOK_TASK, job))
                        continue
                    job.updated_at = now
                    session.add(
                        JobEvent(job_id=job.id, kind="reaped", detail={"reason": "no task on the broker"})
                    )
                    out.unsent.append(job.id)
                    to_send.append((broker.CLEAN_TASK, job))
                hook_due = Job.webhook_pending.is_(True) & (Job.updated_at < cutoff)
                for job in _without_task(session, hook_due, on_broker.get(broker.WEBHOOK_TASK, set())):
                    if job.id not in out.gave_up and job.id not in out.unclaimed:
                        job.updated_at = now
                        out.webhooks.append(job.id)
                        to_send.append((broker.WEBHOOK_TASK, job))
    except DATABASE_ERRORS as exc:
        raise ServiceUnavailable("database", f"{type(exc).__name__}: {exc}") from None
    _send(to_send, s, out)
    if out.expired or out.unsent or out.gave_up or out.unclaimed or out.webhooks:
        log.info("%s", out)
    return out


def _send(to_send: list[tuple[str, Job]], s: Settings, out: Reaped) -> None:
    for i, (task, job) in enumerate(to_send):
        try:
            queue = broker.queue_for(job.priority, s) if task == broker.CLEAN_TASK else s.queue_webhooks
            broker.publish(task, job.id, queue, s)
        except ServiceUnavailable as exc:
            out.not_sent = len(to_send) - i
            log.warning("reaper: %s; %d tasks left for the next pass", exc, out.not_sent)
            return


def reap_forever(settings: Settings | None = None, stop: threading.Event | None = None) -> None:
    """`reap` every CLEARMARK_REAP_INTERVAL_S until `stop` is set; an outage is logged and
    the next pass tries again."""
    s = settings or get_settings()
    stop = stop or threading.Event()
    while True:
        try:
            reap(s)
        except ServiceUnavailable as exc:
            log.warning("reaper: %s", exc)
        except Exception:  # noqa: BLE001 - a bug must not stop the reaper for good
            log.exception("reaper: pass failed")
        if stop.wait(s.reap_interval_s):
            return
