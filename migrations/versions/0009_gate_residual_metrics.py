"""Job metrics time the gate and the residual check like the other stages; jobs finished
before keep the times their status event recorded (detail `ms`)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 05:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

events = sa.table(
    "job_events",
    sa.column("id", sa.Integer),
    sa.column("job_id", sa.String),
    sa.column("kind", sa.String),
    sa.column("detail", sa.JSON),
)
metrics = sa.table(
    "job_metrics",
    sa.column("job_id", sa.String),
    sa.column("ms_gate", sa.Float),
    sa.column("ms_residual", sa.Float),
)


def upgrade() -> None:
    with op.batch_alter_table("job_metrics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ms_gate", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("ms_residual", sa.Float(), nullable=True))
    conn = op.get_bind()
    latest: dict[str, dict] = {}  # each job's last status event with times: its finish
    rows = conn.execute(
        sa.select(events.c.job_id, events.c.detail).where(events.c.kind == "status").order_by(events.c.id),
        execution_options={"stream_results": True},  # read row by row: details hold gate verdicts
    )
    for job_id, detail in rows:
        if isinstance(detail, dict) and isinstance(detail.get("ms"), dict):
            latest[job_id] = detail["ms"]
    for job_id, ms in latest.items():
        conn.execute(
            metrics.update()
            .where(metrics.c.job_id == job_id)
            .values(ms_gate=ms.get("ms_gate"), ms_residual=ms.get("ms_residual"))
        )


def downgrade() -> None:
    with op.batch_alter_table("job_metrics", schema=None) as batch_op:
        batch_op.drop_column("ms_residual")
        batch_op.drop_column("ms_gate")
