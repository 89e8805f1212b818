"""Tenants (storefronts), their API keys and their reviewer keys.

A key is 32 random bytes (URL-safe base64 behind a `cm_` prefix; `cmr_` for a reviewer
key, which opens the review page and nothing else), shown once at creation; the database
keeps only its sha256. A plain hash is enough for a key with 256 bits of entropy (no
dictionary to attack), and it can be looked up by an index.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from clearmark.workers.db import ReviewerKey, Tenant, new_webhook_secret
from clearmark.workers.jobs import ensure_tenant

KEY_PREFIX = "cm_"
REVIEWER_KEY_PREFIX = "cmr_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class TenantExists(ValueError):
    pass


def create_tenant(session: Session, name: str, webhook_url: str | None = None) -> tuple[Tenant, str]:
    """A tenant with a new API key and webhook secret; returns (tenant, key). The key is
    not stored anywhere: the caller shows it once."""
    tenant = ensure_tenant(session, name)
    if tenant.api_key_hash:
        raise TenantExists(f"tenant {name!r} already has an API key")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    tenant.api_key_hash = hash_key(key)
    tenant.webhook_url = webhook_url
    tenant.webhook_secret = new_webhook_secret()  # a fresh one, shown with the key
    session.flush()
    return tenant, key


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    if not key.startswith(KEY_PREFIX):
        return None
    return session.scalar(select(Tenant).where(Tenant.api_key_hash == hash_key(key)))


def create_reviewer_key(session: Session, tenant_name: str, reviewer: str) -> str:
    """A new reviewer key for the existing tenant `tenant_name`, recorded as `reviewer` on
    every decision made with it; returns the key (shown once). LookupError: no such tenant."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        raise LookupError(f"no tenant {tenant_name!r}")
    key = REVIEWER_KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ReviewerKey(tenant_id=tenant.id, name=reviewer, key_hash=hash_key(key)))
    session.flush()
    return key


def reviewer_for_key(session: Session, key: str) -> tuple[Tenant, str] | None:
    """(tenant, who) for a reviewer key or the tenant's API key; None for any other. A
    sign-in with the API key is recorded as `api key`."""
    if key.startswith(REVIEWER_KEY_PREFIX):
        row = session.execute(
            select(Tenant, ReviewerKey.name)
            .join(ReviewerKey, ReviewerKey.tenant_id == Tenant.id)
            .where(ReviewerKey.key_hash == hash_key(key))
        ).first()
        return (row[0], row[1]) if row else None
    tenant = tenant_for_key(session, key)
    return (tenant, "api key") if tenant else None
