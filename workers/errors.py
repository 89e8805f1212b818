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
