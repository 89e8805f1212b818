"""The API's errors: one JSON shape, `{"error": {"code", "message", ...}}`, for everything
it refuses, for outages of the database, broker or storage (503 with Retry-After) and for anything
unexpected (500 with the request id), and the OpenAPI entries that declare them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kombu.exceptions
import redis.exceptions
from pydantic import BaseModel
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from clearmark.errors import StorageUnavailable

OUTAGE_RETRY_AFTER_S = 5
REQUEST_ID_HEADER = "X-Request-Id"
# Exceptions that may mean a database, broker or storage outage (outage() decides).
OUTAGE_TYPES = (
    StorageUnavailable,
    sa_exc.DBAPIError,
    sa_exc.TimeoutError,
    redis.exceptions.RedisError,
    kombu.exceptions.OperationalError,
)
DESCRIPTIONS = {
    400: "The body cannot be parsed as multipart/form-data (`http_400`)",
    401: "Missing or unknown API key (`Authorization: Bearer <api key>`)",
    404: "No such job for this tenant",
    408: "The request's headers or body came too slowly; the connection is closed",
    409: "The job is not in a state that allows this",
    413: "Over the byte or pixel limits",
    415: "Not an accepted image type",
    422: "Invalid request: a parameter (`since` not ISO 8601, a cursor not from this API, neither "
    "or both of `file` and `source_uri`, `file` not a file part), callback URL, source URI, "
    "image, or an Idempotency-Key reused with a different request",
    429: "Over this tenant's rate or concurrent-upload limit: retry after `Retry-After` seconds",
    500: "Unexpected error; the answer carries a `request_id` to quote",
    503: "The database, the broker or the storage cannot be reached: retry after `Retry-After` seconds",
}


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error codes."""
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS[code]} for code in codes}


class ApiError(HTTPException):
    """A refusal with its status, code and message. An HTTPException, so one raised while
    FastAPI reads the body (the streaming byte limit) keeps its status."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status, message, headers)
        self.code, self.message = code, message


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers
    )


def outage(exc: BaseException) -> ApiError | None:
    """A 503 for an exception that says the database, broker or storage cannot be reached."""
    retry = {"Retry-After": str(OUTAGE_RETRY_AFTER_S)}
    if isinstance(exc, StorageUnavailable):  # its message names server paths: not passed on
        return ApiError(
            503, "storage_unavailable", "the storage cannot be read or written; retry later", retry
        )
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)) or (
        isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    ):
        return ApiError(503, "database_unavailable", "the database cannot be reached; retry later", retry)
    if isinstance(
        exc,
        (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, kombu.exceptions.OperationalError),
    ):
        return ApiError(503, "broker_unavailable", "the broker cannot be reached; retry later", retry)
    return None
