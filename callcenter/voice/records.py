"""Call records: one `call_records` row per IVR call, written once when the call ends.

The dashboard's call figures (calls today, share answered within 15 s, abandoned calls)
are counted from these rows. Writing one never breaks or delays a call for long: a failure
(or a database slower than `WRITE_TIMEOUT_SECONDS`) is logged and the call ends as it would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

import structlog
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callcenter.db.tables import CallRecordRow

log = structlog.get_logger(__name__)

WRITE_TIMEOUT_SECONDS = 5.0

# Outcomes, in the order the runner decides them.
ERROR = "error"              # the IVR failed (the caller was handed to a person where possible)
TRANSFERRED = "transferred"  # handed to the dialplan for an agent or voicemail
SETTLED = "settled"          # the caller's business was done (a settled state was passed)
ABANDONED = "abandoned"      # the caller hung up before that, or before we answered
OUTCOMES = (SETTLED, TRANSFERRED, ABANDONED, ERROR)


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

    async def write(self, record: CallRecord) -> bool:
        """One INSERT; True when stored. Never raises (except on cancellation)."""
        values = {
            "call_id": record.call_id[:64], "route": record.route[:32], "caller": record.caller,
            "started_at": record.started_at, "answered_at": record.answered_at, "ended_at": record.ended_at,
            "last_state": (record.last_state or None) and record.last_state[:64], "outcome": record.outcome,
            "case_number": record.case_number,
        }
        try:
            insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
            async with asyncio.timeout(self.timeout), self.sessions() as session:
                stored = await session.scalar(
                    insert(CallRecordRow).values(**values).on_conflict_do_nothing(index_elements=["call_id"])
                    .returning(CallRecordRow.id))
                await session.commit()
        except Exception as exc:  # noqa: BLE001 - a lost record must not break the call
            log.error("voice.call_record_failed", call_id=record.call_id, error=type(exc).__name__,
                      detail=str(exc)[:200])
            return False
        if stored is None:
            log.warning("voice.call_record_duplicate", call_id=record.call_id)
            return False
        return True
