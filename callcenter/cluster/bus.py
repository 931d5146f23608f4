"""Console events between nodes on one PostgreSQL: a table plus LISTEN/NOTIFY, no broker.

Publishing (the hub's `relay`): the event goes to this node's consoles at once, and into a
queue that a writer task drains in groups: one INSERT of the group into `cluster_events` and
one `pg_notify` with an empty payload, in one transaction. The NOTIFY payload carries
nothing, so the 8000-byte limit never applies and a burst of events wakes each listener
once (PostgreSQL folds identical notifications of one transaction).

Receiving: one dedicated connection LISTENs; a notification wakes a reader that reads the
rows after the last one it saw, plus ids it skipped that may still commit (a sequence hands
out ids in order but transactions commit out of order). Rows from this node are skipped.
After the listening connection drops, it reconnects with back-off and the reader catches up
from the same position, so nothing published meanwhile is missed; a backstop read every
`event_poll_seconds` covers a connection that died silently.

Cluster notices ride the same rows: `token_revoked` clears the named tokens from this
node's token cache (callcenter.service.tokens). While the listener is not connected, the
token cache is switched off, so a revocation this node may have missed still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
import structlog
from sqlalchemy import delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from callcenter.cluster.store import CHANNEL, EVENTS, TOKEN_REVOKED, record_events, store_now
from callcenter.events import EventHub, HubEvent

log = structlog.get_logger(__name__)

#: A skipped id not seen after this long belongs to a rolled-back transaction.
GAP_SECONDS = 60.0
#: Events waiting for the store; beyond this the oldest are dropped (consoles resync on reload).
MAX_BACKLOG = 10_000
WRITE_GROUP = 500
READ_BATCH = 1000


class TokenCache(Protocol):
    def forget(self, digests: Iterable[str]) -> None: ...
    def set_cache_enabled(self, enabled: bool) -> None: ...


@dataclass
class ClusterBus:
    """The hub's relay to the other nodes and their events into the hub (PostgreSQL only)."""

    node_id: str
    engine: AsyncEngine
    conninfo: str
    hub: EventHub
    tokens: TokenCache | None = None
    poll_seconds: float = 5.0
    reconnect_min: float = 0.2
    reconnect_max: float = 10.0
    last_id: int = 0
    received: int = 0
    written: int = 0
    connects: int = 0
    _gaps: dict[int, float] = field(default_factory=dict, repr=False)
    _backlog: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _write_wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _write_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _read_wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, repr=False)
    _listening: bool = False
    _catchup_pending: bool = False
    _on_connect: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def listening(self) -> bool:
        return self._listening

    # ------------------------------------------------------------------ start and stop

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.tokens is not None:
            self.tokens.set_cache_enabled(False)  # until the listener is connected and caught up
        async with self.engine.connect() as conn:
            self.last_id = int(await conn.scalar(select(func.coalesce(func.max(EVENTS.c.id), 0))) or 0)
        self.hub.relay = self.relay
        loop = self._loop
        self._tasks = [loop.create_task(self._listen(), name="cluster-listen"),
                       loop.create_task(self._read_loop(), name="cluster-read"),
                       loop.create_task(self._write_loop(), name="cluster-write")]
        log.info("cluster.bus_started", node=self.node_id, from_event=self.last_id)

    async def stop(self) -> None:
        if self.hub.relay == self.relay:
            self.hub.relay = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), 5.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # ------------------------------------------------------------------ publishing

    def relay(self, event: HubEvent, target: str | None) -> None:
        """The hub's relay: queue the event for the writer (any thread; never blocks)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        item = (event.type, target, dict(event.data))
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._enqueue(item)
        else:
            loop.call_soon_threadsafe(self._enqueue, item)

    def _enqueue(self, item: tuple[str, str | None, dict[str, Any]]) -> None:
        self._backlog.append(item)
        if len(self._backlog) > MAX_BACKLOG:
            dropped = len(self._backlog) - MAX_BACKLOG
            del self._backlog[:dropped]
            log.error("cluster.events_dropped", node=self.node_id, dropped=dropped)
        self._write_wake.set()

    async def flush(self) -> None:
        """Write what is queued now (shutdown, tests)."""
        while self._backlog:
            await self._write_once()

    async def _write_once(self) -> None:
        async with self._write_lock:  # the writer task and flush() must not write one group twice
            group = self._backlog[:WRITE_GROUP]
            if not group:
                return
            async with self.engine.begin() as conn:
                await record_events(conn, self.node_id, group)
            del self._backlog[:len(group)]
            self.written += len(group)

    async def _write_loop(self) -> None:
        delay = self.reconnect_min
        while True:
            await self._write_wake.wait()
            self._write_wake.clear()
            while self._backlog:
                try:
                    await self._write_once()
                    delay = self.reconnect_min
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the store may be away; keep the events
                    log.warning("cluster.event_write_failed", node=self.node_id, waiting=len(self._backlog),
                                error=str(exc))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.reconnect_max)

    # ------------------------------------------------------------------ receiving

    async def _listen(self) -> None:
        delay = self.reconnect_min
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, application_name=f"callcenter-listen {self.node_id}"[:63],
                    connect_timeout=10, keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("cluster.listen_connect_failed", node=self.node_id, error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max)
                continue
            try:
                await conn.execute(f"LISTEN {CHANNEL}")
                self._listening = True
                self.connects += 1
                delay = self.reconnect_min
                # Whatever was published while we were away is in the table: read it now.
                self._catchup_pending = True
                self._read_wake.set()
                log.info("cluster.listening", node=self.node_id, connects=self.connects)
                while True:
                    async for _notify in conn.notifies(timeout=self.poll_seconds):
                        self._read_wake.set()
                    await conn.execute("SELECT 1")  # a silently dead connection fails here
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - terminated backend, network, restart
                log.warning("cluster.listen_lost", node=self.node_id, error=str(exc))
            finally:
                self._listening = False
                if self.tokens is not None:
                    self.tokens.set_cache_enabled(False)
                with contextlib.suppress(Exception):
                    await conn.close()
            await asyncio.sleep(delay)

    async def _read_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._read_wake.wait(), self.poll_seconds)
            self._read_wake.clear()
            catchup = self._catchup_pending and self._listening
            try:
                while await self.read_new() >= READ_BATCH:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("cluster.event_read_failed", node=self.node_id, error=str(exc))
                continue
            if catchup and self._listening:
                self._catchup_pending = False
                if self.tokens is not None:
                    self.tokens.set_cache_enabled(True)
                for callback in self._on_connect:
                    callback()

    async def read_new(self) -> int:
        """Read and dispatch rows after the last seen and in the gaps; returns rows read."""
        now = time.monotonic()
        for gap in [g for g, since in self._gaps.items() if now - since > GAP_SECONDS]:
            del self._gaps[gap]
        where = EVENTS.c.id > self.last_id
        if self._gaps:
            where = or_(where, EVENTS.c.id.in_(sorted(self._gaps)))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                select(EVENTS.c.id, EVENTS.c.origin, EVENTS.c.type, EVENTS.c.target, EVENTS.c.data)
                .where(where).order_by(EVENTS.c.id).limit(READ_BATCH))).all()
        for row in rows:
            if row.id in self._gaps:
                del self._gaps[row.id]
            elif row.id > self.last_id:
                for missing in range(self.last_id + 1, min(row.id, self.last_id + 1 + READ_BATCH)):
                    self._gaps.setdefault(missing, now)
                self.last_id = row.id
            else:
                continue
            if row.origin != self.node_id:
                self._dispatch(row.type, row.target, row.data or {})
        return len(rows)

    def _dispatch(self, kind: str, target: str | None, data: dict[str, Any]) -> None:
        self.received += 1
        if kind == TOKEN_REVOKED:
            if self.tokens is not None:
                self.tokens.forget(str(d) for d in data.get("digests", []))
            return
        self.hub.publish(kind, data, to=target, local=True)

    # ------------------------------------------------------------------ housekeeping

    async def prune(self, retention_seconds: float) -> int:
        """Delete events older than the retention (a node away longer reloads its consoles)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(EVENTS).where(
                EVENTS.c.at < store_now(self.engine.dialect.name, -retention_seconds)))
        return int(result.rowcount or 0)
