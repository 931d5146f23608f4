"""shared_keys: secrets every node must agree on (the console's screen-pop key), made once (issue 11)

Revision ID: 0017_shared_keys
Revises: 0015_smpp_cluster

The first node that needs a key inserts it; the others read it. Screen-pop handles sealed
with it open on any node, so the console needs no sticky sessions.
"""
import sqlalchemy as sa
from alembic import op

revision = "0017_shared_keys"
down_revision = "0015_smpp_cluster"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shared_keys",
        sa.Column("name", sa.String(length=32), nullable=False, comment="what the key is for"),
        sa.Column("secret", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_shared_keys")),
    )


def downgrade() -> None:
    op.drop_table("shared_keys")
