"""ORM tables. Queries live in the service and repository modules, never in handlers."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from callcenter.db.base import Base

# BigInteger primary keys that are still INTEGER PRIMARY KEY (rowid) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class CaseRow(Base):
    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    number: Mapped[str] = mapped_column(String(12), unique=True, comment="受理编号 intake number")
    status: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(16))
    source_ref: Mapped[str | None] = mapped_column(
        String(128), comment="channel's own id (SMS message key, Open311 token): de-duplication"
    )
    reporter_phone: Mapped[str | None] = mapped_column(String(20), index=True, comment="E.164")
    anonymous: Mapped[bool] = mapped_column(Boolean, default=False)
    confidential: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str] = mapped_column(Text, default="")
    recording_ref: Mapped[str | None] = mapped_column(String(512))
    kind: Mapped[str | None] = mapped_column(String(16), comment="component 部件 / event 事件")
    category_code: Mapped[str | None] = mapped_column(String(8), comment="C0101/E0103")
    category_edition: Mapped[str | None] = mapped_column(String(32))
    category_major: Mapped[str | None] = mapped_column(
        String(2), comment="大类: known before the minor, e.g. from the phone menu")
    suggested_category: Mapped[str | None] = mapped_column(String(8))
    suggested_confidence: Mapped[float | None] = mapped_column(Float)
    grid_code: Mapped[str | None] = mapped_column(String(15), comment="CJ/T 213")
    address: Mapped[str | None] = mapped_column(String(256))
    lon: Mapped[float | None] = mapped_column(Float)
    lat: Mapped[float | None] = mapped_column(Float)
    platform_number: Mapped[str | None] = mapped_column(String(64), comment="案卷号")
    rating: Mapped[int | None] = mapped_column(Integer)
    master_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(index=True)
    updated_at: Mapped[dt.datetime]

    log: Mapped[list[CaseLogRow]] = relationship(
        back_populates="case", order_by="CaseLogRow.id", cascade="all, delete-orphan"
    )

    # Lists are filtered by one of these and shown newest first: a composite index serves
    # both, where a single-column one makes SQLite sort every match (bench/bench_cases.py).
    __table_args__ = (
        Index("uq_cases_channel_source_ref", "channel", "source_ref", unique=True),
        Index("ix_cases_status_created", "status", "created_at"),
        Index("ix_cases_channel_created", "channel", "created_at"),
        Index("ix_cases_category_created", "category_code", "created_at"),
        Index("ix_cases_grid_created", "grid_code", "created_at"),
    )


class CaseLogRow(Base):
    """Append-only: every change to a case, what, who, when, why."""

    __tablename__ = "case_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    at: Mapped[dt.datetime]
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str | None] = mapped_column(String(16))
    changes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reason: Mapped[str | None] = mapped_column(Text)
    event_id: Mapped[str | None] = mapped_column(String(128), comment="platform event id")

    case: Mapped[CaseRow] = relationship(back_populates="log")

    __table_args__ = (Index("uq_case_log_case_event", "case_id", "event_id", unique=True),)


class OutboxRow(Base):
    """Outgoing SMS, written in the same transaction as the change it tells of."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    recipient: Mapped[str] = mapped_column(String(20), index=True, comment="E.164")
    template: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[dt.datetime]
    created_at: Mapped[dt.datetime]
    sent_at: Mapped[dt.datetime | None]
    delivered_at: Mapped[dt.datetime | None]
    delivery_state: Mapped[str | None] = mapped_column(String(16))
    last_error: Mapped[str | None] = mapped_column(Text)
    # The sender's claim (status 'sending'): which node holds it and until when. Only an
    # expired lease is taken back, so several nodes can share the outbox.
    lease_owner: Mapped[str | None] = mapped_column(String(64), comment="[node] id of the claiming sender")
    lease_expires_at: Mapped[dt.datetime | None]


class IntakeCounterRow(Base):
    """One row a day; the daily serial of intake numbers."""

    __tablename__ = "intake_counters"

    day: Mapped[str] = mapped_column(String(6), primary_key=True)
    last: Mapped[int] = mapped_column(Integer)


class ApiTokenRow(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, comment="sha256 hex")
    created_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]


class StaffAccountRow(Base):
    """A console sign-in for call-station staff (接线员) and shift leaders (值班长)."""

    __tablename__ = "staff_accounts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(64), comment="姓名, written to case logs")
    role: Mapped[str] = mapped_column(String(16), comment="staff | shift_leader")
    password_hash: Mapped[str] = mapped_column(String(255), comment="scrypt$n$r$p$salt$hash")
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime]
    queue_interface: Mapped[str | None] = mapped_column(
        String(64), unique=True, comment="queue member interface of this person's phone, e.g. PJSIP/1001")


class ConsoleSessionRow(Base):
    """A signed-in console session; only a SHA-256 of the cookie value is kept."""

    __tablename__ = "console_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True, comment="sha256 hex of the cookie")
    account_id: Mapped[int] = mapped_column(ForeignKey("staff_accounts.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    last_seen: Mapped[dt.datetime]


class CallRecordRow(Base):
    """One row per IVR leg (FastAGI session), written by the voice runtime when the leg ends.

    A call that goes hotline -> queue -> voicemail runs two AGI sessions on one channel (one
    agi_uniqueid): legs 1 and 2. The queue columns come from AMI queue events (QueueCallerJoin,
    AgentConnect, QueueCallerAbandon, AgentComplete) and are written on the leg that transferred.
    """

    __tablename__ = "call_records"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(String(64), comment="agi_uniqueid (AMI Uniqueid of the caller channel)")
    leg: Mapped[int] = mapped_column(Integer, default=1, comment="1 for the first AGI session of the call")
    route: Mapped[str] = mapped_column(String(32))
    caller: Mapped[str | None] = mapped_column(String(20), comment="E.164")
    started_at: Mapped[dt.datetime] = mapped_column(index=True)
    answered_at: Mapped[dt.datetime | None] = mapped_column(comment="our ANSWER succeeded")
    ended_at: Mapped[dt.datetime]
    last_state: Mapped[str | None] = mapped_column(String(64), comment="IVR state at the end")
    outcome: Mapped[str] = mapped_column(String(16), comment="settled | transferred | abandoned | error")
    case_number: Mapped[str | None] = mapped_column(String(12), comment="the draft this call made")
    queue_joined_at: Mapped[dt.datetime | None] = mapped_column(comment="AMI QueueCallerJoin")
    agent_answered_at: Mapped[dt.datetime | None] = mapped_column(comment="AMI AgentConnect: a person answered")
    queue_wait_seconds: Mapped[int | None] = mapped_column(Integer, comment="HoldTime of AgentConnect/Abandon")
    queue_outcome: Mapped[str | None] = mapped_column(String(16), comment="answered | abandoned | left")
    agent_interface: Mapped[str | None] = mapped_column(String(64), comment="queue member that answered")
    talk_seconds: Mapped[int | None] = mapped_column(Integer, comment="TalkTime of AgentComplete")

    __table_args__ = (Index("uq_call_records_call_leg", "call_id", "leg", unique=True),)


class CallbackRequestRow(Base):
    """A reporter asked to be called back for the rating (回访) once the case closes."""

    __tablename__ = "callback_requests"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), unique=True)
    phone: Mapped[str] = mapped_column(String(20), comment="E.164, whom to call")
    requested_by: Mapped[str] = mapped_column(String(128), comment="ivr or the staff member's actor name")
    requested_at: Mapped[dt.datetime]
    status: Mapped[str] = mapped_column(
        String(16), comment="waiting | calling | rated | not_rated | unreached | failed")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(comment="earliest next call; None: not due")
    action_id: Mapped[str | None] = mapped_column(String(64), comment="AMI ActionID of the call in progress")
    channel_id: Mapped[str | None] = mapped_column(String(64), comment="AMI Uniqueid of the answered call")
    last_result: Mapped[str | None] = mapped_column(String(16), comment="answered | no_answer | busy | failed ...")
    score: Mapped[int | None] = mapped_column(Integer)
    finished_at: Mapped[dt.datetime | None]

    __table_args__ = (Index("ix_callback_requests_status_next", "status", "next_attempt_at"),)


class ClusterNodeRow(Base):
    """One service node sharing the store (issue 11): its heartbeat. A node is live while
    `last_seen_at` is recent (`[node] dead_after_seconds`) and it has not said it stopped."""

    __tablename__ = "cluster_nodes"

    node_id: Mapped[str] = mapped_column(String(64), primary_key=True, comment="[node] id")
    address: Mapped[str | None] = mapped_column(String(128), comment="HTTP address it listens on")
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime]
    last_seen_at: Mapped[dt.datetime] = mapped_column(index=True, comment="store clock of the last heartbeat")
    stopped_at: Mapped[dt.datetime | None] = mapped_column(comment="set by a clean shutdown")


class ClusterEventRow(Base):
    """A console event (or a cluster notice such as a token revocation) published on one node,
    kept for a while so other nodes read it after a NOTIFY wake-up and after a reconnect."""

    __tablename__ = "cluster_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(index=True)
    origin: Mapped[str] = mapped_column(String(64), comment="node id of the publisher")
    type: Mapped[str] = mapped_column(String(32))
    target: Mapped[str | None] = mapped_column(String(64), comment="console username; None: every console")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ClusterLeaseRow(Base):
    """Who runs a periodic job now (work done once across nodes): held until `expires_at`."""

    __tablename__ = "cluster_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True, comment="job name")
    holder: Mapped[str] = mapped_column(String(64), comment="node id")
    acquired_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime] = mapped_column(comment="store clock")


class SharedKeyRow(Base):
    """A secret every node must agree on (the console's screen-pop key), made once by the first
    node that needs it, so several nodes share it without configuration."""

    __tablename__ = "shared_keys"

    name: Mapped[str] = mapped_column(String(32), primary_key=True, comment="what the key is for")
    secret: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime]


from callcenter.db import tables_sms  # noqa: E402,F401
