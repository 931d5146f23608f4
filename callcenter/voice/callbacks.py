"""Rating call-backs (回访): a reporter asks, in the IVR or through staff, to be called back
to rate their case; once it is closed the service places that call through AMI.

A request is one `callback_requests` row per case:

    waiting   -> the case is not closed yet, or the next attempt is not due
    calling   -> Originate sent (ActionID kept); Asterisk reports through events:
                 OriginateResponse Failure (no answer, busy, ...) -> waiting again with the
                 next attempt `retry_minutes` later, or `unreached` after `max_attempts`;
                 OriginateResponse Success -> the citizen answered and the `callback` IVR
                 runs; the channel's Hangup ends it: `rated` with the score the IVR stored
                 on the case, or `not_rated`
    failed    -> the case cannot be called back (no phone number left, case gone)

Calls are placed only within `[callback] hours_start`-`hours_end` local time. The outcome
and the score are also written to the case's log (action `callback`), so staff see them
on the case. While AMI is down nothing is counted as an attempt; a call whose outcome never
arrives (Asterisk restarted) counts as failed after `stale_minutes`.

With several nodes, `run_once` runs on the node holding the `voice-callbacks` lease, and
only while its AMI link is up; each call is claimed with a conditional UPDATE (`waiting` ->
`calling`) before its Originate, so a request is never called twice at once. The node that
placed a call hears its outcome on its own AMI link; if that node dies, the call counts as
failed after `stale_minutes` and is retried by the lease's next holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callcenter.cases.lifecycle import CaseStatus
from callcenter.cases.numbering import CaseNumber, InvalidCaseNumber
from callcenter.cases.phones import InvalidPhoneNumber, normalise_phone
from callcenter.db.tables import CallbackRequestRow, CaseLogRow, CaseRow
from callcenter.settings import CallbackSettings
from callcenter.voice.ami import AmiClient, AmiError, AmiUnavailable
from callcenter.voice.ami_protocol import Event
from callcenter.voice.metrics import VoiceMetrics
from sms.privacy import mask_number

log = structlog.get_logger(__name__)

WAITING = "waiting"
CALLING = "calling"
RATED = "rated"
NOT_RATED = "not_rated"
UNREACHED = "unreached"
FAILED = "failed"
ACTIVE = (WAITING, CALLING)
ACTOR = "callback"
CALLBACK_VARIABLE = "CALLCENTER_CALLBACK_ID"
# OriginateResponse Reason: the channel's last control frame (Asterisk's frame.h).
REASONS = {"0": "failed", "1": "hangup", "3": "no_answer", "5": "busy", "8": "congestion"}
_RESULTS = frozenset({"placed", "failed", "hangup", "no_answer", "busy", "congestion", "lost", RATED, NOT_RATED})
# The IVR files the rating before it says goodbye; a hang-up during the rating still lets
# the owed work finish: give it this long before reading the score.
SETTLE_SECONDS = 1.0


class CallbackRefused(ValueError):
    """A request that cannot be taken; says why. `code`: invalid | not_found | no_phone | busy."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class CallbackView:
    case_number: str
    phone: str
    status: str
    attempts: int
    last_result: str | None
    score: int | None
    next_attempt_at: dt.datetime | None


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _clock(value: str) -> dt.time:
    hours, minutes = (int(part) for part in value.split(":"))
    return dt.time.max if hours == 24 else dt.time(hours, minutes)


class CallbackService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: CallbackSettings, *,
                 ami: AmiClient | None, timezone: str = "Asia/Shanghai", region: str = "CN",
                 now: Callable[[], dt.datetime] = utcnow, settle_seconds: float = SETTLE_SECONDS,
                 metrics: VoiceMetrics | None = None) -> None:
        self.sessions = sessions
        self.settings = settings
        self.ami = ami
        self.zone = zoneinfo.ZoneInfo(timezone)
        self.region = region
        self.now = now
        self.settle_seconds = settle_seconds
        self.metrics = metrics
        self._start = _clock(settings.hours_start)
        self._end = _clock(settings.hours_end)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._pending: set[asyncio.Task[None]] = set()
        # ActionID -> request id while its Originate has no outcome; Uniqueid -> request id
        # while the answered call runs.
        self._actions: dict[str, int] = {}
        self._channels: dict[str, int] = {}

    # ---- requests

    async def request(self, case_number: str, *, by: str, phone: str | None = None) -> CallbackView:
        """Ask for a rating call-back on a case (again: the attempts start over).

        `phone` defaults to the case's reporter; an anonymous case without one is refused."""
        try:
            number = CaseNumber.parse(case_number).value
        except InvalidCaseNumber as exc:
            raise CallbackRefused(f"not an intake number: {exc}") from exc
        try:
            explicit = normalise_phone(phone, self.region) if phone else None
        except InvalidPhoneNumber as exc:
            raise CallbackRefused(f"not a phone number: {exc}") from exc
        now = self.now()
        async with self.sessions() as session, session.begin():
            case = await session.scalar(select(CaseRow).where(CaseRow.number == number))
            if case is None:
                raise CallbackRefused(f"no case {number}", "not_found")
            target = explicit or case.reporter_phone
            if not target:
                raise CallbackRefused(f"case {number} has no number to call back", "no_phone")
            row = await session.scalar(select(CallbackRequestRow).where(CallbackRequestRow.case_id == case.id))
            if row is None:
                row = CallbackRequestRow(case_id=case.id, attempts=0)
                session.add(row)
            elif row.status == CALLING:
                raise CallbackRefused(f"case {number} is being called back right now", "busy")
            row.phone, row.requested_by, row.requested_at = target, by[:128], now
            row.status, row.attempts, row.next_attempt_at = WAITING, 0, None
            row.action_id = row.channel_id = row.last_result = None
            row.score = row.finished_at = None
            session.add(CaseLogRow(case_id=case.id, at=now, actor=by[:128], action="callback_requested",
                                   changes={"phone": mask_number(target)}))
        log.info("voice.callback_requested", case_number=number, by=by, phone=mask_number(target))
        self._wake.set()
        return await self.get(number)  # type: ignore[return-value]

    async def get(self, case_number: str) -> CallbackView | None:
        async with self.sessions() as session:
            found = (await session.execute(
                select(CallbackRequestRow, CaseRow.number).join(CaseRow, CaseRow.id == CallbackRequestRow.case_id)
                .where(CaseRow.number == case_number))).first()
        if found is None:
            return None
        row, number = found
        return CallbackView(case_number=number, phone=row.phone, status=row.status, attempts=row.attempts,
                            last_result=row.last_result, score=row.score, next_attempt_at=row.next_attempt_at)

    # ---- placing calls

    def in_hours(self, at: dt.datetime) -> bool:
        local = at.astimezone(self.zone).time()
        return self._start <= local < self._end

    def next_opening(self, at: dt.datetime) -> dt.datetime:
        """The first moment at or after `at` within the calling hours."""
        local = at.astimezone(self.zone)
        if self.in_hours(at):
            return at
        day = local.date() if local.time() < self._start else local.date() + dt.timedelta(days=1)
        return dt.datetime.combine(day, self._start, self.zone).astimezone(dt.UTC)

    async def run_once(self) -> int:
        """Place the call-backs that are due now; returns how many were sent to Asterisk."""
        now = self.now()
        await self._expire_stale(now)
        async with self.sessions() as session:
            rows = (await session.execute(
                select(CallbackRequestRow.id, CaseRow.number, CallbackRequestRow.phone,
                       CallbackRequestRow.next_attempt_at)
                .join(CaseRow, CaseRow.id == CallbackRequestRow.case_id)
                .where(CallbackRequestRow.status == WAITING, CaseRow.status == CaseStatus.CLOSED.value)
                .order_by(CallbackRequestRow.id))).all()
        placed = 0
        for request_id, number, phone, next_at in rows:
            if next_at is not None and next_at > now:
                continue
            if not self.in_hours(now):
                await self._set(request_id, next_attempt_at=self.next_opening(now))
                continue
            if await self._place(request_id, number, phone, now):
                placed += 1
        return placed

    async def _place(self, request_id: int, number: str, phone: str, now: dt.datetime) -> bool:
        if self.ami is None or not self.ami.connected:
            return False  # not an attempt; tried again at the next poll
        action_id = self.ami.new_action_id("callback")
        async with self.sessions() as session, session.begin():
            claimed = await session.execute(
                update(CallbackRequestRow).where(CallbackRequestRow.id == request_id,
                                                 CallbackRequestRow.status == WAITING)
                .values(status=CALLING, attempts=CallbackRequestRow.attempts + 1, action_id=action_id,
                        next_attempt_at=now, channel_id=None))
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return False
        self._actions[action_id] = request_id
        try:
            await self.ami.originate_callback(phone, number, action_id=action_id,
                                              variables={CALLBACK_VARIABLE: str(request_id)})
        except AmiUnavailable as exc:
            self._actions.pop(action_id, None)
            log.warning("voice.callback_ami_down", case_number=number, error=str(exc))
            await self._set(request_id, status=WAITING, attempts=CallbackRequestRow.attempts - 1,
                            action_id=None, next_attempt_at=None)
            return False
        except (AmiError, ValueError) as exc:
            self._actions.pop(action_id, None)
            log.warning("voice.callback_refused", case_number=number, error=str(exc))
            await self._attempt_failed(request_id, "failed")
            return False
        self._count("placed")
        log.info("voice.callback_placed", case_number=number, phone=mask_number(phone), action_id=action_id)
        return True

    async def _expire_stale(self, now: dt.datetime) -> None:
        limit = now - dt.timedelta(minutes=self.settings.stale_minutes)
        async with self.sessions() as session:
            stale = (await session.scalars(
                select(CallbackRequestRow.id).where(CallbackRequestRow.status == CALLING,
                                                    CallbackRequestRow.next_attempt_at < limit))).all()
        for request_id in stale:
            log.warning("voice.callback_stale", request_id=request_id)
            await self._attempt_failed(request_id, "lost")

    # ---- outcomes from AMI

    def on_event(self, event: Event) -> None:
        """AMI listener: OriginateResponse of our calls, Hangup of an answered one."""
        if event.name == "OriginateResponse":
            request_id = self._actions.pop(event.get("ActionID") or "", None)
            if request_id is not None:
                if (event.get("Response") or "").casefold() == "success":
                    # Before any task runs: the Hangup may be in the same chunk of events.
                    self._channels[(event.get("Uniqueid") or "")[:64]] = request_id
                self._spawn(self._originated(request_id, event))
        elif event.name == "Hangup":
            request_id = self._channels.pop(event.get("Uniqueid") or "", None)
            if request_id is not None:
                self._spawn(self._finished(request_id))

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _originated(self, request_id: int, event: Event) -> None:
        if (event.get("Response") or "").casefold() == "success":
            channel = (event.get("Uniqueid") or "")[:64]
            await self._set(request_id, channel_id=channel, last_result="answered")
            log.info("voice.callback_answered", request_id=request_id, channel_id=channel)
            return
        result = REASONS.get(event.get("Reason") or "", "failed")
        await self._attempt_failed(request_id, result)

    async def _attempt_failed(self, request_id: int, result: str) -> None:
        now = self.now()
        async with self.sessions() as session, session.begin():
            row = await session.get(CallbackRequestRow, request_id)
            if row is None or row.status != CALLING:
                return
            row.last_result, row.action_id = result, None
            if row.attempts >= self.settings.max_attempts:
                row.status, row.finished_at, row.next_attempt_at = UNREACHED, now, None
                self._log(session, row, now, UNREACHED)
            else:
                row.status = WAITING
                row.next_attempt_at = now + dt.timedelta(minutes=self.settings.retry_minutes)
        self._count(result)
        log.info("voice.callback_not_answered", request_id=request_id, result=result)
        self._wake.set()

    async def _finished(self, request_id: int) -> None:
        """The answered call ended: the score is whatever the IVR stored since it was placed."""
        await asyncio.sleep(self.settle_seconds)
        now = self.now()
        async with self.sessions() as session, session.begin():
            row = await session.get(CallbackRequestRow, request_id)
            if row is None or row.status != CALLING:
                return
            since = row.next_attempt_at or row.requested_at
            rated = await session.scalar(
                select(CaseLogRow.changes).where(CaseLogRow.case_id == row.case_id, CaseLogRow.action == "rated",
                                                 CaseLogRow.at >= since)
                .order_by(CaseLogRow.id.desc()).limit(1))
            score = ((rated or {}).get("rating") or {}).get("to")
            row.score = score if isinstance(score, int) else None
            row.status = RATED if row.score is not None else NOT_RATED
            row.finished_at, row.action_id, row.next_attempt_at = now, None, None
            self._log(session, row, now, row.status)
        self._count(row.status)
        log.info("voice.callback_done", request_id=request_id, status=row.status, score=row.score)

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.callbacks.inc(result=result if result in _RESULTS else "failed")

    @staticmethod
    def _log(session: AsyncSession, row: CallbackRequestRow, now: dt.datetime, outcome: str) -> None:
        session.add(CaseLogRow(case_id=row.case_id, at=now, actor=ACTOR, action="callback",
                               changes={"outcome": outcome, "score": row.score, "attempts": row.attempts,
                                        "last_result": row.last_result}))

    async def _set(self, request_id: int, **values: object) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(update(CallbackRequestRow).where(CallbackRequestRow.id == request_id)
                                  .values(**values))

    # ---- the loop: a leased job in `serve` (callcenter/jobs.py), or `start()` alone

    @property
    def wake_event(self) -> asyncio.Event:
        """Set when a request may be due now (a new request, a failed attempt)."""
        return self._wake

    def can_call(self) -> bool:
        """Whether this node can place call-backs now: its AMI link is up."""
        return self.ami is not None and self.ami.connected

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="callbacks")

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the next poll tries again
                log.exception("voice.callback_poll_failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_seconds)

    async def drain(self) -> None:
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.drain()
