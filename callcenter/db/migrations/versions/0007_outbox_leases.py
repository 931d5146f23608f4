"""outbox leases, SMSC link of parts and receipts, learned id bases per link

Revision ID: 0007_outbox_leases
Revises: 0006_call_records
"""
import sqlalchemy as sa
from alembic import op

revision = "0007_outbox_leases"
down_revision = "0006_call_records"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(length=64), nullable=True,
                                   comment="[node] id of the claiming sender"))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        # The claim's "earlier message to the same recipient" probe.
        batch.create_index(batch.f("ix_outbox_recipient"), ["recipient"], unique=False)
    with op.batch_alter_table("sms_submits") as batch:
        batch.add_column(sa.Column("smsc_link", sa.String(length=96), nullable=True,
                                   comment="system_id@host:port that accepted it"))
    with op.batch_alter_table("sms_receipts_unmatched") as batch:
        batch.add_column(sa.Column("smsc_link", sa.String(length=96), nullable=True,
                                   comment="the link whose id space it uses"))
        batch.add_column(sa.Column("reason", sa.String(length=64), nullable=True,
                                   comment="why it settled nothing: no_part | other_handset | ambiguous: N parts"))
    op.create_table(
        "sms_id_bases",
        sa.Column("link", sa.String(length=96), nullable=False, comment="system_id@host:port"),
        sa.Column("same_pairs", sa.Integer(), nullable=False),
        sa.Column("hex_dec_pairs", sa.Integer(), nullable=False, comment="submit hex, receipt decimal"),
        sa.Column("dec_hex_pairs", sa.Integer(), nullable=False, comment="submit decimal, receipt hex"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("link", name=op.f("pk_sms_id_bases")),
    )


def downgrade() -> None:
    op.drop_table("sms_id_bases")
    with op.batch_alter_table("sms_receipts_unmatched") as batch:
        batch.drop_column("reason")
        batch.drop_column("smsc_link")
    with op.batch_alter_table("sms_submits") as batch:
        batch.drop_column("smsc_link")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index(batch.f("ix_outbox_recipient"))
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
