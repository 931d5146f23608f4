"""sms channel: inbound texts and parts, submitted parts and receipts, opt-outs,
blocklist, supervisor tasks

Revision ID: 0003_sms
Revises: 0002_console
Create Date: 2026-11-24 01:39:23.625677
"""
from alembic import op
import sqlalchemy as sa


revision = '0003_sms'
down_revision = '0002_console'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sms_blocklist',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('number', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False, comment='loop | manual'),
    sa.Column('note', sa.String(length=256), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sms_blocklist'))
    )
    with op.batch_alter_table('sms_blocklist', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sms_blocklist_number'), ['number'], unique=False)

    op.create_table('sms_inbound',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('message_key', sa.String(length=128), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False, comment='smpp | http'),
    sa.Column('gateway_message_id', sa.String(length=96), nullable=True),
    sa.Column('sender', sa.String(length=32), nullable=False, comment='E.164 when it is a phone number'),
    sa.Column('destination', sa.String(length=32), nullable=False),
    sa.Column('data_coding', sa.Integer(), nullable=True),
    sa.Column('esm_class', sa.Integer(), nullable=True),
    sa.Column('concat_ref', sa.Integer(), nullable=True),
    sa.Column('parts_total', sa.Integer(), nullable=False),
    sa.Column('parts_present', sa.JSON(), nullable=True),
    sa.Column('raw_hex', sa.Text(), nullable=True, comment='short_message of a single-part text'),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('text_hash', sa.String(length=64), nullable=False, comment='normalised text, for loop detection'),
    sa.Column('lossy', sa.Boolean(), nullable=False),
    sa.Column('partial', sa.Boolean(), nullable=False),
    sa.Column('copies', sa.Integer(), nullable=False, comment='deliveries of this message seen'),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False, comment='received (in progress) | draft | folded | command | blocked | loop | empty | rate_limited | error'),
    sa.Column('command', sa.String(length=16), nullable=True),
    sa.Column('case_number', sa.String(length=12), nullable=True),
    sa.Column('folded_into', sa.String(length=12), nullable=True),
    sa.Column('reply_key', sa.String(length=128), nullable=True, comment='idempotency key of the reply in outbox'),
    sa.Column('detail', sa.String(length=256), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sms_inbound')),
    sa.UniqueConstraint('message_key', name=op.f('uq_sms_inbound_message_key'))
    )
    with op.batch_alter_table('sms_inbound', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sms_inbound_case_number'), ['case_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_sms_inbound_fingerprint'), ['fingerprint'], unique=False)
        batch_op.create_index(batch_op.f('ix_sms_inbound_outcome'), ['outcome'], unique=False)
        batch_op.create_index(batch_op.f('ix_sms_inbound_received_at'), ['received_at'], unique=False)
        batch_op.create_index('ix_sms_inbound_sender_received', ['sender', 'received_at'], unique=False)

    op.create_table('sms_opt_outs',
    sa.Column('phone', sa.String(length=20), nullable=False, comment='E.164'),
    sa.Column('opted_out_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('message_key', sa.String(length=128), nullable=True),
    sa.PrimaryKeyConstraint('phone', name=op.f('pk_sms_opt_outs'))
    )
    op.create_table('sms_inbound_parts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('part_fp', sa.String(length=64), nullable=False, comment='sha256 of key, seq and bytes'),
    sa.Column('sender', sa.String(length=32), nullable=False),
    sa.Column('destination', sa.String(length=32), nullable=False),
    sa.Column('concat_ref', sa.Integer(), nullable=False),
    sa.Column('ref_bits', sa.Integer(), nullable=False),
    sa.Column('parts_total', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('data_coding', sa.Integer(), nullable=False),
    sa.Column('payload_hex', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False, comment='pending | assembled'),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('inbound_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.ForeignKeyConstraint(['inbound_id'], ['sms_inbound.id'], name=op.f('fk_sms_inbound_parts_inbound_id_sms_inbound')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sms_inbound_parts'))
    )
    with op.batch_alter_table('sms_inbound_parts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sms_inbound_parts_inbound_id'), ['inbound_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_sms_inbound_parts_part_fp'), ['part_fp'], unique=False)
        batch_op.create_index(batch_op.f('ix_sms_inbound_parts_status'), ['status'], unique=False)

    op.create_table('supervisor_tasks',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('code', sa.String(length=16), nullable=True, comment='T + digits'),
    sa.Column('request_id', sa.String(length=128), nullable=True, comment="caller's idempotency key"),
    sa.Column('case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('case_number', sa.String(length=12), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False, comment='verify 核实 | check 核查'),
    sa.Column('grid_code', sa.String(length=15), nullable=False),
    sa.Column('supervisor_name', sa.String(length=64), nullable=False),
    sa.Column('supervisor_phone', sa.String(length=20), nullable=False, comment='E.164'),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('answer', sa.String(length=16), nullable=True, comment='confirmed 属实 | not_confirmed 不属实'),
    sa.Column('answer_text', sa.String(length=256), nullable=True),
    sa.Column('answered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('escalated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('escalation_phone', sa.String(length=20), nullable=True),
    sa.Column('extra', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_supervisor_tasks_case_id_cases')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_supervisor_tasks')),
    sa.UniqueConstraint('code', name=op.f('uq_supervisor_tasks_code')),
    sa.UniqueConstraint('request_id', name=op.f('uq_supervisor_tasks_request_id'))
    )
    with op.batch_alter_table('supervisor_tasks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_supervisor_tasks_case_id'), ['case_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_supervisor_tasks_supervisor_phone'), ['supervisor_phone'], unique=False)

    op.create_table('sms_submits',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('outbox_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('recipient', sa.String(length=20), nullable=False, comment='E.164'),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('concat_ref', sa.Integer(), nullable=True),
    sa.Column('data_coding', sa.Integer(), nullable=False),
    sa.Column('esm_class', sa.Integer(), nullable=False),
    sa.Column('payload_hex', sa.Text(), nullable=False, comment='short_message, UDH included'),
    sa.Column('status', sa.String(length=16), nullable=False, comment='queued | submitting | accepted | in_doubt | failed'),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('smsc_message_id', sa.String(length=72), nullable=True, comment='normalised'),
    sa.Column('raw_message_id', sa.String(length=72), nullable=True),
    sa.Column('last_status', sa.Integer(), nullable=True, comment='last submit_sm_resp command_status'),
    sa.Column('last_error', sa.String(length=256), nullable=True),
    sa.Column('submitted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('accepted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('in_doubt_since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('receipt_state', sa.String(length=16), nullable=True),
    sa.Column('receipt_stat', sa.String(length=16), nullable=True),
    sa.Column('receipt_error', sa.String(length=16), nullable=True),
    sa.Column('receipt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('receipt_count', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['outbox_id'], ['outbox.id'], name=op.f('fk_sms_submits_outbox_id_outbox')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sms_submits'))
    )
    with op.batch_alter_table('sms_submits', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sms_submits_outbox_id'), ['outbox_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_sms_submits_recipient'), ['recipient'], unique=False)
        batch_op.create_index(batch_op.f('ix_sms_submits_smsc_message_id'), ['smsc_message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_sms_submits_status'), ['status'], unique=False)
        batch_op.create_index('uq_sms_submits_outbox_seq', ['outbox_id', 'seq'], unique=True)

    op.create_table('sms_receipts_unmatched',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('message_id', sa.String(length=72), nullable=False, comment='normalised'),
    sa.Column('raw_message_id', sa.String(length=72), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('stat', sa.String(length=16), nullable=True),
    sa.Column('error', sa.String(length=16), nullable=True),
    sa.Column('recipient', sa.String(length=32), nullable=True, comment="the receipt's source_addr"),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('matched_submit_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('matched_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['matched_submit_id'], ['sms_submits.id'], name=op.f('fk_sms_receipts_unmatched_matched_submit_id_sms_submits')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sms_receipts_unmatched'))
    )
    with op.batch_alter_table('sms_receipts_unmatched', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sms_receipts_unmatched_message_id'), ['message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_sms_receipts_unmatched_received_at'), ['received_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_sms_receipts_unmatched_recipient'), ['recipient'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('sms_receipts_unmatched', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sms_receipts_unmatched_recipient'))
        batch_op.drop_index(batch_op.f('ix_sms_receipts_unmatched_received_at'))
        batch_op.drop_index(batch_op.f('ix_sms_receipts_unmatched_message_id'))

    op.drop_table('sms_receipts_unmatched')
    with op.batch_alter_table('sms_submits', schema=None) as batch_op:
        batch_op.drop_index('uq_sms_submits_outbox_seq')
        batch_op.drop_index(batch_op.f('ix_sms_submits_status'))
        batch_op.drop_index(batch_op.f('ix_sms_submits_smsc_message_id'))
        batch_op.drop_index(batch_op.f('ix_sms_submits_recipient'))
        batch_op.drop_index(batch_op.f('ix_sms_submits_outbox_id'))

    op.drop_table('sms_submits')
    with op.batch_alter_table('supervisor_tasks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_supervisor_tasks_supervisor_phone'))
        batch_op.drop_index(batch_op.f('ix_supervisor_tasks_case_id'))

    op.drop_table('supervisor_tasks')
    with op.batch_alter_table('sms_inbound_parts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sms_inbound_parts_status'))
        batch_op.drop_index(batch_op.f('ix_sms_inbound_parts_part_fp'))
        batch_op.drop_index(batch_op.f('ix_sms_inbound_parts_inbound_id'))

    op.drop_table('sms_inbound_parts')
    op.drop_table('sms_opt_outs')
    with op.batch_alter_table('sms_inbound', schema=None) as batch_op:
        batch_op.drop_index('ix_sms_inbound_sender_received')
        batch_op.drop_index(batch_op.f('ix_sms_inbound_received_at'))
        batch_op.drop_index(batch_op.f('ix_sms_inbound_outcome'))
        batch_op.drop_index(batch_op.f('ix_sms_inbound_fingerprint'))
        batch_op.drop_index(batch_op.f('ix_sms_inbound_case_number'))

    op.drop_table('sms_inbound')
    with op.batch_alter_table('sms_blocklist', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sms_blocklist_number'))

    op.drop_table('sms_blocklist')
