"""EventHub: in-process fan-out of live events to every open console (Server-Sent Events).

Anything in the process may publish: the case service when a draft is created, the AGI
server when it transfers a call (screen pop), the SMS channel. Publishing never blocks and
never fails the publisher: a console that cannot keep up is told to resynchronise instead.

Event types the console understands:

    draft_created  {"number": "261124000421", "channel": "sms"}
    case_updated   {"number": "...", "status": "submitted"}
    screen_pop     {"phone": "+8613812345678", "agent": "wangfang", "call_id": "..."}
                   (`agent` is a console username: only that person's consoles get it;
                   without it every console pops. The voice channel names the agent
                   whose phone answered, from AMI AgentConnect)
    notice         {"kind": "sent|answered|escalated", "kinds": [...], "counts": {...}}
                   (supervisor tasks changed; published by DraftWatcher, which polls the table)

Wiring: see docs/console.md ("Live events"). With several nodes on one PostgreSQL, the
cluster bus (callcenter.cluster.bus) is the hub's `relay`: what is published here also goes
to the consoles of the other nodes, and what they publish comes back in with `local=True`
(docs/multi-node.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import itertools
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callcenter.db.tables import CaseRow
from callcenter.db.tables_sms import SupervisorTaskRow

log = structlog.get_logger(__name__)

_EVENT_TYPE = re.compile(r"[a-z][a-z_]{0,31}")


@dataclass(frozen=True)
class HubEvent:
    id: int
    type: str
    data: Mapping[str, Any]
    at: dt.datetime


@dataclass(eq=False)
class Subscription:
    """One open console stream: a bounded queue the hub fills and the SSE handler drains."""

    username: str | None
    queue: asyncio.Queue[HubEvent | None]
    loop: asyncio.AbstractEventLoop
    overflowed: bool = False
    closed: bool = False

    async def next(self, timeout: float) -> HubEvent | None:
        """The next event, or None after `timeout` seconds (time for a heartbeat) or on close."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None


@dataclass
class EventHub:
    """Fan-out of console events. `publish` is safe from any thread and never raises."""

    queue_size: int = 256
    _subscribers: set[Subscription] = field(default_factory=set)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _recent_drafts: collections.OrderedDict[str, None] = field(default_factory=collections.OrderedDict)
    _recent_pops: collections.OrderedDict[tuple[str, str], None] = field(default_factory=collections.OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: Called with each accepted event that is not `local` and its target username; set by
    #: the cluster bus. Must be thread-safe and must not block.
    relay: Callable[[HubEvent, str | None], None] | None = None

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, event_type: str, data: Mapping[str, Any], *, to: str | None = None,
                local: bool = False) -> HubEvent | None:
        """Queue an event for every open console, or only the consoles of username `to` (a
        `screen_pop` naming an `agent` goes to that agent's consoles only). A draft announced
        twice (by the case service and by the watcher) goes out once. `local`: for this
        node's consoles only (what every node sees for itself, or what came from another
        node), never relayed. An addressed screen-pop for a call already popped for that agent
        goes out once too: with AMI on every node, each node publishes the pop of the same
        AgentConnect and the bus brings in the other's. Returns the event, or None when it was
        dropped."""
        if to is None and event_type == "screen_pop" and data.get("agent"):
            to = str(data["agent"])
        target = to.casefold() if to is not None else None
        if not _EVENT_TYPE.fullmatch(event_type):
            log.warning("events.bad_event_type", event_type=event_type[:40])
            return None
        with self._lock:
            if event_type == "draft_created":
                number = str(data.get("number", ""))
                if number in self._recent_drafts:
                    return None
                self._recent_drafts[number] = None
                while len(self._recent_drafts) > 4096:
                    self._recent_drafts.popitem(last=False)
            elif event_type == "screen_pop" and target is not None and data.get("call_id"):
                key = (str(data["call_id"]), target)
                if key in self._recent_pops:
                    return None
                self._recent_pops[key] = None
                while len(self._recent_pops) > 4096:
                    self._recent_pops.popitem(last=False)
            event = HubEvent(id=next(self._ids), type=event_type, data=dict(data), at=dt.datetime.now(dt.UTC))
            targets = [sub for sub in self._subscribers
                       if target is None or (sub.username or "").casefold() == target]
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for sub in targets:
            if running is sub.loop:
                self._deliver(sub, event)
            elif not sub.loop.is_closed():
                sub.loop.call_soon_threadsafe(self._deliver, sub, event)
        relay = self.relay
        if relay is not None and not local:
            try:
                relay(event, to)
            except Exception:  # noqa: BLE001 - publishing never fails the publisher
                log.exception("events.relay_failed", event_type=event_type)
        return event

    def _deliver(self, sub: Subscription, event: HubEvent | None) -> None:
        if sub.closed and event is not None:
            return
        try:
            sub.queue.put_nowait(event)
        except asyncio.QueueFull:
            # A stalled browser: stop queueing; it reloads its queue when it next reads.
            sub.overflowed = True

    @contextlib.contextmanager
    def subscribe(self, username: str | None = None) -> Iterator[Subscription]:
        sub = Subscription(username=username, queue=asyncio.Queue(self.queue_size),
                           loop=asyncio.get_running_loop())
        with self._lock:
            self._subscribers.add(sub)
        try:
            yield sub
        finally:
            with self._lock:
                self._subscribers.discard(sub)

    def close(self) -> None:
        """End every open stream (server shutdown), so no handler holds the runner open."""
        with self._lock:
            targets = list(self._subscribers)
        for sub in targets:
            sub.closed = True
            with contextlib.suppress(asyncio.QueueFull):
                sub.queue.put_nowait(None)


@dataclass
class DraftWatcher:
    """Announces what other paths wrote: drafts (SMS, AGI, API, another process) and changes
    to supervisor tasks (督办通知), which the task service does not announce itself.

    Every `interval` seconds it reads the newest ids of the cases table again, a window wide
    enough for PostgreSQL transactions that commit out of id order. Drafts are announced only
    while a console is open; the hub drops drafts it has already announced, so a wired case
    service and the watcher together still announce each draft once.

    For tasks it reads three counts of `supervisor_tasks`: all, answered, escalated. A task is
    never deleted and each of its steps (sent, answered, escalated) happens once, so the
    counts only grow and any change shows as a different triple; it then publishes one
    `notice` event naming what grew. The consoles reload their notices on it.
    """

    hub: EventHub
    sessions: async_sessionmaker[AsyncSession]
    interval: float = 2.0
    window: int = 200
    _seen: set[int] = field(default_factory=set)
    _started: bool = False
    _tasks: tuple[int, int, int] | None = None

    async def run(self) -> None:
        while True:
            for check, event in ((self.check, "console.draft_watch_failed"),
                                 (self.check_tasks, "console.task_watch_failed")):
                try:
                    await check()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception(event)
            await asyncio.sleep(self.interval)

    async def check(self) -> int:
        """Publish drafts not seen before; returns how many were announced."""
        async with self.sessions() as session:
            newest = await session.scalar(select(func.max(CaseRow.id))) or 0
            rows = (await session.execute(
                select(CaseRow.id, CaseRow.number, CaseRow.channel, CaseRow.status)
                .where(CaseRow.id > newest - self.window).order_by(CaseRow.id))).all()
        announce = self._started and self.hub.subscriber_count > 0
        self._started = True
        count = 0
        for case_id, number, channel, status in rows:
            if case_id in self._seen:
                continue
            self._seen.add(case_id)
            if announce and status == "draft":
                # Every node's watcher reads the same store: its finds stay on this node.
                self.hub.publish("draft_created", {"number": number, "channel": channel}, local=True)
                count += 1
        self._seen = {case_id for case_id in self._seen if case_id > newest - self.window}
        return count

    async def check_tasks(self) -> dict[str, Any] | None:
        """Publish `notice` when tasks were sent, answered or escalated since the last look;
        returns the event's data (None: nothing changed, first look, or no console open)."""
        task = SupervisorTaskRow
        escalated_open = and_(task.answered_at.is_(None), task.escalated_at.is_not(None))
        async with self.sessions() as session:
            total, answered, escalated, open_escalated = (await session.execute(select(
                func.count(), func.count(task.answered_at), func.count(task.escalated_at),
                func.count(case((escalated_open, 1)))))).one()
        now = (int(total), int(answered), int(escalated))
        before, self._tasks = self._tasks, now
        if before is None or before == now or self.hub.subscriber_count == 0:
            return None
        kinds = [kind for kind, old, new in zip(("sent", "answered", "escalated"), before, now, strict=True)
                 if old != new]
        data: dict[str, Any] = {
            "kind": kinds[0], "kinds": kinds,
            "counts": {"sent": now[0], "answered": now[1], "escalated": int(open_escalated),
                       "waiting": now[0] - now[1] - int(open_escalated)}}
        self.hub.publish("notice", data, local=True)
        return data
