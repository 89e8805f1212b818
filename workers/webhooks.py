"""Signed webhooks: when a job finishes, POST its document to the storefront.

Body: `{"id": <event id>, "type": "job.finished", "created_at": ..., "job": <the same
document as GET /v1/jobs/{id}>}`. The event id is stable across the retries of one event,
so receivers drop duplicates by it. Two signatures, both HMAC-SHA256 with the tenant's
webhook secret:
- Standard Webhooks (https://www.standardwebhooks.com, verifiable with its libraries):
  `webhook-id` (the event id), `webhook-timestamp` (unix seconds) and `webhook-signature:
  v1,<base64>` over "<id>.<timestamp>.<raw body>", keyed with the base64 bytes after the
  secret's `whsec_` prefix (a secret without the prefix, from before it existed: its UTF-8
  bytes);
- `Clearmark-Signature: t=<unix seconds>,v1=<hex>` over "<t>." + raw body, keyed with the
  secret string's UTF-8 bytes (`verify_signature` is the receiver's check), with
  `Clearmark-Event-Id`.
Delivery is its own Celery task on the webhooks queue: non-2xx answers and network errors
retry with doubling delays, and every attempt is a `webhook` JobEvent.

A callback URL is at most 2,048 characters without control characters, parsed by the HTTP
client that will send it. URLs that resolve to loopback, private, link-local, site-local,
multicast or other non-global addresses, also inside IPv6 (IPv4-mapped, IPv4-translated,
IPv4-compatible, 6to4, NAT64: judged on the IPv4 inside), are refused unless
`CLEARMARK_WEBHOOK_ALLOW_HOSTS` names the host or a range holding it. The check runs when
the URL is given and again before each attempt, and the attempt connects to the very
address that check vetted (the IP is pinned in the request; the Host header and the TLS
name stay the URL's host): a DNS answer that changes in between (rebinding) cannot send the
POST elsewhere. No proxy from the environment, no redirects followed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from celery import Task
from sqlalchemy import func, select

from clearmark.errors import BadInput
from clearmark.settings import WEBHOOK_BACKOFF_CAP_S, Settings, get_settings
from clearmark.workers.celery_app import app
from clearmark.workers.db import Job, JobEvent, Tenant, session_scope, utcnow
from clearmark.workers.job_document import job_document

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "Clearmark-Signature"
EVENT_HEADER = "Clearmark-Event-Id"
STANDARD_SECRET_PREFIX = "whsec_"
MAX_CALLBACK_URL = 2048
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# IPv6 ranges that carry an IPv4 address in their last 32 bits: NAT64 (RFC 6052), SIIT's
# IPv4-translated addresses (RFC 2765) and the old IPv4-compatible ones.
IPV4_TAIL = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "::ffff:0:0:0/96", "::/96"))
# Not globally routable, though Python 3.11's is_global says they are: local-use NAT64
# (RFC 8215, whatever IPv4 it holds) and site-local (RFC 3879); multicast is refused apart.
NOT_GLOBAL = tuple(ipaddress.ip_network(n) for n in ("64:ff9b:1::/48", "fec0::/10"))
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeCallback(BadInput):
    code = "unsafe_callback_url"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    secret: str, header: str, body: bytes, tolerance_s: float = 300, now: float | None = None
) -> bool:
    """True when `header` signs `body` with `secret` and is at most tolerance_s old."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), f"t={timestamp},v1={fields.get('v1', '')}")


def sign_standard(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks `webhook-signature` value."""
    key = (
        base64.b64decode(secret[len(STANDARD_SECRET_PREFIX) :])
        if secret.startswith(STANDARD_SECRET_PREFIX)
        else secret.encode()
    )
    mac = hmac.new(key, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signed_headers(secret: str, event_id: str, body: bytes, timestamp: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_standard(secret, event_id, timestamp, body),
        EVENT_HEADER: event_id,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv6 one (IPv4-mapped, 6to4, NAT64, IPv4-translated,
    IPv4-compatible)."""
    if isinstance(ip, ipaddress.IPv4Address):  # ip.version == 4
        return None
    if ip.ipv4_mapped or ip.sixtofour:
        return ip.ipv4_mapped or ip.sixtofour
    if any(ip in network for network in IPV4_TAIL):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _is_public(ip: IPAddress) -> bool:
    """Globally routable unicast; an IPv6 address that carries an IPv4 one is judged on it
    (the outer prefix only says how to reach it)."""
    inner = _embedded_ipv4(ip)
    target = ip if inner is None else inner
    return (
        target.is_global
        and not target.is_multicast
        and not any(target.version == n.version and target in n for n in NOT_GLOBAL)
    )


def _allowed(host: str, ips: Iterable[IPAddress | None], allow: tuple[str, ...]) -> bool:
    for entry in allow:
        if entry.lower() == host:
            return True
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue  # a host name, not a range
        if any(ip is not None and ip.version == network.version and ip in network for ip in ips):
            return True
    return False


@dataclass(frozen=True)
class Callback:
    """A vetted callback URL and the address to connect to (None for a host name that
    CLEARMARK_WEBHOOK_ALLOW_HOSTS trusts by name: the HTTP client resolves it)."""

    url: str
    address: str | None


def _parse(url: str) -> httpx.URL:
    """The URL as the HTTP client that sends it reads it, else UnsafeCallback."""
    if len(url) > MAX_CALLBACK_URL:
        raise UnsafeCallback(f"callback URL is longer than {MAX_CALLBACK_URL} characters")
    if CONTROL_CHARACTER.search(url):
        raise UnsafeCallback(f"callback URL has a control character: {url!r}")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UnsafeCallback(f"callback URL is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UnsafeCallback(f"callback URL must be http(s)://host/...: {url!r}")
    return parsed


def check_callback_url(url: str, settings: Settings | None = None) -> Callback:
    """The URL and the address to post it to, else UnsafeCallback (too long, a control
    character, unparsable, a bad scheme, an unresolvable host, or an address that is not
    globally routable and not allow-listed)."""
    allow = (settings or get_settings()).webhook_allow_hosts
    parts = _parse(url)
    host = parts.host.lower()
    if _allowed(host, (), allow):
        return Callback(url, None)
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise UnsafeCallback(
            f"cannot resolve callback host {host!r}: {exc}", code="callback_unresolvable"
        ) from None
    # sockaddr[0] is the address text for AF_INET/AF_INET6 (the only families asked for).
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for ip in addresses:
        if not _is_public(ip) and not _allowed(host, (ip, _embedded_ipv4(ip)), allow):
            raise UnsafeCallback(
                f"callback host {host!r} resolves to {ip}, a loopback, private, link-local or "
                "other non-global address (allow it with CLEARMARK_WEBHOOK_ALLOW_HOSTS)"
            )
    return Callback(url, str(addresses[0]))


def post_pinned(callback: Callback, body: bytes, headers: dict[str, str], timeout_s: float) -> httpx.Response:
    """POST to the vetted address itself: the URL's host becomes that IP while the Host
    header and the TLS server name (SNI and certificate check) stay the original host."""
    url, extensions = httpx.URL(callback.url), dict[str, Any]()
    if callback.address:
        headers = {**headers, "Host": url.netloc.decode("ascii")}
        extensions["sni_hostname"] = url.host
        url = url.copy_with(host=callback.address)
    with httpx.Client(trust_env=False, follow_redirects=False, timeout=timeout_s) as client:
        return client.post(url, content=body, headers=headers, extensions=extensions)


def _log_attempt(db_url: str, job_id: str, **detail: Any) -> None:
    with session_scope(db_url) as session:
        session.add(JobEvent(job_id=job_id, kind="webhook", detail=detail))


def deliver(job_id: str, attempt: int, settings: Settings | None = None) -> str:
    """One delivery attempt, logged as a `webhook` event. Returns its outcome: delivered,
    retry (worth another attempt), failed (last attempt), refused (unsafe URL) or dropped
    (no callback URL any more: the tenant removed it after the job finished)."""
    s = settings or get_settings()
    with session_scope(s.database_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        tenant = session.get(Tenant, job.tenant_id)
        if tenant is None:  # cannot happen: jobs.tenant_id is a foreign key
            raise LookupError(f"job {job_id}: no tenant {job.tenant_id}")
        url, secret = job.callback_url or tenant.webhook_url, tenant.webhook_secret or ""
        event_id = f"{job.id}.{int(job.finished_at.timestamp() * 1000) if job.finished_at else 0}"
        body = json.dumps(
            {
                "id": event_id,
                "type": "job.finished",
                "created_at": utcnow().isoformat(),
                "job": job_document(job, s.public_url).model_dump(mode="json"),
            }
        ).encode()
    # A URL stored before the length limit existed is not copied whole into every event.
    detail: dict[str, Any] = {"attempt": attempt, "url": url and url[:MAX_CALLBACK_URL], "event_id": event_id}
    if url is None:  # final: retrying cannot bring the URL back
        _log_attempt(s.database_url, job_id, outcome="dropped", error="no callback URL any more", **detail)
        log.info("job %s: webhook dropped: neither the job nor its tenant has a callback URL now", job_id)
        return "dropped"
    try:
        callback = check_callback_url(url, s)
        detail["address"] = callback.address
        headers = signed_headers(secret, event_id, body, int(time.time()))
        response = post_pinned(callback, body, headers, s.webhook_timeout_s)
        detail["status_code"] = response.status_code
        outcome = "delivered" if response.is_success else "retry"
    except UnsafeCallback as exc:
        detail["error"] = exc.message
        outcome = "retry" if exc.code == "callback_unresolvable" else "refused"
    except Exception as exc:  # noqa: BLE001 - any failure is an attempt that counts toward the limit
        detail["error"] = f"{type(exc).__name__}: {exc}"[:MAX_CALLBACK_URL]
        outcome = "retry"
    if outcome == "retry" and attempt >= s.webhook_max_attempts:
        outcome = "failed"
    _log_attempt(s.database_url, job_id, outcome=outcome, **detail)
    log.info("job %s: webhook attempt %d %s", job_id, attempt, outcome)
    return outcome


def backoff_s(retries: int, settings: Settings) -> float:
    """Delay before the next attempt: doubling, capped at WEBHOOK_BACKOFF_CAP_S (the settings
    check keeps the visibility timeout above the longest)."""
    return min(WEBHOOK_BACKOFF_CAP_S, settings.webhook_backoff_s * 2.0**retries)


def webhook_settled(db_url: str, job_id: str, settle: bool) -> bool:
    """Whether the job's webhook is no longer due (settle: mark it so, delivered or given up)."""
    with session_scope(db_url) as session:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None:
            return True
        settled = not job.webhook_pending
        if settle:
            job.webhook_pending = False
        return settled


# Celery is untyped: its task decorator hides the function's signature from mypy.
@app.task(name="clearmark.deliver_webhook", bind=True, max_retries=None)  # type: ignore[untyped-decorator]
def deliver_webhook(self: Task, job_id: str) -> str:
    """Deliver until an outcome is final; the job's `webhook_pending` flag then clears (a
    copy of this task the reaper sent meanwhile finds it clear and does nothing)."""
    settings = get_settings()
    if not webhook_settled(settings.database_url, job_id, settle=False):
        outcome = deliver(job_id, self.request.retries + 1, settings)
        if outcome == "retry":
            raise self.retry(countdown=backoff_s(self.request.retries, settings))
        webhook_settled(settings.database_url, job_id, settle=True)
        return outcome
    return "settled"


def notify_finished(job_id: str, settings: Settings | None = None) -> None:
    """Enqueue the webhook of a finished job when the job or its tenant has a callback URL.
    Never raises: a webhook that cannot be enqueued is logged, and the job stays as it is."""
    s = settings or get_settings()
    try:
        with session_scope(s.database_url) as session:
            url = session.scalar(
                select(func.coalesce(Job.callback_url, Tenant.webhook_url))
                .join(Tenant, Tenant.id == Job.tenant_id)
                .where(Job.id == job_id)
            )
        if url:
            deliver_webhook.apply_async(args=[job_id], queue=s.queue_webhooks)
    except Exception as exc:  # noqa: BLE001 - the broker or database is down: log, carry on
        log.warning("job %s: webhook not enqueued: %s", job_id, exc)
        try:
            _log_attempt(s.database_url, job_id, outcome="not_enqueued", error=f"{type(exc).__name__}: {exc}")
        except Exception:  # noqa: BLE001
            log.exception("job %s: cannot record the webhook failure", job_id)
