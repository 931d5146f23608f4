"""The staff queue seen through AMI events: when a caller joined, whom a person answered and
after how long, who gave up waiting. Sans-I/O: `QueueTracker.feed(event, now)` returns the
updates to store; no database, no socket.

app_queue (Asterisk 22) reports, for the caller's channel (its Uniqueid is the IVR's
agi_uniqueid: the same channel goes from the AGI to the queue):

    QueueCallerJoin     Queue, Position, Count
    AgentCalled         Interface, MemberName (a member's phone rings)
    QueueCallerLeave    the caller left the queue: answered, timed out, or the queue emptied
    AgentConnect        Interface, MemberName, HoldTime (s in the queue), RingTime: a person answered
    QueueCallerAbandon  HoldTime, OriginalPosition: the caller hung up while waiting
    AgentComplete       TalkTime, Reason: the conversation ended

`QueueCallerLeave` comes just before `AgentConnect` (and just after `QueueCallerAbandon`),
so a leave is only final ("left": timed out or the queue emptied, the dialplan then takes
a voicemail) when neither follows within `leave_grace` seconds: `expire(now)` says so.
Times come from the event's `Timestamp` header (manager.conf `timestampevents = yes`), or
the time it was read.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from callcenter.voice.ami_protocol import Event

JOINED = "joined"
ANSWERED = "answered"
ABANDONED = "abandoned"
LEFT = "left"
COMPLETED = "completed"

CASE_VARIABLE = "CALLCENTER_CASE_NUMBER"
_UNIQUEID = re.compile(r"[\w.\-]{1,64}")
_CASE_NUMBER = re.compile(r"\d{12}")
# Waits and talk times beyond a day are nonsense from a broken peer, not calls.
_MAX_SECONDS = 86_400
# Callers followed at once; beyond it the oldest are forgotten (a peer flooding joins).
MAX_TRACKED = 10_000


@dataclass(frozen=True)
class QueueUpdate:
    """One thing to store about a call in the queue (see `callcenter.voice.records`)."""

    kind: str
    call_id: str
    queue: str
    at: dt.datetime
    wait_seconds: int | None = None
    talk_seconds: int | None = None
    interface: str | None = None
    member_name: str | None = None
    caller: str | None = None
    case_number: str | None = None


@dataclass
class _Caller:
    queue: str
    joined_at: dt.datetime
    caller: str | None
    case_number: str | None
    left_at: dt.datetime | None = None
    left_wait: int | None = None
    settled: bool = False


def _seconds(value: str | None) -> int | None:
    try:
        seconds = int(value or "")
    except ValueError:
        return None
    return seconds if 0 <= seconds <= _MAX_SECONDS else None


def event_time(event: Event, now: dt.datetime) -> dt.datetime:
    """The event's Timestamp (epoch seconds) when it is present and sane, else `now`."""
    raw = event.get("Timestamp")
    try:
        stamp = dt.datetime.fromtimestamp(float(raw or ""), dt.UTC)
    except (ValueError, OverflowError, OSError):
        return now
    return stamp if abs((stamp - now).total_seconds()) < _MAX_SECONDS else now


class QueueTracker:
    """Follows callers through the queues named in `queues` (None: every queue)."""

    def __init__(self, queues: set[str] | None = None, *, leave_grace: float = 2.0) -> None:
        self.queues = queues
        self.leave_grace = dt.timedelta(seconds=leave_grace)
        self._callers: dict[str, _Caller] = {}
        self.ignored = 0  # events about queues or callers we do not follow, or malformed

    def __len__(self) -> int:
        return len(self._callers)

    def feed(self, event: Event, now: dt.datetime) -> list[QueueUpdate]:
        name = event.name
        if name not in _HANDLED:
            return []
        queue = event.get("Queue") or ""
        call_id = event.get("Uniqueid") or ""
        if (self.queues is not None and queue not in self.queues) or not _UNIQUEID.fullmatch(call_id):
            self.ignored += 1
            return []
        at = event_time(event, now)
        if name == "QueueCallerJoin":
            return self._join(event, call_id, queue, at)
        caller = self._callers.get(call_id)
        if caller is None:
            self.ignored += 1
            return []
        if name == "QueueCallerLeave":
            caller.left_at = at
            caller.left_wait = int((at - caller.joined_at).total_seconds())
            return []
        if name == "AgentConnect":
            caller.settled = True
            caller.left_at = None
            return [self._update(ANSWERED, call_id, caller, at, wait_seconds=_seconds(event.get("HoldTime")),
                                 interface=event.get("Interface"), member_name=event.get("MemberName"))]
        if name == "QueueCallerAbandon":
            del self._callers[call_id]
            return [self._update(ABANDONED, call_id, caller, at, wait_seconds=_seconds(event.get("HoldTime")))]
        if name == "AgentComplete":
            del self._callers[call_id]
            return [self._update(COMPLETED, call_id, caller, at, talk_seconds=_seconds(event.get("TalkTime")),
                                 interface=event.get("Interface"), member_name=event.get("MemberName"))]
        return []

    def expire(self, now: dt.datetime) -> list[QueueUpdate]:
        """Callers who left the queue `leave_grace` ago without an answer or an abandon.

        Callers whose end was never seen (events lost while AMI was reconnecting) are
        forgotten after a day, without an update."""
        out: list[QueueUpdate] = []
        for call_id, caller in list(self._callers.items()):
            if (now - caller.joined_at).total_seconds() > _MAX_SECONDS:
                del self._callers[call_id]
                continue
            if caller.left_at is not None and not caller.settled and now - caller.left_at >= self.leave_grace:
                del self._callers[call_id]
                out.append(self._update(LEFT, call_id, caller, caller.left_at, wait_seconds=caller.left_wait))
        return out

    def _join(self, event: Event, call_id: str, queue: str, at: dt.datetime) -> list[QueueUpdate]:
        number = event.message.variables().get(CASE_VARIABLE)
        caller = _Caller(queue=queue, joined_at=at, caller=_caller_number(event.get("CallerIDNum")),
                         case_number=number if number and _CASE_NUMBER.fullmatch(number) else None)
        self._callers.pop(call_id, None)
        self._callers[call_id] = caller
        while len(self._callers) > MAX_TRACKED:
            self._callers.pop(next(iter(self._callers)))
        return [self._update(JOINED, call_id, caller, at)]

    @staticmethod
    def _update(kind: str, call_id: str, caller: _Caller, at: dt.datetime, **values: object) -> QueueUpdate:
        return QueueUpdate(kind=kind, call_id=call_id, queue=caller.queue, at=at, caller=caller.caller,
                           case_number=caller.case_number, **values)  # type: ignore[arg-type]


_HANDLED = frozenset({"QueueCallerJoin", "QueueCallerLeave", "AgentConnect", "QueueCallerAbandon",
                      "AgentComplete"})


def _caller_number(raw: str | None) -> str | None:
    """The caller ID as Asterisk gives it (`<unknown>` and the like mean none)."""
    if not raw or len(raw) > 32 or not re.fullmatch(r"\+?\d{3,20}", raw):
        return None
    return raw
