"""Reprocess batches belong to their jobs' tenant

Until now a run without --tenant made its batch under the default tenant `local`, whatever
its jobs' tenant. A reprocess batch whose jobs are all one tenant's moves to that tenant;
one holding several tenants' jobs, or none any more, stays where it is.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 11:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    batches = sa.table("batches", sa.column("id"), sa.column("tenant_id"), sa.column("kind"))
    jobs = sa.table("jobs", sa.column("batch_id"), sa.column("tenant_id"))
    in_batch = jobs.c.batch_id == batches.c.id
    tenants = sa.select(sa.func.count(sa.distinct(jobs.c.tenant_id))).where(in_batch).scalar_subquery()
    owner = sa.select(sa.func.min(jobs.c.tenant_id)).where(in_batch).scalar_subquery()
    op.execute(batches.update().where(batches.c.kind == "reprocess", tenants == 1).values(tenant_id=owner))


def downgrade() -> None:
    pass  # which batches were the default tenant's is not kept; the owners found stay
