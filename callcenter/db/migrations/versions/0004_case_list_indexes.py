"""case lists: composite (filter, created_at) indexes

Revision ID: 0004_case_list_indexes
Revises: 0003_sms
"""
from alembic import op

revision = "0004_case_list_indexes"
down_revision = "0003_sms"
branch_labels = None
depends_on = None

_REPLACED = {
    "ix_cases_status": ("ix_cases_status_created", ["status", "created_at"]),
    "ix_cases_channel": ("ix_cases_channel_created", ["channel", "created_at"]),
    "ix_cases_category_code": ("ix_cases_category_created", ["category_code", "created_at"]),
    "ix_cases_grid_code": ("ix_cases_grid_created", ["grid_code", "created_at"]),
}


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        for old, (new, columns) in _REPLACED.items():
            batch.drop_index(old)
            batch.create_index(new, columns)


def downgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        for old, (new, columns) in _REPLACED.items():
            batch.drop_index(new)
            batch.create_index(old, [columns[0]])
