"""Outbox sender: what the case core and the SMS channel put in `outbox` goes out once.

Exactly once as the citizen sees it:

* A message is split into parts (UCS-2, at most 67 characters a part, never cutting a
  surrogate pair, concatenation references from `ReferenceAllocator`) and the parts are
  stored (`sms_submits`) before the first is sent; a retry resends the same bytes with the
  same reference, and only the parts not yet accepted.
* Each part is marked `submitting` before it goes on the wire. If no submit_sm_resp comes
  (link dropped, response timeout, our process killed), the part is `in_doubt`: it is not
  resent at once. The sender waits up to `sms.in_doubt_wait` for a receipt that proves the
  SMSC had it (a receipt whose id matches nothing else, from that recipient, after the part
  was sent; or one carrying the part's user_message_reference). Only without such proof is
  it resent, with the same concatenation reference, so a handset that does get both copies
  of a part keeps one. A duplicate is then possible only if the SMSC accepted the part and
  never sent its receipt within the wait; that is accepted as the lesser harm than losing
  the intake number.
* submit_sm_resp errors follow the retry table (`sms.retry`, Jasmin's as a start);
  every other error is final.
* Order within one case: a message waits while an earlier one of the same case (or, with
  no case, to the same recipient) is pending, being sent or in doubt.
* Receipts are read from the TLVs and the text (`sms.dlr`), ids normalised; a receipt that
  arrives before its submit_sm_resp is stored in `sms_receipts_unmatched` and matched when
  the id appears. Each part keeps its delivery state; the message gets the aggregate.
* 退订: a number that sent TD gets no notices about cases it reported before, but still gets
  direct replies, and everything about reports it makes afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from callcenter.db.tables import CaseRow, OutboxRow
from callcenter.db.tables_sms import SmsOptOutRow, SmsReceiptUnmatchedRow, SmsSubmitRow
from callcenter.metrics import MetricsRegistry
from callcenter.service.sms_roster import normalise_sender
from callcenter.settings import RetryRule, SmppSettings, SmsSettings
from sms.codec import EncodeError
from sms.dlr import DeliveryState, IdBases, message_id_keys, message_ids_match, normalise_message_id
from sms.gateway import InboundReceipt, OutboundPart, SmsGateway
from sms.parts import MessageTooLong, ReferenceAllocator, segment_count, split_text
from sms.privacy import mask_number
from sms.smpp.session import Status

log = structlog.get_logger(__name__)

# Outbox statuses that hold back later messages of the same case.
BLOCKING = ("pending", "sending", "in_doubt")
# Templates that answer something the recipient just sent, or that go to staff: never suppressed.
DIRECT_TEMPLATES = frozenset({"sms_reply", "task_notice", "task_escalation"})
# Seconds between sweeps of stored receipts for parts whose id has become known.
SWEEP_EVERY = 10.0


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def receipt_ids_for(submit_id: str, bases: IdBases) -> list[str]:
    """Canonical receipt ids that may stand for this submit_sm_resp id (inverse of message_id_keys)."""
    canonical = normalise_message_id(submit_id)
    if not canonical:
        return []
    candidates = [canonical]
    with contextlib.suppress(ValueError):
        candidates.append(str(int(canonical, 16)))
    if canonical.isdigit():
        candidates.append(format(int(canonical), "X"))
    unique = list(dict.fromkeys(c for c in candidates if c))
    return [c for c in unique if message_ids_match(canonical, c, bases=bases)]


@dataclass
class OutboxSender:
    sessions: async_sessionmaker[AsyncSession]
    smpp: SmppSettings
    settings: SmsSettings
    metrics: MetricsRegistry
    region: str = "CN"
    gateway: SmsGateway | None = None
    now: Callable[[], dt.datetime] = utcnow
    _wake: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    # Receipt lookup-or-store and resp store-and-claim must not interleave: two overlapping
    # transactions would each miss the other's row (read committed) and strand the receipt.
    _match_lock: asyncio.Lock = field(init=False, default_factory=asyncio.Lock)
    _last_sweep: dt.datetime | None = field(init=False, default=None)
    _allocator: ReferenceAllocator = field(init=False, default_factory=lambda: ReferenceAllocator(bits=8))
    _rules: dict[int, RetryRule] = field(init=False)
    _bases: IdBases = field(init=False)

    def __post_init__(self) -> None:
        self._rules = self.settings.retry_rules()
        self._bases = IdBases(self.smpp.id_bases)
        m = self.metrics
        self._m_parts = m.counter("sms_mt_parts_submitted_total", "MT parts accepted by the SMSC")
        self._m_submitted = m.counter("sms_mt_submitted_total", "MT messages whose parts were all accepted")
        self._m_delivered = m.counter("sms_mt_delivered_total", "MT messages delivered (every part's receipt)")
        self._m_failed = m.counter("sms_mt_failed_total", "MT messages that failed, by stage")
        self._m_retries = m.counter("sms_mt_retries_total", "MT parts scheduled again, by SMPP status")
        self._m_in_doubt = m.counter("sms_mt_in_doubt_total", "MT parts without a submit_sm_resp")
        self._m_suppressed = m.counter("sms_mt_suppressed_total", "MT notices not sent after 退订")
        self._m_receipts = m.counter("sms_receipts_total", "delivery receipts, by how they matched")
        self._m_latency = m.summary("sms_receipt_latency_seconds", "submit accepted -> final receipt")
        self._g_depth = m.gauge("sms_outbox_depth", "outbox messages pending, being sent or in doubt")
        self._g_age = m.gauge("sms_outbox_oldest_age_seconds", "age of the oldest such message")
        self._g_in_doubt = m.gauge("sms_outbox_in_doubt", "outbox messages in doubt")
        self._g_bind = m.gauge("sms_bind_state", "SMSC link state per role (5 bound, 1 disconnected, 0 stopped)")
        m.on_refresh(self.refresh_metrics)

    # ---- loop -----------------------------------------------------------------------------

    def wake(self) -> None:
        """Something was written to the outbox: look now rather than at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set; woken early by `wake()`."""
        while not stop.is_set():
            # Cleared before the pass, so a wake() that arrives during it is not lost.
            self._wake.clear()
            sent = 0
            try:
                sent = await self.run_once()
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                log.error("sms.outbox.store_failed", error=str(exc).splitlines()[0][:300])
            except Exception:  # noqa: BLE001 - the loop must survive a bug in one message
                log.exception("sms.outbox.loop_failed")
            if sent >= self.settings.outbox_batch:
                await asyncio.sleep(0)  # a full batch means a backlog: next pass at once
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.outbox_poll_interval):
                    waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
                    try:
                        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for waiter in waiters:
                            waiter.cancel()

    async def run_once(self) -> int:
        """One pass: expire, settle in-doubt parts, send what is due. Returns messages sent to."""
        now = self.now()
        await self._expire(now)
        if self._last_sweep is None or now - self._last_sweep >= dt.timedelta(seconds=SWEEP_EVERY):
            self._last_sweep = now
            await self.sweep_unmatched()
        await self.resolve_in_doubt()
        gateway = self.gateway
        if gateway is None or not gateway.ready:
            return 0
        due = await self._due(now)
        if not due:
            return 0
        limit = asyncio.Semaphore(max(1, self.smpp.window))

        async def one(outbox_id: int) -> None:
            async with limit:
                await self._send(gateway, outbox_id)

        results = await asyncio.gather(*(one(outbox_id) for outbox_id in due), return_exceptions=True)
        for outbox_id, result in zip(due, results, strict=True):
            if isinstance(result, BaseException):
                log.error("sms.outbox.send_failed", outbox_id=outbox_id, error=repr(result)[:300])
        return len(due)

    async def recover(self) -> None:
        """After a restart: parts caught mid-submit are in doubt; half-sent messages resume."""
        now = self.now()
        async with self.sessions() as session, session.begin():
            caught = (await session.execute(
                update(SmsSubmitRow).where(SmsSubmitRow.status == "submitting")
                .values(status="in_doubt", in_doubt_since=now))).rowcount
            sending = (await session.scalars(select(OutboxRow).where(OutboxRow.status == "sending"))).all()
            for row in sending:
                doubtful = await session.scalar(
                    select(func.count()).select_from(SmsSubmitRow).where(
                        SmsSubmitRow.outbox_id == row.id, SmsSubmitRow.status == "in_doubt"))
                row.status = "in_doubt" if doubtful else "pending"
                row.not_before = now
            last_ref = await session.scalar(
                select(SmsSubmitRow.concat_ref).where(SmsSubmitRow.concat_ref.is_not(None))
                .order_by(SmsSubmitRow.id.desc()).limit(1))
        if last_ref is not None:
            self._allocator = ReferenceAllocator(bits=8, state=last_ref + 1)
        if caught or sending:
            log.warning("sms.outbox.recovered", parts_in_doubt=caught, messages=len(sending))

    # ---- choosing ---------------------------------------------------------------------------

    async def _due(self, now: dt.datetime) -> list[int]:
        earlier = aliased(OutboxRow)
        same_thread = or_(
            and_(OutboxRow.case_id.is_not(None), earlier.case_id == OutboxRow.case_id),
            and_(OutboxRow.case_id.is_(None), earlier.case_id.is_(None), earlier.recipient == OutboxRow.recipient))
        blocked = (select(earlier.id).where(earlier.id < OutboxRow.id, earlier.status.in_(BLOCKING), same_thread)
                   .exists())
        async with self.sessions() as session:
            ids = await session.scalars(
                select(OutboxRow.id).where(OutboxRow.status == "pending", OutboxRow.not_before <= now, ~blocked)
                .order_by(OutboxRow.id).limit(self.settings.outbox_batch))
            return list(ids)

    async def _expire(self, now: dt.datetime) -> None:
        cutoff = now - dt.timedelta(seconds=self.smpp.validity_period)
        async with self.sessions() as session, session.begin():
            rows = (await session.scalars(
                select(OutboxRow).where(OutboxRow.status == "pending", OutboxRow.created_at < cutoff))).all()
            for row in rows:
                row.status = "failed"
                row.last_error = "expired: not sent within smpp.validity_period"
                self._m_failed.inc(stage="expired")
                log.error("sms.outbox.expired", outbox_id=row.id, case_id=row.case_id, to=mask_number(row.recipient))

    async def _suppressed(self, session: AsyncSession, row: OutboxRow) -> bool:
        if row.template in DIRECT_TEMPLATES:
            return False
        opt_out = await session.get(SmsOptOutRow, row.recipient)
        if opt_out is None:
            return False
        if row.case_id is None:
            return True
        created = await session.scalar(select(CaseRow.created_at).where(CaseRow.id == row.case_id))
        return created is None or created <= opt_out.opted_out_at

    # ---- sending ----------------------------------------------------------------------------------

    def _plan(self, row: OutboxRow) -> list[SmsSubmitRow]:
        """Split into UCS-2 parts; multi-part messages get a reference free for this recipient."""
        reference = self._allocator.allocate(row.recipient) if segment_count(row.body, allow_gsm7=False) > 1 else None
        parts = split_text(row.body, reference=reference, ref_bits=8, allow_gsm7=False)
        return [SmsSubmitRow(outbox_id=row.id, recipient=row.recipient, seq=p.seq, total=p.total, concat_ref=p.ref,
                             data_coding=p.data_coding, esm_class=p.esm_class, payload_hex=p.payload.hex(),
                             status="queued", attempts=0, receipt_count=0) for p in parts]

    async def _send(self, gateway: SmsGateway, outbox_id: int) -> None:
        now = self.now()
        async with self.sessions() as session, session.begin():
            row = await session.get(OutboxRow, outbox_id)
            if row is None or row.status != "pending":
                return
            case_id, recipient = row.case_id, row.recipient
            if await self._suppressed(session, row):
                row.status = "suppressed"
                row.last_error = "recipient opted out (TD)"
                self._m_suppressed.inc()
                log.info("sms.outbox.suppressed", outbox_id=outbox_id, case_id=case_id, to=mask_number(recipient))
                return
            parts = (await session.scalars(
                select(SmsSubmitRow).where(SmsSubmitRow.outbox_id == outbox_id).order_by(SmsSubmitRow.seq))).all()
            if not parts:
                try:
                    planned = self._plan(row)
                except (MessageTooLong, EncodeError) as exc:
                    row.status = "failed"
                    row.last_error = str(exc)[:500]
                    self._m_failed.inc(stage="encode")
                    log.error("sms.outbox.unsendable", outbox_id=outbox_id, error=str(exc))
                    return
                session.add_all(planned)
            row.status = "sending"
            row.attempts += 1
        async with self.sessions() as session:
            todo = (await session.scalars(
                select(SmsSubmitRow).where(SmsSubmitRow.outbox_id == outbox_id, SmsSubmitRow.status == "queued")
                .order_by(SmsSubmitRow.seq))).all()
        for part in todo:
            if not await self._send_part(gateway, outbox_id, case_id, part):
                return
        await self._settle(outbox_id)

    async def _send_part(self, gateway: SmsGateway, outbox_id: int, case_id: int | None,
                         part: SmsSubmitRow) -> bool:
        """Send one part; False when the message must stop here (retry later, in doubt, failed)."""
        now = self.now()
        async with self.sessions() as session, session.begin():
            await session.execute(update(SmsSubmitRow).where(SmsSubmitRow.id == part.id).values(
                status="submitting", submitted_at=now, attempts=SmsSubmitRow.attempts + 1))
        outcome = await gateway.submit(OutboundPart(
            destination=part.recipient, short_message=bytes.fromhex(part.payload_hex), data_coding=part.data_coding,
            esm_class=part.esm_class, registered_delivery=self.smpp.registered_delivery,
            validity=dt.timedelta(seconds=self.smpp.validity_period), reference=part.id))
        now = self.now()
        context = {"outbox_id": outbox_id, "case_id": case_id, "part": f"{part.seq}/{part.total}",
                   "to": mask_number(part.recipient)}
        if outcome.ok:
            message_id = normalise_message_id(outcome.message_id or "") or None
            async with self._match_lock, self.sessions() as session, session.begin():
                stored = await session.get(SmsSubmitRow, part.id)
                assert stored is not None
                if stored.status != "accepted":  # a receipt may have proved it already
                    stored.status = "accepted"
                stored.accepted_at = stored.accepted_at or now
                stored.smsc_message_id = message_id
                stored.raw_message_id = (outcome.message_id or "")[:72] or None
                stored.last_status = Status.ROK
                if message_id:
                    await self._claim_unmatched(session, stored, now)
            self._m_parts.inc()
            log.info("sms.outbox.part_accepted", message_id=message_id, **context)
            return True
        if outcome.in_doubt:
            async with self.sessions() as session, session.begin():
                await session.execute(update(SmsSubmitRow).where(
                    SmsSubmitRow.id == part.id, SmsSubmitRow.status == "submitting").values(
                    status="in_doubt", in_doubt_since=now, last_error=(outcome.error or "")[:256]))
                await session.execute(update(OutboxRow).where(OutboxRow.id == outbox_id, OutboxRow.status == "sending")
                                      .values(status="in_doubt", last_error=f"in doubt: {outcome.error}"[:500]))
            self._m_in_doubt.inc()
            log.warning("sms.outbox.in_doubt", error=outcome.error, **context)
            return False
        rule = self._rules.get(outcome.status)
        async with self.sessions() as session, session.begin():
            stored = await session.get(SmsSubmitRow, part.id)
            row = await session.get(OutboxRow, outbox_id)
            assert stored is not None and row is not None
            stored.last_status = outcome.status
            stored.last_error = outcome.status_name
            error = f"{outcome.status_name} (part {part.seq}/{part.total}, attempt {stored.attempts})"
            row.last_error = error
            if rule is not None and stored.attempts <= rule.attempts:
                stored.status = "queued"
                row.status = "pending"
                row.not_before = now + dt.timedelta(seconds=rule.delay)
                retry = True
            else:
                stored.status = "failed"
                row.status = "failed"
                retry = False
        if retry:
            assert rule is not None
            self._m_retries.inc(status=outcome.status_name)
            log.warning("sms.outbox.retry_scheduled", status=outcome.status_name, delay=rule.delay, **context)
        else:
            self._m_failed.inc(stage="submit")
            self._release(part)
            log.error("sms.outbox.failed", status=outcome.status_name, **context)
        return False

    def _release(self, part: SmsSubmitRow) -> None:
        if part.concat_ref is not None:
            self._allocator.release(part.recipient, part.concat_ref)

    async def _settle(self, outbox_id: int) -> None:
        """All parts accepted -> sent; every part's final receipt -> the message's delivery state."""
        async with self.sessions() as session, session.begin():
            row = await session.get(OutboxRow, outbox_id)
            if row is None:
                return
            parts = (await session.scalars(
                select(SmsSubmitRow).where(SmsSubmitRow.outbox_id == outbox_id).order_by(SmsSubmitRow.seq))).all()
            self._settle_row(row, parts)

    def _settle_row(self, row: OutboxRow, parts: Sequence[SmsSubmitRow]) -> None:
        now = self.now()
        if not parts:
            return
        if row.status in ("sending", "in_doubt", "pending") and all(p.status == "accepted" for p in parts):
            row.status = "sent"
            row.sent_at = row.sent_at or now
            row.last_error = None
            self._m_submitted.inc()
            log.info("sms.outbox.sent", outbox_id=row.id, case_id=row.case_id, parts=len(parts),
                     message_ids=[p.smsc_message_id for p in parts], to=mask_number(row.recipient))
        states = [p.receipt_state for p in parts]
        if all(s is not None and DeliveryState(s).is_final for s in states):
            final = [DeliveryState(s) for s in states if s is not None]
            failed = [s for s in final if s is not DeliveryState.DELIVERED]
            aggregate = (failed[0] if failed else DeliveryState.DELIVERED).value
            if row.delivery_state != aggregate:
                row.delivery_state = aggregate
                if not failed:
                    row.delivered_at = max(p.receipt_at for p in parts if p.receipt_at is not None)
                    self._m_delivered.inc()
                else:
                    self._m_failed.inc(stage="delivery")
                for part in parts:
                    self._release(part)
                log.info("sms.outbox.delivery", outbox_id=row.id, case_id=row.case_id, state=aggregate,
                         to=mask_number(row.recipient))
        elif any(s is not None for s in states) and row.delivery_state is None:
            row.delivery_state = DeliveryState.ENROUTE.value

    # ---- in doubt ---------------------------------------------------------------------------------

    async def resolve_in_doubt(self) -> int:
        """Settle in-doubt parts by their receipts, or queue them again once the wait is over."""
        now = self.now()
        wait = dt.timedelta(seconds=self.settings.in_doubt_wait)
        settled = 0
        async with self.sessions() as session:
            ids = list(await session.scalars(
                select(OutboxRow.id).where(OutboxRow.status == "in_doubt").order_by(OutboxRow.id)))
        for outbox_id in ids:
            async with self._match_lock, self.sessions() as session, session.begin():
                row = await session.get(OutboxRow, outbox_id)
                if row is None or row.status != "in_doubt":
                    continue
                parts = (await session.scalars(
                    select(SmsSubmitRow).where(SmsSubmitRow.outbox_id == outbox_id)
                    .order_by(SmsSubmitRow.seq))).all()
                doubtful = [p for p in parts if p.status in ("in_doubt", "submitting")]
                if not doubtful:
                    if any(p.status == "queued" for p in parts):
                        row.status, row.not_before = "pending", now
                    self._settle_row(row, parts)
                    continue
                since = min(p.submitted_at or now for p in doubtful)
                evidence = (await session.scalars(
                    select(SmsReceiptUnmatchedRow).where(
                        SmsReceiptUnmatchedRow.recipient == row.recipient,
                        SmsReceiptUnmatchedRow.matched_submit_id.is_(None),
                        SmsReceiptUnmatchedRow.received_at >= since)
                    .order_by(SmsReceiptUnmatchedRow.received_at, SmsReceiptUnmatchedRow.id)
                    .limit(len(doubtful)))).all()
                if len(evidence) >= len(doubtful):
                    for part, receipt in zip(doubtful, evidence, strict=False):
                        part.smsc_message_id = part.smsc_message_id or receipt.message_id
                        part.raw_message_id = part.raw_message_id or receipt.raw_message_id
                        self._apply(part, DeliveryState(receipt.state), receipt.stat, receipt.error, now)
                        receipt.matched_submit_id = part.id
                        receipt.matched_at = now
                    if any(p.status == "queued" for p in parts):
                        row.status, row.not_before = "pending", now
                    self._settle_row(row, parts)
                    settled += 1
                    log.info("sms.outbox.in_doubt_resolved", outbox_id=outbox_id, case_id=row.case_id,
                             by="receipt", parts=len(doubtful), to=mask_number(row.recipient))
                elif all(p.in_doubt_since is not None and p.in_doubt_since + wait <= now for p in doubtful):
                    for part in doubtful:
                        part.status = "queued"
                    row.status = "pending"
                    row.not_before = now
                    row.last_error = "resent: no receipt for the in-doubt part(s)"
                    settled += 1
                    self._m_retries.inc(status="in_doubt")
                    log.warning("sms.outbox.in_doubt_resend", outbox_id=outbox_id, case_id=row.case_id,
                                parts=len(doubtful), to=mask_number(row.recipient))
        return settled

    # ---- receipts ----------------------------------------------------------------------------------

    async def handle_receipt(self, inbound: InboundReceipt) -> int:
        """Store a receipt against its part (or as unmatched); the deliver_sm_resp status."""
        try:
            return await self._handle_receipt(inbound)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.error("sms.receipt.store_failed", message_id=inbound.receipt.message_id,
                      error=str(exc).splitlines()[0][:300])
            return Status.RX_T_APPN

    async def _handle_receipt(self, inbound: InboundReceipt) -> int:
        receipt = inbound.receipt
        now = self.now()
        keys = list(message_id_keys(receipt.message_id, self._bases))
        recipient = normalise_sender(inbound.source_addr, self.region) if inbound.source_addr else None
        async with self._match_lock, self.sessions() as session, session.begin():
            parts: list[SmsSubmitRow] = []
            if keys:
                parts = list((await session.scalars(
                    select(SmsSubmitRow).where(SmsSubmitRow.smsc_message_id.in_(keys)).order_by(SmsSubmitRow.id))).all())
            if not parts and inbound.user_message_reference is not None and recipient:
                candidates = (await session.scalars(
                    select(SmsSubmitRow).where(SmsSubmitRow.recipient == recipient,
                                               SmsSubmitRow.status.in_(("in_doubt", "submitting", "queued")))))
                parts = [p for p in candidates if p.id & 0xFFFF == inbound.user_message_reference]
                for part in parts:
                    part.smsc_message_id = part.smsc_message_id or receipt.message_id
            if not parts:
                session.add(SmsReceiptUnmatchedRow(
                    message_id=receipt.message_id[:72], raw_message_id=receipt.raw_message_id[:72],
                    state=receipt.state.value, stat=(receipt.stat or "")[:16] or None,
                    error=(receipt.error or "")[:16] or None, recipient=recipient, received_at=now))
                self._m_receipts.inc(match="unmatched")
                log.info("sms.receipt.unmatched", message_id=receipt.message_id, state=receipt.state.value,
                         to=mask_number(recipient))
                return Status.ROK
            changed = False
            for part in parts:
                changed |= self._apply(part, receipt.state, receipt.stat, receipt.error, now)
            for outbox_id in {p.outbox_id for p in parts}:
                row = await session.get(OutboxRow, outbox_id)
                siblings = (await session.scalars(
                    select(SmsSubmitRow).where(SmsSubmitRow.outbox_id == outbox_id)
                    .order_by(SmsSubmitRow.seq))).all()
                if row is not None:
                    self._settle_row(row, siblings)
        self._m_receipts.inc(match="matched" if changed else "duplicate")
        log.info("sms.receipt", message_id=receipt.message_id, state=receipt.state.value,
                 outbox_id=parts[0].outbox_id, duplicate=not changed)
        return Status.ROK

    async def sweep_unmatched(self) -> int:
        """Match stored receipts whose part id is known by now (a safety net for any race)."""
        since = self.now() - dt.timedelta(seconds=max(3600.0, 2 * self.settings.in_doubt_wait))
        matched = 0
        async with self._match_lock, self.sessions() as session, session.begin():
            waiting = (await session.scalars(
                select(SmsReceiptUnmatchedRow).where(SmsReceiptUnmatchedRow.matched_submit_id.is_(None),
                                                     SmsReceiptUnmatchedRow.received_at >= since)
                .order_by(SmsReceiptUnmatchedRow.id).limit(200))).all()
            touched: set[int] = set()
            for receipt in waiting:
                keys = list(message_id_keys(receipt.message_id, self._bases))
                if not keys:
                    continue
                part = await session.scalar(
                    select(SmsSubmitRow).where(SmsSubmitRow.smsc_message_id.in_(keys)).order_by(SmsSubmitRow.id)
                    .limit(1))
                if part is None:
                    continue
                self._apply(part, DeliveryState(receipt.state), receipt.stat, receipt.error, receipt.received_at)
                receipt.matched_submit_id = part.id
                receipt.matched_at = self.now()
                touched.add(part.outbox_id)
                matched += 1
            for outbox_id in touched:
                row = await session.get(OutboxRow, outbox_id)
                parts = (await session.scalars(
                    select(SmsSubmitRow).where(SmsSubmitRow.outbox_id == outbox_id).order_by(SmsSubmitRow.seq))).all()
                if row is not None:
                    self._settle_row(row, parts)
        if matched:
            self._m_receipts.inc(matched, match="swept")
            log.info("sms.receipt.swept", matched=matched)
        return matched

    async def _claim_unmatched(self, session: AsyncSession, part: SmsSubmitRow, now: dt.datetime) -> None:
        """Receipts that came before this part's submit_sm_resp."""
        ids = receipt_ids_for(part.smsc_message_id or "", self._bases)
        if not ids:
            return
        early = (await session.scalars(
            select(SmsReceiptUnmatchedRow).where(SmsReceiptUnmatchedRow.message_id.in_(ids),
                                                 SmsReceiptUnmatchedRow.matched_submit_id.is_(None))
            .order_by(SmsReceiptUnmatchedRow.id))).all()
        for receipt in early:
            self._apply(part, DeliveryState(receipt.state), receipt.stat, receipt.error, receipt.received_at)
            receipt.matched_submit_id = part.id
            receipt.matched_at = now
            self._m_receipts.inc(match="early")
            log.info("sms.receipt.matched_late", message_id=part.smsc_message_id, outbox_id=part.outbox_id)

    def _apply(self, part: SmsSubmitRow, state: DeliveryState, stat: str | None, error: str | None,
               at: dt.datetime) -> bool:
        """Put a receipt on a part; False for a repeat. A receipt also proves the SMSC had the part."""
        part.receipt_count = (part.receipt_count or 0) + 1
        current = DeliveryState(part.receipt_state) if part.receipt_state else None
        if current is not None and (current == state or current.is_final):
            return False  # a repeat, or a late intermediate one: the first final receipt stands
        if part.status in ("in_doubt", "submitting", "queued"):
            part.status = "accepted"
            part.accepted_at = part.accepted_at or part.submitted_at or at
        part.receipt_state = state.value
        part.receipt_stat = (stat or "")[:16] or None
        part.receipt_error = (error or "")[:16] or None
        part.receipt_at = at
        if state.is_final:
            start = part.accepted_at or part.submitted_at
            if start is not None:
                self._m_latency.observe(max(0.0, (at - start).total_seconds()))
        return True

    # ---- metrics ----------------------------------------------------------------------------------

    async def refresh_metrics(self) -> None:
        now = self.now()
        async with self.sessions() as session:
            depth, oldest = (await session.execute(
                select(func.count(), func.min(OutboxRow.created_at)).where(OutboxRow.status.in_(BLOCKING)))).one()
            in_doubt = await session.scalar(
                select(func.count()).select_from(OutboxRow).where(OutboxRow.status == "in_doubt"))
        self._g_depth.set(depth or 0)
        self._g_age.set(max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0)
        self._g_in_doubt.set(in_doubt or 0)
        if self.gateway is not None:
            for role, state in self.gateway.bind_states().items():
                self._g_bind.set(state, link=role)


__all__ = ["BLOCKING", "DIRECT_TEMPLATES", "OutboxSender", "receipt_ids_for"]
