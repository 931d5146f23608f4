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
import re
import unicodedata
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import Connection, Table, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

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
from callcenter.service.sms_roster import normalise_sender
from callcenter.service.tasks import TaskService
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
    arrivals: int
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
    _queue: list[tuple[InboundMessage, asyncio.Future[IntakeResult]]] = field(init=False, default_factory=list)
    _worker: asyncio.Task[None] | None = field(init=False, default=None)

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
        self._m_groups = m.counter("sms_mo_groups_total", "transactions that stored a group of whole texts")
        self._m_group_size = m.summary("sms_mo_group_texts", "whole texts per stored group",
                                       buckets=(1, 2, 5, 10, 20, 50, 100))

    def _new_reassembler(self) -> Reassembler:
        return Reassembler(timeout=self.settings.reassembly_timeout, gbk_codings=self.gbk_codings)

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
                await self._ensure_loaded()
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
        self._reset_reassembler()
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
            return IntakeResult(verdict=MoVerdict.STORED, outcome="part", duplicate=True)
        if late is not None:
            await self._append_late_part(late_case, concat, segment.payload, message.data_coding)
            return IntakeResult(verdict=MoVerdict.STORED, outcome="late_part", case_number=late_case)
        results = self._reassembler.add(sender=sender, destination=destination, segment=segment,
                                        data_coding=message.data_coding, now=now.timestamp())
        outcome = IntakeResult(verdict=MoVerdict.STORED, outcome="part")
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

    # ---- step 3-5: the store, a group of whole texts per transaction -----------------------

    def _window(self, command: str | None) -> float:
        if command is not None:
            return self.settings.command_redelivery_window
        return self.settings.redelivery_window

    async def _receive_text(self, message: _Text, *,
                            part_key: tuple[str, str, int | None, int] | None = None) -> IntakeResult:
        """One whole text (a reassembled long one) through the same store path as a group of one."""
        (result,) = await self._store_texts([(message, None)], part_keys=[part_key])
        return result

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
        prepared = []
        for index, (text, _) in enumerate(items):
            fingerprint = _sha(f"{text.sender}\x1f{text.destination}\x1f{text.ref}\x1f{text.total}"
                               f"\x1f{int(text.partial)}\x1f{text.raw_hex if text.binary else text.text}")
            text_hash = _text_hash(text.text if not text.binary else text.raw_hex or "")
            gateway_key = None
            if text.gateway_id:
                gid = text.gateway_id.strip()
                gateway_key = f"id:{text.source}:{gid}" if len(gid) <= 96 else f"id:{text.source}:sha:{_sha(gid)}"
            arrivals = self._note_arrival(text.sender, text_hash, now)
            part_key = part_keys[index] if part_keys else None
            prepared.append(_Prepared(text=text, fingerprint=fingerprint, text_hash=text_hash,
                                      gateway_key=gateway_key, arrivals=arrivals, part_key=part_key))
        engine = self.cases.engine
        for attempt in range(2):
            try:
                decisions, views = await run_in_transaction(engine, partial(self._write_texts, prepared, now))
                break
            except IntegrityError:  # another node stored the same key meanwhile: decide again
                if attempt:
                    raise
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
                result = await self._process(row, p.arrivals)
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
        for p in items:
            text = p.text
            seen = by_key.get(p.gateway_key) if p.gateway_key else by_fp.get(p.fingerprint)
            if seen is not None and (p.gateway_key is not None or self._redelivery(seen, text, now)):
                resume = seen.outcome == "received"
                decisions.append(_Decision(
                    outcome=seen.outcome, message_key=seen.message_key, row_id=seen.id, case_number=seen.case_number,
                    command=seen.command, duplicate=True, slow=resume, received_at=seen.received_at))
                row_of.append(None)
                if seen.id is not None:
                    n, _ = copies.get(seen.id, (0, None))
                    # The copy is now the delivery the SMSC knows we answered: compare later ones with it.
                    copies[seen.id] = (n + 1, (text.connection, text.sequence) if text.connection else None)
                if resume:
                    slow_senders.add(text.sender)
                elif p.arrivals >= settings.loop_threshold and text.sender not in blocked:
                    blocked.add(text.sender)
                    blocks.append(self._loop_block(text.sender, now))
                    decisions[-1].blocked_loop = True
                continue
            generation = seen.generation + 1 if seen is not None and p.gateway_key is None else 1
            key = p.gateway_key or f"fp:{p.fingerprint[:40]}:{generation}"
            decision = _Decision(outcome="received", message_key=key, received_at=now)
            command: Command | None = None
            if text.sender in slow_senders:
                decision.slow = True
            elif text.sender in blocked:
                decision.outcome, decision.detail = "blocked", "sender on the blocklist"
            elif text.binary:
                decision.outcome, decision.detail = "binary", f"data_coding 0x{text.data_coding or 0:02X}"
            elif not text.text.strip():
                decision.outcome = "empty"
            elif p.arrivals >= settings.loop_threshold:
                decision.outcome, decision.detail = "loop", f"same text {p.arrivals} times"
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
