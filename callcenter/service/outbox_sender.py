"""Outbox sender: what the case core and the SMS channel put in `outbox` goes out once.

Exactly once as the citizen sees it, with several nodes sharing one store:

* **Claims.** A pass chooses the due messages that head their case (two index reads) and
  claims them in one statement (`UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED)
  RETURNING`; on SQLite the UPDATE … RETURNING is atomic by itself): status `sending`, `lease_owner` = this node (`[node] id`),
  `lease_expires_at`. The lease is renewed while the batch is in flight. Only an expired
  lease is taken back (its parts caught mid-submit become `in_doubt`), never a live node's
  work; at start-up a node also takes back its own leases, which a previous life left.
* **Parts.** A message is split into parts (UCS-2, at most 67 characters a part, never
  cutting a surrogate pair) and the parts are stored (`sms_submits`) as `submitting` in the
  claim's transaction, before any goes on the wire; a retry resends the same bytes with the
  same reference, and only the parts not yet accepted.
* **In doubt.** A part that got no submit_sm_resp (link dropped, timeout, process killed) is
  not resent at once: the sender waits up to `sms.in_doubt_wait` for a receipt that proves
  the SMSC had it (one naming that handset, after the part was sent, that settled no other
  part; or one carrying the part's user_message_reference). Only without proof is it resent.
* **Group commit.** submit_sm_resp outcomes and receipts are written by one writer in
  groups: whatever arrived while the previous group was being committed goes in the next
  transaction, as Core executemany statements. A receipt's deliver_sm_resp leaves after
  its group is committed.
* **Receipts settle exactly one part** (`sms.dlr.match_receipt`): the id must match under the
  link's id relation (configured, or learned per link from unambiguous pairs and kept in
  `sms_id_bases`), and the handset must match whenever the receipt names it. A receipt that
  settles nothing is stored in `sms_receipts_unmatched` with its reason; one that came
  before its submit_sm_resp is matched when the id arrives.
* submit_sm_resp errors follow the retry table (`sms.retry`); every other error is final.
* Order within one case: a message waits while an earlier one of the same case (or, with
  no case, to the same recipient) is pending, being sent or in doubt.
* 退订: a number that sent TD gets no notices about cases it reported before, but still gets
  direct replies, and everything about reports it makes afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog
from sqlalchemy import Connection, Table, and_, bindparam, func, literal, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from callcenter.cluster.nodes import live_node_ids
from callcenter.db.tables import CaseRow, OutboxRow
from callcenter.db.tables_sms import (
    SmsIdBasesRow,
    SmsOptOutRow,
    SmsReceiptUnmatchedRow,
    SmsSubmitRow,
)
from callcenter.db.unit import insert_ids, run_in_transaction
from callcenter.metrics import MetricsRegistry
from callcenter.service.sms_roster import normalise_sender
from callcenter.settings import RetryRule, SmppSettings, SmsSettings
from sms.codec import EncodeError
from sms.dlr import (
    CONCRETE_BASES,
    DeliveryState,
    IdBases,
    PartRef,
    decide_bases,
    match_receipt,
    normalise_message_id,
    receipt_id_for,
    submit_id_for,
)
from sms.gateway import InboundReceipt, OutboundPart, SmsGateway, SubmitOutcome
from sms.parts import MessageTooLong, ReferenceAllocator, segment_count, split_text
from sms.privacy import mask_number
from sms.smpp.session import Status

log = structlog.get_logger(__name__)

OUTBOX: Table = OutboxRow.__table__  # type: ignore[assignment]
SUBMITS: Table = SmsSubmitRow.__table__  # type: ignore[assignment]
UNMATCHED: Table = SmsReceiptUnmatchedRow.__table__  # type: ignore[assignment]
ID_BASES: Table = SmsIdBasesRow.__table__  # type: ignore[assignment]

# Outbox statuses that hold back later messages of the same case.
BLOCKING = ("pending", "sending", "in_doubt")
# Templates that answer something the recipient just sent, or that go to staff: never suppressed.
DIRECT_TEMPLATES = frozenset({"sms_reply", "task_notice", "task_escalation"})
# Seconds between housekeeping steps (expiry, taken-back leases, in-doubt, receipt sweep) in `run`.
HOUSEKEEPING_EVERY = 1.0
# Seconds between sweeps of stored receipts for parts whose id has become known (and expiry,
# and sharing the learned id-base pairs with the other nodes).
SWEEP_EVERY = 10.0
# Seconds until another look after a wake that found nothing due.
WAKE_RECHECK = 0.05
_PAIR_COLUMNS = {IdBases.SAME: "same_pairs", IdBases.SUBMIT_HEX_RECEIPT_DEC: "hex_dec_pairs",
                 IdBases.SUBMIT_DEC_RECEIPT_HEX: "dec_hex_pairs"}
_PART_COLUMNS = (SUBMITS.c.id, SUBMITS.c.outbox_id, SUBMITS.c.recipient, SUBMITS.c.seq, SUBMITS.c.total,
                 SUBMITS.c.concat_ref, SUBMITS.c.data_coding, SUBMITS.c.esm_class, SUBMITS.c.payload_hex,
                 SUBMITS.c.status, SUBMITS.c.attempts, SUBMITS.c.smsc_message_id, SUBMITS.c.submitted_at,
                 SUBMITS.c.accepted_at, SUBMITS.c.receipt_state, SUBMITS.c.receipt_count)


def _on_connection(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn(conn, ...)` as `AsyncSession.run_sync` calls it (with the sync Session first)."""
    return lambda sync_session, *args: fn(sync_session.connection(), *args)


# The claim's statements, built once: constructing a statement and its cache key cost more
# CPU than SQLite took to run it (a claim of two rows spent half its 3.6 ms building).
_DUE = (select(OUTBOX.c.id, OUTBOX.c.case_id, OUTBOX.c.recipient)
        .where(OUTBOX.c.status == "pending", OUTBOX.c.not_before <= bindparam("now"))
        .order_by(OUTBOX.c.id).limit(bindparam("limit")))
_OPEN_THREADS = (select(OUTBOX.c.id, OUTBOX.c.case_id, OUTBOX.c.recipient)
                 .where(OUTBOX.c.status.in_(BLOCKING),
                        or_(OUTBOX.c.case_id.in_(bindparam("cases", expanding=True)),
                            and_(OUTBOX.c.case_id.is_(None),
                                 OUTBOX.c.recipient.in_(bindparam("recipients", expanding=True))))))
_TAKE = (update(OUTBOX)
         .where(OUTBOX.c.id.in_(select(OUTBOX.c.id)
                                .where(OUTBOX.c.id.in_(bindparam("chosen", expanding=True)),
                                       OUTBOX.c.status == "pending")
                                .with_for_update(skip_locked=True)),
                OUTBOX.c.status == "pending")
         .values(status="sending", lease_owner=bindparam("owner"), lease_expires_at=bindparam("lease"),
                 attempts=OUTBOX.c.attempts + 1)
         .returning(OUTBOX.c.id, OUTBOX.c.case_id, OUTBOX.c.recipient, OUTBOX.c.template, OUTBOX.c.body))
# Spelled out: an IN list would be an expanding parameter, which executemany refuses.
_OPEN = or_(OUTBOX.c.status == "sending", OUTBOX.c.status == "in_doubt", OUTBOX.c.status == "pending")
_RELEASED = {"lease_owner": None, "lease_expires_at": None}
TAKEN_BACK = "lease expired, held by "
_PARTS_OF = (select(*_PART_COLUMNS).where(SUBMITS.c.outbox_id.in_(bindparam("ids", expanding=True)))
             .order_by(SUBMITS.c.outbox_id, SUBMITS.c.seq))


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def link_key(smpp: SmppSettings) -> str:
    """The SMSC link whose message-id space a part's id belongs to: system_id@host:port."""
    return f"{smpp.system_id}@{smpp.host}:{smpp.port}"[:96] if smpp.host else "console"


# ---- in-memory shapes of one pass -------------------------------------------------------------


@dataclass
class _Part:
    id: int
    seq: int
    total: int
    concat_ref: int | None
    data_coding: int
    esm_class: int
    payload: bytes
    status: str
    attempts: int


@dataclass
class _Message:
    id: int
    case_id: int | None
    recipient: str
    parts: list[_Part]
    outcomes: list[tuple[_Part, SubmitOutcome]] = field(default_factory=list)
    unsent: list[_Part] = field(default_factory=list)
    lost: bool = False  # the lease was taken back mid-flight: the row is another node's now


@dataclass
class _Receipt:
    """A receipt to match: fresh from the SMSC, or an earlier one stored unmatched (`stored_id`)."""

    message_id: str
    raw_message_id: str
    state: DeliveryState
    stat: str | None
    error: str | None
    handset: str | None
    at: dt.datetime
    umr: int | None = None
    stored_id: int | None = None


_Item = _Message | _Receipt


@dataclass
class OutboxSender:
    sessions: async_sessionmaker[AsyncSession]
    smpp: SmppSettings
    settings: SmsSettings
    metrics: MetricsRegistry
    region: str = "CN"
    gateway: SmsGateway | None = None
    now: Callable[[], dt.datetime] = utcnow
    node: str = "node"
    # True while the in-doubt and sweep passes run as leased jobs, once across the nodes
    # (callcenter/jobs.py); the loop then keeps its claims and what is per node.
    leased_sweeps: bool = False
    # `[node] dead_after_seconds`: another node's expired claims are taken back only once its
    # heartbeat is this old. None: by the lease alone (no node registry).
    dead_after: float | None = None
    _wake: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    # The writer's transaction and the in-doubt/sweep passes must not interleave in one
    # process: two overlapping transactions would each miss the other's row.
    _match_lock: asyncio.Lock = field(init=False, default_factory=asyncio.Lock)
    _last_sweep: dt.datetime | None = field(init=False, default=None)
    _last_housekeeping: dt.datetime | None = field(init=False, default=None)
    _allocator: ReferenceAllocator = field(init=False, default_factory=lambda: ReferenceAllocator(bits=8))
    _rules: dict[int, RetryRule] = field(init=False)
    _configured: IdBases = field(init=False)
    _pairs: dict[IdBases, int] = field(init=False)
    _queue: list[tuple[_Item, asyncio.Future[Any]]] = field(init=False, default_factory=list)
    _writer: asyncio.Task[None] | None = field(init=False, default=None)
    _lost: set[int] = field(init=False, default_factory=set)
    # Messages of this node's batches not yet committed (claimed, submitting or answered).
    _in_flight: set[int] = field(init=False, default_factory=set)
    _statements: dict[str, Any] = field(init=False, default_factory=dict)
    # Batches still being submitted or committed after their pass returned.
    _settling: set[asyncio.Task[None]] = field(init=False, default_factory=set)
    _new_pairs: dict[IdBases, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._rules = self.settings.retry_rules()
        self._configured = IdBases(self.smpp.id_bases)
        self._pairs = dict.fromkeys(CONCRETE_BASES, 0)
        self.link = link_key(self.smpp)
        m = self.metrics
        self._m_parts = m.counter("sms_mt_parts_submitted_total", "MT parts accepted by the SMSC")
        self._m_submitted = m.counter("sms_mt_submitted_total", "MT messages whose parts were all accepted")
        self._m_delivered = m.counter("sms_mt_delivered_total", "MT messages delivered (every part's receipt)")
        self._m_failed = m.counter("sms_mt_failed_total", "MT messages that failed, by stage")
        self._m_retries = m.counter("sms_mt_retries_total", "MT parts scheduled again, by SMPP status")
        self._m_in_doubt = m.counter("sms_mt_in_doubt_total", "MT parts without a submit_sm_resp")
        self._m_suppressed = m.counter("sms_mt_suppressed_total", "MT notices not sent after 退订")
        self._m_receipts = m.counter("sms_receipts_total", "delivery receipts, by how they matched")
        self._m_taken_back = m.counter("sms_outbox_leases_taken_back_total", "expired outbox leases taken back")
        self._m_latency = m.summary("sms_receipt_latency_seconds", "submit accepted -> final receipt")
        self._g_depth = m.gauge("sms_outbox_depth", "outbox messages pending, being sent or in doubt")
        self._g_age = m.gauge("sms_outbox_oldest_age_seconds", "age of the oldest such message")
        self._g_in_doubt = m.gauge("sms_outbox_in_doubt", "outbox messages in doubt")
        self._g_bind = m.gauge("sms_bind_state", "SMSC link state per role (5 bound, 1 disconnected, 0 stopped)")
        m.on_refresh(self.refresh_metrics)

    @property
    def engine(self) -> AsyncEngine:
        engine: AsyncEngine = self.sessions.kw["bind"]
        return engine

    @property
    def bases(self) -> IdBases | None:
        """The link's id relation: configured, or learned; None while `auto` has learned nothing."""
        if self._configured is not IdBases.AUTO:
            return self._configured
        return decide_bases(self._pairs, self.smpp.id_bases_learn_pairs)

    def _relations(self) -> tuple[IdBases, ...]:
        bases = self.bases
        return CONCRETE_BASES if bases is None else (bases,)

    def _sql(self, name: str, build: Callable[[], Any]) -> Any:
        """A hot statement of this sender, built once (its link is fixed): building a statement
        and its cache key on every group cost more CPU than SQLite took to run it."""
        statement = self._statements.get(name)
        if statement is None:
            statement = self._statements[name] = build()
        return statement

    def _link_clause(self, column: Any) -> Any:
        # Rows from before 0007 carry no link: they belong to the one link there was.
        return or_(column == self.link, column.is_(None))

    # ---- loop -----------------------------------------------------------------------------

    def wake(self) -> None:
        """Something was written to the outbox: look now rather than at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set; woken early by `wake()`."""
        while not stop.is_set():
            # Cleared before the pass, so a wake() that arrives during it is not lost.
            woken = self._wake.is_set()
            self._wake.clear()
            sent = 0
            try:
                now = self.now()
                due = (self._last_housekeeping is None
                       or now - self._last_housekeeping >= dt.timedelta(seconds=HOUSEKEEPING_EVERY))
                sent = await self._pass(housekeeping=due, wait_settled=False)
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                log.error("sms.outbox.store_failed", error=str(exc).splitlines()[0][:300])
            except Exception:
                log.exception("sms.outbox.loop_failed")
            if sent >= self.settings.outbox_batch:
                await asyncio.sleep(0)  # a full batch means a backlog: next pass at once
                continue
            wait = self.settings.outbox_poll_interval
            if woken and not sent:  # the wake may have come just before its writer's commit
                wait = min(wait, WAKE_RECHECK)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
                    try:
                        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for waiter in waiters:
                            waiter.cancel()
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        with contextlib.suppress(SQLAlchemyError, OSError):
            await self.share_pairs()  # what this node learned since the last sweep

    async def run_once(self) -> int:
        """One pass with housekeeping: expire, take back, settle in doubt, send. Messages claimed."""
        return await self._pass(housekeeping=True)

    async def _pass(self, *, housekeeping: bool, wait_settled: bool = True) -> int:
        """Housekeeping when due, then claim and submit one batch.

        With `wait_settled` false (the loop) the pass returns once the batch's last message has
        a window slot; its answers are awaited and committed by the group writer while the next
        batch is claimed, so a reply queued meanwhile waits for neither.
        """
        now = self.now()
        if housekeeping:
            self._last_housekeeping = now
            await self.take_back_expired()
            if self._last_sweep is None or now - self._last_sweep >= dt.timedelta(seconds=SWEEP_EVERY):
                self._last_sweep = now
                await self.share_pairs()
                if not self.leased_sweeps:
                    await self.sweep()
            if not self.leased_sweeps:
                await self.resolve_in_doubt()
        gateway = self.gateway
        if gateway is None or not gateway.ready:
            return 0
        batch = await self._claim(now)
        if not batch:
            return 0
        await self._send_batch(gateway, batch, wait_settled=wait_settled)
        return len(batch)

    async def recover(self) -> None:
        """At start-up: take back this node's own leases (a previous life's) and expired ones."""
        await self._ensure_bases_row()
        await self._load_bases()
        taken = await self.take_back_expired(own=True)
        async with self.sessions() as session:
            last_ref = await session.scalar(
                select(SUBMITS.c.concat_ref).where(SUBMITS.c.concat_ref.is_not(None))
                .order_by(SUBMITS.c.id.desc()).limit(1))
        # Nodes start their counters apart, so two nodes rarely propose the same reference.
        offset = zlib.crc32(self.node.encode()) % 256
        self._allocator = ReferenceAllocator(bits=8, state=(last_ref or 0) + 1 + offset)
        log.info("sms.outbox.recovered", node=self.node, taken_back=taken, bases=getattr(self.bases, "value", None))

    async def take_back_expired(self, *, own: bool = False) -> int:
        """Claims whose lease ran out and whose node is gone (or, with `own`, this node's) become
        in doubt; returns how many.

        An expired lease alone is not enough: a live node whose renewal waited on a row lock
        (another node stalled mid-transaction holds it) is still submitting, and taking its
        claims back would send them twice. So the owner must also have missed its heartbeats
        (`[node] dead_after_seconds`) or said it stopped; this node's own expired claims are
        taken back when no batch of its still holds them (their commit failed).
        """
        now = self.now()
        expired = or_(OUTBOX.c.lease_expires_at.is_(None), OUTBOX.c.lease_expires_at < now)
        if self.dead_after is not None:
            gone = or_(OUTBOX.c.lease_owner.is_(None),
                       OUTBOX.c.lease_owner.not_in(live_node_ids(self.engine.dialect.name, self.dead_after)),
                       and_(OUTBOX.c.lease_owner == self.node, OUTBOX.c.id.not_in(sorted(self._in_flight))))
            expired = and_(expired, gone)
        if own:
            expired = or_(expired, OUTBOX.c.lease_owner == self.node)
        async with self.sessions() as session, session.begin():
            rows = (await session.execute(
                update(OUTBOX).where(OUTBOX.c.status == "sending", expired)
                # SET reads the row as it was: the message keeps whose lease ran out.
                .values(status="in_doubt", not_before=now, lease_owner=None, lease_expires_at=None,
                        last_error=literal(TAKEN_BACK).concat(func.coalesce(OUTBOX.c.lease_owner, "?")))
                .returning(OUTBOX.c.id, OUTBOX.c.last_error))).all()
            if not rows:
                return 0
            ids = [r.id for r in rows]
            await session.execute(
                update(SUBMITS).where(SUBMITS.c.outbox_id.in_(ids), SUBMITS.c.status == "submitting")
                .values(status="in_doubt", in_doubt_since=now, last_error="lease expired mid-submit"))
        self._m_taken_back.inc(len(rows))
        log.warning("sms.outbox.leases_taken_back", node=self.node, messages=len(rows),
                    outbox_ids=sorted(ids)[:50],
                    owners=sorted({(r.last_error or "").removeprefix(TAKEN_BACK) for r in rows}))
        return len(rows)

    # ---- claiming ---------------------------------------------------------------------------

    async def _claim(self, now: dt.datetime) -> list[_Message]:
        """Claim due messages, drop opted-out notices, plan and mark the parts to send; one transaction."""
        return await run_in_transaction(self.engine, partial(self._claim_in, now))

    def _claim_in(self, now: dt.datetime, conn: Connection) -> list[_Message]:
        lease = now + dt.timedelta(seconds=self.settings.outbox_lease)
        chosen = self._choose(conn, now)
        if not chosen:
            return []
        claimed = conn.execute(_TAKE, {"chosen": chosen, "owner": self.node, "lease": lease}).all()
        if not claimed:
            return []
        claimed.sort(key=lambda r: r.id)
        suppressed = self._suppressed(conn, claimed)
        failed: list[dict[str, Any]] = []
        existing: dict[int, list[_Part]] = {}
        for r in conn.execute(_PARTS_OF, {"ids": [c.id for c in claimed]}).all():
            existing.setdefault(r.outbox_id, []).append(_Part(
                r.id, r.seq, r.total, r.concat_ref, r.data_coding, r.esm_class, bytes.fromhex(r.payload_hex),
                r.status, r.attempts))
        messages: list[_Message] = []
        new_rows: list[dict[str, Any]] = []
        new_owner: list[_Message] = []
        long_to = {r.recipient for r in claimed if r.id not in existing and r.id not in suppressed
                   and segment_count(r.body, allow_gsm7=False) > 1}
        elsewhere = self._references_in_flight(conn, long_to, now) if long_to else {}
        for row in claimed:
            if row.id in suppressed:
                continue
            if row.id in existing:
                messages.append(_Message(row.id, row.case_id, row.recipient, existing[row.id]))
                continue
            try:
                planned = self._plan(row.id, row.recipient, row.body, now, elsewhere.get(row.recipient, ()))
            except (MessageTooLong, EncodeError) as exc:
                failed.append({"b_id": row.id, "b_error": str(exc)[:500]})
                self._m_failed.inc(stage="encode")
                log.error("sms.outbox.unsendable", outbox_id=row.id, error=str(exc))
                continue
            message = _Message(row.id, row.case_id, row.recipient, [])
            messages.append(message)
            new_rows.extend(planned)
            new_owner.extend([message] * len(planned))
        if new_rows:
            ids = insert_ids(conn, SUBMITS, new_rows, ("outbox_id", "seq"))
            for part_id, values, message in zip(ids, new_rows, new_owner, strict=True):
                message.parts.append(_Part(part_id, values["seq"], values["total"], values["concat_ref"],
                                           values["data_coding"], values["esm_class"],
                                           bytes.fromhex(values["payload_hex"]), "submitting", 1))
        again = [p.id for m in messages for p in m.parts if p.status == "queued"]
        if again:
            conn.execute(
                update(SUBMITS).where(SUBMITS.c.id.in_(again), SUBMITS.c.status == "queued")
                .values(status="submitting", submitted_at=now, attempts=SUBMITS.c.attempts + 1))
            for m in messages:
                for p in m.parts:
                    if p.status == "queued":
                        p.status, p.attempts = "submitting", p.attempts + 1
        if failed:
            conn.execute(
                update(OUTBOX).where(OUTBOX.c.id == bindparam("b_id"))
                .values(status="failed", last_error=bindparam("b_error"), lease_owner=None,
                        lease_expires_at=None), failed)
        return messages

    def batch_size(self) -> int:
        """`outbox_batch`, or less: what the gateway's pace sends in `outbox_claim_seconds`."""
        pace = getattr(self.gateway, "parts_per_second", None)
        if not pace or pace <= 0:
            return self.settings.outbox_batch
        return max(1, min(self.settings.outbox_batch, math.ceil(pace * self.settings.outbox_claim_seconds)))

    def _choose(self, conn: Connection, now: dt.datetime) -> list[int]:
        """Due messages with no earlier open message in their thread (case, or recipient without one).

        Two index reads and a check here, rather than one correlated NOT EXISTS: PostgreSQL
        planned that as a quadratic scan whenever a burst had outrun the table statistics.
        """
        batch = self.batch_size()
        candidates = conn.execute(_DUE, {"now": now, "limit": batch * 4}).all()
        if not candidates:
            return []
        cases = sorted({c.case_id for c in candidates if c.case_id is not None})
        recipients = sorted({c.recipient for c in candidates if c.case_id is None})
        first: dict[tuple[str, Any], int] = {}
        for row in conn.execute(_OPEN_THREADS, {"cases": cases, "recipients": recipients}).all():
            key = ("case", row.case_id) if row.case_id is not None else ("to", row.recipient)
            first[key] = min(first.get(key, row.id), row.id)
        chosen = []
        for c in candidates:
            key = ("case", c.case_id) if c.case_id is not None else ("to", c.recipient)
            if first.get(key, c.id) >= c.id:  # nothing earlier is pending, being sent or in doubt
                chosen.append(c.id)
                if len(chosen) >= batch:
                    break
        return chosen

    def _suppressed(self, conn: Connection, claimed: Sequence[Any]) -> set[int]:
        """Notices to numbers that sent TD about cases reported before it: marked suppressed here."""
        notices = [r for r in claimed if r.template not in DIRECT_TEMPLATES]
        if not notices:
            return set()
        opted = dict((conn.execute(
            select(SmsOptOutRow.phone, SmsOptOutRow.opted_out_at)
            .where(SmsOptOutRow.phone.in_({r.recipient for r in notices})))).all())
        if not opted:
            return set()
        hits = [r for r in notices if r.recipient in opted]
        created = dict((conn.execute(
            select(CaseRow.id, CaseRow.created_at)
            .where(CaseRow.id.in_({r.case_id for r in hits if r.case_id is not None})))).all())
        out = {r.id for r in hits
               if r.case_id is None or created.get(r.case_id) is None or created[r.case_id] <= opted[r.recipient]}
        if out:
            conn.execute(
                update(OUTBOX).where(OUTBOX.c.id.in_(out))
                .values(status="suppressed", last_error="recipient opted out (TD)", lease_owner=None,
                        lease_expires_at=None))
            for r in hits:
                if r.id in out:
                    self._m_suppressed.inc()
                    log.info("sms.outbox.suppressed", outbox_id=r.id, case_id=r.case_id, to=mask_number(r.recipient))
        return out

    def _references_in_flight(self, conn: Connection, recipients: set[str], now: dt.datetime) -> dict[str, set[int]]:
        """Concatenation references of long messages to these handsets not yet finished, by any node.

        A handset joins parts by (sender, reference): two long messages in flight to it with one
        reference would be mixed up, whichever node sent them.
        """
        since = now - dt.timedelta(seconds=2 * self.settings.in_doubt_wait)
        found: dict[str, set[int]] = {}
        for recipient, ref in conn.execute(
                select(SUBMITS.c.recipient, SUBMITS.c.concat_ref).distinct()
                .where(SUBMITS.c.recipient.in_(recipients), SUBMITS.c.concat_ref.is_not(None),
                       SUBMITS.c.submitted_at >= since, SUBMITS.c.status != "failed",
                       or_(SUBMITS.c.receipt_state.is_(None),
                           SUBMITS.c.receipt_state.not_in([s.value for s in DeliveryState if s.is_final])))):
            found.setdefault(recipient, set()).add(ref)
        return found

    def _plan(self, outbox_id: int, recipient: str, body: str, now: dt.datetime,
              elsewhere: Iterable[int] = ()) -> list[dict[str, Any]]:
        """Split into UCS-2 parts; multi-part messages get a reference free for this recipient."""
        reference = (self._allocator.allocate(recipient, set(elsewhere))
                     if segment_count(body, allow_gsm7=False) > 1 else None)
        parts = split_text(body, reference=reference, ref_bits=8, allow_gsm7=False)
        return [{"outbox_id": outbox_id, "recipient": recipient, "seq": p.seq, "total": p.total,
                 "concat_ref": p.ref, "data_coding": p.data_coding, "esm_class": p.esm_class,
                 "payload_hex": p.payload.hex(), "status": "submitting", "attempts": 1, "receipt_count": 0,
                 "submitted_at": now} for p in parts]

    # ---- sending ----------------------------------------------------------------------------------

    async def _send_batch(self, gateway: SmsGateway, batch: list[_Message], *, wait_settled: bool = True) -> None:
        """Submit through the window; each message's outcome goes to the group writer when known.

        With `wait_settled` false this returns as soon as the batch's last message has a window
        slot: the next batch is claimed while the last submits of this one are answered and
        committed (the client's own window still bounds what is in flight), so the window does
        not drain between batches.
        """
        limit = asyncio.Semaphore(max(1, self.smpp.window))
        in_flight = {m.id for m in batch}
        self._in_flight |= in_flight
        renewer = asyncio.create_task(self._renew(in_flight), name="sms-outbox-lease")
        waiting = len(batch)
        all_started = asyncio.Event()

        async def one(message: _Message) -> Any:
            nonlocal waiting
            try:
                async with limit:
                    waiting -= 1
                    if not waiting:
                        all_started.set()
                    await self._send_message(gateway, message)
                return await self._commit(message)
            finally:
                in_flight.discard(message.id)
                self._in_flight.discard(message.id)

        async def send_all() -> None:
            try:
                results = await asyncio.gather(*(one(m) for m in batch), return_exceptions=True)
                for message, result in zip(batch, results, strict=True):
                    if isinstance(result, BaseException):
                        log.error("sms.outbox.send_failed", outbox_id=message.id, error=repr(result)[:300])
            finally:
                all_started.set()
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer

        task = asyncio.get_running_loop().create_task(send_all(), name="sms-outbox-batch")
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        if wait_settled:
            await task
        else:
            await all_started.wait()

    async def _send_message(self, gateway: SmsGateway, message: _Message) -> None:
        todo = [p for p in message.parts if p.status == "submitting"]
        for index, part in enumerate(todo):
            if message.id in self._lost:
                message.unsent.extend(todo[index:])  # taken back: another node owns it now
                message.lost = True
                self._lost.discard(message.id)
                return
            outcome = await gateway.submit(OutboundPart(
                destination=message.recipient, short_message=part.payload, data_coding=part.data_coding,
                esm_class=part.esm_class, registered_delivery=self.smpp.registered_delivery,
                validity=dt.timedelta(seconds=self.smpp.validity_period), reference=part.id))
            message.outcomes.append((part, outcome))
            if not outcome.ok:
                message.unsent.extend(todo[index + 1:])
                return

    async def _renew(self, in_flight: set[int]) -> None:
        """Extend this batch's lease while it is in flight; note messages someone took back."""
        every = self.settings.outbox_lease / 3
        while True:
            await asyncio.sleep(every)
            ids = list(in_flight)
            if not ids:
                continue
            until = self.now() + dt.timedelta(seconds=self.settings.outbox_lease)
            try:
                async with self.sessions() as session, session.begin():
                    kept = set((await session.execute(
                        update(OUTBOX).where(OUTBOX.c.id.in_(ids), OUTBOX.c.lease_owner == self.node,
                                             OUTBOX.c.status == "sending")
                        .values(lease_expires_at=until).returning(OUTBOX.c.id))).scalars())
            except (SQLAlchemyError, OSError) as exc:
                log.error("sms.outbox.lease_renewal_failed", error=str(exc).splitlines()[0][:300])
                continue
            lost = {i for i in ids if i not in kept and i in in_flight}
            if lost:
                self._lost |= lost
                log.error("sms.outbox.lease_lost", node=self.node, messages=len(lost))

    # ---- the group writer -------------------------------------------------------------------------

    async def _commit(self, item: _Item) -> Any:
        """Queue an outcome or a receipt for the next group transaction and wait for it."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="sms-outbox-writer")
        return await future

    async def _write_loop(self) -> None:
        """Commit what queued up while the previous group was being written (group commit)."""
        group: list[tuple[_Item, asyncio.Future[Any]]] = []
        try:
            while self._queue:
                started = asyncio.get_running_loop().time()
                while len(self._queue) < self.settings.outbox_group_max:
                    left = started + self.settings.outbox_group_linger - asyncio.get_running_loop().time()
                    if left <= 0:
                        break
                    await asyncio.sleep(min(left, 0.005))
                group, self._queue = self._queue, []
                try:
                    answers = await self._write_group([item for item, _ in group])
                except Exception as exc:  # noqa: BLE001 - every waiter learns of the failure
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    group = []
                    continue
                for (_, future), answer in zip(group, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
                group = []
        finally:
            self._writer = None
            leftover, self._queue = group + self._queue, []
            for _, future in leftover:
                if not future.done():
                    future.cancel()

    async def _write_group(self, items: list[_Item]) -> list[Any]:
        now = self.now()
        messages = [i for i in items if isinstance(i, _Message)]
        receipts = [i for i in items if isinstance(i, _Receipt)]
        async with self._match_lock:
            answers = await run_in_transaction(self.engine, partial(self._write_group_in, messages, receipts, now))
        return [answers.get(id(i), None) for i in items]

    def _write_group_in(self, messages: list[_Message], receipts: list[_Receipt], now: dt.datetime,
                        conn: Connection) -> dict[int, int]:
        accepted = self._store_outcomes(conn, messages, now) if messages else []
        touched: set[int] = set()
        answers: dict[int, int] = {}
        if receipts:
            matched = self._match(conn, receipts, now, touched)
            answers = {id(r): Status.ROK for r in receipts}
            for _receipt, how in matched:
                self._m_receipts.inc(match=how)
        if accepted:
            self._claim_early(conn, accepted, now, touched)
        if touched:
            self._settle(conn, touched, now)
        return answers

    def _store_outcomes(self, conn: Connection, messages: list[_Message],
                              now: dt.datetime) -> list[str]:
        """Parts and messages after their submit_sm_resps; returns the newly known SMSC ids."""
        ok_parts: list[dict[str, Any]] = []
        doubt_parts: list[dict[str, Any]] = []
        error_parts: list[dict[str, Any]] = []
        back_parts: list[dict[str, Any]] = []
        rows: dict[str, list[dict[str, Any]]] = {"sent": [], "in_doubt": [], "pending": [], "failed": []}
        new_ids: list[str] = []
        for message in messages:
            context = {"outbox_id": message.id, "case_id": message.case_id, "to": mask_number(message.recipient)}
            state = "sent"
            error: str | None = None
            not_before = now
            for part, outcome in message.outcomes:
                part_ctx = {**context, "part": f"{part.seq}/{part.total}"}
                if outcome.ok:
                    message_id = normalise_message_id(outcome.message_id or "") or None
                    part.status = "accepted"
                    ok_parts.append({"b_id": part.id, "b_mid": message_id,
                                     "b_raw": (outcome.message_id or "")[:72] or None, "b_at": now})
                    if message_id:
                        new_ids.append(message_id)
                    self._m_parts.inc()
                    log.debug("sms.outbox.part_accepted", message_id=message_id, **part_ctx)
                elif outcome.in_doubt:
                    part.status = "in_doubt"
                    doubt_parts.append({"b_id": part.id, "b_error": (outcome.error or "")[:256], "b_at": now})
                    state, error = "in_doubt", f"in doubt: {outcome.error}"[:500]
                    self._m_in_doubt.inc()
                    log.warning("sms.outbox.in_doubt", error=outcome.error, **part_ctx)
                else:
                    rule = self._rules.get(outcome.status)
                    error = f"{outcome.status_name} (part {part.seq}/{part.total}, attempt {part.attempts})"
                    if rule is not None and part.attempts <= rule.attempts:
                        part.status, state = "queued", "pending"
                        not_before = now + dt.timedelta(seconds=rule.delay)
                        self._m_retries.inc(status=outcome.status_name)
                        log.warning("sms.outbox.retry_scheduled", status=outcome.status_name, delay=rule.delay,
                                    **part_ctx)
                    else:
                        part.status, state = "failed", "failed"
                        self._m_failed.inc(stage="submit")
                        self._release(message.recipient, part.concat_ref)
                        log.error("sms.outbox.failed", status=outcome.status_name, **part_ctx)
                    error_parts.append({"b_id": part.id, "b_status": part.status, "b_code": outcome.status,
                                        "b_error": outcome.status_name[:256]})
            for part in message.unsent:
                part.status = "queued"
                back_parts.append({"b_id": part.id})
                if state == "sent":
                    state = "pending"
            if state == "sent" and any(p.status != "accepted" for p in message.parts):
                state = "in_doubt"  # an earlier attempt's part is still waiting for proof
            if message.lost:
                continue  # its parts' outcomes are stored; the row belongs to whoever took it back
            rows[state].append({"b_id": message.id, "b_error": error, "b_at": now, "b_nb": not_before})
            if state == "sent":
                self._m_submitted.inc()
                log.info("sms.outbox.sent", parts=len(message.parts), **context)
        one_part = SUBMITS.c.id == bindparam("b_id")
        one_message = OUTBOX.c.id == bindparam("b_id")
        if ok_parts:
            conn.execute(self._sql("accept", lambda: update(SUBMITS).where(one_part).values(
                status="accepted", smsc_message_id=bindparam("b_mid"), raw_message_id=bindparam("b_raw"),
                accepted_at=func.coalesce(SUBMITS.c.accepted_at, bindparam("b_at")), last_status=Status.ROK,
                smsc_link=self.link)), ok_parts)
        if doubt_parts:
            conn.execute(self._sql("doubt", lambda: update(SUBMITS).where(
                one_part, SUBMITS.c.status == "submitting").values(
                status="in_doubt", in_doubt_since=bindparam("b_at"), last_error=bindparam("b_error"),
                smsc_link=self.link)), doubt_parts)
        if error_parts:
            conn.execute(self._sql("error", lambda: update(SUBMITS).where(one_part).values(
                status=bindparam("b_status"), last_status=bindparam("b_code"), last_error=bindparam("b_error"))),
                error_parts)
        if back_parts:
            conn.execute(self._sql("back", lambda: update(SUBMITS).where(
                one_part, SUBMITS.c.status == "submitting").values(status="queued")), back_parts)
        if rows["sent"]:
            conn.execute(self._sql("sent", lambda: update(OUTBOX).where(one_message, _OPEN).values(
                status="sent", sent_at=func.coalesce(OUTBOX.c.sent_at, bindparam("b_at")), last_error=None,
                **_RELEASED)), rows["sent"])
        if rows["in_doubt"]:
            conn.execute(self._sql("in_doubt", lambda: update(OUTBOX).where(one_message, _OPEN).values(
                status="in_doubt", last_error=bindparam("b_error"), **_RELEASED)), rows["in_doubt"])
        if rows["pending"]:
            conn.execute(self._sql("pending", lambda: update(OUTBOX).where(one_message, _OPEN).values(
                status="pending", not_before=bindparam("b_nb"), last_error=bindparam("b_error"), **_RELEASED)),
                rows["pending"])
        if rows["failed"]:
            conn.execute(self._sql("failed", lambda: update(OUTBOX).where(one_message).values(
                status="failed", last_error=bindparam("b_error"), **_RELEASED)), rows["failed"])
        return new_ids

    def _release(self, recipient: str, concat_ref: int | None) -> None:
        if concat_ref is not None:
            self._allocator.release(recipient, concat_ref)

    # ---- receipts ----------------------------------------------------------------------------------

    async def handle_receipt(self, inbound: InboundReceipt) -> int:
        """Settle a receipt's part (or store it unmatched) in the next group; the deliver_sm_resp status."""
        receipt = inbound.receipt
        handset = normalise_sender(inbound.source_addr, self.region) if inbound.source_addr else None
        item = _Receipt(receipt.message_id, receipt.raw_message_id, receipt.state, receipt.stat, receipt.error,
                        handset, self.now(), inbound.user_message_reference)
        try:
            status: int = await self._commit(item)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.error("sms.receipt.store_failed", message_id=receipt.message_id,
                      error=str(exc).splitlines()[0][:300])
            return Status.RX_T_APPN
        return status

    def _candidates(self, conn: Connection, receipts: Iterable[_Receipt]) -> list[Any]:
        """Parts of this link whose id any of the receipts may stand for, under the possible relations."""
        relations = self._relations()
        keys = {k for r in receipts for rel in relations if (k := submit_id_for(r.message_id, rel)) is not None}
        if not keys:
            return []
        return list(conn.execute(self._sql("candidates", lambda: select(
            *_PART_COLUMNS, SUBMITS.c.receipt_stat, SUBMITS.c.receipt_error, SUBMITS.c.receipt_at)
            .where(SUBMITS.c.smsc_message_id.in_(bindparam("keys", expanding=True)),
                   self._link_clause(SUBMITS.c.smsc_link))), {"keys": sorted(keys)}).all())

    def _match(self, conn: Connection, receipts: list[_Receipt], now: dt.datetime,
                     touched: set[int]) -> list[tuple[_Receipt, str]]:
        """Match receipts to parts, write the parts' receipt state; unmatched fresh ones are stored."""
        rows = self._candidates(conn, receipts)
        parts = {r.id: dict(r._mapping) for r in rows}
        refs = [PartRef(r.id, r.smsc_message_id, r.recipient) for r in rows]
        bases = self.bases
        pairs: dict[IdBases, int] = {}
        changed: dict[int, dict[str, Any]] = {}
        matched_stored: list[dict[str, Any]] = []
        unmatched: list[dict[str, Any]] = []
        out: list[tuple[_Receipt, str]] = []
        for receipt in receipts:
            result = match_receipt(receipt.message_id, receipt.handset, refs, bases)
            part_id = result.part_id
            if part_id is None and receipt.umr is not None and receipt.handset and receipt.stored_id is None:
                part_id = self._by_reference(conn, receipt, parts)
            if part_id is None:
                if receipt.stored_id is None:
                    unmatched.append({
                        "message_id": receipt.message_id[:72], "raw_message_id": receipt.raw_message_id[:72],
                        "state": receipt.state.value, "stat": (receipt.stat or "")[:16] or None,
                        "error": (receipt.error or "")[:16] or None, "recipient": receipt.handset,
                        "received_at": receipt.at, "smsc_link": self.link, "reason": result.reason})
                    out.append((receipt, "unmatched"))
                    log.info("sms.receipt.unmatched", message_id=receipt.message_id, state=receipt.state.value,
                             reason=result.reason, to=mask_number(receipt.handset))
                continue
            part = parts[part_id]
            fresh = self._apply(part, receipt.state, receipt.stat, receipt.error, receipt.at)
            if fresh and result.pair is not None and self._configured is IdBases.AUTO:
                pairs[result.pair] = pairs.get(result.pair, 0) + 1
            changed[part_id] = part
            touched.add(part["outbox_id"])
            if receipt.stored_id is not None:
                matched_stored.append({"b_id": receipt.stored_id, "b_part": part_id, "b_at": now})
                out.append((receipt, "early"))
                log.info("sms.receipt.matched_late", message_id=receipt.message_id, outbox_id=part["outbox_id"])
            else:
                out.append((receipt, "matched" if fresh else "duplicate"))
                log.debug("sms.receipt", message_id=receipt.message_id, state=receipt.state.value,
                          outbox_id=part["outbox_id"], duplicate=not fresh)
        if changed:
            conn.execute(
                self._sql("receipted", lambda: update(SUBMITS).where(SUBMITS.c.id == bindparam("b_id"))
                          .values(status=bindparam("b_status"), accepted_at=bindparam("b_accepted"),
                                  receipt_state=bindparam("b_state"), receipt_stat=bindparam("b_stat"),
                                  receipt_error=bindparam("b_error"), receipt_at=bindparam("b_at"),
                                  receipt_count=bindparam("b_count"), smsc_message_id=bindparam("b_mid"))),
                [{"b_id": p["id"], "b_status": p["status"], "b_accepted": p["accepted_at"],
                  "b_state": p["receipt_state"], "b_stat": p["receipt_stat"], "b_error": p["receipt_error"],
                  "b_at": p["receipt_at"], "b_count": p["receipt_count"], "b_mid": p["smsc_message_id"]}
                 for p in changed.values()])
        if unmatched:
            conn.execute(UNMATCHED.insert(), unmatched)
        if matched_stored:
            conn.execute(
                self._sql("matched_late", lambda: update(UNMATCHED).where(UNMATCHED.c.id == bindparam("b_id"))
                          .values(matched_submit_id=bindparam("b_part"), matched_at=bindparam("b_at"),
                                  reason=None)),
                matched_stored)
        if pairs:
            self._learn(pairs)
        return out

    def _by_reference(self, conn: Connection, receipt: _Receipt, parts: dict[int, dict[str, Any]]) -> int | None:
        """A receipt echoing user_message_reference (our part id) for a part without an SMSC id."""
        rows = (conn.execute(
            select(*_PART_COLUMNS, SUBMITS.c.receipt_stat, SUBMITS.c.receipt_error, SUBMITS.c.receipt_at)
            .where(SUBMITS.c.recipient == receipt.handset,
                   SUBMITS.c.status.in_(("in_doubt", "submitting", "queued"))))).all()
        hits = [r for r in rows if r.id & 0xFFFF == receipt.umr]
        if len(hits) != 1:
            return None
        part = dict(hits[0]._mapping)
        part["smsc_message_id"] = part["smsc_message_id"] or self._submit_form(receipt.message_id)
        parts.setdefault(part["id"], part)
        return int(part["id"])

    def _submit_form(self, receipt_id: str) -> str:
        """A receipt id as the submit_sm_resp would have given it, when the relation is known."""
        bases = self.bases
        return (submit_id_for(receipt_id, bases) if bases is not None else None) or receipt_id

    def _claim_early(self, conn: Connection, new_ids: list[str], now: dt.datetime,
                           touched: set[int]) -> None:
        """Receipts stored before their part's submit_sm_resp: match them now the id is known."""
        relations = self._relations()
        forms = {f for i in new_ids for rel in relations if (f := receipt_id_for(i, rel)) is not None}
        if not forms:
            return
        stored = conn.execute(self._sql("early", lambda: select(UNMATCHED).where(
            UNMATCHED.c.message_id.in_(bindparam("forms", expanding=True)),
            UNMATCHED.c.matched_submit_id.is_(None), self._link_clause(UNMATCHED.c.smsc_link))
            .order_by(UNMATCHED.c.id)), {"forms": sorted(forms)}).all()
        if stored:
            self._match_stored(conn, stored, now, touched)

    def _match_stored(self, conn: Connection, stored: Sequence[Any], now: dt.datetime,
                            touched: set[int], label: str = "early") -> int:
        receipts = [_Receipt(r.message_id, r.raw_message_id, DeliveryState(r.state), r.stat, r.error, r.recipient,
                             r.received_at, None, r.id) for r in stored]
        matched = [how for _, how in self._match(conn, receipts, now, touched) if how == "early"]
        if matched:
            self._m_receipts.inc(len(matched), match=label)
        return len(matched)

    async def sweep_unmatched(self) -> int:
        """Match stored receipts whose part id is known by now (receipts that met on two nodes)."""
        since = self.now() - dt.timedelta(seconds=max(3600.0, 2 * self.settings.in_doubt_wait))
        touched: set[int] = set()

        def sweep(conn: Connection) -> int:
            stored = conn.execute(
                select(UNMATCHED).where(UNMATCHED.c.matched_submit_id.is_(None), UNMATCHED.c.received_at >= since,
                                        self._link_clause(UNMATCHED.c.smsc_link))
                .order_by(UNMATCHED.c.id).limit(500)).all()
            if not stored:
                return 0
            matched = self._match_stored(conn, stored, self.now(), touched, "swept")
            if touched:
                self._settle(conn, touched, self.now())
            return matched

        async with self._match_lock:
            matched = await run_in_transaction(self.engine, sweep)
        if matched:
            log.info("sms.receipt.swept", matched=matched)
        return matched

    def _apply(self, part: dict[str, Any], state: DeliveryState, stat: str | None, error: str | None,
               at: dt.datetime) -> bool:
        """Put a receipt on a part; False for a repeat. A receipt also proves the SMSC had the part."""
        part["receipt_count"] = (part.get("receipt_count") or 0) + 1
        current = DeliveryState(part["receipt_state"]) if part.get("receipt_state") else None
        if current is not None and (current == state or current.is_final):
            return False  # a repeat, or a late intermediate one: the first final receipt stands
        if part["status"] in ("in_doubt", "submitting", "queued"):
            part["status"] = "accepted"
            part["accepted_at"] = part.get("accepted_at") or part.get("submitted_at") or at
        part["receipt_state"] = state.value
        part["receipt_stat"] = (stat or "")[:16] or None
        part["receipt_error"] = (error or "")[:16] or None
        part["receipt_at"] = at
        if state.is_final:
            start = part.get("accepted_at") or part.get("submitted_at")
            if start is not None:
                self._m_latency.observe(max(0.0, (at - start).total_seconds()))
        return True

    def _settle(self, conn: Connection, outbox_ids: set[int], now: dt.datetime) -> None:
        """Messages whose parts changed: all accepted -> sent; every final receipt -> delivery state."""
        ids = {"ids": sorted(outbox_ids)}
        rows = conn.execute(self._sql("settle_rows", lambda: select(
            OUTBOX.c.id, OUTBOX.c.status, OUTBOX.c.delivery_state, OUTBOX.c.case_id, OUTBOX.c.recipient)
            .where(OUTBOX.c.id.in_(bindparam("ids", expanding=True)))), ids).all()
        parts: dict[int, list[Any]] = {}
        for p in conn.execute(self._sql("settle_parts", lambda: select(
                SUBMITS.c.outbox_id, SUBMITS.c.status, SUBMITS.c.receipt_state, SUBMITS.c.receipt_at,
                SUBMITS.c.concat_ref, SUBMITS.c.recipient)
                .where(SUBMITS.c.outbox_id.in_(bindparam("ids", expanding=True)))), ids).all():
            parts.setdefault(p.outbox_id, []).append(p)
        updates: list[dict[str, Any]] = []
        for row in rows:
            mine = parts.get(row.id, [])
            if not mine:
                continue
            status, delivery, delivered_at = row.status, row.delivery_state, None
            if status in ("sending", "in_doubt", "pending") and all(p.status == "accepted" for p in mine):
                if status != "sending":  # a claim in flight settles itself when its resps are stored
                    status = "sent"
                    self._m_submitted.inc()
                    log.info("sms.outbox.sent", outbox_id=row.id, case_id=row.case_id, parts=len(mine),
                             to=mask_number(row.recipient), by="receipt")
            states = [p.receipt_state for p in mine]
            if all(s is not None and DeliveryState(s).is_final for s in states):
                final = [DeliveryState(s) for s in states if s is not None]
                failed = [s for s in final if s is not DeliveryState.DELIVERED]
                aggregate = (failed[0] if failed else DeliveryState.DELIVERED).value
                if delivery != aggregate:
                    delivery = aggregate
                    if not failed:
                        delivered_at = max(p.receipt_at for p in mine if p.receipt_at is not None)
                        self._m_delivered.inc()
                    else:
                        self._m_failed.inc(stage="delivery")
                    for p in mine:
                        self._release(p.recipient, p.concat_ref)
                    log.info("sms.outbox.delivery", outbox_id=row.id, case_id=row.case_id, state=aggregate,
                             to=mask_number(row.recipient))
            elif any(s is not None for s in states) and delivery is None:
                delivery = DeliveryState.ENROUTE.value
            if status != row.status or delivery != row.delivery_state or delivered_at is not None:
                updates.append({"b_id": row.id, "b_status": status, "b_delivery": delivery,
                                "b_delivered": delivered_at, "b_sent": now if status == "sent" else None})
        if updates:
            conn.execute(self._sql("settle", lambda: update(OUTBOX).where(OUTBOX.c.id == bindparam("b_id"))
                                   .values(status=bindparam("b_status"), delivery_state=bindparam("b_delivery"),
                                           delivered_at=func.coalesce(bindparam("b_delivered"),
                                                                      OUTBOX.c.delivered_at),
                                           sent_at=func.coalesce(OUTBOX.c.sent_at, bindparam("b_sent")))),
                         updates)

    # ---- id bases ----------------------------------------------------------------------------------

    async def _ensure_bases_row(self) -> None:
        with contextlib.suppress(SQLAlchemyError):
            async with self.sessions() as session, session.begin():
                present = await session.scalar(select(ID_BASES.c.link).where(ID_BASES.c.link == self.link))
                if present is None:
                    await session.execute(ID_BASES.insert().values(
                        link=self.link, same_pairs=0, hex_dec_pairs=0, dec_hex_pairs=0, updated_at=self.now()))

    async def _load_bases(self) -> None:
        async with self.sessions() as session:
            row = (await session.execute(select(ID_BASES).where(ID_BASES.c.link == self.link))).first()
        if row is not None:
            self._pairs = {rel: int(getattr(row, col)) for rel, col in _PAIR_COLUMNS.items()}

    def _learn(self, pairs: dict[IdBases, int]) -> None:
        """Count unambiguous pairs; used here at once, shared through the store at the next sweep."""
        before = self.bases
        for relation, count in pairs.items():
            self._pairs[relation] += count
            self._new_pairs[relation] = self._new_pairs.get(relation, 0) + count
        self._log_bases(before)

    def _log_bases(self, before: IdBases | None) -> None:
        after = self.bases
        pairs = {rel.value: n for rel, n in self._pairs.items()}
        if after != before:
            log.info("sms.id_bases.learned", link=self.link, bases=getattr(after, "value", None), pairs=pairs)
        elif before is None and sum(1 for n in self._pairs.values() if n) > 1:
            log.warning("sms.id_bases.conflicting", link=self.link, pairs=pairs)

    async def share_pairs(self) -> None:
        """Add this node's new pairs to the link's row and take every node's totals back."""
        new, self._new_pairs = self._new_pairs, {}
        before = self.bases
        try:
            async with self.sessions() as session, session.begin():
                values = {col: ID_BASES.c[col] + new.get(rel, 0) for rel, col in _PAIR_COLUMNS.items()}
                row = (await session.execute(
                    update(ID_BASES).where(ID_BASES.c.link == self.link).values(updated_at=self.now(), **values)
                    .returning(*(ID_BASES.c[col] for col in _PAIR_COLUMNS.values())))).first()
        except SQLAlchemyError:
            for relation, count in new.items():  # try again at the next sweep
                self._new_pairs[relation] = self._new_pairs.get(relation, 0) + count
            raise
        if row is not None:
            self._pairs = {rel: int(row[i]) for i, rel in enumerate(_PAIR_COLUMNS)}
            self._log_bases(before)

    # ---- expiry and in doubt ----------------------------------------------------------------------

    async def sweep(self) -> int:
        """Expire what was not sent in time, then match stored receipts; returns receipts matched."""
        await self._expire(self.now())
        return await self.sweep_unmatched()

    async def _expire(self, now: dt.datetime) -> None:
        cutoff = now - dt.timedelta(seconds=self.smpp.validity_period)
        async with self.sessions() as session, session.begin():
            rows = (await session.execute(
                update(OUTBOX).where(OUTBOX.c.status == "pending", OUTBOX.c.created_at < cutoff)
                .values(status="failed", last_error="expired: not sent within smpp.validity_period")
                .returning(OUTBOX.c.id, OUTBOX.c.case_id, OUTBOX.c.recipient))).all()
        for row in rows:
            self._m_failed.inc(stage="expired")
            log.error("sms.outbox.expired", outbox_id=row.id, case_id=row.case_id, to=mask_number(row.recipient))

    async def resolve_in_doubt(self) -> int:
        """Settle in-doubt messages by receipts that prove their parts, or queue them again after the wait."""
        now = self.now()
        wait = dt.timedelta(seconds=self.settings.in_doubt_wait)
        settled = 0
        async with self.sessions() as session:
            ids = list(await session.scalars(
                select(OUTBOX.c.id).where(OUTBOX.c.status == "in_doubt").order_by(OUTBOX.c.id).limit(500)))
        for outbox_id in ids:
            async with self._match_lock, self.sessions() as session, session.begin():
                row = (await session.execute(
                    select(OUTBOX.c.id, OUTBOX.c.status, OUTBOX.c.recipient, OUTBOX.c.case_id)
                    .where(OUTBOX.c.id == outbox_id, OUTBOX.c.status == "in_doubt")
                    .with_for_update(skip_locked=True))).first()
                if row is None:
                    continue
                parts = (await session.execute(
                    select(SUBMITS).where(SUBMITS.c.outbox_id == outbox_id).order_by(SUBMITS.c.seq))).all()
                doubtful = [p for p in parts if p.status in ("in_doubt", "submitting")]
                if not doubtful:
                    if any(p.status == "queued" for p in parts):
                        await self._requeue(session, outbox_id, [], now, None)
                    else:
                        await session.run_sync(_on_connection(self._settle), {outbox_id}, now)
                    continue
                since = min(p.submitted_at or now for p in doubtful)
                if await self._others_awaiting(session, row.recipient, outbox_id):
                    evidence = []  # a receipt now could be theirs: wait until their resps are in
                else:
                    evidence = (await session.execute(
                        select(UNMATCHED).where(
                            UNMATCHED.c.recipient == row.recipient, UNMATCHED.c.matched_submit_id.is_(None),
                            UNMATCHED.c.received_at >= since, self._link_clause(UNMATCHED.c.smsc_link),
                            or_(UNMATCHED.c.reason.is_(None), ~UNMATCHED.c.reason.like("ambiguous%")))
                        .order_by(UNMATCHED.c.received_at, UNMATCHED.c.id).limit(len(doubtful))
                        .with_for_update(skip_locked=True))).all()
                if len(evidence) >= len(doubtful):
                    for part, receipt in zip(doubtful, evidence, strict=False):
                        values = dict(part._mapping)
                        self._apply(values, DeliveryState(receipt.state), receipt.stat, receipt.error, now)
                        await session.execute(update(SUBMITS).where(SUBMITS.c.id == part.id).values(
                            status=values["status"], accepted_at=values["accepted_at"],
                            receipt_state=values["receipt_state"], receipt_stat=values["receipt_stat"],
                            receipt_error=values["receipt_error"], receipt_at=values["receipt_at"],
                            receipt_count=values["receipt_count"],
                            smsc_message_id=part.smsc_message_id or self._submit_form(receipt.message_id),
                            raw_message_id=part.raw_message_id or receipt.raw_message_id))
                        await session.execute(update(UNMATCHED).where(UNMATCHED.c.id == receipt.id).values(
                            matched_submit_id=part.id, matched_at=now))
                    # Copies of a proof (an SMSC's queued receipt delivered twice) match the part now.
                    used = evidence[:len(doubtful)]
                    copies = (await session.execute(select(UNMATCHED).where(
                        UNMATCHED.c.matched_submit_id.is_(None), UNMATCHED.c.recipient == row.recipient,
                        UNMATCHED.c.message_id.in_({r.message_id for r in used}),
                        UNMATCHED.c.id.not_in([r.id for r in used])))).all()
                    if copies:
                        await session.run_sync(_on_connection(self._match_stored), copies, now, set(), "early")
                    if any(p.status == "queued" for p in parts):
                        await self._requeue(session, outbox_id, [], now, None)
                    else:
                        await session.run_sync(_on_connection(self._settle), {outbox_id}, now)  # in_doubt -> sent
                    settled += 1
                    self._m_receipts.inc(len(doubtful), match="in_doubt_proof")
                    log.info("sms.outbox.in_doubt_resolved", outbox_id=outbox_id, case_id=row.case_id,
                             by="receipt", parts=len(doubtful), to=mask_number(row.recipient))
                elif all(p.in_doubt_since is not None and p.in_doubt_since + wait <= now for p in doubtful):
                    await self._requeue(session, outbox_id, [p.id for p in doubtful], now,
                                        "resent: no receipt for the in-doubt part(s)")
                    settled += 1
                    self._m_retries.inc(status="in_doubt")
                    log.warning("sms.outbox.in_doubt_resend", outbox_id=outbox_id, case_id=row.case_id,
                                parts=len(doubtful), to=mask_number(row.recipient))
        return settled

    async def _others_awaiting(self, session: AsyncSession, recipient: str, outbox_id: int) -> bool:
        """Whether another message to this handset has a part on the wire without its resp yet."""
        found = await session.scalar(
            select(SUBMITS.c.id).where(SUBMITS.c.recipient == recipient, SUBMITS.c.outbox_id != outbox_id,
                                       SUBMITS.c.status == "submitting").limit(1))
        return found is not None

    async def _requeue(self, session: AsyncSession, outbox_id: int, part_ids: list[int], now: dt.datetime,
                       error: str | None) -> None:
        if part_ids:
            await session.execute(update(SUBMITS).where(SUBMITS.c.id.in_(part_ids)).values(status="queued"))
        values: dict[str, Any] = {"status": "pending", "not_before": now}
        if error:
            values["last_error"] = error
        await session.execute(update(OUTBOX).where(OUTBOX.c.id == outbox_id).values(**values))

    # ---- metrics ----------------------------------------------------------------------------------

    async def refresh_metrics(self) -> None:
        now = self.now()
        async with self.sessions() as session:
            depth, oldest = (await session.execute(
                select(func.count(), func.min(OUTBOX.c.created_at)).where(OUTBOX.c.status.in_(BLOCKING)))).one()
            in_doubt = await session.scalar(
                select(func.count()).select_from(OUTBOX).where(OUTBOX.c.status == "in_doubt"))
        self._g_depth.set(depth or 0)
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=dt.UTC)
        self._g_age.set(max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0)
        self._g_in_doubt.set(in_doubt or 0)
        if self.gateway is not None:
            for role, state in self.gateway.bind_states().items():
                self._g_bind.set(state, link=role)


__all__ = ["BLOCKING", "DIRECT_TEMPLATES", "OutboxSender", "link_key"]
