"""rate_windows: flood and loop counters per key and time bucket, shared by every node (issue 11)

Revision ID: 0014_rate_windows
Revises: 0013_cluster_nodes
"""
import sqlalchemy as sa
from alembic import op

revision = "0014_rate_windows"
down_revision = "0013_cluster_nodes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_windows",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False, comment="epoch seconds // bucket width"),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", "bucket", name=op.f("pk_rate_windows")),
    )
    op.create_index("ix_rate_windows_bucket", "rate_windows", ["bucket"])


def downgrade() -> None:
    op.drop_index("ix_rate_windows_bucket", table_name="rate_windows")
    op.drop_table("rate_windows")
