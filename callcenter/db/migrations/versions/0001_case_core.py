"""case core: cases, case log, outbox, counters, tokens

Revision ID: 0001_case_core
Revises: 
Create Date: 2026-11-24 01:19:11.335592
"""
from alembic import op
import sqlalchemy as sa


revision = '0001_case_core'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_tokens',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False, comment='sha256 hex'),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_tokens_token_hash'))
    )
    op.create_table('cases',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('number', sa.String(length=12), nullable=False, comment='受理编号 intake number'),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('source_ref', sa.String(length=128), nullable=True, comment="channel's own id (SMS message key, Open311 token): de-duplication"),
    sa.Column('reporter_phone', sa.String(length=20), nullable=True, comment='E.164'),
    sa.Column('anonymous', sa.Boolean(), nullable=False),
    sa.Column('confidential', sa.Boolean(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('recording_ref', sa.String(length=512), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=True, comment='component 部件 / event 事件'),
    sa.Column('category_code', sa.String(length=8), nullable=True, comment='C0101/E0103'),
    sa.Column('category_edition', sa.String(length=32), nullable=True),
    sa.Column('suggested_category', sa.String(length=8), nullable=True),
    sa.Column('suggested_confidence', sa.Float(), nullable=True),
    sa.Column('grid_code', sa.String(length=15), nullable=True, comment='CJ/T 213'),
    sa.Column('address', sa.String(length=256), nullable=True),
    sa.Column('lon', sa.Float(), nullable=True),
    sa.Column('lat', sa.Float(), nullable=True),
    sa.Column('platform_number', sa.String(length=64), nullable=True, comment='案卷号'),
    sa.Column('rating', sa.Integer(), nullable=True),
    sa.Column('master_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('flags', sa.JSON(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['master_id'], ['cases.id'], name=op.f('fk_cases_master_id_cases')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cases')),
    sa.UniqueConstraint('number', name=op.f('uq_cases_number'))
    )
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cases_category_code'), ['category_code'], unique=False)
        batch_op.create_index(batch_op.f('ix_cases_channel'), ['channel'], unique=False)
        batch_op.create_index(batch_op.f('ix_cases_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_cases_grid_code'), ['grid_code'], unique=False)
        batch_op.create_index(batch_op.f('ix_cases_master_id'), ['master_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_cases_reporter_phone'), ['reporter_phone'], unique=False)
        batch_op.create_index(batch_op.f('ix_cases_status'), ['status'], unique=False)
        batch_op.create_index('uq_cases_channel_source_ref', ['channel', 'source_ref'], unique=True)

    op.create_table('intake_counters',
    sa.Column('day', sa.String(length=6), nullable=False),
    sa.Column('last', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('day', name=op.f('pk_intake_counters'))
    )
    op.create_table('case_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('from_status', sa.String(length=16), nullable=True),
    sa.Column('to_status', sa.String(length=16), nullable=True),
    sa.Column('changes', sa.JSON(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('event_id', sa.String(length=128), nullable=True, comment='platform event id'),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_case_log_case_id_cases')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_case_log'))
    )
    with op.batch_alter_table('case_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_case_log_case_id'), ['case_id'], unique=False)
        batch_op.create_index('uq_case_log_case_event', ['case_id', 'event_id'], unique=True)

    op.create_table('outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('idempotency_key', sa.String(length=128), nullable=False),
    sa.Column('case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('recipient', sa.String(length=20), nullable=False, comment='E.164'),
    sa.Column('template', sa.String(length=32), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('not_before', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('delivery_state', sa.String(length=16), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_outbox_case_id_cases')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_outbox_idempotency_key'))
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbox_case_id'), ['case_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_status'), ['status'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_status'))
        batch_op.drop_index(batch_op.f('ix_outbox_case_id'))

    op.drop_table('outbox')
    with op.batch_alter_table('case_log', schema=None) as batch_op:
        batch_op.drop_index('uq_case_log_case_event')
        batch_op.drop_index(batch_op.f('ix_case_log_case_id'))

    op.drop_table('case_log')
    op.drop_table('intake_counters')
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_index('uq_cases_channel_source_ref')
        batch_op.drop_index(batch_op.f('ix_cases_status'))
        batch_op.drop_index(batch_op.f('ix_cases_reporter_phone'))
        batch_op.drop_index(batch_op.f('ix_cases_master_id'))
        batch_op.drop_index(batch_op.f('ix_cases_grid_code'))
        batch_op.drop_index(batch_op.f('ix_cases_created_at'))
        batch_op.drop_index(batch_op.f('ix_cases_channel'))
        batch_op.drop_index(batch_op.f('ix_cases_category_code'))

    op.drop_table('cases')
    op.drop_table('api_tokens')
