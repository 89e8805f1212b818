"""Leases on running jobs and a pending-webhook flag (the reaper's two inputs)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 23:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("webhook_pending", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_index(
        "ix_jobs_webhook_pending",
        "jobs",
        ["webhook_pending"],
        postgresql_where=sa.text("webhook_pending"),
        sqlite_where=sa.text("webhook_pending"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_webhook_pending", table_name="jobs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("webhook_pending")
        batch_op.drop_column("lease_expires_at")
