"""Sign-in to the review page: server-side sessions.

The cookie holds a random token (HttpOnly, SameSite=Strict, path /review); the database
keeps its sha256 with the tenant, who signed in, the session's CSRF token and when it
ends. Signing out deletes the row, so a copied cookie is dead from then on. Every request
that changes something carries the CSRF token in a header (the page reads it from
`/review/api/session`); the sign-in itself, before any session, carries the token of a
second cookie, which the page also reads from that route (double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select

from clearmark.workers.db import ReviewSession, Tenant, as_utc, session_scope, utcnow

SESSION_COOKIE = "clearmark_review"
SIGN_IN_COOKIE = "clearmark_review_csrf"  # the sign-in's CSRF token, before a session exists
CSRF_HEADER = "X-CSRF-Token"
COOKIE_PATH = "/review"
SESSION_TTL = timedelta(hours=12)


@dataclass(frozen=True)
class Reviewer:
    tenant_id: str
    tenant_name: str
    name: str
    csrf: str


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def same_token(given: str | None, expected: str | None) -> bool:
    return bool(given and expected) and hmac.compare_digest(str(given), str(expected))


def open_session(db_url: str, tenant_id: str, reviewer: str) -> str:
    """A new session for `reviewer` of the tenant; returns the cookie's token. Expired
    sessions are removed on the way."""
    token = new_token()
    now = utcnow()
    with session_scope(db_url) as session:
        session.execute(delete(ReviewSession).where(ReviewSession.expires_at < now))
        session.add(
            ReviewSession(
                token_hash=_hash(token),
                tenant_id=tenant_id,
                reviewer=reviewer,
                csrf_token=new_token(),
                created_at=now,
                expires_at=now + SESSION_TTL,
            )
        )
    return token


def session_for(db_url: str, token: str | None) -> Reviewer | None:
    """The signed-in reviewer of this cookie token, or None (none, unknown, expired, signed out)."""
    if not token:
        return None
    with session_scope(db_url) as session:
        row = session.execute(
            select(ReviewSession, Tenant.name)
            .join(Tenant, Tenant.id == ReviewSession.tenant_id)
            .where(ReviewSession.token_hash == _hash(token))
        ).first()
        if row is None or as_utc(row[0].expires_at) <= utcnow():
            return None
        s, tenant_name = row
        return Reviewer(s.tenant_id, tenant_name, s.reviewer, s.csrf_token)


def close_session(db_url: str, token: str | None) -> None:
    if token:
        with session_scope(db_url) as session:
            session.execute(delete(ReviewSession).where(ReviewSession.token_hash == _hash(token)))
