"""cluster: node heartbeats, console events shared between nodes, job leases (issue 11)

Revision ID: 0013_cluster_nodes
Revises: 0011_mask_case_log_phones
"""
import sqlalchemy as sa
from alembic import op

revision = "0013_cluster_nodes"
down_revision = "0011_mask_case_log_phones"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "cluster_nodes",
        sa.Column("node_id", sa.String(length=64), nullable=False, comment="[node] id"),
        sa.Column("address", sa.String(length=128), nullable=True, comment="HTTP address it listens on"),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False, comment="store clock of the last heartbeat"),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True, comment="set by a clean shutdown"),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_cluster_nodes")),
    )
    op.create_index(op.f("ix_cluster_nodes_last_seen_at"), "cluster_nodes", ["last_seen_at"])
    op.create_table(
        "cluster_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("origin", sa.String(length=64), nullable=False, comment="node id of the publisher"),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=True,
                  comment="console username; None: every console"),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cluster_events")),
    )
    op.create_index(op.f("ix_cluster_events_at"), "cluster_events", ["at"])
    op.create_table(
        "cluster_leases",
        sa.Column("name", sa.String(length=64), nullable=False, comment="job name"),
        sa.Column("holder", sa.String(length=64), nullable=False, comment="node id"),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, comment="store clock"),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_cluster_leases")),
    )


def downgrade() -> None:
    op.drop_table("cluster_leases")
    op.drop_index(op.f("ix_cluster_events_at"), table_name="cluster_events")
    op.drop_table("cluster_events")
    op.drop_index(op.f("ix_cluster_nodes_last_seen_at"), table_name="cluster_nodes")
    op.drop_table("cluster_nodes")
