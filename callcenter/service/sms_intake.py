"""SMS intake (短信受理): one inbound text in, one command_status out.

The pipeline, for a message from the SMPP client or the HTTP gateway route:

1. Split off the UDH (or read the SAR TLVs). A part of a long message is stored
   (`sms_inbound_parts`) and handed to the `Reassembler`; parts survive a restart because
   pending ones are reloaded. An incomplete message becomes a flagged draft after
   `sms.reassembly_timeout`; a part that arrives after that is appended to that draft.
2. Decode (data_coding 0/3/8, GBK by configuration); undecodable bytes become U+FFFD and
   the draft is flagged `lossy_text`.
3. De-duplicate: by the gateway's id when it gives one, otherwise by a fingerprint of
   sender, destination, concatenation reference and text within the redelivery window.
   The raw text is committed (`sms_inbound`, outcome `received`) before anything else.
4. Policy: blocklist (file and table), loop detection (the same text `loop_threshold`
   times within `loop_window` blocks the number for a while), rate limit (more than
   `rate_limit` texts within `rate_window` are folded into one flagged draft).
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
import unicodedata
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callcenter.cases.lifecycle import EDITABLE_STATES, CaseStatus
from callcenter.cases.model import CaseFlag, Channel
from callcenter.cases.numbering import CaseNumber, InvalidCaseNumber
from callcenter.db.tables import CaseRow, OutboxRow
from callcenter.db.tables_sms import SmsBlocklistRow, SmsInboundPartRow, SmsInboundRow, SmsOptOutRow
from callcenter.metrics import MetricsRegistry
from callcenter.service import sms_texts as texts
from callcenter.service.cases import MAX_DESCRIPTION, CaseService, DraftInput
from callcenter.service.errors import CaseNotFound, InvalidInput, ServiceError, TransitionRefused
from callcenter.service.sms_roster import normalise_sender
from callcenter.service.tasks import TaskService, outbox_key
from callcenter.settings import SmsSettings
from sms.codec import DEFAULT_GBK_CODINGS, decode_short_message
from sms.concat import (
    CompleteMessage,
    ConcatError,
    ConcatInfo,
    Reassembled,
    Reassembler,
    Segment,
    extract_segment,
)
from sms.gateway import InboundMessage
from sms.keywords import Command, FreeText, Help, OptOut, QueryStatus, Rate, TaskReply, parse_command
from sms.privacy import mask_number, mask_text
from sms.smpp.session import Status

log = structlog.get_logger(__name__)

# Not (yet) a CaseFlag member: the draft holds a cut text, the whole one is in sms_inbound.
TEXT_TRUNCATED = "text_truncated"
ACTOR = "sms"
FINISHED_OUTCOMES = ("draft", "folded", "command", "blocked", "loop", "empty", "rate_limited", "error")
NOT_COUNTED = ("blocked", "loop", "empty")
MAX_FOLDS_APPENDED = 50


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class IntakeResult:
    """What one inbound event became; `status` goes back to the SMSC."""

    status: int
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


@dataclass(frozen=True)
class _Reply:
    recipient: str
    body: str
    case_id: int | None = None


class StoreFailed(Exception):
    """The store refused a write; the message must be delivered again."""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def clean_text(text: str) -> tuple[str, bool]:
    """Replace NUL, control characters and lone surrogates, which no store or handset wants."""
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
            FreeText: "free_text"}[type(command)]


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
    _reassembler: Reassembler = field(init=False)
    _loaded: bool = field(init=False, default=False)
    _load_lock: asyncio.Lock = field(init=False, default_factory=asyncio.Lock)
    _locks: dict[str, list[Any]] = field(init=False, default_factory=dict)
    _arrivals: dict[tuple[str, str], deque[float]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._reassembler = self._new_reassembler()
        m = self.metrics
        self._m_received = m.counter("sms_mo_received_total", "inbound texts and parts received")
        self._m_parts = m.counter("sms_mo_parts_total", "parts of long inbound texts received")
        self._m_duplicates = m.counter("sms_mo_duplicates_total", "redelivered texts and parts recognised")
        self._m_failures = m.counter("sms_mo_store_failures_total", "inbound texts answered with a temporary error")
        self._m_outcomes = m.counter("sms_mo_outcomes_total", "what inbound texts became")
        self._m_drafts = m.counter("sms_drafts_created_total", "draft cases created from SMS")
        self._m_commands = m.counter("sms_commands_total", "keyword commands handled")

    def _new_reassembler(self) -> Reassembler:
        return Reassembler(timeout=self.settings.reassembly_timeout, gbk_codings=self.gbk_codings)

    # ---- entry points -------------------------------------------------------------------

    async def receive_status(self, message: InboundMessage) -> int:
        """The deliver handler: the command_status for deliver_sm_resp."""
        return (await self.receive(message)).status

    async def receive(self, message: InboundMessage) -> IntakeResult:
        """Handle one inbound event; ROK only once it is committed."""
        self._m_received.inc(source=message.source)
        sender = normalise_sender(message.sender, self.region)
        try:
            await self._ensure_loaded()
            async with self._sender_lock(sender):
                return await self._receive(message, sender)
        except (SQLAlchemyError, OSError, StoreFailed, TimeoutError) as exc:
            self._m_failures.inc()
            log.error("sms.mo.store_failed", sender=mask_number(sender), error=str(exc).splitlines()[0][:300])
            self._reset_reassembler()
            return IntakeResult(status=Status.RX_T_APPN, outcome="store_failed")

    async def expire_partials(self) -> int:
        """Turn long messages still incomplete after the timeout into flagged drafts."""
        await self._ensure_loaded()
        partials = self._reassembler.expire(self.now().timestamp())
        try:
            for partial in partials:
                async with self._sender_lock(partial.sender):
                    await self._finish_reassembled(partial, source="smpp")
        except (SQLAlchemyError, OSError, StoreFailed, TimeoutError) as exc:
            log.error("sms.mo.expire_failed", error=str(exc).splitlines()[0][:300])
            self._reset_reassembler()  # the parts are still pending in the store
            return 0
        return len(partials)

    async def load(self) -> None:
        """Reload stored pending parts (start-up)."""
        await self._ensure_loaded()

    @property
    def pending_long_messages(self) -> int:
        return self._reassembler.pending_count

    # ---- internals: loading and locks ----------------------------------------------------

    def _reset_reassembler(self) -> None:
        """Forget in-memory parts; they are reloaded from the store on the next message."""
        self._reassembler = self._new_reassembler()
        self._loaded = False

    async def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        ready: list[Reassembled] = []
        async with self._load_lock:
            if self._loaded:
                return
            reassembler = self._new_reassembler()
            async with self.sessions() as session:
                rows = (await session.scalars(
                    select(SmsInboundPartRow).where(SmsInboundPartRow.status == "pending")
                    .order_by(SmsInboundPartRow.id))).all()
            for row in rows:
                segment = Segment(ConcatInfo(ref=row.concat_ref, total=row.parts_total, seq=row.seq,
                                             ref_bits=16 if row.ref_bits == 16 else 8),
                                  bytes.fromhex(row.payload_hex))
                ready.extend(reassembler.add(sender=row.sender, destination=row.destination, segment=segment,
                                             data_coding=row.data_coding, now=row.received_at.timestamp()))
            self._reassembler = reassembler
            self._loaded = True
            if rows:
                log.info("sms.mo.parts_reloaded", parts=len(rows), pending=reassembler.pending_count)
        for item in ready:  # complete before the crash, never finished
            async with self._sender_lock(item.sender):
                await self._finish_reassembled(item, source="smpp")

    @contextlib.asynccontextmanager
    async def _sender_lock(self, sender: str) -> AsyncIterator[None]:
        """One message per sender at a time: parts, folds and duplicates stay consistent."""
        entry = self._locks.get(sender)
        if entry is None:
            entry = self._locks[sender] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._locks.pop(sender, None)

    # ---- step 1-2: segments, parts, decoding -------------------------------------------

    async def _receive(self, message: InboundMessage, sender: str) -> IntakeResult:
        destination = message.destination.strip()[:32]
        if message.text is not None and not message.short_message:
            text, changed = clean_text(message.text)
            return await self._receive_text(_Text(
                sender=sender, destination=destination, text=text, lossy=changed, partial=False,
                source=message.source, gateway_id=message.message_id))
        raw = message.short_message
        broken = False
        try:
            segment = extract_segment(raw, message.esm_class, sar_msg_ref_num=message.sar_msg_ref_num,
                                      sar_total_segments=message.sar_total_segments,
                                      sar_segment_seqnum=message.sar_segment_seqnum)
        except ConcatError as exc:
            log.warning("sms.mo.bad_concat", sender=mask_number(sender), error=str(exc))
            segment, broken = Segment(None, raw), True
        if segment.concat is not None and segment.concat.total > 1:
            return await self._receive_part(message, sender, destination, segment)
        decoded = decode_short_message(segment.payload, message.data_coding, gbk_codings=self.gbk_codings)
        text, changed = clean_text(decoded.text)
        return await self._receive_text(_Text(
            sender=sender, destination=destination, text=text, lossy=decoded.lossy or changed or broken,
            partial=False, source=message.source, data_coding=message.data_coding,
            esm_class=message.esm_class, raw_hex=raw.hex(), gateway_id=message.message_id))

    async def _receive_part(self, message: InboundMessage, sender: str, destination: str,
                            segment: Segment) -> IntakeResult:
        concat = segment.concat
        assert concat is not None
        self._m_parts.inc()
        now = self.now()
        part_fp = _sha(f"{sender}\x1f{destination}\x1f{concat.ref}\x1f{concat.total}\x1f{concat.seq}"
                       f"\x1f{message.data_coding}\x1f{segment.payload.hex()}")
        since = now - dt.timedelta(seconds=self.settings.redelivery_window)
        late: SmsInboundRow | None = None
        late_case: str | None = None
        async with self.sessions() as session, session.begin():
            seen = await session.scalar(
                select(SmsInboundPartRow.id).where(SmsInboundPartRow.part_fp == part_fp,
                                                   SmsInboundPartRow.received_at >= since).limit(1))
            if seen is not None:
                duplicate = True
            else:
                duplicate = False
                late = await self._late_part_target(session, sender, destination, concat, since)
                row = SmsInboundPartRow(
                    part_fp=part_fp, sender=sender, destination=destination, concat_ref=concat.ref,
                    ref_bits=concat.ref_bits, parts_total=concat.total, seq=concat.seq,
                    data_coding=message.data_coding, payload_hex=segment.payload.hex(),
                    status="assembled" if late is not None else "pending", received_at=now,
                    inbound_id=late.id if late is not None else None)
                session.add(row)
                if late is not None:
                    late.parts_present = sorted({*(late.parts_present or []), concat.seq})
                    late.last_seen_at = now
                    late_case = late.case_number
        if duplicate:
            self._m_duplicates.inc(kind="part")
            log.info("sms.mo.duplicate_part", sender=mask_number(sender), ref=concat.ref, seq=concat.seq,
                     total=concat.total)
            return IntakeResult(status=Status.ROK, outcome="part", duplicate=True)
        if late is not None:
            await self._append_late_part(late_case, concat, segment.payload, message.data_coding)
            return IntakeResult(status=Status.ROK, outcome="late_part", case_number=late_case)
        results = self._reassembler.add(sender=sender, destination=destination, segment=segment,
                                        data_coding=message.data_coding, now=now.timestamp())
        outcome = IntakeResult(status=Status.ROK, outcome="part")
        for item in results:
            if item.sender != sender:  # evicted for room: another sender's message, under its lock
                async with self._sender_lock(item.sender):
                    await self._finish_reassembled(item, source=message.source)
                continue
            result = await self._finish_reassembled(item, source=message.source)
            if isinstance(item, CompleteMessage):
                outcome = result
        return outcome

    async def _late_part_target(self, session: AsyncSession, sender: str, destination: str,
                                concat: ConcatInfo, since: dt.datetime) -> SmsInboundRow | None:
        """A message already kept as partial that lacks this part and has no pending set."""
        collecting = await session.scalar(
            select(SmsInboundPartRow.id).where(
                SmsInboundPartRow.sender == sender, SmsInboundPartRow.destination == destination,
                SmsInboundPartRow.concat_ref == concat.ref, SmsInboundPartRow.parts_total == concat.total,
                SmsInboundPartRow.status == "pending").limit(1))
        if collecting is not None:
            return None
        candidates = (await session.scalars(
            select(SmsInboundRow).where(
                SmsInboundRow.sender == sender, SmsInboundRow.destination == destination,
                SmsInboundRow.concat_ref == concat.ref, SmsInboundRow.parts_total == concat.total,
                SmsInboundRow.partial.is_(True), SmsInboundRow.received_at >= since)
            .order_by(SmsInboundRow.id.desc()).limit(1))).all()
        for row in candidates:
            if concat.seq not in (row.parts_present or []):
                return row
        return None

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

    async def _finish_reassembled(self, item: Reassembled, *, source: str) -> IntakeResult:
        text, changed = clean_text(item.text)
        if isinstance(item, CompleteMessage):
            ref, total, present, partial = item.ref, item.total, tuple(range(1, item.total + 1)), False
        else:
            ref, total, present, partial = item.ref, item.total, item.parts_present, True
            log.warning("sms.mo.partial", sender=mask_number(item.sender), ref=item.ref, total=item.total,
                        present=list(item.parts_present), reason=item.reason)
        return await self._receive_text(
            _Text(sender=item.sender, destination=item.destination, text=text, lossy=item.lossy or changed,
                  partial=partial, source=source, ref=ref, total=total, parts_present=present),
            part_key=(item.sender, item.destination, ref, total) if ref is not None else None)

    # ---- step 3: de-duplication and the durable record ------------------------------------

    def _window(self, row: SmsInboundRow) -> float:
        if row.command is not None:
            return self.settings.command_redelivery_window
        return self.settings.redelivery_window

    async def _receive_text(self, message: _Text, *,
                            part_key: tuple[str, str, int | None, int] | None = None) -> IntakeResult:
        now = self.now()
        fingerprint = _sha(f"{message.sender}\x1f{message.destination}\x1f{message.ref}\x1f{message.total}"
                           f"\x1f{int(message.partial)}\x1f{message.text}")
        text_hash = _text_hash(message.text)
        gateway_key = None
        if message.gateway_id:
            gid = message.gateway_id.strip()
            gateway_key = f"id:{message.source}:{gid}" if len(gid) <= 96 else f"id:{message.source}:sha:{_sha(gid)}"
        arrivals = self._note_arrival(message.sender, text_hash, now)
        for attempt in range(2):
            try:
                row, duplicate = await self._record(message, now, fingerprint, text_hash, gateway_key, part_key)
                break
            except IntegrityError:
                if attempt:
                    raise
        if duplicate and row.outcome != "received":
            self._m_duplicates.inc(kind="message")
            log.info("sms.mo.duplicate", message_key=row.message_key, sender=mask_number(message.sender),
                     outcome=row.outcome, case_number=row.case_number, copies=row.copies)
            if arrivals >= self.settings.loop_threshold:
                await self._block_loop(message.sender, now)
            return IntakeResult(status=Status.ROK, outcome=row.outcome, case_number=row.case_number,
                                command=row.command, duplicate=True, message_key=row.message_key)
        log.info("sms.mo.received", message_key=row.message_key, sender=mask_number(message.sender),
                 text=mask_text(message.text), lossy=message.lossy, partial=message.partial,
                 resumed=duplicate, source=message.source)
        return await self._process(row, arrivals)

    async def _record(self, message: _Text, now: dt.datetime, fingerprint: str, text_hash: str,
                      gateway_key: str | None,
                      part_key: tuple[str, str, int | None, int] | None) -> tuple[SmsInboundRow, bool]:
        """Find the earlier copy of this message, or commit a new row; (row, was a copy)."""
        async with self.sessions() as session, session.begin():
            if gateway_key is not None:
                existing = await session.scalar(select(SmsInboundRow).where(SmsInboundRow.message_key == gateway_key))
            else:
                existing = await session.scalar(
                    select(SmsInboundRow).where(SmsInboundRow.fingerprint == fingerprint)
                    .order_by(SmsInboundRow.id.desc()).limit(1))
            duplicate = existing is not None and (
                gateway_key is not None
                or existing.outcome == "received"
                or existing.received_at >= now - dt.timedelta(seconds=self._window(existing)))
            if duplicate:
                assert existing is not None
                existing.copies += 1
                existing.last_seen_at = now
                row = existing
            else:
                generation = existing.generation + 1 if existing is not None else 1
                row = SmsInboundRow(
                    message_key=gateway_key or f"fp:{fingerprint[:40]}:{generation}", fingerprint=fingerprint,
                    generation=generation, source=message.source[:16],
                    gateway_message_id=(message.gateway_id or None) and message.gateway_id[:96],
                    sender=message.sender, destination=message.destination, data_coding=message.data_coding,
                    esm_class=message.esm_class, concat_ref=message.ref, parts_total=message.total,
                    parts_present=list(message.parts_present) if message.parts_present else None,
                    raw_hex=message.raw_hex, text=message.text, text_hash=text_hash, lossy=message.lossy,
                    partial=message.partial, copies=1, received_at=now, last_seen_at=now, outcome="received")
                session.add(row)
                await session.flush()
            if part_key is not None:
                sender, destination, ref, total = part_key
                await session.execute(
                    update(SmsInboundPartRow)
                    .where(SmsInboundPartRow.sender == sender, SmsInboundPartRow.destination == destination,
                           SmsInboundPartRow.concat_ref == ref, SmsInboundPartRow.parts_total == total,
                           SmsInboundPartRow.status == "pending")
                    .values(status="assembled", inbound_id=row.id))
        return row, duplicate

    # ---- step 4-5: policy, commands, drafts ------------------------------------------------

    def _note_arrival(self, sender: str, text_hash: str, now: dt.datetime) -> int:
        """Arrivals of this text from this sender within the loop window, this one included."""
        stamp = now.timestamp()
        window = self.settings.loop_window
        queue = self._arrivals.setdefault((sender, text_hash), deque())
        queue.append(stamp)
        while queue and queue[0] < stamp - window:
            queue.popleft()
        if len(self._arrivals) > 20_000:
            for key in [k for k, q in self._arrivals.items() if not q or q[-1] < stamp - window]:
                del self._arrivals[key]
        return len(queue)

    async def _process(self, row: SmsInboundRow, arrivals: int) -> IntakeResult:
        try:
            return await self._decide(row, arrivals)
        except (SQLAlchemyError, OSError, TimeoutError):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug must not make the SMSC redeliver forever
            log.exception("sms.mo.processing_failed", message_key=row.message_key)
            await self._finish(row, "error", detail=f"{type(exc).__name__}: {exc}"[:256])
            return IntakeResult(status=Status.ROK, outcome="error", message_key=row.message_key)

    async def _decide(self, row: SmsInboundRow, arrivals: int) -> IntakeResult:
        now = self.now()
        sender = row.sender
        if await self._is_blocked(sender, now):
            return await self._finish(row, "blocked", detail="sender on the blocklist")
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
        return await self._finish(row, "command", command="help", reply=self._reply_to(row, texts.HELP))

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
        flags: list[str] = []
        if row.lossy:
            flags.append(CaseFlag.LOSSY_TEXT)
        if row.partial:
            flags.append(CaseFlag.PARTIAL_MESSAGE)
        text = prefix + row.text.strip()
        limit = self.settings.max_text_chars
        if len(text) > limit:
            marker = texts.TRUNCATED.format(length=len(row.text))
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
            view = await self.cases.create_draft(
                DraftInput(channel=Channel.SMS, description=description, reporter_phone=_phone(row.sender),
                           flags=[*flags, CaseFlag.FLOOD_FOLDED], source_ref=row.message_key), actor=ACTOR)
            storm = view.number
            self._m_drafts.inc()
            self.on_outbox()
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
        return IntakeResult(status=Status.ROK, outcome=outcome, case_number=case_number, command=command,
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
            key = outbox_key("sms-reply", row.message_key)
            stored.reply_key = key
            exists = await session.scalar(select(OutboxRow.id).where(OutboxRow.idempotency_key == key))
            if exists is None:
                session.add(OutboxRow(idempotency_key=key, case_id=reply.case_id, recipient=reply.recipient,
                                      template="sms_reply", body=reply.body, status="pending", attempts=0,
                                      not_before=now, created_at=now))
        if opt_out:
            phone = _phone(row.sender)
            if phone is not None and await session.get(SmsOptOutRow, phone) is None:
                session.add(SmsOptOutRow(phone=phone, opted_out_at=now, message_key=row.message_key))
                log.info("sms.opt_out", sender=mask_number(phone), message_key=row.message_key)
