"""Supervisor tasks (监督员任务): verify a report (核实) or check a closure (核查) by SMS.

The platform names a case, a kind and a grid; the roster gives the grid's supervisor;
the notice goes out through the outbox. The supervisor answers `1`/`属实` or
`2`/`不属实`, with or without the task code; the answer is written to the task and to
the case log. A task nobody answers within `sms.task_escalation_minutes` goes to the
shift leader's phone once.

Every change is one transaction together with its outbox message and case-log entry.
The answer path takes the caller's session so the intake service can commit the
inbound SMS, the answer and the reply together.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callcenter.cases.grids import GridCode, GridIndex, InvalidGridCode
from callcenter.db.tables import CaseLogRow, CaseRow
from callcenter.db.tables_sms import SupervisorTaskRow
from callcenter.metrics import MetricsRegistry
from callcenter.service import sms_texts as texts
from callcenter.service.errors import CaseNotFound, InvalidInput
from callcenter.service.outbox import OutgoingSms, enqueue, outbox_key
from callcenter.service.sms_roster import Roster
from sms.keywords import TaskReply
from sms.privacy import mask_number

log = structlog.get_logger(__name__)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TaskKind(enum.StrEnum):
    VERIFY = "verify"   # 核实: is the reported problem real?
    CHECK = "check"     # 核查: is the closed problem really fixed?

    @property
    def label_zh(self) -> str:
        return texts.TASK_KINDS_ZH[self.value]


@dataclass(frozen=True)
class TaskView:
    code: str
    case_number: str
    kind: str
    grid: str
    supervisor_name: str
    supervisor_phone: str
    note: str | None
    status: str
    answer: str | None
    answer_text: str | None
    created_at: dt.datetime
    answered_at: dt.datetime | None
    escalated_at: dt.datetime | None
    created_by: str


@dataclass(frozen=True)
class AnswerOutcome:
    """What a supervisor's SMS answer did, and the reply to send (None: not a task answer)."""

    reply: str | None
    task_code: str | None = None
    case_id: int | None = None
    case_number: str | None = None
    recorded: bool = False
    detail: str = ""


def _view(row: SupervisorTaskRow) -> TaskView:
    status = "answered" if row.answered_at else "escalated" if row.escalated_at else "sent"
    return TaskView(
        code=row.code or "", case_number=row.case_number, kind=row.kind, grid=row.grid_code,
        supervisor_name=row.supervisor_name, supervisor_phone=row.supervisor_phone, note=row.note,
        status=status, answer=row.answer, answer_text=row.answer_text, created_at=row.created_at,
        answered_at=row.answered_at, escalated_at=row.escalated_at, created_by=row.created_by)


@dataclass
class TaskService:
    sessions: async_sessionmaker[AsyncSession]
    grids: GridIndex
    roster: Roster
    escalation_minutes: float = 30.0
    shift_leader_phone: str | None = None
    metrics: MetricsRegistry | None = None
    now: Callable[[], dt.datetime] = utcnow
    on_outbox: Callable[[], None] = lambda: None

    @property
    def leader_phone(self) -> str | None:
        return self.shift_leader_phone or self.roster.shift_leader_phone

    # ---- creation and reads ---------------------------------------------------------

    async def create(self, *, case_number: str, kind: TaskKind, actor: str, grid: str | None = None,
                     note: str | None = None, request_id: str | None = None) -> TaskView:
        """Record the task and queue its notice; the same `request_id` returns the first task."""
        if request_id:
            async with self.sessions() as session:
                existing = await session.scalar(
                    select(SupervisorTaskRow).where(SupervisorTaskRow.request_id == request_id))
                if existing is not None:
                    return _view(existing)
        if note is not None and len(note) > 500:
            raise InvalidInput("note is at most 500 characters", field="note")
        now = self.now()
        try:
            async with self.sessions() as session, session.begin():
                case = await session.scalar(select(CaseRow).where(CaseRow.number == case_number))
                if case is None:
                    raise CaseNotFound(f"no case with intake number {case_number}", field="case")
                grid_code = self._grid(grid or case.grid_code)
                supervisor = self.roster.supervisor_for(grid_code)
                if supervisor is None:
                    raise InvalidInput(f"no supervisor on the roster for grid {grid_code}", field="grid")
                row = SupervisorTaskRow(
                    request_id=request_id or None, case_id=case.id, case_number=case.number, kind=kind.value,
                    grid_code=grid_code, supervisor_name=supervisor.name, supervisor_phone=supervisor.phone,
                    note=note, created_by=actor[:128], created_at=now)
                session.add(row)
                await session.flush()
                row.code = f"T{row.id}"
                place = self._place(grid_code, case.address)
                excerpt = f"{place}{case.description}" if place else case.description
                body = texts.fit(texts.TASK_NOTICE, excerpt or "（无描述）", number=case.number,
                                 kind=kind.label_zh, code=row.code)
                await enqueue(session, [OutgoingSms(
                    key=outbox_key("task-notice", row.code), case_id=case.id, recipient=supervisor.phone,
                    template="task_notice", body=body)], now)
                session.add(CaseLogRow(
                    case_id=case.id, at=now, actor=actor[:128], action="task_sent",
                    changes={"task": row.code, "kind": kind.value, "grid": grid_code,
                             "supervisor": supervisor.name}, reason=note))
        except IntegrityError:
            if not request_id:
                raise
            async with self.sessions() as session:  # a concurrent retry of the same request won
                existing = await session.scalar(
                    select(SupervisorTaskRow).where(SupervisorTaskRow.request_id == request_id))
                if existing is None:
                    raise
                return _view(existing)
        log.info("sms.task.created", case_number=case_number, task=row.code, kind=kind.value,
                 grid=grid_code, phone=mask_number(supervisor.phone))
        self.on_outbox()
        return _view(row)

    def _grid(self, raw: str | None) -> str:
        if not raw:
            raise InvalidInput("the case has no grid; name one", field="grid")
        try:
            code = GridCode.parse(raw)
        except InvalidGridCode as exc:
            raise InvalidInput(str(exc), field="grid") from exc
        if self.grids.get(code) is None:
            raise InvalidInput(f"unknown grid code {code.value}", field="grid")
        return code.value

    def _place(self, grid_code: str, address: str | None) -> str:
        if address:
            return f"{address}："
        grid = self.grids.get(grid_code)
        return f"{grid.name}：" if grid is not None else ""

    async def list_for_case(self, case_number: str) -> list[TaskView]:
        async with self.sessions() as session:
            rows = await session.scalars(
                select(SupervisorTaskRow).where(SupervisorTaskRow.case_number == case_number)
                .order_by(SupervisorTaskRow.id))
            return [_view(row) for row in rows]

    async def get(self, code: str) -> TaskView | None:
        async with self.sessions() as session:
            row = await session.scalar(select(SupervisorTaskRow).where(SupervisorTaskRow.code == code))
            return None if row is None else _view(row)

    # ---- answers by SMS ----------------------------------------------------------------

    async def record_answer(self, session: AsyncSession, *, phone: str, reply: TaskReply, text: str,
                            now: dt.datetime) -> AnswerOutcome:
        """Apply a supervisor's 属实/不属实 inside the caller's transaction.

        A number with no open task and no code gets `reply=None`: the caller treats the
        text as something else (a citizen's "1").
        """
        open_tasks = (await session.scalars(
            select(SupervisorTaskRow).where(SupervisorTaskRow.supervisor_phone == phone,
                                            SupervisorTaskRow.answered_at.is_(None))
            .order_by(SupervisorTaskRow.id.desc()))).all()
        if reply.task_code is not None:
            task = await session.scalar(
                select(SupervisorTaskRow).where(SupervisorTaskRow.code == reply.task_code,
                                                SupervisorTaskRow.supervisor_phone == phone))
            if task is None:
                return AnswerOutcome(reply=texts.NO_TASK.format(code=reply.task_code),
                                     task_code=reply.task_code, detail="unknown task")
        elif len(open_tasks) == 1:
            task = open_tasks[0]
        elif len(open_tasks) > 1:
            return AnswerOutcome(reply=texts.TASK_AMBIGUOUS.format(count=len(open_tasks),
                                                                   code=open_tasks[0].code),
                                 detail="several open tasks")
        else:
            return AnswerOutcome(reply=None, detail="no open task")
        answer_zh = texts.ANSWERS_ZH[reply.answer.value]
        if task.answered_at is not None:
            return AnswerOutcome(
                reply=texts.TASK_ALREADY.format(number=task.case_number, code=task.code,
                                                answer=texts.ANSWERS_ZH[task.answer or reply.answer.value]),
                task_code=task.code, case_id=task.case_id, case_number=task.case_number,
                detail="already answered")
        task.answer = reply.answer.value
        task.answer_text = text[:256]
        task.answered_at = now
        session.add(CaseLogRow(
            case_id=task.case_id, at=now, actor=f"supervisor:{task.supervisor_name}"[:128],
            action="task_answered",
            changes={"task": task.code, "kind": task.kind, "answer": reply.answer.value,
                     "answer_zh": answer_zh, "late": task.escalated_at is not None},
            reason=text[:500]))
        log.info("sms.task.answered", case_number=task.case_number, task=task.code,
                 answer=reply.answer.value, phone=mask_number(phone))
        if self.metrics is not None:
            self.metrics.counter("sms_tasks_answered_total", "supervisor tasks answered by SMS").inc(
                answer=reply.answer.value)
        return AnswerOutcome(
            reply=texts.TASK_ACK.format(number=task.case_number, code=task.code, answer=answer_zh),
            task_code=task.code, case_id=task.case_id, case_number=task.case_number, recorded=True)

    # ---- escalation ------------------------------------------------------------------------

    async def escalate_due(self) -> int:
        """Send every task unanswered for the configured time to the shift leader, once.

        One conditional UPDATE takes the due tasks (`escalated_at IS NULL`), so two runs at
        once (a lease lost mid-run, or an operator's manual pass) escalate each task once;
        the outbox key stops a second notice even then."""
        now = self.now()
        cutoff = now - dt.timedelta(minutes=self.escalation_minutes)
        leader = self.leader_phone
        count = 0
        tasks = SupervisorTaskRow.__table__
        async with self.sessions() as session, session.begin():
            due = sorted((await session.execute(
                update(tasks).where(tasks.c.answered_at.is_(None), tasks.c.escalated_at.is_(None),
                                    tasks.c.created_at <= cutoff)
                .values(escalated_at=now, escalation_phone=leader)
                .returning(tasks.c.id, tasks.c.code, tasks.c.case_id, tasks.c.case_number, tasks.c.kind,
                           tasks.c.supervisor_name))).all(), key=lambda task: task.id)
            for task in due:
                changes: dict[str, Any] = {"task": task.code, "to": "shift_leader" if leader else None}
                if leader:
                    body = texts.TASK_ESCALATION.format(
                        number=task.case_number, kind=texts.TASK_KINDS_ZH.get(task.kind, task.kind),
                        code=task.code, minutes=f"{self.escalation_minutes:g}", name=task.supervisor_name)
                    await enqueue(session, [OutgoingSms(
                        key=outbox_key("task-escalation", task.code or str(task.id)), case_id=task.case_id,
                        recipient=leader, template="task_escalation", body=body)], now)
                session.add(CaseLogRow(case_id=task.case_id, at=now, actor="system:sms", action="task_escalated",
                                       changes=changes, reason=None))
                count += 1
                if leader:
                    log.warning("sms.task.escalated", case_number=task.case_number, task=task.code,
                                phone=mask_number(leader))
                else:
                    log.error("sms.task.escalation_without_leader", case_number=task.case_number,
                              task=task.code, note="set sms.shift_leader_phone or [shift_leader] in the roster")
        if count:
            if self.metrics is not None:
                self.metrics.counter("sms_tasks_escalated_total", "tasks escalated to the shift leader").inc(count)
            self.on_outbox()
        return count


def parse_kind(value: str) -> TaskKind:
    try:
        return TaskKind(value)
    except ValueError as exc:
        raise InvalidInput("kind must be verify (核实) or check (核查)", field="kind") from exc


__all__ = ["AnswerOutcome", "TaskKind", "TaskService", "TaskView", "parse_kind"]
