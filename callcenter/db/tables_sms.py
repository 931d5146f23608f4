"""SMS channel tables: inbound texts and their parts, submitted parts, receipts, opt-outs,
the blocklist and supervisor tasks. Outgoing messages themselves stay in `outbox`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Mapped, mapped_column

from callcenter.db.base import Base
from callcenter.db.tables import BigId


class SmsInboundRow(Base):
    """One citizen or supervisor text as received (MO 上行短信), kept whatever happens to it.

    `message_key` is the de-duplication key: the gateway's id when it gives one, otherwise
    `fp:<fingerprint>:<generation>`, where the fingerprint hashes sender, destination,
    concatenation reference and text, and the generation counts repeats outside the
    redelivery window. It is also the case's `source_ref` and seeds the reply's outbox key.
    """

    __tablename__ = "sms_inbound"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_key: Mapped[str] = mapped_column(String(128), unique=True)
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    source: Mapped[str] = mapped_column(String(16), comment="smpp | http")
    gateway_message_id: Mapped[str | None] = mapped_column(String(96))
    sender: Mapped[str] = mapped_column(String(32), comment="E.164 when it is a phone number")
    destination: Mapped[str] = mapped_column(String(32))
    data_coding: Mapped[int | None] = mapped_column(Integer)
    esm_class: Mapped[int | None] = mapped_column(Integer)
    concat_ref: Mapped[int | None] = mapped_column(Integer)
    parts_total: Mapped[int] = mapped_column(Integer, default=1)
    parts_present: Mapped[list[int] | None] = mapped_column(JSON)
    raw_hex: Mapped[str | None] = mapped_column(Text, comment="short_message of a single-part text")
    text: Mapped[str] = mapped_column(Text, default="")
    text_hash: Mapped[str] = mapped_column(String(64), comment="normalised text, for loop detection")
    lossy: Mapped[bool] = mapped_column(Boolean, default=False)
    partial: Mapped[bool] = mapped_column(Boolean, default=False)
    copies: Mapped[int] = mapped_column(Integer, default=1, comment="deliveries of this message seen")
    received_at: Mapped[dt.datetime] = mapped_column(index=True)
    last_seen_at: Mapped[dt.datetime]
    outcome: Mapped[str] = mapped_column(
        String(16), index=True,
        comment="received (in progress) | draft | folded | command | blocked | loop | empty | rate_limited | error")
    command: Mapped[str | None] = mapped_column(String(16))
    case_number: Mapped[str | None] = mapped_column(String(12), index=True)
    folded_into: Mapped[str | None] = mapped_column(String(12))
    reply_key: Mapped[str | None] = mapped_column(String(128), comment="idempotency key of the reply in outbox")
    detail: Mapped[str | None] = mapped_column(String(256))
    # How it came, to tell the SMSC redelivering it from the citizen sending the same again.
    link_connection: Mapped[str | None] = mapped_column(String(64), comment="SMPP connection, e.g. trx#2@1a2b3c4d")
    link_sequence: Mapped[int | None] = mapped_column(BigInteger, comment="deliver_sm sequence_number")
    link_tlv_digest: Mapped[str | None] = mapped_column(String(32), comment="sha256 of the TLVs as sent")

    __table_args__ = (Index("ix_sms_inbound_sender_received", "sender", "received_at"),)


class SmsInboundPartRow(Base):
    """One part of a long MO, stored before its deliver_sm_resp so a restart loses none.

    Parts are joined in the store, so the parts of one text may arrive through the binds of
    different nodes: at most one `pending` row per (sender, destination, reference, total,
    seq) (a redelivered part is not counted twice); the transaction that stores the last
    missing one writes the whole text and marks the set `assembled`.
    """

    __tablename__ = "sms_inbound_parts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    part_fp: Mapped[str] = mapped_column(String(64), index=True, comment="sha256 of key, seq and bytes")
    sender: Mapped[str] = mapped_column(String(32))
    destination: Mapped[str] = mapped_column(String(32))
    concat_ref: Mapped[int] = mapped_column(Integer)
    ref_bits: Mapped[int] = mapped_column(Integer, default=8)
    parts_total: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    data_coding: Mapped[int] = mapped_column(Integer)
    payload_hex: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True, comment="pending | assembled | duplicate")
    received_at: Mapped[dt.datetime]
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("sms_inbound.id"), index=True)

    __table_args__ = (
        Index("uq_sms_inbound_parts_pending", "sender", "destination", "concat_ref", "parts_total", "seq",
              unique=True, sqlite_where=sql_text("status = 'pending'"), postgresql_where=sql_text("status = 'pending'")),
    )


class SmsOptOutRow(Base):
    """退订: numbers that asked for no more progress notices."""

    __tablename__ = "sms_opt_outs"

    phone: Mapped[str] = mapped_column(String(20), primary_key=True, comment="E.164")
    opted_out_at: Mapped[dt.datetime]
    message_key: Mapped[str | None] = mapped_column(String(128))


class SmsBlocklistRow(Base):
    """Numbers whose texts are stored but never answered or made into cases."""

    __tablename__ = "sms_blocklist"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    number: Mapped[str] = mapped_column(String(32), index=True)
    reason: Mapped[str] = mapped_column(String(32), comment="loop | manual")
    note: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime | None]


class SmsSubmitRow(Base):
    """One submit_sm part of an outbox message, with its SMSC id and delivery receipt."""

    __tablename__ = "sms_submits"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    outbox_id: Mapped[int] = mapped_column(ForeignKey("outbox.id"), index=True)
    recipient: Mapped[str] = mapped_column(String(20), index=True, comment="E.164")
    seq: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(Integer)
    concat_ref: Mapped[int | None] = mapped_column(Integer)
    data_coding: Mapped[int] = mapped_column(Integer)
    esm_class: Mapped[int] = mapped_column(Integer)
    payload_hex: Mapped[str] = mapped_column(Text, comment="short_message, UDH included")
    status: Mapped[str] = mapped_column(
        String(16), index=True, comment="queued | submitting | accepted | in_doubt | failed")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    smsc_message_id: Mapped[str | None] = mapped_column(String(72), index=True, comment="normalised")
    raw_message_id: Mapped[str | None] = mapped_column(String(72))
    last_status: Mapped[int | None] = mapped_column(Integer, comment="last submit_sm_resp command_status")
    last_error: Mapped[str | None] = mapped_column(String(256))
    submitted_at: Mapped[dt.datetime | None]
    accepted_at: Mapped[dt.datetime | None]
    in_doubt_since: Mapped[dt.datetime | None]
    receipt_state: Mapped[str | None] = mapped_column(String(16))
    receipt_stat: Mapped[str | None] = mapped_column(String(16))
    receipt_error: Mapped[str | None] = mapped_column(String(16))
    receipt_at: Mapped[dt.datetime | None]
    receipt_count: Mapped[int] = mapped_column(Integer, default=0)
    smsc_link: Mapped[str | None] = mapped_column(String(96), comment="system_id@host:port that accepted it")

    __table_args__ = (Index("uq_sms_submits_outbox_seq", "outbox_id", "seq", unique=True),)


class SmsReceiptUnmatchedRow(Base):
    """A receipt whose id matched no part yet: before its submit_sm_resp, or for an in-doubt submit."""

    __tablename__ = "sms_receipts_unmatched"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(72), index=True, comment="normalised")
    raw_message_id: Mapped[str] = mapped_column(String(72))
    state: Mapped[str] = mapped_column(String(16))
    stat: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(String(16))
    recipient: Mapped[str | None] = mapped_column(String(32), index=True, comment="the receipt's source_addr")
    received_at: Mapped[dt.datetime] = mapped_column(index=True)
    matched_submit_id: Mapped[int | None] = mapped_column(ForeignKey("sms_submits.id"))
    matched_at: Mapped[dt.datetime | None]
    smsc_link: Mapped[str | None] = mapped_column(String(96), comment="the link whose id space it uses")
    reason: Mapped[str | None] = mapped_column(
        String(64), comment="why it settled nothing: no_part | other_handset | ambiguous: N parts")


class SmsIdBasesRow(Base):
    """Per SMSC link: unambiguous (submit_sm_resp id, receipt id) pairs seen, by relation.

    `sms.dlr.decide_bases` turns the counts into the link's id relation (sms.dlr.IdBases).
    """

    __tablename__ = "sms_id_bases"

    link: Mapped[str] = mapped_column(String(96), primary_key=True, comment="system_id@host:port")
    same_pairs: Mapped[int] = mapped_column(Integer, default=0)
    hex_dec_pairs: Mapped[int] = mapped_column(Integer, default=0, comment="submit hex, receipt decimal")
    dec_hex_pairs: Mapped[int] = mapped_column(Integer, default=0, comment="submit decimal, receipt hex")
    updated_at: Mapped[dt.datetime]


class SupervisorTaskRow(Base):
    """A verification (核实) or closure check (核查) sent to a grid supervisor (监督员) by SMS."""

    __tablename__ = "supervisor_tasks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    code: Mapped[str | None] = mapped_column(String(16), unique=True, comment="T + digits")
    request_id: Mapped[str | None] = mapped_column(String(128), unique=True, comment="caller's idempotency key")
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    case_number: Mapped[str] = mapped_column(String(12))
    kind: Mapped[str] = mapped_column(String(16), comment="verify 核实 | check 核查")
    grid_code: Mapped[str] = mapped_column(String(15))
    supervisor_name: Mapped[str] = mapped_column(String(64))
    supervisor_phone: Mapped[str] = mapped_column(String(20), index=True, comment="E.164")
    note: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime]
    answer: Mapped[str | None] = mapped_column(String(16), comment="confirmed 属实 | not_confirmed 不属实")
    answer_text: Mapped[str | None] = mapped_column(String(256))
    answered_at: Mapped[dt.datetime | None]
    escalated_at: Mapped[dt.datetime | None]
    escalation_phone: Mapped[str | None] = mapped_column(String(20))
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class RateWindowRow(Base):
    """Arrivals per key and time bucket, shared by every node (flood and loop windows).

    Keys: `loop:<number>:<text hash>` (the same text again; a window's count is the sum of
    its buckets) and `mo:<number>` (bucket 0: the number's lock, which serialises two nodes'
    groups for one number; callcenter/service/rate_windows.py).
    """

    __tablename__ = "rate_windows"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True, comment="epoch seconds // bucket width")
    count: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_rate_windows_bucket", "bucket"),)


class SmppBindRow(Base):
    """A node's claim on binds to one SMSC account (issue 11). Carriers cap the binds per
    account and the account's parts per second: live nodes' claims (joined with their
    `cluster_nodes` heartbeat) are counted against `smpp.max_binds`, and each claiming node
    paces itself at `smpp.max_parts_per_second` divided by their number."""

    __tablename__ = "smpp_binds"

    node_id: Mapped[str] = mapped_column(String(64), primary_key=True, comment="[node] id")
    account: Mapped[str] = mapped_column(String(128), index=True, comment="system_id@host:port")
    binds: Mapped[int] = mapped_column(Integer, comment="connections: 1 (trx) or 2 (tx+rx)")
    claimed_at: Mapped[dt.datetime]
