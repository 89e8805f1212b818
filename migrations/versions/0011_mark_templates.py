"""Catalogue marks: a tenant's mark templates, and which method cleaned each job

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mark_templates",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("data_uri", sa.Text(), nullable=False),
        sa.Column("rule", sa.String(length=16), nullable=False),
        sa.Column("frame_width", sa.Integer(), nullable=False),
        sa.Column("frame_height", sa.Integer(), nullable=False),
        sa.Column("box_x0", sa.Integer(), nullable=False),
        sa.Column("box_y0", sa.Integer(), nullable=False),
        sa.Column("box_x1", sa.Integer(), nullable=False),
        sa.Column("box_y1", sa.Integer(), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("quality", sa.Float(), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("rule IN ('absolute', 'relative')", name=op.f("ck_mark_templates_rule_valid")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_mark_templates_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mark_templates")),
    )
    op.create_index("ix_mark_templates_tenant_id_created_at", "mark_templates", ["tenant_id", "created_at"])
    with op.batch_alter_table("job_metrics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("method", sa.String(length=80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_metrics", schema=None) as batch_op:
        batch_op.drop_column("method")
    op.drop_index("ix_mark_templates_tenant_id_created_at", table_name="mark_templates")
    op.drop_table("mark_templates")
