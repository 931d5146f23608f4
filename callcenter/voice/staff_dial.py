"""Staff call a reporter back from the console (回拨市民) without seeing the number.

One click: AMI Originate rings the staff member's own phone (`staff_accounts.queue_interface`)
and, once they answer, the dialplan context `[ami] staff_dial_context` dials the reporter
through the carrier trunk with the hotline's caller id (config/asterisk/extensions.conf). The
number goes service -> AMI -> Asterisk only: the browser is told "ringing your phone", never
the number, whatever the role (one code path for all).

Who may call whom follows docs/privacy.md: any staff member may call a public reporter; an
anonymous (匿名) or confidential (保密) reporter only by a role that may see numbers
(`console.phone_visible_roles`): such a reporter asked to be known to as few people as
possible, and talking to them tells the caller who they are just as the number would.

The case log gets `staff_call` entries (actor: the staff member for the click, `voice` for
what Asterisk reported): `calling` on the click, then `staff_<reason>` if the staff phone was
not answered (OriginateResponse), then `reporter_<DIALSTATUS>` when the call ends (the
dialplan's `UserEvent: CallcenterStaffDial`). A second click while a call for the case is
under way (its last entry is `calling`, younger than both ring times) is refused, on every
node alike since the check reads the case log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import phonenumbers
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callcenter.cases.numbering import CaseNumber, InvalidCaseNumber
from callcenter.cases.phones import InvalidPhoneNumber
from callcenter.db.tables import CaseLogRow, CaseRow, StaffAccountRow
from callcenter.events import EventHub
from callcenter.privacy import may_see_number
from callcenter.settings import AmiSettings
from callcenter.voice.ami import AmiClient, AmiError, AmiUnavailable, national_number
from callcenter.voice.ami_protocol import Event
from sms.privacy import mask_number

log = structlog.get_logger(__name__)

ACTION = "staff_call"
CALLING = "calling"
USER_EVENT = "CallcenterStaffDial"
# OriginateResponse Reason of the staff leg (Asterisk's frame.h control frames).
STAFF_REASONS = {"0": "staff_failed", "1": "staff_hangup", "3": "staff_no_answer", "5": "staff_busy",
                 "8": "staff_congestion"}
# DIALSTATUS of the reporter leg, as the dialplan reports it; anything else is `reporter_failed`.
REPORTER_STATUSES = {"ANSWER": "reporter_answered", "NOANSWER": "reporter_no_answer", "BUSY": "reporter_busy",
                     "CONGESTION": "reporter_congestion", "CHANUNAVAIL": "reporter_unavailable",
                     "CANCEL": "reporter_cancelled", "INVALID": "reporter_invalid_number"}
# Guard time beyond both ring times during which a `calling` entry still counts as under way.
MARGIN_SECONDS = 15


class StaffCallRefused(Exception):
    """Why a staff call cannot be placed: `code` for programs, `message` in Chinese for staff."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class StaffCall:
    case_number: str
    action_id: str
    interface: str


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def refusal_for(*, has_phone: bool, private: bool, role_sees_numbers: bool, interface: str | None,
                dialer_up: bool, under_way: bool = False) -> StaffCallRefused | None:
    """The first reason a call cannot be placed (None: it can); shared by the button's state
    and the click, so the two never disagree."""
    if not has_phone:
        return StaffCallRefused(422, "no_phone", "该案件没有市民电话号码，无法回拨")
    if private and not may_see_number(role_sees_numbers):
        return StaffCallRefused(403, "private", "市民要求匿名或保密，只有值班长可以回拨")
    if not interface:
        return StaffCallRefused(409, "no_interface", "您的账号未绑定话机，请联系管理员设置坐席分机")
    if not dialer_up:
        return StaffCallRefused(503, "ami_down", "呼叫系统暂不可用，请稍后再试")
    if under_way:
        return StaffCallRefused(409, "busy", "正在呼叫中，请勿重复点击")
    return None


class StaffDialer:
    """Places staff calls through one node's AMI link and writes their outcomes to the case log."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], ami: AmiClient | None, settings: AmiSettings, *,
                 region: str = "CN", events: EventHub | None = None,
                 now: Callable[[], dt.datetime] = utcnow) -> None:
        self.sessions = sessions
        self.ami = ami
        self.settings = settings
        self.region = region
        self.events = events
        self.now = now
        self.window = dt.timedelta(seconds=settings.staff_dial_ring_seconds + settings.callback_ring_seconds
                                   + MARGIN_SECONDS)
        self._starting: set[str] = set()  # case numbers between the check and the log entry
        # ActionID -> (case id, case number, when placed) until the call's outcome is heard
        self._calls: dict[str, tuple[int, str, dt.datetime]] = {}
        self._pending: set[asyncio.Task[None]] = set()

    def under_way(self, last_outcome: str | None, last_at: dt.datetime | None) -> bool:
        """Whether the case's last staff_call entry is a call still in progress."""
        return last_outcome == CALLING and last_at is not None and _aware(last_at) > self.now() - self.window

    @property
    def available(self) -> bool:
        return self.ami is not None and self.ami.connected

    async def interface_of(self, account_id: int) -> str | None:
        async with self.sessions() as session:
            return await session.scalar(select(StaffAccountRow.queue_interface)
                                        .where(StaffAccountRow.id == account_id))

    async def call_reporter(self, case_number: str, *, account_id: int, actor: str,
                            role_sees_numbers: bool) -> StaffCall:
        """Ring the staff member's phone, then the reporter. Raises StaffCallRefused."""
        try:
            number = CaseNumber.parse(case_number).value
        except InvalidCaseNumber as exc:
            raise StaffCallRefused(404, "not_found", "案件不存在") from exc
        async with self.sessions() as session:
            case = await session.scalar(select(CaseRow).where(CaseRow.number == number))
            interface = await session.scalar(select(StaffAccountRow.queue_interface)
                                             .where(StaffAccountRow.id == account_id))
        if case is None:
            raise StaffCallRefused(404, "not_found", "案件不存在")
        refused = refusal_for(has_phone=bool(case.reporter_phone), private=case.anonymous or case.confidential,
                              role_sees_numbers=role_sees_numbers, interface=interface, dialer_up=self.available)
        if refused is not None:
            log.info("voice.staff_call_refused", case_number=number, actor=actor, reason=refused.code)
            raise refused
        assert self.ami is not None and interface is not None and case.reporter_phone is not None
        try:
            national_number(case.reporter_phone, self.region)
        except (InvalidPhoneNumber, ValueError, phonenumbers.NumberParseException) as exc:
            log.warning("voice.staff_call_bad_number", case_number=number, phone=mask_number(case.reporter_phone))
            raise StaffCallRefused(422, "no_phone", "该案件的电话号码无法拨打") from exc
        if number in self._starting:
            raise StaffCallRefused(409, "busy", "正在呼叫中，请勿重复点击")
        self._starting.add(number)
        try:
            now = self.now()
            action_id = self.ami.new_action_id("staffdial")
            async with self.sessions() as session, session.begin():
                last = (await session.execute(
                    select(CaseLogRow.at, CaseLogRow.changes)
                    .where(CaseLogRow.case_id == case.id, CaseLogRow.action == ACTION)
                    .order_by(CaseLogRow.id.desc()).limit(1))).first()
                if last is not None and self.under_way((last.changes or {}).get("outcome"), last.at):
                    raise StaffCallRefused(409, "busy", "正在呼叫中，请勿重复点击")
                session.add(CaseLogRow(case_id=case.id, at=now, actor=actor[:128], action=ACTION, changes={
                    "outcome": CALLING, "interface": interface, "phone": mask_number(case.reporter_phone)}))
            self._forget_old(now)
            self._calls[action_id] = (case.id, number, now)
            try:
                await self.ami.originate_staff_dial(interface, case.reporter_phone, number, action_id=action_id)
            except (AmiError, ValueError) as exc:
                self._calls.pop(action_id, None)
                log.warning("voice.staff_call_failed", case_number=number, interface=interface, error=str(exc))
                await self._log(case.id, number, "ami_down" if isinstance(exc, AmiUnavailable) else "refused")
                raise StaffCallRefused(503, "ami_down", "呼叫系统暂不可用，请稍后再试") from exc
        finally:
            self._starting.discard(number)
        log.info("voice.staff_call_placed", case_number=number, actor=actor, interface=interface,
                 phone=mask_number(case.reporter_phone), action_id=action_id)
        self._changed(number, case.status)
        return StaffCall(case_number=number, action_id=action_id, interface=interface)

    # ---- outcomes from AMI

    def on_event(self, event: Event) -> None:
        """AMI listener: the staff leg's OriginateResponse, the dialplan's end-of-call UserEvent."""
        if event.name == "OriginateResponse":
            found = self._calls.get(event.get("ActionID") or "")
            if found is not None and (event.get("Response") or "").casefold() != "success":
                del self._calls[event.get("ActionID") or ""]
                self._spawn(self._log(found[0], found[1], STAFF_REASONS.get(event.get("Reason") or "", "staff_failed")))
        elif event.name == "UserEvent" and event.get("UserEvent") == USER_EVENT:
            found = self._calls.pop(event.get("Ref") or "", None)
            if found is not None:
                status = (event.get("DialStatus") or "").strip().upper()
                self._spawn(self._log(found[0], found[1], REPORTER_STATUSES.get(status, "reporter_failed")))

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _log(self, case_id: int, number: str, outcome: str) -> None:
        async with self.sessions() as session, session.begin():
            session.add(CaseLogRow(case_id=case_id, at=self.now(), actor="voice", action=ACTION,
                                   changes={"outcome": outcome}))
            status = await session.scalar(select(CaseRow.status).where(CaseRow.id == case_id))
        log.info("voice.staff_call_outcome", case_number=number, outcome=outcome)
        self._changed(number, status)

    def _changed(self, number: str, status: str | None) -> None:
        """The open case pages reload it and show the new log entry."""
        if self.events is not None:
            self.events.publish("case_updated", {"number": number, "status": status})

    def _forget_old(self, now: dt.datetime) -> None:
        """Calls whose outcome never came (Asterisk restarted mid-call) are not waited for forever."""
        for action_id in [a for a, (_, _, at) in self._calls.items() if at < now - 4 * self.window]:
            del self._calls[action_id]

    async def drain(self) -> None:
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
