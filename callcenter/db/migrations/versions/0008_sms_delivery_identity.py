"""sms_inbound: how each text came (connection, sequence, TLV digest) to tell a redelivery
from a citizen's repetition

Revision ID: 0008_sms_delivery_identity
Revises: 0006_call_records
"""
import sqlalchemy as sa
from alembic import op

revision = "0008_sms_delivery_identity"
down_revision = "0007_outbox_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sms_inbound", sa.Column("link_connection", sa.String(length=64), nullable=True,
                                           comment="SMPP connection, e.g. trx#2@1a2b3c4d"))
    op.add_column("sms_inbound", sa.Column("link_sequence", sa.BigInteger(), nullable=True,
                                           comment="deliver_sm sequence_number"))
    op.add_column("sms_inbound", sa.Column("link_tlv_digest", sa.String(length=32), nullable=True,
                                           comment="sha256 of the TLVs as sent"))


def downgrade() -> None:
    with op.batch_alter_table("sms_inbound") as batch:
        batch.drop_column("link_tlv_digest")
        batch.drop_column("link_sequence")
        batch.drop_column("link_connection")
