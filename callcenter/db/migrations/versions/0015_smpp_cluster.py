"""smpp cluster: long MO texts joined in the store across binds; bind claims per SMSC account

Revision ID: 0015_smpp_cluster
Revises: 0014_rate_windows

`sms_inbound_parts` gets a unique index over the pending parts (sender, destination,
reference, total, seq), so a part redelivered through another node's bind is not counted
twice. Pending duplicates left by the per-process reassembler (it kept the first copy) are
marked `duplicate` first; nothing is deleted. `smpp_binds` holds each node's claim on binds
to an SMSC account (issue 11).
"""
import sqlalchemy as sa
from alembic import op

revision = "0015_smpp_cluster"
down_revision = "0014_rate_windows"
branch_labels = None
depends_on = None

_PENDING = sa.text("status = 'pending'")


def _comment(new: str, old: str) -> None:
    """Column comments exist on PostgreSQL only (SQLite would copy the table for nothing)."""
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("sms_inbound_parts", "status", existing_type=sa.String(length=16), existing_nullable=False,
                        comment=new, existing_comment=old)


def upgrade() -> None:
    op.execute(
        "UPDATE sms_inbound_parts SET status = 'duplicate' WHERE status = 'pending' AND id NOT IN ("
        " SELECT min(id) FROM sms_inbound_parts WHERE status = 'pending'"
        " GROUP BY sender, destination, concat_ref, parts_total, seq)")
    _comment("pending | assembled | duplicate", "pending | assembled")
    op.create_index("uq_sms_inbound_parts_pending", "sms_inbound_parts",
                    ["sender", "destination", "concat_ref", "parts_total", "seq"], unique=True,
                    sqlite_where=_PENDING, postgresql_where=_PENDING)
    op.create_table(
        "smpp_binds",
        sa.Column("node_id", sa.String(length=64), nullable=False, comment="[node] id"),
        sa.Column("account", sa.String(length=128), nullable=False, comment="system_id@host:port"),
        sa.Column("binds", sa.Integer(), nullable=False, comment="connections: 1 (trx) or 2 (tx+rx)"),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_smpp_binds")),
    )
    op.create_index(op.f("ix_smpp_binds_account"), "smpp_binds", ["account"])


def downgrade() -> None:
    op.drop_index(op.f("ix_smpp_binds_account"), table_name="smpp_binds")
    op.drop_table("smpp_binds")
    op.drop_index("uq_sms_inbound_parts_pending", table_name="sms_inbound_parts")
    _comment("pending | assembled", "pending | assembled | duplicate")
