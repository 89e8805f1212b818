"""Leases: a running attempt holds its job until `jobs.lease_expires_at`, renewed by a
heartbeat thread while the attempt runs. A job whose lease has expired belongs to the
reaper (workers.reaper), which queues it again."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from types import TracebackType
from typing import Any, cast

from sqlalchemy import CursorResult, update

from clearmark.workers.db import Job, JobStatus, session_scope, utcnow
from clearmark.workers.jobs import Claim

log = logging.getLogger(__name__)


def renew_lease(db_url: str, claim: Claim, lease_s: float) -> bool:
    """Extend the claim's lease; False when the attempt no longer holds the job."""
    with session_scope(db_url) as session:
        # An UPDATE's result is a CursorResult (it has rowcount); execute() is typed Result.
        renewed = cast(
            CursorResult[Any],
            session.execute(
                update(Job)
                .where(
                    Job.id == claim.job_id,
                    Job.status == JobStatus.running.value,
                    Job.attempts == claim.attempt,
                )
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
            ),
        ).rowcount
    return bool(renewed)


class Heartbeat:
    """Renews a claim's lease every `every_s` (default lease_s / 3) in a background thread
    while in the block, for at most `max_s`.
    A failed renewal (database down) is only logged: the lease then runs out, the reaper
    may queue the job again, and the finish of this attempt is guarded anyway."""

    def __init__(
        self,
        db_url: str,
        claim: Claim,
        lease_s: float,
        every_s: float | None = None,
        max_s: float | None = None,
    ) -> None:
        self.db_url, self.claim, self.lease_s = db_url, claim, lease_s
        self.every_s = lease_s / 3 if every_s is None else every_s
        self.max_s = max_s  # after this long, stop renewing (None: while in the block)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"lease-{claim.job_id}")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        until = None if self.max_s is None else time.monotonic() + self.max_s
        while not self._stop.wait(self.every_s):
            if until is not None and time.monotonic() > until:
                log.error(
                    "job %s: attempt %s still running after %s s: its lease is left to run out",
                    self.claim.job_id,
                    self.claim.attempt,
                    self.max_s,
                )
                return
            try:
                if not renew_lease(self.db_url, self.claim, self.lease_s):
                    log.warning("job %s: attempt %s lost its lease", self.claim.job_id, self.claim.attempt)
                    return
            except Exception as exc:  # noqa: BLE001 - keep beating; the next one may work
                log.warning("job %s: lease not renewed: %s", self.claim.job_id, exc)
