"""HTTP API and webhooks: per-job callback URL and priority, unique API key hashes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 12:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("callback_url", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("priority", sa.String(length=16), server_default="normal", nullable=False)
        )
        batch_op.create_check_constraint(op.f("ck_jobs_priority_valid"), "priority IN ('normal', 'low')")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.create_index("uq_tenants_api_key_hash", ["api_key_hash"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_index("uq_tenants_api_key_hash")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_jobs_priority_valid"), type_="check")
        batch_op.drop_column("priority")
        batch_op.drop_column("callback_url")
