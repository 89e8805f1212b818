"""Job metrics say whether a JPEG result kept the upload's coefficients

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 23:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job_metrics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("jpeg_exact", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("jpeg_blocks_changed", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_metrics", schema=None) as batch_op:
        batch_op.drop_column("jpeg_blocks_changed")
        batch_op.drop_column("jpeg_exact")
