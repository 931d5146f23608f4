"""call record legs and AMI queue columns, staff queue interface, call-back requests

Revision ID: 0009_call_legs_callbacks
Revises: 0008_sms_delivery_identity
"""
import sqlalchemy as sa
from alembic import op

revision = "0009_call_legs_callbacks"
down_revision = "0008_sms_delivery_identity"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("call_records") as batch:
        batch.add_column(sa.Column("leg", sa.Integer(), nullable=False, server_default="1",
                                   comment="1 for the first AGI session of the call"))
        batch.drop_constraint("uq_call_records_call_id", type_="unique")
        batch.alter_column("call_id", existing_type=sa.String(length=64), existing_nullable=False,
                           comment="agi_uniqueid (AMI Uniqueid of the caller channel)",
                           existing_comment="agi_uniqueid")
        batch.add_column(sa.Column("queue_joined_at", sa.DateTime(timezone=True), nullable=True,
                                   comment="AMI QueueCallerJoin"))
        batch.add_column(sa.Column("agent_answered_at", sa.DateTime(timezone=True), nullable=True,
                                   comment="AMI AgentConnect: a person answered"))
        batch.add_column(sa.Column("queue_wait_seconds", sa.Integer(), nullable=True,
                                   comment="HoldTime of AgentConnect/Abandon"))
        batch.add_column(sa.Column("queue_outcome", sa.String(length=16), nullable=True,
                                   comment="answered | abandoned | left"))
        batch.add_column(sa.Column("agent_interface", sa.String(length=64), nullable=True,
                                   comment="queue member that answered"))
        batch.add_column(sa.Column("talk_seconds", sa.Integer(), nullable=True,
                                   comment="TalkTime of AgentComplete"))
        batch.create_index("uq_call_records_call_leg", ["call_id", "leg"], unique=True)
    with op.batch_alter_table("call_records") as batch:
        batch.alter_column("leg", server_default=None, existing_type=sa.Integer(), existing_nullable=False,
                           existing_comment="1 for the first AGI session of the call")

    with op.batch_alter_table("staff_accounts") as batch:
        batch.add_column(sa.Column(
            "queue_interface", sa.String(length=64), nullable=True,
            comment="queue member interface of this person's phone, e.g. PJSIP/1001"))
        batch.create_unique_constraint(batch.f("uq_staff_accounts_queue_interface"), ["queue_interface"])

    op.create_table(
        "callback_requests",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("case_id", BigId, nullable=False),
        sa.Column("phone", sa.String(length=20), nullable=False, comment="E.164, whom to call"),
        sa.Column("requested_by", sa.String(length=128), nullable=False,
                  comment="ivr or the staff member's actor name"),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False,
                  comment="waiting | calling | rated | not_rated | unreached | failed"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True,
                  comment="earliest next call; None: not due"),
        sa.Column("action_id", sa.String(length=64), nullable=True, comment="AMI ActionID of the call in progress"),
        sa.Column("channel_id", sa.String(length=64), nullable=True, comment="AMI Uniqueid of the answered call"),
        sa.Column("last_result", sa.String(length=16), nullable=True,
                  comment="answered | no_answer | busy | failed ..."),
        sa.Column("score", sa.Integer(), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name=op.f("fk_callback_requests_case_id_cases")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_callback_requests")),
        sa.UniqueConstraint("case_id", name=op.f("uq_callback_requests_case_id")),
    )
    with op.batch_alter_table("callback_requests") as batch:
        batch.create_index("ix_callback_requests_status_next", ["status", "next_attempt_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("callback_requests") as batch:
        batch.drop_index("ix_callback_requests_status_next")
    op.drop_table("callback_requests")
    with op.batch_alter_table("staff_accounts") as batch:
        batch.drop_constraint(batch.f("uq_staff_accounts_queue_interface"), type_="unique")
        batch.drop_column("queue_interface")
    op.execute("DELETE FROM call_records WHERE leg > 1")
    with op.batch_alter_table("call_records") as batch:
        batch.drop_index("uq_call_records_call_leg")
        for column in ("talk_seconds", "agent_interface", "queue_outcome", "queue_wait_seconds",
                       "agent_answered_at", "queue_joined_at", "leg"):
            batch.drop_column(column)
        batch.alter_column("call_id", existing_type=sa.String(length=64), existing_nullable=False,
                           comment="agi_uniqueid", existing_comment="agi_uniqueid (AMI Uniqueid of the caller channel)")
        batch.create_unique_constraint("uq_call_records_call_id", ["call_id"])
