"""The database schema (`clearmark db`) and tenants (`clearmark tenants`)."""

from __future__ import annotations

import click
from sqlalchemy import select

from clearmark.errors import BadInput
from clearmark.settings import get_settings
from clearmark.workers import migrate
from clearmark.workers.commands.common import needs_database
from clearmark.workers.db import Tenant, session_scope
from clearmark.workers.preflight import safe_url
from clearmark.workers.tenants import TenantExists, create_tenant
from clearmark.workers.webhooks import check_callback_url


@click.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION."""
    migrate.upgrade(revision=revision)
    click.echo(f"database at {revision}: {safe_url(get_settings().database_url)}")


@db.command("downgrade")
@click.option("--revision", default="-1", show_default=True)
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION ('base' removes everything)."""
    migrate.downgrade(revision=revision)


@db.command("current")
def db_current() -> None:
    """Show the database's migration revision."""
    migrate.current()


@click.group()
def tenants() -> None:
    """Tenants (storefronts) and their API keys."""


@tenants.command("create")
@click.argument("name")
@click.option("--webhook", help="URL that receives a signed POST when each job finishes.")
@needs_database
def tenants_create(name: str, webhook: str | None) -> None:
    """Create tenant NAME and print its API key and webhook secret (shown only this once)."""
    settings = get_settings()
    try:
        if webhook:
            check_callback_url(webhook, settings)
        with session_scope(settings.database_url) as session:
            tenant, key = create_tenant(session, name, webhook_url=webhook)
            tenant_id, secret = tenant.id, tenant.webhook_secret
    except (BadInput, TenantExists) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"tenant          {name} ({tenant_id})\napi key         {key}\n"
        f"webhook secret  {secret}\nStore both now: they are not shown again."
    )


@tenants.command("list")
@needs_database
def tenants_list() -> None:
    """Tenants with their id and webhook URL (never keys)."""
    with session_scope(get_settings().database_url) as session:
        for t in session.scalars(select(Tenant).order_by(Tenant.name)):
            click.echo(f"{t.id}\t{t.name}\t{'key' if t.api_key_hash else 'no key'}\t{t.webhook_url or '-'}")
