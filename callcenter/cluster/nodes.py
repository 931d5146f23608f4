"""Node identity and liveness: a heartbeat row per node in `cluster_nodes`.

Every node writes its row every `[node] heartbeat_seconds`; a node whose row is older than
`dead_after_seconds`, or that said it stopped, is not live. /healthz and the metrics list the
live nodes, and job leases (callcenter.cluster.leases) use the same clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from dataclasses import dataclass, field

import structlog
from sqlalchemy import Select, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from callcenter.cluster.store import store_now
from callcenter.db.tables import ClusterNodeRow
from callcenter.metrics import MetricsRegistry
from callcenter.settings import NodeSettings

log = structlog.get_logger(__name__)

NODES = ClusterNodeRow.__table__

#: Rows of nodes not seen for this long are deleted (they are history, not members).
FORGET_AFTER = dt.timedelta(days=7)


def live_node_ids(dialect: str, dead_after_seconds: float) -> Select[tuple[str]]:
    """Ids of the nodes live now: a heartbeat within `dead_after_seconds` and no clean stop."""
    return select(NODES.c.node_id).where(
        NODES.c.stopped_at.is_(None), NODES.c.last_seen_at >= store_now(dialect, -dead_after_seconds))


@dataclass(frozen=True)
class NodeView:
    node_id: str
    address: str | None
    started_at: dt.datetime
    last_seen_at: dt.datetime


@dataclass
class NodeRegistry:
    """This node's heartbeat, and who else is live."""

    node_id: str
    engine: AsyncEngine
    settings: NodeSettings
    address: str | None = None
    beats: int = 0
    _joined: bool = field(default=False, repr=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def join(self) -> None:
        """First heartbeat: (re)writes the row with a new start time. A live row of another
        process under the same id is reported: two nodes under one id share outbox leases."""
        now = store_now(self.dialect)
        async with self.engine.begin() as conn:
            other = (await conn.execute(select(NODES.c.pid, NODES.c.address).where(
                NODES.c.node_id == self.node_id, NODES.c.stopped_at.is_(None),
                NODES.c.last_seen_at >= store_now(self.dialect, -self.settings.dead_after_seconds)))).first()
            values = {"node_id": self.node_id, "address": self.address, "pid": os.getpid(),
                      "started_at": now, "last_seen_at": now, "stopped_at": None}
            builder = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
            stmt = builder(NODES).values(values)
            stmt = stmt.on_conflict_do_update(index_elements=[NODES.c.node_id], set_={
                k: stmt.excluded[k] for k in ("address", "pid", "started_at", "last_seen_at", "stopped_at")})
            await conn.execute(stmt)
        if other is not None and other.pid != os.getpid():
            log.error("cluster.node_id_in_use", node=self.node_id, other_pid=other.pid, other_address=other.address,
                      hint="give each node its own [node] id; a node restarted after a crash may ignore this")
        self._joined = True
        self.beats += 1
        log.info("cluster.joined", node=self.node_id, address=self.address)

    async def beat(self) -> None:
        if not self._joined:
            await self.join()
            return
        async with self.engine.begin() as conn:
            result = await conn.execute(update(NODES).where(NODES.c.node_id == self.node_id).values(
                last_seen_at=store_now(self.dialect), stopped_at=None, address=self.address, pid=os.getpid()))
        if result.rowcount == 0:  # someone removed the row: write it again
            await self.join()
            return
        self.beats += 1

    async def leave(self) -> None:
        """Clean shutdown: other nodes stop counting this one at once."""
        async with self.engine.begin() as conn:
            await conn.execute(update(NODES).where(NODES.c.node_id == self.node_id, NODES.c.pid == os.getpid())
                               .values(stopped_at=store_now(self.dialect)))
        log.info("cluster.left", node=self.node_id)

    async def live_nodes(self) -> list[NodeView]:
        """Live nodes, oldest first (one statement; /healthz uses it as its database check)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                select(NODES.c.node_id, NODES.c.address, NODES.c.started_at, NODES.c.last_seen_at)
                .where(NODES.c.stopped_at.is_(None),
                       NODES.c.last_seen_at >= store_now(self.dialect, -self.settings.dead_after_seconds))
                .order_by(NODES.c.started_at, NODES.c.node_id))).all()
        return [NodeView(*row) for row in rows]

    async def forget_old(self) -> int:
        """Delete rows of nodes gone for a week (housekeeping)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(NODES).where(
                NODES.c.last_seen_at < store_now(self.dialect, -FORGET_AFTER.total_seconds())))
        return int(result.rowcount or 0)

    async def run(self) -> None:
        """Heartbeat loop (after `join`); a failed beat is logged and retried at the next tick."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the store may be away for a while
                log.warning("cluster.heartbeat_failed", node=self.node_id, error=str(exc))

    def register_metrics(self, metrics: MetricsRegistry) -> None:
        """`cluster_nodes_live{node=<this node>}` and the heartbeat age of each live node."""
        live = metrics.gauge("cluster_nodes_live", "live service nodes on this store, seen from the labelled node")
        age = metrics.gauge("cluster_node_heartbeat_age_seconds", "seconds since each live node's last heartbeat")

        async def refresh() -> None:
            nodes = await self.live_nodes()
            live.set(len(nodes), node=self.node_id)
            now = dt.datetime.now(dt.UTC)
            age.clear()
            for node in nodes:
                age.set(max(0.0, round((now - node.last_seen_at).total_seconds(), 3)), node=node.node_id)

        metrics.on_refresh(refresh)
