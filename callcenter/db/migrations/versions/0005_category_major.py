"""cases.category_major: the major category a caller chose before anyone knows the minor

Revision ID: 0005_category_major
Revises: 0004_case_list_indexes
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_category_major"
down_revision = "0004_case_list_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("category_major", sa.String(length=2), nullable=True,
                                   comment="大类: known before the minor, e.g. from the phone menu"))
    op.execute("UPDATE cases SET category_major = substr(category_code, 2, 2) WHERE category_code IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("category_major")
