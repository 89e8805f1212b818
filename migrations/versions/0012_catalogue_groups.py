"""Catalogue groups: an upload's `group`, and what learning a template from each came to

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-09 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalogue_groups",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("template_id", sa.String(length=32), nullable=True),
        sa.Column("tried_with", sa.Integer(), server_default="0", nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_catalogue_groups_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["mark_templates.id"],
            name=op.f("fk_catalogue_groups_template_id_mark_templates"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalogue_groups")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_catalogue_groups_tenant_id_name")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("catalogue_group", sa.String(length=200), nullable=True))
    op.create_index(
        "ix_jobs_tenant_id_catalogue_group",
        "jobs",
        ["tenant_id", "catalogue_group"],
        postgresql_where=sa.text("catalogue_group IS NOT NULL"),
        sqlite_where=sa.text("catalogue_group IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_id_catalogue_group", table_name="jobs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("catalogue_group")
    op.drop_table("catalogue_groups")
