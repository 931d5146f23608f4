"""Read-only SQL for the console: the work queue, duplicates, screen pops, dashboard, evaluation,
supervisor notices.

Every change still goes through the case service; this module only reads, so the figures
can be computed with a few grouped queries instead of loading cases one by one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callcenter.cases.lifecycle import OPEN_STATES, CaseStatus
from callcenter.db.tables import CallRecordRow, CaseLogRow, CaseRow, OutboxRow
from callcenter.db.tables_sms import SmsInboundRow, SupervisorTaskRow

# An answer within this many seconds counts as "answered within 15 s" (GB/T 33358: ≥ 95 %).
ANSWER_TARGET_SECONDS = 15
# Outbox delivery states that mean the message will not arrive (sms.dlr.DeliveryState).
UNDELIVERED_STATES = ("undeliverable", "expired", "deleted", "rejected")


@dataclass(frozen=True)
class CallsToday:
    """Calls and the staff queue's service level (GB/T 33358: a person answered).

    `calls` counts calls (legs of one call count once); `queued` the calls that asked for a
    person (AMI QueueCallerJoin); `answered_in_target` those a person answered within 15 s
    of joining (AgentConnect HoldTime); `abandoned` those who hung up while waiting
    (QueueCallerAbandon); `mean_wait_seconds` the mean wait of the answered ones."""

    calls: int
    answered_in_target: int
    abandoned: int
    queued: int = 0
    answered: int = 0
    mean_wait_seconds: float | None = None

    @property
    def answered_in_target_rate(self) -> float | None:
        return round(self.answered_in_target / self.queued, 4) if self.queued else None


# Cases that can still absorb a duplicate (not final, not closed).
_MERGE_TARGET_STATES = sorted(s.value for s in OPEN_STATES)


@dataclass(frozen=True)
class QueueRow:
    number: str
    channel: str
    flags: tuple[str, ...]
    recording: bool
    recording_ref: str | None
    menu_choice: bool  # a phone report with the IVR menu's kind/major (not a voicemail)
    description: str
    suggested_category: str | None
    category: str | None
    created_at: dt.datetime
    reporter_phone: str | None
    anonymous: bool
    confidential: bool


@dataclass(frozen=True)
class CaseBrief:
    number: str
    status: str
    channel: str
    category: str | None
    grid: str | None
    address: str | None
    description: str
    created_at: dt.datetime
    reporter_phone: str | None
    anonymous: bool
    confidential: bool


@dataclass(frozen=True)
class InboundText:
    received_at: dt.datetime
    sender: str
    text: str
    outcome: str  # draft (it made the case) | folded (flood control added it)


@dataclass(frozen=True)
class OutboxMessage:
    recipient: str
    template: str
    body: str
    status: str
    created_at: dt.datetime
    sent_at: dt.datetime | None
    delivered_at: dt.datetime | None


# Supervisor-task states as the console shows them (督办通知). A task is `waiting` from the
# moment its notice is queued until the supervisor answers; `escalated` once it went to the
# shift leader unanswered; `answered` when the answer came (late answers included).
NOTICE_STATES = ("waiting", "escalated", "answered")


@dataclass(frozen=True)
class TaskNotice:
    id: int
    code: str
    case_number: str
    kind: str
    grid: str
    supervisor_name: str
    supervisor_phone: str
    note: str | None
    answer: str | None
    answer_text: str | None
    created_at: dt.datetime
    answered_at: dt.datetime | None
    escalated_at: dt.datetime | None

    @property
    def state(self) -> str:
        if self.answered_at is not None:
            return "answered"
        return "escalated" if self.escalated_at is not None else "waiting"


@dataclass(frozen=True)
class NoticeCounts:
    """Tasks per state; `sent` is all of them."""

    sent: int
    waiting: int
    escalated: int
    answered: int

    def as_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "waiting": self.waiting, "escalated": self.escalated, "answered": self.answered}


@dataclass(frozen=True)
class SupervisionToday:
    """督办 figures for the dashboard: today's traffic and what is open now."""

    sent: int
    answered: int
    confirmed: int
    not_confirmed: int
    escalated: int
    waiting_now: int
    escalated_open_now: int
    oldest_waiting: TaskNotice | None


def _task_state(state: str) -> ColumnElement[bool]:
    task = SupervisorTaskRow
    if state == "answered":
        return task.answered_at.is_not(None)
    if state == "escalated":
        return and_(task.answered_at.is_(None), task.escalated_at.is_not(None))
    return and_(task.answered_at.is_(None), task.escalated_at.is_(None))


def _escalated_open() -> ColumnElement[int]:
    return func.count(case((_task_state("escalated"), 1)))


def _notice(row: SupervisorTaskRow) -> TaskNotice:
    return TaskNotice(id=row.id, code=row.code or f"T{row.id}", case_number=row.case_number, kind=row.kind,
                      grid=row.grid_code, supervisor_name=row.supervisor_name,
                      supervisor_phone=row.supervisor_phone, note=row.note, answer=row.answer,
                      answer_text=row.answer_text, created_at=row.created_at, answered_at=row.answered_at,
                      escalated_at=row.escalated_at)


@dataclass(frozen=True)
class Evaluation:
    """综合评价 figures for a period (see docs/console.md for the definitions)."""

    intake: int
    registered: int
    due: int
    closed: int
    closed_on_time: int
    repeats: int

    @staticmethod
    def _rate(part: int, whole: int) -> float | None:
        return round(part / whole, 4) if whole else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "intake": self.intake, "registered": self.registered, "due": self.due, "closed": self.closed,
            "closed_on_time": self.closed_on_time, "repeats": self.repeats,
            "closure_rate": self._rate(self.closed, self.due),
            "on_time_closure_rate": self._rate(self.closed_on_time, self.due),
            "repeat_rate": self._rate(self.repeats, self.intake),
        }


def _brief(row: CaseRow) -> CaseBrief:
    return CaseBrief(number=row.number, status=row.status, channel=row.channel, category=row.category_code,
                     grid=row.grid_code, address=row.address, description=row.description,
                     created_at=row.created_at, reporter_phone=row.reporter_phone, anonymous=row.anonymous,
                     confidential=row.confidential)


@dataclass
class ConsoleQueries:
    sessions: async_sessionmaker[AsyncSession]

    async def queue(self, limit: int = 300) -> tuple[list[QueueRow], int]:
        """Drafts waiting for a call-station staff member, oldest first, and how many there are."""
        async with self.sessions() as session:
            total = await session.scalar(
                select(func.count()).select_from(CaseRow).where(CaseRow.status == CaseStatus.DRAFT.value)) or 0
            rows = (await session.scalars(
                select(CaseRow).where(CaseRow.status == CaseStatus.DRAFT.value)
                .order_by(CaseRow.created_at, CaseRow.id).limit(limit))).all()
        return [QueueRow(number=r.number, channel=r.channel, flags=tuple(r.flags or ()),
                         recording=bool(r.recording_ref), recording_ref=r.recording_ref,
                         menu_choice=bool(r.kind or r.category_major), description=r.description,
                         suggested_category=r.suggested_category, category=r.category_code,
                         created_at=r.created_at, reporter_phone=r.reporter_phone, anonymous=r.anonymous,
                         confidential=r.confidential) for r in rows], total

    async def inbound_for(self, number: str, limit: int = 500) -> list[InboundText]:
        """The texts that made a case or were folded into it, oldest first."""
        async with self.sessions() as session:
            rows = (await session.execute(
                select(SmsInboundRow.received_at, SmsInboundRow.sender, SmsInboundRow.text, SmsInboundRow.outcome)
                .where(SmsInboundRow.case_number == number, SmsInboundRow.outcome.in_(("draft", "folded")))
                .order_by(SmsInboundRow.received_at, SmsInboundRow.id).limit(limit))).all()
        return [InboundText(received_at=r[0], sender=r[1], text=r[2], outcome=r[3]) for r in rows]

    async def outbox_for(self, case_id: int) -> list[OutboxMessage]:
        async with self.sessions() as session:
            rows = (await session.scalars(
                select(OutboxRow).where(OutboxRow.case_id == case_id).order_by(OutboxRow.id))).all()
        return [OutboxMessage(recipient=r.recipient, template=r.template, body=r.body, status=r.status,
                              created_at=r.created_at, sent_at=r.sent_at, delivered_at=r.delivered_at)
                for r in rows]

    async def duplicates(self, number: str, category: str, grids: Sequence[str], since: dt.datetime,
                         limit: int = 20) -> list[CaseBrief]:
        """Same category, same or neighbouring grid, created since `since`, still open."""
        async with self.sessions() as session:
            rows = (await session.scalars(
                select(CaseRow).where(
                    CaseRow.number != number, CaseRow.category_code == category, CaseRow.grid_code.in_(list(grids)),
                    CaseRow.created_at >= since, CaseRow.status.in_(_MERGE_TARGET_STATES),
                    CaseRow.master_id.is_(None))
                .order_by(CaseRow.created_at.desc(), CaseRow.id.desc()).limit(limit))).all()
        return [_brief(r) for r in rows]

    async def duplicate_candidates(self, number: str, since: dt.datetime, category: str | None,
                                   phone: str | None, limit: int = 200) -> list[tuple[CaseBrief, str | None]]:
        """Open cases since `since` (not `number`, not merged) of the category, counting a
        draft's suggested category while it has none, or from the same caller; with each
        one's suggested category. The console weighs them (grid, text) itself."""
        wanted: list[ColumnElement[bool]] = []
        if category:
            wanted.append(func.coalesce(CaseRow.category_code, CaseRow.suggested_category) == category)
        if phone:
            wanted.append(CaseRow.reporter_phone == phone)
        if not wanted:
            return []
        async with self.sessions() as session:
            rows = (await session.scalars(
                select(CaseRow).where(
                    CaseRow.number != number, CaseRow.created_at >= since,
                    CaseRow.status.in_(_MERGE_TARGET_STATES), CaseRow.master_id.is_(None),
                    wanted[0] if len(wanted) == 1 else wanted[0] | wanted[1])
                .order_by(CaseRow.created_at.desc(), CaseRow.id.desc()).limit(limit))).all()
        return [(_brief(r), r.suggested_category) for r in rows]

    async def brief(self, number: str) -> CaseBrief | None:
        async with self.sessions() as session:
            row = await session.scalar(select(CaseRow).where(CaseRow.number == number))
        return _brief(row) if row is not None else None

    async def by_phone(self, phone: str, limit: int = 20) -> tuple[list[CaseBrief], list[CaseBrief]]:
        """A caller's open cases and their closed, rejected or merged history, newest first."""
        open_values = sorted(s.value for s in OPEN_STATES)
        async with self.sessions() as session:
            base = select(CaseRow).where(CaseRow.reporter_phone == phone)
            order = (CaseRow.created_at.desc(), CaseRow.id.desc())
            open_rows = (await session.scalars(
                base.where(CaseRow.status.in_(open_values)).order_by(*order).limit(limit))).all()
            past_rows = (await session.scalars(
                base.where(CaseRow.status.not_in(open_values)).order_by(*order).limit(limit))).all()
        return [_brief(r) for r in open_rows], [_brief(r) for r in past_rows]

    async def drafts_waiting(self) -> tuple[int, CaseBrief | None]:
        async with self.sessions() as session:
            count = await session.scalar(
                select(func.count()).select_from(CaseRow).where(CaseRow.status == CaseStatus.DRAFT.value)) or 0
            oldest = await session.scalar(
                select(CaseRow).where(CaseRow.status == CaseStatus.DRAFT.value)
                .order_by(CaseRow.created_at, CaseRow.id).limit(1))
        return count, (_brief(oldest) if oldest is not None else None)

    async def sms_out(self, start: dt.datetime, end: dt.datetime) -> tuple[int, int, int]:
        """(queued, sent, delivered) outbox messages created in [start, end)."""
        async with self.sessions() as session:
            row = (await session.execute(
                select(func.count(), func.count(OutboxRow.sent_at), func.count(OutboxRow.delivered_at))
                .where(OutboxRow.created_at >= start, OutboxRow.created_at < end))).one()
        return int(row[0]), int(row[1]), int(row[2])

    async def sms_delivery(self, start: dt.datetime, end: dt.datetime) -> tuple[int, int]:
        """(delivered, not delivered) among outbox messages sent in [start, end): a receipt said
        undeliverable/expired/deleted/rejected, or the send failed for good after it went out."""
        failed = OutboxRow.delivery_state.in_(UNDELIVERED_STATES) | and_(
            OutboxRow.status == "failed", OutboxRow.delivery_state.is_(None))
        async with self.sessions() as session:
            row = (await session.execute(
                select(func.count(case((OutboxRow.delivery_state == "delivered", 1))),
                       func.count(case((failed, 1))))
                .where(OutboxRow.sent_at >= start, OutboxRow.sent_at < end))).one()
        return int(row[0]), int(row[1])

    async def sms_in(self, start: dt.datetime, end: dt.datetime) -> int:
        """Inbound texts (sms_inbound rows) received in [start, end)."""
        async with self.sessions() as session:
            return int(await session.scalar(
                select(func.count()).select_from(SmsInboundRow)
                .where(SmsInboundRow.received_at >= start, SmsInboundRow.received_at < end)) or 0)

    async def calls(self, start: dt.datetime, end: dt.datetime) -> CallsToday:
        """Calls (call_records, one per call whatever its legs) started in [start, end), and
        the staff queue's figures from the AMI queue columns."""
        record = CallRecordRow
        async with self.sessions() as session:
            calls = await session.scalar(
                select(func.count(func.distinct(record.call_id)))
                .where(record.started_at >= start, record.started_at < end)) or 0
            rows = (await session.execute(
                select(record.queue_outcome, record.queue_wait_seconds)
                .where(record.started_at >= start, record.started_at < end,
                       record.queue_joined_at.is_not(None)))).all()
        waits = [wait for outcome, wait in rows if outcome == "answered" and wait is not None]
        return CallsToday(
            calls=int(calls), queued=len(rows), answered=len(waits),
            answered_in_target=sum(1 for wait in waits if wait <= ANSWER_TARGET_SECONDS),
            abandoned=sum(1 for outcome, _ in rows if outcome == "abandoned"),
            mean_wait_seconds=round(sum(waits) / len(waits), 1) if waits else None)

    async def counts_by(self, column: str, start: dt.datetime, end: dt.datetime,
                        limit: int = 12) -> list[tuple[str, int]]:
        """Cases created in [start, end) per category or grid, merged duplicates left out."""
        key = CaseRow.category_code if column == "category" else CaseRow.grid_code
        async with self.sessions() as session:
            rows = (await session.execute(
                select(key, func.count()).where(
                    CaseRow.created_at >= start, CaseRow.created_at < end, key.is_not(None),
                    CaseRow.status != CaseStatus.MERGED.value)
                .group_by(key).order_by(func.count().desc(), key).limit(limit))).all()
        return [(str(code), int(count)) for code, count in rows]

    async def intake(self, start: dt.datetime, end: dt.datetime) -> int:
        async with self.sessions() as session:
            return int(await session.scalar(
                select(func.count()).select_from(CaseRow)
                .where(CaseRow.created_at >= start, CaseRow.created_at < end)) or 0)

    async def evaluation(self, start: dt.datetime, end: dt.datetime, deadline: dt.timedelta) -> Evaluation:
        """Intake, registration and closure figures for [start, end), from the case log.

        A case is due in the period when its first registration plus `deadline` falls in it;
        it counts as closed when its first closure came before the period ended, and as
        closed on time when that was no later than its deadline.
        """
        registered_at = (
            select(CaseLogRow.case_id.label("case_id"), func.min(CaseLogRow.at).label("at"))
            .where(CaseLogRow.to_status == CaseStatus.REGISTERED.value).group_by(CaseLogRow.case_id).subquery())
        closed_at = (
            select(CaseLogRow.case_id.label("case_id"), func.min(CaseLogRow.at).label("at"))
            .where(CaseLogRow.to_status == CaseStatus.CLOSED.value).group_by(CaseLogRow.case_id).subquery())
        async with self.sessions() as session:
            intake = await session.scalar(
                select(func.count()).select_from(CaseRow)
                .where(CaseRow.created_at >= start, CaseRow.created_at < end)) or 0
            registered = await session.scalar(
                select(func.count()).select_from(registered_at)
                .where(registered_at.c.at >= start, registered_at.c.at < end)) or 0
            due_rows = (await session.execute(
                select(registered_at.c.at, closed_at.c.at)
                .join(CaseRow, CaseRow.id == registered_at.c.case_id)
                .outerjoin(closed_at, closed_at.c.case_id == registered_at.c.case_id)
                .where(registered_at.c.at >= start - deadline, registered_at.c.at < end - deadline,
                       CaseRow.status != CaseStatus.MERGED.value))).all()
            merged = await session.scalar(
                select(func.count()).select_from(CaseRow).where(
                    CaseRow.created_at >= start, CaseRow.created_at < end,
                    CaseRow.status == CaseStatus.MERGED.value)) or 0
            rejections = (await session.scalars(
                select(CaseLogRow.changes).join(CaseRow, CaseRow.id == CaseLogRow.case_id).where(
                    CaseRow.created_at >= start, CaseRow.created_at < end,
                    CaseRow.status == CaseStatus.REJECTED.value, CaseLogRow.action == "rejected"))).all()
        duplicates = sum(1 for changes in rejections if (changes or {}).get("reason") == "duplicate")
        closed = on_time = 0
        for reg, done in due_rows:
            if done is not None and done < end:
                closed += 1
                if done <= reg + deadline:
                    on_time += 1
        return Evaluation(intake=int(intake), registered=int(registered), due=len(due_rows), closed=closed,
                          closed_on_time=on_time, repeats=int(merged) + duplicates)

    # ---- supervisor notices (督办通知), read straight from supervisor_tasks

    async def notices(self, states: Sequence[str], case_number: str | None = None,
                      limit: int = 50) -> tuple[list[TaskNotice], NoticeCounts]:
        """Tasks in `states`, newest first, at most `limit` of each state, and the exact counts.

        With `case_number`, only that case's tasks (looked up by case id, which is indexed).
        """
        task = SupervisorTaskRow
        async with self.sessions() as session:
            where: list[ColumnElement[bool]] = []
            if case_number is not None:
                case_id = await session.scalar(select(CaseRow.id).where(CaseRow.number == case_number))
                if case_id is None:
                    return [], NoticeCounts(0, 0, 0, 0)
                where.append(task.case_id == case_id)
            total, answered, escalated = (await session.execute(
                select(func.count(), func.count(task.answered_at), _escalated_open()).where(*where))).one()
            items: list[TaskNotice] = []
            for state in states:
                rows = (await session.scalars(
                    select(task).where(*where, _task_state(state))
                    .order_by(task.created_at.desc(), task.id.desc()).limit(limit))).all()
                items.extend(_notice(r) for r in rows)
        items.sort(key=lambda n: (n.created_at, n.id), reverse=True)
        counts = NoticeCounts(sent=int(total), answered=int(answered), escalated=int(escalated),
                              waiting=int(total) - int(answered) - int(escalated))
        return items, counts

    async def supervision(self, start: dt.datetime, end: dt.datetime) -> SupervisionToday:
        """Tasks sent, answered and escalated in [start, end); tasks open now."""
        task = SupervisorTaskRow

        def within(column: Any) -> ColumnElement[bool]:
            return and_(column >= start, column < end)

        async with self.sessions() as session:
            row = (await session.execute(select(
                func.count(case((within(task.created_at), 1))),
                func.count(case((within(task.answered_at), 1))),
                func.count(case((and_(within(task.answered_at), task.answer == "confirmed"), 1))),
                func.count(case((and_(within(task.answered_at), task.answer == "not_confirmed"), 1))),
                func.count(case((within(task.escalated_at), 1))),
                func.count(case((_task_state("waiting"), 1))),
                _escalated_open()))).one()
            oldest = await session.scalar(
                select(task).where(_task_state("waiting")).order_by(task.created_at, task.id).limit(1))
        return SupervisionToday(sent=int(row[0]), answered=int(row[1]), confirmed=int(row[2]),
                                not_confirmed=int(row[3]), escalated=int(row[4]), waiting_now=int(row[5]),
                                escalated_open_now=int(row[6]),
                                oldest_waiting=_notice(oldest) if oldest is not None else None)
