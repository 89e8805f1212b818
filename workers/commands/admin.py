"""The database schema (`clearmark db`) and tenants (`clearmark tenants`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from clearmark.errors import BadInput
from clearmark.settings import get_settings
from clearmark.workers.commands.common import needs_database
from clearmark.workers.commands.deferred import deferred

if TYPE_CHECKING:
    import sqlalchemy

    from clearmark.workers import db as database
    from clearmark.workers import migrate, preflight, webhooks
    from clearmark.workers import tenants as tenant_keys
else:
    sqlalchemy = deferred("sqlalchemy")
    database = deferred("clearmark.workers.db")
    migrate = deferred("clearmark.workers.migrate")
    preflight = deferred("clearmark.workers.preflight")
    webhooks = deferred("clearmark.workers.webhooks")
    tenant_keys = deferred("clearmark.workers.tenants")


@click.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION."""
    migrate.upgrade(revision=revision)
    click.echo(f"database at {revision}: {preflight.safe_url(get_settings().database_url)}")


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
    """Tenants (storefronts), their API keys and reviewer keys."""


@tenants.command("create")
@click.argument("name")
@click.option("--webhook", help="URL that receives a signed POST when each job finishes.")
@needs_database
def tenants_create(name: str, webhook: str | None) -> None:
    """Create tenant NAME and print its API key and webhook secret (shown only this once)."""
    settings = get_settings()
    try:
        if webhook:
            webhooks.check_callback_url(webhook, settings)
        with database.session_scope(settings.database_url) as session:
            tenant, key = tenant_keys.create_tenant(session, name, webhook_url=webhook)
            tenant_id, secret = tenant.id, tenant.webhook_secret
    except (BadInput, tenant_keys.TenantExists) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"tenant          {name} ({tenant_id})\napi key         {key}\n"
        f"webhook secret  {secret}\nStore both now: they are not shown again."
    )


@tenants.command("list")
@needs_database
def tenants_list() -> None:
    """Tenants with their id and webhook URL (never keys)."""
    with database.session_scope(get_settings().database_url) as session:
        tenant_rows = sqlalchemy.select(database.Tenant).order_by(database.Tenant.name)
        for t in session.scalars(tenant_rows):
            click.echo(f"{t.id}\t{t.name}\t{'key' if t.api_key_hash else 'no key'}\t{t.webhook_url or '-'}")


@tenants.command("reviewer-key")
@click.argument("tenant")
@click.option(
    "--name", "reviewer", required=True, help="Who uses it: recorded on every decision made with it."
)
@needs_database
def tenants_reviewer_key(tenant: str, reviewer: str) -> None:
    """Make a key that signs REVIEWER in to the review page (/review) for TENANT and print
    it (shown only this once). It opens that page only, not the /v1 API."""
    with database.session_scope(get_settings().database_url) as session:
        try:
            key = tenant_keys.create_reviewer_key(session, tenant, reviewer)
        except LookupError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(
        f"reviewer key    {key}\nfor             {reviewer} ({tenant})\nStore it now: it is not shown again."
    )
