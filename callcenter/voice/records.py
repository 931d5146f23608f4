"""Call records: one `call_records` row per IVR leg, written when the leg ends, and the
staff queue's part of the call added from AMI queue events.

A call that goes hotline -> staff queue -> voicemail runs two AGI sessions on one channel,
so one `agi_uniqueid`: each session is a leg (1, 2, ...) of the same call, and the second
leg's draft (the voicemail) has a row of its own. The queue's events (`QueueUpdate`, from
`callcenter.voice.queue_events`) land on the call's latest leg: when the caller joined,
when a person answered and after how long, or that the caller gave up waiting.

The dashboard's call figures (calls, answered by a person within 15 s, abandoned in the
queue, mean wait) are counted from these rows. Writing one never breaks or delays a call
for long: a failure (or a database slower than `WRITE_TIMEOUT_SECONDS`) is logged and the
call ends as it would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

import structlog
from sqlalchemy import func, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callcenter.cases.phones import InvalidPhoneNumber, normalise_phone
from callcenter.db.tables import CallRecordRow
from callcenter.voice.queue_events import ABANDONED as QUEUE_ABANDONED
from callcenter.voice.queue_events import ANSWERED, COMPLETED, JOINED, LEFT, QueueUpdate

log = structlog.get_logger(__name__)

WRITE_TIMEOUT_SECONDS = 5.0

# Outcomes, in the order the runner decides them.
ERROR = "error"              # the IVR failed (the caller was handed to a person where possible)
TRANSFERRED = "transferred"  # handed to the dialplan for an agent or voicemail
SETTLED = "settled"          # the caller's business was done (a settled state was passed)
ABANDONED = "abandoned"      # the caller hung up before that, or before we answered
OUTCOMES = (SETTLED, TRANSFERRED, ABANDONED, ERROR)
# Legs of one call: more than this means a dialplan loop, not a caller.
MAX_LEGS = 20
# A queue event may come before the IVR leg's row is written (the AGI session ends and the
# dialplan enters the queue at once): the update waits this long for the row to appear.
QUEUE_ROW_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class CallRecord:
    call_id: str
    route: str
    caller: str | None
    started_at: dt.datetime
    answered_at: dt.datetime | None
    ended_at: dt.datetime
    last_state: str | None
    outcome: str
    case_number: str | None


@dataclass(frozen=True)
class CallRecords:
    sessions: async_sessionmaker[AsyncSession]
    dialect: str
    timeout: float = WRITE_TIMEOUT_SECONDS
    region: str = "CN"

    async def write(self, record: CallRecord) -> bool:
        """One INSERT as the call's next leg; True when stored. Never raises (except on
        cancellation). Two legs written at once both get a number: the loser of the race
        on (call_id, leg) tries the next one."""
        values = {
            "call_id": record.call_id[:64], "route": record.route[:32], "caller": record.caller,
            "started_at": record.started_at, "answered_at": record.answered_at, "ended_at": record.ended_at,
            "last_state": (record.last_state or None) and record.last_state[:64], "outcome": record.outcome,
            "case_number": record.case_number,
        }
        try:
            async with asyncio.timeout(self.timeout):
                leg = await self._insert_leg(values)
        except Exception as exc:  # noqa: BLE001 - a lost record must not break the call
            log.error("voice.call_record_failed", call_id=record.call_id, error=type(exc).__name__,
                      detail=str(exc)[:200])
            return False
        if leg is None:
            log.warning("voice.call_record_too_many_legs", call_id=record.call_id)
            return False
        if leg > 1:
            log.info("voice.call_record_leg", call_id=record.call_id, leg=leg, route=record.route)
        return True

    async def _insert_leg(self, values: dict[str, object]) -> int | None:
        """INSERT ... SELECT max(leg) + 1: one statement, so one short write transaction (a
        read followed by a write would have to upgrade its lock, which SQLite refuses under
        load); a concurrent leg taking the same number makes it try again."""
        insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
        record = CallRecordRow
        columns = list(values)
        next_leg = func.coalesce(func.max(record.leg), 0) + 1
        source = select(*(literal(values[c], type_=record.__table__.c[c].type) for c in columns),
                        next_leg).where(record.call_id == values["call_id"])
        statement = (insert(record).from_select([*columns, "leg"], source)
                     .on_conflict_do_nothing(index_elements=["call_id", "leg"])
                     .returning(record.leg))
        async with self.sessions() as session:
            for _ in range(MAX_LEGS):
                leg = await session.scalar(statement)
                await session.commit()
                if leg is not None:
                    return leg if leg <= MAX_LEGS else None
        return None

    async def apply_queue(self, update: QueueUpdate, *, wait: float = QUEUE_ROW_WAIT_SECONDS,
                          poll: float = 0.1) -> bool:
        """Write one queue event onto the call's latest leg; True when a row took it.

        A call that reached the queue without an IVR leg (the service was down, or a direct
        queue extension) gets a row of its own (route `queue`) once `wait` has passed."""
        changes = _queue_changes(update)
        if not changes:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        try:
            while True:
                async with asyncio.timeout(self.timeout):
                    if await self._update_latest(update.call_id, changes, update.kind):
                        return True
                if loop.time() >= deadline:
                    break
                await asyncio.sleep(poll)
            if update.kind not in (JOINED, ANSWERED, QUEUE_ABANDONED, LEFT):
                return False
            async with asyncio.timeout(self.timeout):
                leg = await self._insert_leg({
                    "call_id": update.call_id[:64], "route": "queue", "caller": self._e164(update.caller),
                    "started_at": update.at, "answered_at": None, "ended_at": update.at, "last_state": None,
                    "outcome": TRANSFERRED, "case_number": update.case_number, **changes})
            return leg is not None
        except Exception as exc:  # noqa: BLE001 - a lost queue event must not stop the others
            log.error("voice.queue_record_failed", call_id=update.call_id, kind=update.kind,
                      error=type(exc).__name__, detail=str(exc)[:200])
            return False

    def _e164(self, raw: str | None) -> str | None:
        try:
            return normalise_phone(raw, self.region) if raw else None
        except InvalidPhoneNumber:
            return None

    async def _update_latest(self, call_id: str, changes: dict[str, object], kind: str) -> bool:
        """One UPDATE of the latest leg; False when the call has no row (yet)."""
        record = CallRecordRow
        latest = select(func.max(record.leg)).where(record.call_id == call_id).scalar_subquery()
        statement = update(record).where(record.call_id == call_id, record.leg == latest).values(**changes)
        if kind == LEFT:  # a late "left" never overwrites an answer or an abandon
            statement = statement.where(record.queue_outcome.is_(None))
        async with self.sessions() as session:
            result = await session.execute(statement)
            await session.commit()
            if result.rowcount:  # type: ignore[attr-defined]
                return True
            if kind != LEFT:
                return False
            return await session.scalar(select(func.count()).where(record.call_id == call_id)) > 0

def _queue_changes(update: QueueUpdate) -> dict[str, object]:
    if update.kind == JOINED:
        return {"queue_joined_at": update.at}
    if update.kind == ANSWERED:
        return {"agent_answered_at": update.at, "queue_wait_seconds": update.wait_seconds,
                "queue_outcome": ANSWERED, "agent_interface": (update.interface or "")[:64] or None}
    if update.kind == QUEUE_ABANDONED:
        return {"queue_wait_seconds": update.wait_seconds, "queue_outcome": QUEUE_ABANDONED}
    if update.kind == LEFT:
        return {"queue_wait_seconds": update.wait_seconds, "queue_outcome": LEFT}
    if update.kind == COMPLETED:
        return {"talk_seconds": update.talk_seconds}
    return {}
