"""Every tenant has a webhook secret: fill the ones created without it

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 14:50:00
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

tenants = sa.table("tenants", sa.column("id", sa.String), sa.column("webhook_secret", sa.String))


def upgrade() -> None:
    conn = op.get_bind()
    ids = conn.execute(sa.select(tenants.c.id).where(tenants.c.webhook_secret.is_(None))).scalars()
    for tenant_id in list(ids):
        conn.execute(
            tenants.update().where(tenants.c.id == tenant_id).values(webhook_secret=secrets.token_urlsafe(32))
        )


def downgrade() -> None:
    pass  # the secrets stay: nothing signed with them can be unsigned
