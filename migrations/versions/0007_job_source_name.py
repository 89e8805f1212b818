"""Jobs keep the file's name as their owner knows it (the source URI may be a storage hash)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_name", sa.Text(), nullable=True))
    # Until now the name was kept in the detail of the job's first event, when known.
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("source_name", sa.Text))
    events = sa.table(
        "job_events",
        sa.column("id", sa.Integer),
        sa.column("job_id", sa.String),
        sa.column("kind", sa.String),
        sa.column("from_status", sa.String),
        sa.column("detail", sa.JSON),
    )
    name = (
        sa.select(events.c.detail["source_name"].as_string())
        .where(events.c.job_id == jobs.c.id, events.c.kind == "status", events.c.from_status.is_(None))
        .order_by(events.c.id)
        .limit(1)
        .scalar_subquery()
    )
    op.execute(jobs.update().where(name.is_not(None)).values(source_name=name))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("source_name")
