"""SMS intake (短信受理): one inbound text in, one command_status out.

The pipeline, for a message from the SMPP client or the HTTP gateway route:

1. Split off the UDH (or read the SAR TLVs). A part of a long message is stored
   (`sms_inbound_parts`) and joined in the store, so the parts may come through the binds
   of different nodes; the transaction that stores the last missing part writes the whole
   text. An incomplete message becomes a flagged draft after `sms.reassembly_timeout` (a
   job under a cluster lease); a part that arrives after that is appended to that draft.
2. Decode (data_coding 0/3/8, GBK by configuration); undecodable bytes become U+FFFD and
   the draft is flagged `lossy_text`.
3. De-duplicate: by the gateway's id when it gives one, otherwise by a fingerprint of
   sender, destination, concatenation reference and text within the redelivery window.
   The raw text is committed (`sms_inbound`, outcome `received`) before anything else.
4. Policy: blocklist (file and table), loop detection (the same text `loop_threshold`
   times within `loop_window` blocks the number for a while), rate limit (more than
   `rate_limit` texts within `rate_window` are folded into one flagged draft). Both are
   counted in the store inside the group's transaction (`rate_windows`, `sms_inbound`), so
   they hold across nodes (callcenter/service/rate_windows.py).
5. A keyword command (CX, PJ, TD, BZ, a supervisor's 1/2) is answered; anything else is
   a draft (channel sms) with a suggested category, whose receipt SMS carries the intake
   number. Every reply goes through the durable outbox with a key derived from the
   inbound message key, so a redelivered query never gets two replies.

`receive` returns ESME_ROK only after everything is committed; a store failure returns
ESME_RX_T_APPN so the SMSC delivers again, and the redelivery resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import re
import unicodedata
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import Connection, Table, func, select, update
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from callcenter.cases.lifecycle import EDITABLE_STATES, CaseStatus
from callcenter.cases.model import CaseFlag, CaseView, Channel
from callcenter.cases.numbering import CaseNumber, InvalidCaseNumber
from callcenter.db.tables import CaseRow
from callcenter.db.tables_sms import SmsBlocklistRow, SmsInboundPartRow, SmsInboundRow, SmsOptOutRow
from callcenter.db.unit import insert_ids, run_in_transaction
from callcenter.metrics import MetricsRegistry
from callcenter.service import sms_texts as texts
from callcenter.service.cases import MAX_DESCRIPTION, CaseService, DraftInput, PreparedDraft
from callcenter.service.errors import CaseNotFound, InvalidInput, ServiceError, TransitionRefused
from callcenter.service.outbox import OutgoingSms, enqueue, enqueue_sync, outbox_key
from callcenter.service.rate_windows import SharedWindows
from callcenter.service.sms_roster import normalise_sender
from callcenter.service.tasks import TaskService
from callcenter.settings import SmsSettings
from sms.codec import DEFAULT_GBK_CODINGS, decode_short_message
from sms.concat import (
    CompleteMessage,
    ConcatError,
    ConcatInfo,
    Segment,
    extract_segment,
    join_parts,
)
from sms.gateway import InboundMessage, MoVerdict
from sms.keywords import (
    Command,
    FreeText,
    Help,
    Malformed,
    OptOut,
    QueryStatus,
    Rate,
    TaskReply,
    parse_command,
)
from sms.privacy import mask_number, mask_text

log = structlog.get_logger(__name__)

INBOUND: Table = SmsInboundRow.__table__  # type: ignore[assignment]
PARTS: Table = SmsInboundPartRow.__table__  # type: ignore[assignment]
BLOCKLIST: Table = SmsBlocklistRow.__table__  # type: ignore[assignment]
OPT_OUTS: Table = SmsOptOutRow.__table__  # type: ignore[assignment]

# Not (yet) CaseFlag members: the draft holds a cut text, the whole one is in sms_inbound;
# a binary MO (no text to read) is a draft for staff, its bytes in sms_inbound.raw_hex.
TEXT_TRUNCATED = "text_truncated"
BINARY_MESSAGE = "binary_message"
# SMPP data_coding of 8-bit binary data: 0x02 and 0x04, and the GSM message-class group's
# 8-bit values 0xF4-0xF7.
BINARY_CODINGS = frozenset({0x02, 0x04, 0xF4, 0xF5, 0xF6, 0xF7})
ACTOR = "sms"
FINISHED_OUTCOMES = ("draft", "binary", "folded", "command", "blocked", "loop", "empty", "rate_limited", "error")
NOT_COUNTED = ("blocked", "loop", "empty")
MAX_FOLDS_APPENDED = 50
# Pending long messages kept (timed out) per run of the reassembly job at most.
EXPIRE_BATCH = 500


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class IntakeResult:
    """What one inbound event became; the transport answers by `verdict` (stored, try later, refused)."""

    verdict: MoVerdict
    outcome: str
    case_number: str | None = None
    command: str | None = None
    duplicate: bool = False
    message_key: str | None = None


@dataclass(frozen=True)
class _Text:
    """A complete (or given-up partial) message ready for the message-level steps."""

    sender: str
    destination: str
    text: str
    lossy: bool
    partial: bool
    source: str
    data_coding: int | None = None
    esm_class: int | None = None
    ref: int | None = None
    total: int = 1
    parts_present: tuple[int, ...] | None = None
    raw_hex: str | None = None
    gateway_id: str | None = None
    binary: bool = False
    connection: str | None = None
    sequence: int | None = None
    tlv_digest: str | None = None


@dataclass(frozen=True)
class _Reply:
    recipient: str
    body: str
    case_id: int | None = None


class StoreFailed(Exception):
    """The store refused a write; the message must be delivered again."""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# Category Cc (C0, DEL, C1) other than tab and line breaks, and lone surrogates.
_UNWANTED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def clean_text(text: str) -> tuple[str, bool]:
    """Replace NUL, control characters and lone surrogates, which no store or handset wants."""
    if _UNWANTED.search(text) is None:  # nearly every text: nothing to replace
        return text, False
    out: list[str] = []
    changed = False
    for ch in text:
        code = ord(ch)
        if (unicodedata.category(ch) == "Cc" and ch not in "\n\r\t") or 0xD800 <= code <= 0xDFFF:
            out.append("\ufffd")
            changed = True
        else:
            out.append(ch)
    return "".join(out), changed


def _text_hash(text: str) -> str:
    return _sha(" ".join(unicodedata.normalize("NFKC", text).split()))


def _phone(sender: str) -> str | None:
    """The sender as a reply address, when it is an E.164 number."""
    return sender if sender.startswith("+") and sender[1:].isdigit() else None


def _command_name(command: Command) -> str:
    return {QueryStatus: "query", Rate: "rate", OptOut: "opt_out", Help: "help", TaskReply: "task_reply",
            Malformed: "help", FreeText: "free_text"}[type(command)]


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A whole text with what the store step needs, computed on the loop before the transaction."""

    text: _Text
    fingerprint: str
    text_hash: str
    gateway_key: str | None
    part_key: tuple[str, str, int | None, int] | None


@dataclass(frozen=True, slots=True)
class _Seen:
    """An earlier copy of a text (stored, or earlier in the same group)."""

    id: int | None
    message_key: str
    generation: int
    outcome: str
    command: str | None
    case_number: str | None
    received_at: dt.datetime
    connection: str | None
    sequence: int | None
    tlv_digest: str | None

    @classmethod
    def of(cls, r: Any) -> _Seen:
        return cls(id=r.id, message_key=r.message_key, generation=r.generation, outcome=r.outcome,
                   command=r.command, case_number=r.case_number, received_at=r.received_at,
                   connection=r.link_connection, sequence=r.link_sequence, tlv_digest=r.link_tlv_digest)


@dataclass(slots=True)
class _Decision:
    """What the group's transaction made of one text."""

    outcome: str
    message_key: str
    received_at: dt.datetime
    row_id: int | None = None
    case_number: str | None = None
    command: str | None = None
    detail: str | None = None
    duplicate: bool = False
    slow: bool = False
    replied: bool = False
    blocked_loop: bool = False
    arrivals: int = 0  # this text from this number within the loop window (shared windows)


@dataclass
class SmsIntakeService:
    sessions: async_sessionmaker[AsyncSession]
    cases: CaseService
    tasks: TaskService
    settings: SmsSettings
    metrics: MetricsRegistry
    gbk_codings: frozenset[int] = DEFAULT_GBK_CODINGS
    region: str = "CN"
    timezone: str = "Asia/Shanghai"
    blocklist: frozenset[str] = frozenset()
    now: Callable[[], dt.datetime] = utcnow
    on_outbox: Callable[[], None] = lambda: None
    _locks: dict[str, list[Any]] = field(init=False, default_factory=dict)
    limits: SharedWindows = field(init=False)
    _queue: list[tuple[InboundMessage, asyncio.Future[IntakeResult]]] = field(init=False, default_factory=list)
    _worker: asyncio.Task[None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.limits = SharedWindows(self.sessions, self.settings.window_bucket_seconds, self.settings.loop_window,
                                    horizon=max(self.settings.loop_window, self.settings.rate_window),
                                    now=lambda: self.now())
        m = self.metrics
        self._m_received = m.counter("sms_mo_received_total", "inbound texts and parts received")
        self._m_parts = m.counter("sms_mo_parts_total", "parts of long inbound texts received")
        self._m_duplicates = m.counter("sms_mo_duplicates_total", "redelivered texts and parts recognised")
        self._m_failures = m.counter("sms_mo_store_failures_total", "inbound texts answered with a temporary error")
        self._m_outcomes = m.counter("sms_mo_outcomes_total", "what inbound texts became")
        self._m_drafts = m.counter("sms_drafts_created_total", "draft cases created from SMS")
        self._m_commands = m.counter("sms_commands_total", "keyword commands handled")
        self._m_groups = m.counter("sms_mo_groups_total", "transactions that stored a group of whole texts")
        self._m_group_size = m.summary("sms_mo_group_texts", "whole texts per stored group",
                                       buckets=(1, 2, 5, 10, 20, 50, 100))

    # ---- entry points -------------------------------------------------------------------

    async def receive_verdict(self, message: InboundMessage) -> MoVerdict:
        """The gateways' handler: stored, try again later, or refused for good."""
        return (await self.receive(message)).verdict

    async def receive(self, message: InboundMessage) -> IntakeResult:
        """Queue one inbound event and wait until it is committed (or could not be).

        Texts are handled by one worker in arrival order, several to a transaction; this
        caller's answer comes as soon as its own text is committed.
        """
        self._m_received.inc(source=message.source)
        if not message.sender.strip():
            log.warning("sms.mo.refused", reason="no sender address", source=message.source)
            return IntakeResult(verdict=MoVerdict.REFUSED, outcome="refused")
        future: asyncio.Future[IntakeResult] = asyncio.get_running_loop().create_future()
        self._queue.append((message, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="sms-intake")
        return await future

    async def _work(self) -> None:
        """Take the queue a group at a time: at most `sms.intake_group_max` texts per transaction."""
        limit = self.settings.intake_group_max
        linger = self.settings.intake_linger
        while self._queue:
            if linger > 0 and len(self._queue) < limit:
                # The SMSC sends the next texts as our answers reach it: a moment's wait lets
                # them join this group (fewer transactions) for a few ms of latency.
                await asyncio.sleep(linger)
            group = self._queue[:limit]
            del self._queue[:limit]
            try:
                await self._handle_group(group)
            except (SQLAlchemyError, OSError, StoreFailed, TimeoutError) as exc:
                self._store_failed(group, exc)
            except Exception as exc:  # noqa: BLE001 - a bug must not stop the worker; the SMSC delivers again
                log.exception("sms.mo.group_failed")
                self._store_failed(group, exc)

    def _store_failed(self, group: Sequence[tuple[InboundMessage, asyncio.Future[IntakeResult]]],
                      exc: BaseException) -> None:
        """Every text of the group not yet answered gets "try again later"."""
        waiting = [(m, f) for m, f in group if not f.done()]
        self._m_failures.inc(len(waiting))
        log.error("sms.mo.store_failed", texts=len(waiting), error=str(exc).splitlines()[0][:300] if str(exc) else
                  type(exc).__name__)
        for _, future in waiting:
            future.set_result(IntakeResult(verdict=MoVerdict.RETRY_LATER, outcome="store_failed"))

    async def _handle_group(self, group: Sequence[tuple[InboundMessage, asyncio.Future[IntakeResult]]]) -> None:
        """Whole texts go to the store together; a part of a long text is handled alone, in its place."""
        texts: list[tuple[_Text, asyncio.Future[IntakeResult] | None]] = []
        for message, future in group:
            sender = normalise_sender(message.sender, self.region)
            item = self._classify(message, sender)
            if isinstance(item, _Text):
                texts.append((item, future))
                continue
            if texts:
                await self._store_texts(texts)
                texts = []
            async with self._sender_lock(sender):
                result = await self._receive_part(message, sender, item[0], item[1])
            if not future.done():
                future.set_result(result)
        if texts:
            await self._store_texts(texts)

    async def expire_partials(self) -> int:
        """Turn long messages still incomplete after the timeout into flagged drafts.

        Run by one node at a time (the `sms-reassembly` job under a cluster lease), and at
        start-up. Also joins a set found complete (stored before an upgrade, by the
        per-process reassembler). Each set is decided again under its lock, so a part that
        completes it meanwhile on another node wins and the set is not kept twice.
        """
        now = self.now()
        cutoff = now - dt.timedelta(seconds=self.settings.reassembly_timeout)
        key_cols = (PARTS.c.sender, PARTS.c.destination, PARTS.c.concat_ref, PARTS.c.parts_total)
        done = 0
        try:
            async with self.cases.engine.connect() as conn:
                due = (await conn.execute(
                    select(*key_cols).where(PARTS.c.status == "pending").group_by(*key_cols)
                    .having((func.min(PARTS.c.received_at) <= cutoff) | (func.count() >= PARTS.c.parts_total))
                    .limit(EXPIRE_BATCH))).all()
            for sender, destination, ref, total in due:
                async with self._sender_lock(sender):
                    result = await self._join_in_store((sender, destination, ref, total), now, cutoff=cutoff)
                done += result is not None
        except (SQLAlchemyError, OSError, StoreFailed, TimeoutError) as exc:
            log.error("sms.mo.expire_failed", error=str(exc).splitlines()[0][:300])
        return done

    async def load(self) -> None:
        """Start-up: join what a crash left complete and what timed out while the node was down."""
        await self.expire_partials()

    async def pending_long_messages(self) -> int:
        """Long messages waiting for more parts, across every node (the store's count)."""
        key_cols = (PARTS.c.sender, PARTS.c.destination, PARTS.c.concat_ref, PARTS.c.parts_total)
        async with self.cases.engine.connect() as conn:
            keys = select(*key_cols).where(PARTS.c.status == "pending").group_by(*key_cols).subquery()
            return int((await conn.execute(select(func.count()).select_from(keys))).scalar_one())

    # ---- internals: locks ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _sender_lock(self, sender: str) -> AsyncIterator[None]:
        """One message per sender at a time: parts, folds and duplicates stay consistent.

        Re-entrant for the task holding it: a long text completed under its part's lock may
        need the lock again to finish a command or a fold.
        """
        task = asyncio.current_task()
        entry = self._locks.get(sender)
        if entry is not None and entry[2] is task:
            yield
            return
        if entry is None:
            entry = self._locks[sender] = [asyncio.Lock(), 0, None]
        entry[1] += 1
        try:
            async with entry[0]:
                entry[2] = task
                try:
                    yield
                finally:
                    entry[2] = None
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._locks.pop(sender, None)

    # ---- step 1-2: segments, parts, decoding -------------------------------------------

    def _classify(self, message: InboundMessage, sender: str) -> _Text | tuple[str, Segment]:
        """A whole text ready for the store, or (destination, segment) of a part of a long one."""
        destination = message.destination.strip()[:32]
        origin = {"connection": (message.connection or None) and message.connection[:64],
                  "sequence": message.sequence, "tlv_digest": message.tlv_digest}
        if message.text is not None and not message.short_message:
            text, changed = clean_text(message.text)
            return _Text(sender=sender, destination=destination, text=text, lossy=changed, partial=False,
                         source=message.source, gateway_id=message.message_id, **origin)
        raw = message.short_message
        if message.data_coding in BINARY_CODINGS:
            # Binary data (OTA, vCard, a ringtone): no text to read; kept whole for staff.
            return _Text(sender=sender, destination=destination, text="", lossy=False, partial=False,
                         source=message.source, data_coding=message.data_coding, esm_class=message.esm_class,
                         raw_hex=raw.hex(), gateway_id=message.message_id, binary=True, **origin)
        broken = False
        try:
            segment = extract_segment(raw, message.esm_class, sar_msg_ref_num=message.sar_msg_ref_num,
                                      sar_total_segments=message.sar_total_segments,
                                      sar_segment_seqnum=message.sar_segment_seqnum)
        except ConcatError as exc:
            log.warning("sms.mo.bad_concat", sender=mask_number(sender), error=str(exc))
            segment, broken = Segment(None, raw), True
        if segment.concat is not None and segment.concat.total > 1:
            return destination, segment
        decoded = decode_short_message(segment.payload, message.data_coding, gbk_codings=self.gbk_codings)
        text, changed = clean_text(decoded.text)
        return _Text(sender=sender, destination=destination, text=text, lossy=decoded.lossy or changed or broken,
                     partial=False, source=message.source, data_coding=message.data_coding,
                     esm_class=message.esm_class, raw_hex=raw.hex(), gateway_id=message.message_id, **origin)

    async def _receive_part(self, message: InboundMessage, sender: str, destination: str,
                            segment: Segment) -> IntakeResult:
        """Store one part; the transaction that stores the last missing one writes the whole text.

        The parts of one text may come through the binds of different nodes: they meet in
        `sms_inbound_parts`. Under a lock on the text's key (PostgreSQL: an advisory
        transaction lock; SQLite has one writer) the transaction reads the set, refuses a
        part it already has (the unique index over pending parts is the backstop), stores
        this one and, if the set is now complete, decodes it and writes the text, its draft
        and its reply (`_write_texts`) before it commits. So exactly one node, once, makes
        the draft, and this part's deliver_sm_resp leaves only after the commit.
        """
        concat = segment.concat
        assert concat is not None
        self._m_parts.inc()
        now = self.now()
        payload_hex = segment.payload.hex()
        part_fp = _sha(f"{sender}\x1f{destination}\x1f{concat.ref}\x1f{concat.total}\x1f{concat.seq}"
                       f"\x1f{message.data_coding}\x1f{payload_hex}")
        key = (sender, destination, concat.ref, concat.total)
        since = now - dt.timedelta(seconds=self.settings.redelivery_window)
        part = {"part_fp": part_fp, "sender": sender, "destination": destination, "concat_ref": concat.ref,
                "ref_bits": concat.ref_bits, "parts_total": concat.total, "seq": concat.seq,
                "data_coding": message.data_coding, "payload_hex": payload_hex, "received_at": now}
        late_case: str | None = None
        joined: tuple[Any, ...] | None = None
        async with self.cases.engine.begin() as conn:
            stored = await self._stored_parts(conn, key, part_fp=part_fp, since=since)
            if any(r.part_fp == part_fp or (r.status == "pending" and r.seq == concat.seq) for r in stored):
                outcome = "duplicate"  # a redelivery (also after completion), or another copy of a part we have
            else:
                pending = [r for r in stored if r.status == "pending"]
                late = None if pending else await self._late_part_target(conn, key, concat.seq, since)
                if late is not None:
                    outcome, late_case = "late", late.case_number
                    await conn.execute(PARTS.insert().values(**part, status="assembled", inbound_id=late.id))
                    await conn.execute(update(INBOUND).where(INBOUND.c.id == late.id).values(
                        parts_present=sorted({*(late.parts_present or []), concat.seq}), last_seen_at=now))
                elif not await self._insert_part(conn, part):
                    outcome = "duplicate"
                elif len(pending) + 1 < concat.total:
                    outcome = "part"
                else:
                    outcome = "joined"
                    parts = {r.seq: (bytes.fromhex(r.payload_hex), r.data_coding) for r in pending}
                    parts[concat.seq] = (segment.payload, message.data_coding)
                    joined = await self._write_joined(conn, key, parts, now, source=message.source, reason=None)
        if outcome == "duplicate":
            self._m_duplicates.inc(kind="part")
            log.info("sms.mo.duplicate_part", sender=mask_number(sender), ref=concat.ref, seq=concat.seq,
                     total=concat.total)
            return IntakeResult(verdict=MoVerdict.STORED, outcome="part", duplicate=True)
        if outcome == "late":
            await self._append_late_part(late_case, concat, segment.payload, message.data_coding)
            return IntakeResult(verdict=MoVerdict.STORED, outcome="late_part", case_number=late_case)
        if joined is None:
            return IntakeResult(verdict=MoVerdict.STORED, outcome="part")
        (result,) = await self._after_commit(*joined)
        return result

    async def _join_in_store(self, key: tuple[str, str, int, int], now: dt.datetime, *,
                             cutoff: dt.datetime) -> IntakeResult | None:
        """Keep a pending set as one text: whole if complete, else (first part older than
        `cutoff`) a partial one with its gaps marked. None when there was nothing to do."""
        async with self.cases.engine.begin() as conn:
            pending = await self._stored_parts(conn, key)
            if not pending:
                return None  # joined meanwhile (another node, or a part that completed it)
            total = key[3]
            parts = {r.seq: (bytes.fromhex(r.payload_hex), r.data_coding) for r in pending}
            complete = all(seq in parts for seq in range(1, total + 1))
            if not complete and min(r.received_at for r in pending) > cutoff:
                return None
            joined = await self._write_joined(conn, key, parts, now, source="smpp",
                                              reason=None if complete else "timeout")
        (result,) = await self._after_commit(*joined)
        return result

    async def _stored_parts(self, conn: AsyncConnection, key: tuple[str, str, int, int], *,
                            part_fp: str | None = None, since: dt.datetime | None = None) -> list[Any]:
        """Lock the text's key for this transaction, then read its pending parts (and, with
        `part_fp`, an earlier copy of this very part still within the redelivery window)."""
        if conn.dialect.name == "postgresql":
            digest = hashlib.sha256("\x1f".join(map(str, key)).encode()).digest()
            await conn.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest[:8], "big", signed=True))))
        elif conn.dialect.name == "sqlite":  # take the one write lock before reading (another process)
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
        sender, destination, ref, total = key
        wanted = PARTS.c.status == "pending"
        if part_fp is not None and since is not None:
            wanted = wanted | ((PARTS.c.part_fp == part_fp) & (PARTS.c.received_at >= since))
        return list((await conn.execute(
            select(PARTS.c.seq, PARTS.c.status, PARTS.c.part_fp, PARTS.c.data_coding, PARTS.c.payload_hex,
                   PARTS.c.received_at)
            .where(PARTS.c.sender == sender, PARTS.c.destination == destination, PARTS.c.concat_ref == ref,
                   PARTS.c.parts_total == total, wanted)
            .order_by(PARTS.c.id))).all())

    @staticmethod
    async def _insert_part(conn: AsyncConnection, part: dict[str, Any]) -> bool:
        """Insert a pending part; False when the set already has one with this seq."""
        insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        stmt = insert(PARTS).values(**part, status="pending").on_conflict_do_nothing(
            index_elements=["sender", "destination", "concat_ref", "parts_total", "seq"],
            # A literal predicate: with a bound parameter PostgreSQL cannot match the partial index
            # once psycopg prepares the statement (generic plan), and refuses the ON CONFLICT.
            index_where=sql_text("status = 'pending'")).returning(PARTS.c.id)
        return (await conn.execute(stmt)).first() is not None

    async def _late_part_target(self, conn: AsyncConnection, key: tuple[str, str, int, int], seq: int,
                                since: dt.datetime) -> Any:
        """A message already kept as partial (no pending set left) that lacks this part."""
        sender, destination, ref, total = key
        row = (await conn.execute(
            select(INBOUND.c.id, INBOUND.c.case_number, INBOUND.c.parts_present).where(
                INBOUND.c.sender == sender, INBOUND.c.destination == destination, INBOUND.c.concat_ref == ref,
                INBOUND.c.parts_total == total, INBOUND.c.partial.is_(True), INBOUND.c.received_at >= since)
            .order_by(INBOUND.c.id.desc()).limit(1))).first()
        if row is None or seq in (row.parts_present or []):
            return None
        return row

    async def _write_joined(self, conn: AsyncConnection, key: tuple[str, str, int, int],
                            parts: dict[int, tuple[bytes, int]], now: dt.datetime, *, source: str,
                            reason: str | None) -> tuple[Any, ...]:
        """Inside the part's transaction: the joined text through the whole-text store step
        (`_write_texts`, which also marks the set assembled). Returns what `_after_commit` takes."""
        sender, destination, ref, total = key
        item = join_parts(sender, destination, ref, total, parts, reason=reason, gbk_codings=self.gbk_codings)
        text, changed = clean_text(item.text)
        if isinstance(item, CompleteMessage):
            present, is_partial = tuple(range(1, total + 1)), False
        else:
            present, is_partial = item.parts_present, True
            log.warning("sms.mo.partial", sender=mask_number(sender), ref=ref, total=total,
                        present=list(present), reason=item.reason)
        items = [(_Text(sender=sender, destination=destination, text=text, lossy=item.lossy or changed,
                        partial=is_partial, source=source, ref=ref, total=total, parts_present=present), None)]
        prepared = self._prepare_texts(items, now, [key])
        decisions, views = await conn.run_sync(partial(self._write_texts, prepared, now))
        return items, prepared, decisions, views

    async def _append_late_part(self, case_number: str | None, concat: ConcatInfo, payload: bytes,
                                coding: int) -> None:
        text, _ = clean_text(decode_short_message(payload, coding, gbk_codings=self.gbk_codings).text)
        log.info("sms.mo.late_part", case_number=case_number, seq=concat.seq, total=concat.total)
        if not case_number:
            return
        try:
            view = await self.cases.get(case_number, with_log=False)
            addition = f"\n[第{concat.seq}/{concat.total}段迟到] {text}"
            if (CaseStatus(view.status) in EDITABLE_STATES
                    and len(view.description) + len(addition) <= MAX_DESCRIPTION):
                await self.cases.update_transcription(
                    case_number, {"description": view.description + addition}, actor=f"{ACTOR}:late_part")
        except ServiceError as exc:  # the part itself is stored; staff see it in the SMS record
            log.warning("sms.mo.late_part_not_appended", case_number=case_number, error=exc.message)

    # ---- step 3-5: the store, a group of whole texts per transaction -----------------------

    def _window(self, command: str | None) -> float:
        if command is not None:
            return self.settings.command_redelivery_window
        return self.settings.redelivery_window

    def _redelivery(self, seen: _Seen, text: _Text, now: dt.datetime) -> bool:
        """Is this arrival the SMSC delivering `seen` again, or the citizen sending the same again?

        An SMSC redelivers what it got no ESME_ROK for, byte for byte. So: another text once the
        window has passed; a redelivery of a text never finished (we never answered ROK); another
        text if the optional parameters differ (an SMSC message id or timestamp TLV); on the
        connection that carried the first, only its own sequence number is a resend (our ROK went
        out on that connection after the commit, so the SMSC has it); on another connection, or
        with no connection known (HTTP without an id), a redelivery: the ROK may have been lost
        with the link.
        """
        if seen.received_at < now - dt.timedelta(seconds=self._window(seen.command)):
            return False
        if seen.outcome == "received":
            return True
        if seen.tlv_digest != text.tlv_digest and (seen.tlv_digest or text.tlv_digest):
            return False
        if text.connection is not None and seen.connection == text.connection:
            return seen.sequence == text.sequence
        return True

    async def _store_texts(self, items: Sequence[tuple[_Text, asyncio.Future[IntakeResult] | None]], *,
                           part_keys: Sequence[tuple[str, str, int | None, int] | None] | None = None,
                           ) -> list[IntakeResult]:
        """Decide and write a group of whole texts in one transaction, then answer each.

        Drafts, help and opt-out replies, blocks and duplicates are done inside the transaction.
        A query, a rating, a task answer and a flood fold need the case services: the text is
        committed as `received` with the group and finished right after, in order (a later text
        of the same sender in the group waits for it, so replies keep the sender's order).
        """
        now = self.now()
        prepared = self._prepare_texts(items, now, part_keys)
        engine = self.cases.engine
        for attempt in range(2):
            try:
                decisions, views = await run_in_transaction(engine, partial(self._write_texts, prepared, now))
                break
            except IntegrityError:  # another node stored the same key meanwhile: decide again
                if attempt:
                    raise
        return await self._after_commit(items, prepared, decisions, views)

    def _prepare_texts(self, items: Sequence[tuple[_Text, asyncio.Future[IntakeResult] | None]], now: dt.datetime,
                       part_keys: Sequence[tuple[str, str, int | None, int] | None] | None = None,
                       ) -> list[_Prepared]:
        """What the store step needs of each text, computed on the loop before the transaction."""
        prepared = []
        for index, (text, _) in enumerate(items):
            fingerprint = _sha(f"{text.sender}\x1f{text.destination}\x1f{text.ref}\x1f{text.total}"
                               f"\x1f{int(text.partial)}\x1f{text.raw_hex if text.binary else text.text}")
            text_hash = _text_hash(text.text if not text.binary else text.raw_hex or "")
            gateway_key = None
            if text.gateway_id:
                gid = text.gateway_id.strip()
                gateway_key = f"id:{text.source}:{gid}" if len(gid) <= 96 else f"id:{text.source}:sha:{_sha(gid)}"
            part_key = part_keys[index] if part_keys else None
            prepared.append(_Prepared(text=text, fingerprint=fingerprint, text_hash=text_hash,
                                      gateway_key=gateway_key, part_key=part_key))
        return prepared

    async def _after_commit(self, items: Sequence[tuple[_Text, asyncio.Future[IntakeResult] | None]],
                            prepared: Sequence[_Prepared], decisions: Sequence[_Decision],
                            views: Sequence[CaseView]) -> list[IntakeResult]:
        """After the group's commit: count, log, answer each text; then finish the slow ones in order."""
        self._m_groups.inc()
        self._m_group_size.observe(len(items))
        self.cases.drafts_created(views)
        results: list[IntakeResult | None] = []
        replied = False
        for (text, future), decision in zip(items, decisions, strict=True):
            if decision.blocked_loop:
                self.metrics.counter("sms_loops_detected_total",
                                     "numbers blocked for sending the same text in a loop").inc()
                log.warning("sms.mo.loop_detected", sender=mask_number(text.sender),
                            block_seconds=self.settings.loop_block)
            if decision.slow:
                results.append(None)
                continue
            if decision.duplicate:
                self._m_duplicates.inc(kind="message")
                log.info("sms.mo.duplicate", message_key=decision.message_key, sender=mask_number(text.sender),
                         outcome=decision.outcome, case_number=decision.case_number)
            else:
                self._m_outcomes.inc(outcome=decision.outcome)
                if decision.outcome in ("draft", "binary"):
                    self._m_drafts.inc()
                if decision.command is not None:
                    self._m_commands.inc(command=decision.command)
                replied = replied or decision.replied
                log.info("sms.mo.done", message_key=decision.message_key, outcome=decision.outcome,
                         command=decision.command, case_number=decision.case_number, replied=decision.replied,
                         sender=mask_number(text.sender), text=mask_text(text.text), source=text.source)
            result = IntakeResult(verdict=MoVerdict.STORED, outcome=decision.outcome,
                                  case_number=decision.case_number, command=decision.command,
                                  duplicate=decision.duplicate, message_key=decision.message_key)
            if future is not None and not future.done():
                future.set_result(result)  # this text is committed: its deliver_sm_resp may go
            results.append(result)
        if replied:
            self.on_outbox()
        # Then the texts that need the case services, in arrival order.
        for index, ((text, future), p, decision) in enumerate(zip(items, prepared, decisions, strict=True)):
            if not decision.slow:
                continue
            row = SmsInboundRow(id=decision.row_id, message_key=decision.message_key, sender=text.sender,
                                destination=text.destination, text=text.text, partial=text.partial,
                                lossy=text.lossy, received_at=decision.received_at, outcome="received",
                                data_coding=text.data_coding, raw_hex=text.raw_hex)
            log.info("sms.mo.received", message_key=decision.message_key, sender=mask_number(text.sender),
                     text=mask_text(text.text), lossy=text.lossy, partial=text.partial,
                     resumed=decision.duplicate, source=text.source)
            async with self._sender_lock(text.sender):
                result = await self._process(row, decision.arrivals)
            if future is not None and not future.done():
                future.set_result(result)
            results[index] = result
        return [r for r in results if r is not None]

    def _write_texts(self, items: Sequence[_Prepared], now: dt.datetime,
                     conn: Connection) -> tuple[list[_Decision], list[CaseView]]:
        """The group's transaction (runs on the driver's thread for SQLite): Core statements only.

        Reads: earlier copies (by gateway key or fingerprint), the blocklist, each sender's
        recent texts. Writes: the drafts (one serial block), replies through the outbox owner,
        the inbound rows with their final outcome, blocks and opt-outs, copy counts.
        """
        settings = self.settings
        # First: count the group in the shared windows; this also makes another node's group
        # for the same numbers wait until this one commits, so the reads below see its rows.
        arrivals = self.limits.arrive(conn, [(p.text.sender, p.text_hash) for p in items], now)
        cols = (INBOUND.c.id, INBOUND.c.message_key, INBOUND.c.fingerprint, INBOUND.c.generation,
                INBOUND.c.outcome, INBOUND.c.command, INBOUND.c.case_number, INBOUND.c.received_at,
                INBOUND.c.link_connection, INBOUND.c.link_sequence, INBOUND.c.link_tlv_digest)
        by_key: dict[str, _Seen] = {}
        by_fp: dict[str, _Seen] = {}
        keys = sorted({p.gateway_key for p in items if p.gateway_key})
        fingerprints = sorted({p.fingerprint for p in items if not p.gateway_key})
        if keys:
            for r in conn.execute(select(*cols).where(INBOUND.c.message_key.in_(keys))):
                by_key[r.message_key] = _Seen.of(r)
        if fingerprints:
            for r in conn.execute(select(*cols).where(INBOUND.c.fingerprint.in_(fingerprints)).order_by(INBOUND.c.id)):
                by_fp[r.fingerprint] = _Seen.of(r)  # the newest one wins
        senders = sorted({p.text.sender for p in items})
        blocked = set(self.blocklist) | set(conn.execute(
            select(BLOCKLIST.c.number).where(BLOCKLIST.c.number.in_(senders),
                                             BLOCKLIST.c.expires_at.is_(None) | (BLOCKLIST.c.expires_at > now))
        ).scalars())
        since = now - dt.timedelta(seconds=settings.rate_window)
        counts: dict[str, int] = dict(conn.execute(  # type: ignore[arg-type]
            select(INBOUND.c.sender, func.count()).where(
                INBOUND.c.sender.in_(senders), INBOUND.c.received_at >= since,
                INBOUND.c.outcome.not_in(NOT_COUNTED)).group_by(INBOUND.c.sender)).all())

        decisions: list[_Decision] = []
        rows: list[dict[str, Any]] = []          # new sms_inbound rows, in order
        row_of: list[int | None] = []            # decision index -> index into rows
        drafts: list[tuple[int, PreparedDraft]] = []
        replies: list[tuple[int, str]] = []      # (decision index, body)
        copies: dict[int, tuple[int, tuple[str, int | None] | None]] = {}
        blocks: list[dict[str, Any]] = []
        opt_outs: list[dict[str, Any]] = []
        slow_senders: set[str] = set()
        for p, arrived in zip(items, arrivals, strict=True):
            text = p.text
            seen = by_key.get(p.gateway_key) if p.gateway_key else by_fp.get(p.fingerprint)
            if seen is not None and (p.gateway_key is not None or self._redelivery(seen, text, now)):
                resume = seen.outcome == "received"
                decisions.append(_Decision(
                    outcome=seen.outcome, message_key=seen.message_key, row_id=seen.id, case_number=seen.case_number,
                    command=seen.command, duplicate=True, slow=resume, received_at=seen.received_at,
                    arrivals=arrived))
                row_of.append(None)
                if seen.id is not None:
                    n, _ = copies.get(seen.id, (0, None))
                    # The copy is now the delivery the SMSC knows we answered: compare later ones with it.
                    copies[seen.id] = (n + 1, (text.connection, text.sequence) if text.connection else None)
                if resume:
                    slow_senders.add(text.sender)
                elif arrived >= settings.loop_threshold and text.sender not in blocked:
                    blocked.add(text.sender)
                    blocks.append(self._loop_block(text.sender, now))
                    decisions[-1].blocked_loop = True
                continue
            generation = seen.generation + 1 if seen is not None and p.gateway_key is None else 1
            key = p.gateway_key or f"fp:{p.fingerprint[:40]}:{generation}"
            decision = _Decision(outcome="received", message_key=key, received_at=now, arrivals=arrived)
            command: Command | None = None
            if text.sender in slow_senders:
                decision.slow = True
            elif text.sender in blocked:
                decision.outcome, decision.detail = "blocked", "sender on the blocklist"
            elif text.binary:
                decision.outcome, decision.detail = "binary", f"data_coding 0x{text.data_coding or 0:02X}"
            elif not text.text.strip():
                decision.outcome = "empty"
            elif arrived >= settings.loop_threshold:
                decision.outcome, decision.detail = "loop", f"same text {arrived} times"
                blocked.add(text.sender)
                blocks.append(self._loop_block(text.sender, now))
                decision.blocked_loop = True
            else:
                command = FreeText(text.text) if text.partial else parse_command(text.text)
                limited = counts.get(text.sender, 0) >= settings.rate_limit
                if limited and not isinstance(command, FreeText):
                    decision.outcome, decision.command = "rate_limited", _command_name(command)
                elif isinstance(command, FreeText) and not limited:
                    decision.outcome = "draft"
                elif isinstance(command, Help | Malformed):
                    decision.outcome, decision.command = "command", "help"
                    if isinstance(command, Malformed):
                        decision.detail = f"malformed {command.keyword}"
                elif isinstance(command, OptOut):
                    decision.outcome, decision.command = "command", "opt_out"
                else:  # a query, a rating, a task answer, a fold: finished after the commit
                    decision.slow = True
            if decision.slow:
                slow_senders.add(text.sender)
            if decision.outcome not in NOT_COUNTED:
                counts[text.sender] = counts.get(text.sender, 0) + 1
            index = len(decisions)
            if decision.outcome in ("draft", "binary"):
                drafts.append((index, self._draft_input(text, key)))
            elif decision.outcome == "command":
                phone = _phone(text.sender)
                if phone is not None:
                    replies.append((index, texts.OPT_OUT if decision.command == "opt_out" else texts.HELP))
                    decision.replied = True
                    if decision.command == "opt_out":
                        opt_outs.append({"phone": phone, "opted_out_at": now, "message_key": key})
            decisions.append(decision)
            row_of.append(len(rows))
            rows.append({
                "message_key": key, "fingerprint": p.fingerprint, "generation": generation,
                "source": text.source[:16], "gateway_message_id": (text.gateway_id or None) and text.gateway_id[:96],
                "sender": text.sender, "destination": text.destination, "data_coding": text.data_coding,
                "esm_class": text.esm_class, "concat_ref": text.ref, "parts_total": text.total,
                "parts_present": list(text.parts_present) if text.parts_present else None,
                "raw_hex": text.raw_hex, "text": text.text, "text_hash": p.text_hash, "lossy": text.lossy,
                "partial": text.partial, "copies": 1, "received_at": now, "last_seen_at": now,
                "outcome": decision.outcome, "command": decision.command, "case_number": None, "folded_into": None,
                "reply_key": None, "detail": decision.detail[:256] if decision.detail else None,
                "link_connection": text.connection, "link_sequence": text.sequence,
                "link_tlv_digest": text.tlv_digest,
            })
            # A copy later in this group compares with this one.
            seen_now = _Seen(id=None, message_key=key, generation=generation, outcome=decision.outcome,
                             command=decision.command, case_number=None, received_at=now,
                             connection=text.connection, sequence=text.sequence, tlv_digest=text.tlv_digest)
            if p.gateway_key:
                by_key[p.gateway_key] = seen_now
            else:
                by_fp[p.fingerprint] = seen_now

        views = self.cases.insert_drafts(conn, [d for _, d in drafts], now)
        for (index, _), view in zip(drafts, views, strict=True):
            decisions[index].case_number = view.number
            decisions[index].replied = view.reporter_phone is not None and decisions[index].outcome == "draft"
            rows[row_of[index]]["case_number"] = view.number  # type: ignore[index]
        outgoing = []
        for index, body in replies:
            key = outbox_key("sms-reply", decisions[index].message_key)
            row = rows[row_of[index]]  # type: ignore[index]
            row["reply_key"] = key
            outgoing.append(OutgoingSms(key=key, recipient=_phone(row["sender"]) or "", template="sms_reply",
                                        body=body))
        enqueue_sync(conn, outgoing, now)
        if rows:
            ids = insert_ids(conn, INBOUND, rows, ("message_key",))
            for decision, at in zip(decisions, row_of, strict=True):
                if at is not None:
                    decision.row_id = ids[at]
        for row_id, (n, link) in copies.items():
            values: dict[str, Any] = {"copies": INBOUND.c.copies + n, "last_seen_at": now}
            if link is not None:
                values.update(link_connection=link[0], link_sequence=link[1])
            conn.execute(update(INBOUND).where(INBOUND.c.id == row_id).values(**values))
        if blocks:
            conn.execute(BLOCKLIST.insert(), blocks)
        if opt_outs:
            insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            conn.execute(insert(OPT_OUTS).on_conflict_do_nothing(index_elements=["phone"]), opt_outs)
        for p, decision in zip(items, decisions, strict=True):
            if p.part_key is not None and decision.row_id is not None:
                sender, destination, ref, total = p.part_key
                conn.execute(update(PARTS).where(
                    PARTS.c.sender == sender, PARTS.c.destination == destination, PARTS.c.concat_ref == ref,
                    PARTS.c.parts_total == total, PARTS.c.status == "pending",
                ).values(status="assembled", inbound_id=decision.row_id))
        return decisions, views

    def _loop_block(self, sender: str, now: dt.datetime) -> dict[str, Any]:
        return {"number": sender, "reason": "loop", "note": f"same text {self.settings.loop_threshold}+ times",
                "created_at": now, "expires_at": now + dt.timedelta(seconds=self.settings.loop_block)}

    def _draft_input(self, text: _Text, key: str) -> PreparedDraft:
        """The draft a text becomes (checked here, on whichever thread runs the group)."""
        if text.binary:
            size = len(text.raw_hex or "") // 2
            description = texts.BINARY_DRAFT.format(size=size, coding=f"0x{text.data_coding or 0:02X}")
            return self.cases.prepare_draft(DraftInput(
                channel=Channel.SMS, description=description, reporter_phone=_phone(text.sender),
                flags=[BINARY_MESSAGE], source_ref=key, notify_reporter=False), actor=ACTOR)
        description, flags = self._description_of(text.text, lossy=text.lossy, partial=text.partial)
        return self.cases.prepare_draft(DraftInput(
            channel=Channel.SMS, description=description, reporter_phone=_phone(text.sender), flags=flags,
            source_ref=key), actor=ACTOR)

    # ---- step 4-5: policy, commands, drafts ------------------------------------------------

    async def _process(self, row: SmsInboundRow, arrivals: int) -> IntakeResult:
        try:
            return await self._decide(row, arrivals)
        except (SQLAlchemyError, OSError, TimeoutError):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug must not make the SMSC redeliver forever
            log.exception("sms.mo.processing_failed", message_key=row.message_key)
            await self._finish(row, "error", detail=f"{type(exc).__name__}: {exc}"[:256])
            return IntakeResult(verdict=MoVerdict.STORED, outcome="error", message_key=row.message_key)

    async def _decide(self, row: SmsInboundRow, arrivals: int) -> IntakeResult:
        now = self.now()
        sender = row.sender
        if await self._is_blocked(sender, now):
            return await self._finish(row, "blocked", detail="sender on the blocklist")
        if row.data_coding in BINARY_CODINGS and not row.text:
            draft = self._draft_input(_Text(sender=sender, destination=row.destination, text="", lossy=False,
                                            partial=False, source="smpp", data_coding=row.data_coding,
                                            raw_hex=row.raw_hex, binary=True), row.message_key)
            view = await self.cases.create_prepared(draft)
            return await self._finish(row, "binary", case_number=view.number,
                                      detail=f"data_coding 0x{row.data_coding or 0:02X}")
        if not row.text.strip():
            log.warning("sms.mo.empty", message_key=row.message_key, sender=mask_number(sender))
            return await self._finish(row, "empty")
        if arrivals >= self.settings.loop_threshold:
            await self._block_loop(sender, now)
            return await self._finish(row, "loop", detail=f"same text {arrivals} times")
        command: Command = FreeText(row.text) if row.partial else parse_command(row.text)
        if await self._rate_limited(row, now):
            if isinstance(command, FreeText):
                return await self._fold(row)
            return await self._finish(row, "rate_limited", command=_command_name(command))
        if isinstance(command, FreeText):
            return await self._draft(row)
        self._m_commands.inc(command=_command_name(command))
        if isinstance(command, QueryStatus):
            return await self._query(row, command)
        if isinstance(command, Rate):
            return await self._rate(row, command)
        if isinstance(command, OptOut):
            return await self._opt_out(row)
        if isinstance(command, TaskReply):
            return await self._task_reply(row, command)
        detail = f"malformed {command.keyword}" if isinstance(command, Malformed) else None
        return await self._finish(row, "command", command="help", detail=detail, reply=self._reply_to(row, texts.HELP))

    async def _is_blocked(self, sender: str, now: dt.datetime) -> bool:
        if sender in self.blocklist:
            return True
        async with self.sessions() as session:
            hit = await session.scalar(
                select(SmsBlocklistRow.id).where(
                    SmsBlocklistRow.number == sender,
                    (SmsBlocklistRow.expires_at.is_(None)) | (SmsBlocklistRow.expires_at > now)).limit(1))
        return hit is not None

    async def _block_loop(self, sender: str, now: dt.datetime) -> None:
        async with self.sessions() as session, session.begin():
            active = await session.scalar(
                select(SmsBlocklistRow.id).where(SmsBlocklistRow.number == sender, SmsBlocklistRow.reason == "loop",
                                                 SmsBlocklistRow.expires_at > now).limit(1))
            if active is not None:
                return
            session.add(SmsBlocklistRow(
                number=sender, reason="loop", note=f"same text {self.settings.loop_threshold}+ times",
                created_at=now, expires_at=now + dt.timedelta(seconds=self.settings.loop_block)))
        self.metrics.counter("sms_loops_detected_total", "numbers blocked for sending the same text in a loop").inc()
        log.warning("sms.mo.loop_detected", sender=mask_number(sender), block_seconds=self.settings.loop_block)

    async def _rate_limited(self, row: SmsInboundRow, now: dt.datetime) -> bool:
        since = now - dt.timedelta(seconds=self.settings.rate_window)
        async with self.sessions() as session:
            earlier = await session.scalar(
                select(func.count()).select_from(SmsInboundRow).where(
                    SmsInboundRow.sender == row.sender, SmsInboundRow.received_at >= since,
                    SmsInboundRow.id < row.id, SmsInboundRow.outcome.not_in(NOT_COUNTED)))
        return (earlier or 0) >= self.settings.rate_limit

    def _description(self, row: SmsInboundRow, prefix: str = "") -> tuple[str, list[str]]:
        return self._description_of(row.text, lossy=row.lossy, partial=row.partial, prefix=prefix)

    def _description_of(self, text: str, *, lossy: bool, partial: bool, prefix: str = "") -> tuple[str, list[str]]:
        flags: list[str] = []
        if lossy:
            flags.append(CaseFlag.LOSSY_TEXT)
        if partial:
            flags.append(CaseFlag.PARTIAL_MESSAGE)
        length = len(text)
        text = prefix + text.strip()
        limit = self.settings.max_text_chars
        if len(text) > limit:
            marker = texts.TRUNCATED.format(length=length)
            text = marker + text[: limit - len(marker)]
            flags.append(TEXT_TRUNCATED)
        return text, flags

    async def _draft(self, row: SmsInboundRow) -> IntakeResult:
        description, flags = self._description(row)
        view = await self.cases.create_draft(
            DraftInput(channel=Channel.SMS, description=description, reporter_phone=_phone(row.sender),
                       flags=flags, source_ref=row.message_key), actor=ACTOR)
        self._m_drafts.inc()
        log.info("sms.mo.draft", message_key=row.message_key, case_number=view.number,
                 suggested=view.suggested_category, confidence=view.suggested_confidence, flags=flags)
        self.on_outbox()
        return await self._finish(row, "draft", case_number=view.number)

    async def _fold(self, row: SmsInboundRow) -> IntakeResult:
        """A storm from one number: every text past the limit lands in one flagged draft."""
        since = row.received_at - dt.timedelta(seconds=self.settings.rate_window)
        async with self.sessions() as session:
            storm = await session.scalar(
                select(SmsInboundRow.folded_into).where(
                    SmsInboundRow.sender == row.sender, SmsInboundRow.outcome == "folded",
                    SmsInboundRow.received_at >= since, SmsInboundRow.folded_into.is_not(None))
                .order_by(SmsInboundRow.id.desc()).limit(1))
            folds = await session.scalar(
                select(func.count()).select_from(SmsInboundRow).where(SmsInboundRow.folded_into == storm)) or 0
        if storm is not None:
            view = await self.cases.get(storm, with_log=False)
            if CaseStatus(view.status) not in EDITABLE_STATES:
                storm = None
            else:
                line = "\n" + row.text.strip()
                fits = len(view.description) + len(line) <= MAX_DESCRIPTION and folds < MAX_FOLDS_APPENDED
                if fits and not view.description.endswith(line):
                    await self.cases.update_transcription(storm, {"description": view.description + line},
                                                          actor=f"{ACTOR}:flood")
        if storm is None:
            description, flags = self._description(row, prefix=texts.STORM_PREFIX)
            # Keyed by number and rate window: two nodes folding the first texts of one storm
            # at once get the same draft (create_draft is idempotent on the key), not two.
            window = int(row.received_at.timestamp() // self.settings.rate_window)
            for source_ref in (f"flood:{row.sender}:{window}", row.message_key):
                view = await self.cases.create_draft(
                    DraftInput(channel=Channel.SMS, description=description, reporter_phone=_phone(row.sender),
                               flags=[*flags, CaseFlag.FLOOD_FOLDED], source_ref=source_ref), actor=ACTOR)
                if view.description == description:
                    self._m_drafts.inc()
                    self.on_outbox()
                    break
                if CaseStatus(view.status) in EDITABLE_STATES:  # another node's, a moment ago
                    line = "\n" + row.text.strip()
                    if len(view.description) + len(line) <= MAX_DESCRIPTION and not view.description.endswith(line):
                        await self.cases.update_transcription(view.number, {"description": view.description + line},
                                                              actor=f"{ACTOR}:flood")
                    break
                # that window's storm is already closed: this text starts a new one
            storm = view.number
        self.metrics.counter("sms_mo_folded_total", "texts folded into a flood draft").inc()
        log.warning("sms.mo.folded", message_key=row.message_key, case_number=storm,
                    sender=mask_number(row.sender))
        return await self._finish(row, "folded", case_number=storm, folded_into=storm)

    def _reply_to(self, row: SmsInboundRow, body: str, case_id: int | None = None) -> _Reply | None:
        phone = _phone(row.sender)
        return None if phone is None else _Reply(recipient=phone, body=body, case_id=case_id)

    async def _query(self, row: SmsInboundRow, command: QueryStatus) -> IntakeResult:
        try:
            number = CaseNumber.parse(command.number).value
        except InvalidCaseNumber:
            return await self._finish(row, "command", command="query", detail="invalid number",
                                      reply=self._reply_to(row, texts.BAD_NUMBER.format(number=command.number)))
        try:
            view = await self.cases.get(number, with_log=False)
        except CaseNotFound:
            return await self._finish(row, "command", command="query", detail="no such case",
                                      reply=self._reply_to(row, texts.NOT_FOUND.format(number=number)))
        phone = _phone(row.sender)
        reporter = phone is not None and (phone == view.reporter_phone or await self._reported_merged(view.id, phone))
        if reporter:
            body = texts.full_status(number, view.status, platform_number=view.platform_number,
                                     master=view.master_number,
                                     updated=view.updated_at.astimezone(ZoneInfo(self.timezone)))
        else:
            body = texts.STATUS_COARSE.format(number=number, coarse=texts.coarse_status(view.status))
        return await self._finish(row, "command", command="query", case_number=number,
                                  detail="reporter" if reporter else "coarse",
                                  reply=self._reply_to(row, body, case_id=view.id))

    async def _reported_merged(self, case_id: int, phone: str) -> bool:
        """The sender reported a case that was merged into this one."""
        async with self.sessions() as session:
            hit = await session.scalar(select(CaseRow.id).where(CaseRow.master_id == case_id,
                                                                CaseRow.reporter_phone == phone).limit(1))
        return hit is not None

    async def _rate(self, row: SmsInboundRow, command: Rate) -> IntakeResult:
        phone = _phone(row.sender)
        try:
            number = CaseNumber.parse(command.number).value
        except InvalidCaseNumber:
            return await self._finish(row, "command", command="rate", detail="invalid number",
                                      reply=self._reply_to(row, texts.BAD_NUMBER.format(number=command.number)))
        case_id: int | None = None
        try:
            if phone is None:
                raise TransitionRefused("only the reporter can rate this case", field="phone")
            view = await self.cases.rate(number, command.score, actor=f"{ACTOR}:reporter", phone=phone)
            case_id, body, detail = view.id, texts.RATE_OK.format(number=number, score=command.score), "rated"
        except CaseNotFound:
            body, detail = texts.NOT_FOUND.format(number=number), "no such case"
        except InvalidInput:
            body, detail = texts.BAD_NUMBER.format(number=number), "invalid"
        except TransitionRefused as exc:
            if exc.field == "phone":
                body, detail = texts.RATE_NOT_REPORTER.format(number=number), "not the reporter"
            else:
                body, detail = texts.RATE_NOT_CLOSED.format(number=number), "not closed"
        return await self._finish(row, "command", command="rate", case_number=number, detail=detail,
                                  reply=self._reply_to(row, body, case_id=case_id))

    async def _opt_out(self, row: SmsInboundRow) -> IntakeResult:
        return await self._finish(row, "command", command="opt_out", opt_out=True,
                                  reply=self._reply_to(row, texts.OPT_OUT))

    async def _task_reply(self, row: SmsInboundRow, command: TaskReply) -> IntakeResult:
        phone = _phone(row.sender)
        if phone is None:
            return await self._finish(row, "command", command="task_reply", detail="sender is not a phone")
        async with self.sessions() as session, session.begin():
            answer = await self.tasks.record_answer(session, phone=phone, reply=command, text=row.text,
                                                    now=self.now())
            if answer.reply is None:  # a citizen's bare "1": not a task answer; tell them the commands
                outcome: dict[str, Any] = {"command": "help", "detail": answer.detail,
                                           "reply": self._reply_to(row, texts.HELP)}
            else:
                outcome = {"command": "task_reply", "case_number": answer.case_number,
                           "detail": f"{answer.task_code or ''} {answer.detail}".strip(),
                           "reply": self._reply_to(row, answer.reply, case_id=answer.case_id)}
            await self._write_outcome(session, row, "command", **outcome)
        return self._done(row, "command", **outcome)

    async def _finish(self, row: SmsInboundRow, outcome: str, *, case_number: str | None = None,
                      command: str | None = None, folded_into: str | None = None, detail: str | None = None,
                      reply: _Reply | None = None, opt_out: bool = False) -> IntakeResult:
        """Write the outcome, the reply (outbox) and an opt-out in one transaction."""
        async with self.sessions() as session, session.begin():
            await self._write_outcome(session, row, outcome, case_number=case_number, command=command,
                                      folded_into=folded_into, detail=detail, reply=reply, opt_out=opt_out)
        return self._done(row, outcome, case_number=case_number, command=command, reply=reply)

    def _done(self, row: SmsInboundRow, outcome: str, *, case_number: str | None = None,
              command: str | None = None, reply: _Reply | None = None, **_: Any) -> IntakeResult:
        """After the commit: count, log, wake the outbox sender."""
        self._m_outcomes.inc(outcome=outcome)
        if reply is not None:
            self.on_outbox()
        log.info("sms.mo.done", message_key=row.message_key, outcome=outcome, command=command,
                 case_number=case_number, replied=reply is not None)
        return IntakeResult(verdict=MoVerdict.STORED, outcome=outcome, case_number=case_number, command=command,
                            message_key=row.message_key)

    async def _write_outcome(self, session: AsyncSession, row: SmsInboundRow, outcome: str, *,
                             case_number: str | None = None, command: str | None = None,
                             folded_into: str | None = None, detail: str | None = None,
                             reply: _Reply | None = None, opt_out: bool = False) -> None:
        now = self.now()
        stored = await session.get(SmsInboundRow, row.id)
        if stored is None:  # pragma: no cover - rows are never deleted
            raise StoreFailed(f"inbound row {row.id} vanished")
        stored.outcome = outcome
        stored.case_number = case_number
        stored.command = command
        stored.folded_into = folded_into
        stored.detail = detail[:256] if detail else None
        if reply is not None:
            key = outbox_key("sms-reply", row.message_key)  # the reply to this text, once
            stored.reply_key = key
            await enqueue(session, [OutgoingSms(key=key, recipient=reply.recipient, template="sms_reply",
                                                body=reply.body, case_id=reply.case_id)], now)
        if opt_out:
            phone = _phone(row.sender)
            if phone is not None and await session.get(SmsOptOutRow, phone) is None:
                session.add(SmsOptOutRow(phone=phone, opted_out_at=now, message_key=row.message_key))
                log.info("sms.opt_out", sender=mask_number(phone), message_key=row.message_key)
