"""What every request passes before a route reads it (a pure ASGI middleware, so nothing
here waits for the body): a request id (`X-Request-Id` on every answer), and on `/v1` the
client address's limit on wrong keys, the API key, the tenant's rate limit and, for
uploads, the tenant's concurrent-upload limit and the byte limit: from Content-Length
before any byte is read, and again while the body streams (chunked uploads included). A
wrong key is a 401, an oversize body a 413, without reading the rest of the body; such
answers close the connection."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clearmark.settings import Settings, get_settings
from clearmark.workers.api_errors import REQUEST_ID_HEADER, ApiError, error_response, outage
from clearmark.workers.db import Tenant, session_scope
from clearmark.workers.tenants import tenant_for_key

UPLOAD_PATH = "/v1/images"
PUBLIC_PATHS = ("/v1/openapi.json", "/v1/docs")
DOCS_ASSETS = "/v1/docs-assets/"  # Swagger UI's files, served for /v1/docs
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small fields around the file
REVIEW_PATH = "/review"  # the review page, its assets and its routes (workers.review_web)
# On every answer under /review: its scripts and styles are the app's own files, never
# inline or from elsewhere; images come from the app (canvases hold the mask as blob: URLs);
# no framing, no referrer, nothing cached (a signed-in page).
REVIEW_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' blob:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
T = TypeVar("T")


def upload_limit(settings: Settings) -> int:
    """Most bytes an upload's body may have: the file limit plus the form around it."""
    return settings.max_bytes + FORM_OVERHEAD


def _tenant_for(authorization: str, database_url: str) -> Tenant:
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(
            401, "unauthorized", "missing 'Authorization: Bearer <api key>'", {"WWW-Authenticate": "Bearer"}
        )
    with session_scope(database_url) as session:
        tenant = tenant_for_key(session, key.strip())
    if tenant is None:
        raise ApiError(401, "unauthorized", "invalid API key", {"WWW-Authenticate": "Bearer"})
    return tenant


@lru_cache(maxsize=8)
def _rate_limiter(storage: str) -> MovingWindowRateLimiter:
    return MovingWindowRateLimiter(storage_from_string(storage))


def _rate_limited(
    limiter: MovingWindowRateLimiter, limit: RateLimitItem, key: tuple[str, ...], whose: str
) -> ApiError:
    reset = limiter.get_window_stats(limit, *key).reset_time
    wait = max(1, math.ceil(reset - time.time()))
    return ApiError(429, "rate_limited", f"over {whose} limit of {limit}", {"Retry-After": str(wait)})


def check_rate(tenant_id: str, settings: Settings) -> None:
    limiter = _rate_limiter(settings.rate_limit_storage)
    for limit in parse_many(settings.rate_limit):
        if not limiter.hit(limit, tenant_id):
            raise _rate_limited(limiter, limit, (tenant_id,), "this tenant's")


def admit_key(client: str, settings: Settings, lookup: Callable[[], T]) -> T:
    """`lookup()`, which raises ApiError for a wrong or missing key, within the client
    address's limit on wrong keys: each one counts against the address, and past its limit
    the address is refused before any key is looked up (the API's keys and the review
    page's sign-in alike)."""
    limiter, limits = _rate_limiter(settings.rate_limit_storage), parse_many(settings.rate_limit_bad_keys)
    address = ("bad_key", client)
    for limit in limits:
        if not limiter.test(limit, *address):
            raise _rate_limited(limiter, limit, address, "this address's wrong-key")
    try:
        return lookup()
    except ApiError:
        for limit in limits:
            limiter.hit(limit, *address)
        raise


def _admit(authorization: str, client: str, settings: Settings) -> Tenant:
    """The tenant whose key this is, within its rate limit and the address's limit on wrong
    keys (blocking: a database lookup, and the limiter's storage may be Redis)."""
    tenant = admit_key(client, settings, lambda: _tenant_for(authorization, settings.database_url))
    check_rate(tenant.id, settings)
    return tenant


class UploadSlots:
    """Uploads in flight per tenant in this process (locked: a TestClient runs requests on
    several event loops at once)."""

    def __init__(self) -> None:
        self.in_use: Counter[str] = Counter()
        self.lock = threading.Lock()

    def take(self, tenant_id: str, limit: int) -> None:
        with self.lock:
            if self.in_use[tenant_id] >= limit:
                raise ApiError(
                    429,
                    "too_many_uploads",
                    f"this tenant already has {limit} uploads in progress",
                    {"Retry-After": "1"},
                )
            self.in_use[tenant_id] += 1

    def give_back(self, tenant_id: str) -> None:
        with self.lock:
            self.in_use[tenant_id] -= 1
            if self.in_use[tenant_id] <= 0:
                del self.in_use[tenant_id]


def _capped(receive: Receive, limit: int) -> Receive:
    """`receive` that refuses (413) once the body passes `limit` bytes."""
    received = 0

    async def receive_capped() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise ApiError(
                    413,
                    "too_large_bytes",
                    f"upload is over the limit of {limit} bytes",
                    {"Connection": "close"},
                )
        return message

    return receive_capped


class ApiGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.uploads = UploadSlots()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                if review:
                    headers.update(REVIEW_HEADERS)
            await send(message)

        path = scope["path"]
        review = path == REVIEW_PATH or path.startswith(REVIEW_PATH + "/")
        if not path.startswith("/v1/") or path in PUBLIC_PATHS or path.startswith(DOCS_ASSETS):
            await self.app(scope, receive, send_with_id)
            return
        headers, settings = Headers(scope=scope), get_settings()
        upload = path == UPLOAD_PATH and scope["method"] == "POST"
        try:
            client = (scope.get("client") or ("unknown",))[0]
            tenant = await run_in_threadpool(_admit, headers.get("authorization", ""), client, settings)
            length = headers.get("content-length", "")
            if upload and length.isdigit() and int(length) > upload_limit(settings):
                raise ApiError(
                    413, "too_large_bytes", f"upload is over the limit of {upload_limit(settings)} bytes"
                )
            if upload:
                self.uploads.take(tenant.id, settings.upload_concurrency)
        except Exception as exc:  # noqa: BLE001 - refusals and outages answer here
            error = exc if isinstance(exc, ApiError) else outage(exc)
            if error is None:
                raise
            if "content-length" in headers or "transfer-encoding" in headers:
                error.headers = {**(error.headers or {}), "Connection": "close"}
            response = error_response(error.status_code, error.code, error.message, error.headers)
            await response(scope, receive, send_with_id)
            return
        scope["state"]["tenant"] = tenant
        if not upload:
            await self.app(scope, receive, send_with_id)
            return
        try:
            await self.app(scope, _capped(receive, upload_limit(settings)), send_with_id)
        finally:
            self.uploads.give_back(tenant.id)
