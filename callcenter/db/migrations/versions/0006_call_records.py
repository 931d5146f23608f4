"""call_records: one row per IVR call, for the dashboard's call figures

Revision ID: 0006_call_records
Revises: 0005_category_major
"""
import sqlalchemy as sa
from alembic import op

revision = "0006_call_records"
down_revision = "0005_category_major"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "call_records",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("call_id", sa.String(length=64), nullable=False, comment="agi_uniqueid"),
        sa.Column("route", sa.String(length=32), nullable=False),
        sa.Column("caller", sa.String(length=20), nullable=True, comment="E.164"),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True, comment="our ANSWER succeeded"),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_state", sa.String(length=64), nullable=True, comment="IVR state at the end"),
        sa.Column("outcome", sa.String(length=16), nullable=False,
                  comment="settled | transferred | abandoned | error"),
        sa.Column("case_number", sa.String(length=12), nullable=True, comment="the draft this call made"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_call_records")),
        sa.UniqueConstraint("call_id", name=op.f("uq_call_records_call_id")),
    )
    with op.batch_alter_table("call_records") as batch:
        batch.create_index(batch.f("ix_call_records_started_at"), ["started_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("call_records") as batch:
        batch.drop_index(batch.f("ix_call_records_started_at"))
    op.drop_table("call_records")
