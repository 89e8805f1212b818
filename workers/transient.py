"""Transient faults (database, broker, storage): which errors they are, and how long to wait.

A task retries with doubling delays (1, 2, 4 ... capped at CLEARMARK_RETRY_BACKOFF_MAX_S)
for CLEARMARK_TRANSIENT_RETRY_S in all; after that the reaper finds the job (queued
without a message, or running with an expired lease) and queues it again.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError

from clearmark.errors import TransientError
from clearmark.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

DATABASE_ERRORS = (OperationalError, InterfaceError)
BROKER_ERRORS = (BrokerError, RedisConnectionError, RedisTimeoutError, ConnectionError)
TRANSIENT_ERRORS = (TransientError, *DATABASE_ERRORS, *BROKER_ERRORS)


def backoff_s(retries: int, settings: Settings, jitter: bool = True) -> float:
    """The delay before retry number `retries` + 1 (jitter: 75-100 % of it)."""
    delay = min(settings.retry_backoff_max_s, 2.0 ** min(retries, 30))
    return delay * random.uniform(0.75, 1.0) if jitter else delay


def max_retries(settings: Settings) -> int:
    """How many retries fit in CLEARMARK_TRANSIENT_RETRY_S."""
    total = 0.0
    for n in itertools.count():
        total += backoff_s(n, settings, jitter=False)
        if total > settings.transient_retry_s:
            return n
    raise AssertionError("unreachable")


def retry_database(fn: Callable[[], T], settings: Settings, what: str) -> T:
    """fn(), called again while the database is unreachable, for up to TRANSIENT_RETRY_S."""
    deadline = time.monotonic() + settings.transient_retry_s
    for retries in itertools.count():
        try:
            return fn()
        except DATABASE_ERRORS as exc:
            delay = backoff_s(retries, settings)
            if time.monotonic() + delay > deadline:
                raise
            log.warning(
                "%s: database unavailable (%s); trying again in %.1f s", what, type(exc).__name__, delay
            )
            time.sleep(delay)
    raise AssertionError("unreachable")
