"""Wires AMI queue events to the call records and to the answering agent's console.

`QueueFollower` listens on the `AmiClient`, feeds `QueueTracker` (sans-I/O), and for each
update: stores it on the call's record (writes of one call run in order; different calls in
parallel) and, when a person answered, publishes a `screen_pop` addressed to the staff
account whose `queue_interface` is the member interface that answered. A member interface
no account names pops nowhere (logged): a screen-pop is the answering agent's, not everyone's.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callcenter.db.tables import StaffAccountRow
from callcenter.voice.ami_protocol import Event
from callcenter.voice.metrics import VoiceMetrics
from callcenter.voice.queue_events import ANSWERED, COMPLETED, QueueTracker, QueueUpdate
from callcenter.voice.records import CallRecords
from sms.privacy import mask_number

log = structlog.get_logger(__name__)


class EventSink(Protocol):
    def publish(self, event_type: str, data: Mapping[str, Any]) -> object: ...


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


_INTERFACE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,15}/[\w@.\-/]{1,47}")


class InterfaceError(ValueError):
    """A queue member interface that cannot be set (bad form, taken, unknown account)."""


async def set_queue_interface(sessions: async_sessionmaker[AsyncSession], username: str,
                              interface: str | None) -> None:
    """Name the phone (queue member interface as queues.conf / QueueAdd spell it, e.g.
    `PJSIP/1001`) whose answered calls pop on this staff member's consoles; None clears it."""
    if interface is not None and not _INTERFACE.fullmatch(interface):
        raise InterfaceError("interface: a queue member interface such as PJSIP/1001")
    async with sessions() as session, session.begin():
        row = await session.scalar(select(StaffAccountRow).where(StaffAccountRow.username == username.casefold()))
        if row is None:
            raise InterfaceError(f"no staff account {username!r}")
        if interface is not None:
            holder = await session.scalar(select(StaffAccountRow.username).where(
                StaffAccountRow.queue_interface == interface, StaffAccountRow.id != row.id))
            if holder is not None:
                raise InterfaceError(f"{interface} is already the phone of {holder}")
        row.queue_interface = interface


class QueueFollower:
    def __init__(self, records: CallRecords, sessions: async_sessionmaker[AsyncSession],
                 events: EventSink | None, *, queues: set[str] | None, leave_grace: float = 2.0,
                 now: Callable[[], dt.datetime] = utcnow, metrics: VoiceMetrics | None = None) -> None:
        self.records = records
        self.sessions = sessions
        self.events = events
        self.tracker = QueueTracker(queues, leave_grace=leave_grace)
        self.now = now
        self.metrics = metrics
        self.leave_grace = leave_grace
        self._chains: dict[str, asyncio.Task[None]] = {}
        self._ticker: asyncio.Task[None] | None = None
        self.stored = 0  # updates a record took (for tests and logs)
        self.popped: list[tuple[str, str]] = []  # (call_id, username) of screen-pops sent

    def __call__(self, event: Event) -> None:
        """AMI event listener (AmiClient.on_event)."""
        for update in self.tracker.feed(event, self.now()):
            self._schedule(update)
        self._ensure_ticker()

    def _ensure_ticker(self) -> None:
        if (self._ticker is None or self._ticker.done()) and len(self.tracker):
            self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="queue-follower-expire")

    async def _tick(self) -> None:
        while len(self.tracker):
            await asyncio.sleep(max(self.leave_grace / 2, 0.05))
            for update in self.tracker.expire(self.now()):
                self._schedule(update)

    def _schedule(self, update: QueueUpdate) -> None:
        if self.metrics is not None and update.kind != COMPLETED:
            self.metrics.queue_calls.inc(queue=update.queue, outcome=update.kind)
            if update.kind == ANSWERED and update.wait_seconds is not None:
                self.metrics.queue_wait_seconds.observe(update.wait_seconds)
        previous = self._chains.get(update.call_id)
        task = asyncio.get_running_loop().create_task(self._handle(update, previous))
        self._chains[update.call_id] = task
        task.add_done_callback(lambda t, key=update.call_id: self._done(key, t))

    def _done(self, call_id: str, task: asyncio.Task[None]) -> None:
        if self._chains.get(call_id) is task:
            del self._chains[call_id]

    async def _handle(self, update: QueueUpdate, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(previous)
        bound = log.bind(call_id=update.call_id, case_number=update.case_number, queue=update.queue)
        bound.info("voice.queue_" + update.kind, wait_seconds=update.wait_seconds,
                   talk_seconds=update.talk_seconds, interface=update.interface)
        if update.kind == ANSWERED:
            try:
                await self._screen_pop(update)
            except Exception:  # noqa: BLE001 - a failed pop must not lose the record
                bound.exception("voice.screen_pop_failed")
        if await self.records.apply_queue(update):
            self.stored += 1

    async def _screen_pop(self, update: QueueUpdate) -> None:
        if self.events is None or not update.interface:
            return
        async with self.sessions() as session:
            username = await session.scalar(
                select(StaffAccountRow.username).where(StaffAccountRow.queue_interface == update.interface))
        if username is None:
            log.warning("voice.screen_pop_no_staff", call_id=update.call_id, interface=update.interface)
            return
        self.events.publish("screen_pop", {
            "agent": username, "phone": update.caller or "", "call_id": update.call_id,
            "case_number": update.case_number})
        self.popped.append((update.call_id, username))
        log.info("voice.screen_pop", call_id=update.call_id, agent=username,
                 caller=mask_number(update.caller) if update.caller else None)

    async def drain(self) -> None:
        """Wait for the writes scheduled so far (shutdown, tests)."""
        while self._chains:
            await asyncio.gather(*list(self._chains.values()), return_exceptions=True)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.drain()
