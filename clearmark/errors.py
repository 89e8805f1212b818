"""Errors that decide a job's fate: bad input fails the job for good, transient faults retry."""

from __future__ import annotations


class ClearmarkError(Exception):
    code = "internal_error"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class BadInput(ClearmarkError):
    """The file itself is unusable (corrupt, hostile, too big...). Never retried."""

    code = "bad_input"


class TransientError(ClearmarkError):
    """Storage, database or broker hiccup: retried with backoff."""

    code = "transient"


class ServiceUnavailable(ClearmarkError):
    """The broker, the database or the storage cannot be reached: answer 503, try again
    later. Jobs already recorded are not lost (the reaper sends them when the broker is
    back)."""

    code = "service_unavailable"

    def __init__(self, service: str, detail: str):
        super().__init__(f"{service} unavailable: {detail}", code=f"{service}_unavailable")
        self.service, self.detail = service, detail


class StorageUnavailable(ServiceUnavailable, TransientError):
    """The storage as a whole refuses reads or writes for now (read-only, full, I/O errors,
    an S3 5xx or timeout). Transient like a database or broker outage: a job retries it with
    backoff without spending an attempt, the API answers 503 and the CLI exits 75."""

    def __init__(self, detail: str):
        super().__init__("storage", detail)


BUILD_ENGINES_COMMAND = "clearmark engines build"  # what makes the engine files workers load


class EngineUnavailable(ClearmarkError):
    """A worker cannot load its engines (a backend missing here, a weights file missing, a
    failed build): the worker stops rather than take jobs it cannot run, and a job that no
    worker runs fails with this code after CLEARMARK_MAX_RESENDS (workers.reaper). The
    message is one line naming the cause."""

    code = "engine_unavailable"

    @classmethod
    def because(cls, exc: BaseException) -> EngineUnavailable:
        text = " ".join(str(exc).split())  # a build log or a traceback text: one line
        return cls(f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__)
