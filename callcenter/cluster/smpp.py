"""One SMSC account shared by several nodes: a cap on binds, and the account's rate split.

Carriers limit an account two ways: how many binds it may hold, and how many parts per
second it may submit over all of them (`smpp.max_binds`, `smpp.max_parts_per_second`).
Each node that binds claims its binds in `smpp_binds` (one row per node); the claims of
nodes whose heartbeat is live (`cluster_nodes`, `[node] dead_after_seconds`) count.

* **Binds.** Before every connect the SMPP client asks `acquire`: under a lock on the
  account (an advisory transaction lock on PostgreSQL; SQLite has one writer) the live
  claims of the other nodes are summed, and this node claims its binds only if the sum
  stays within `max_binds`. Otherwise the client asks again later; a dead node's claim
  stops counting after the dead-after time, so a waiting node binds then.
* **Rate.** Every heartbeat period each claiming node reads how many live nodes claim the
  account and paces its token bucket at cap / that number. No store round trip per part:
  the bucket stays in memory and is re-set once per period. A node that joins holds its
  submits for one period, so the others have slowed down before it starts; a node that
  dies leaves its share to the others after the dead-after time. (A store-backed bucket
  would be exact at every instant, at one round trip per part.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callcenter.cluster.store import store_now
from callcenter.db.tables import ClusterNodeRow
from callcenter.db.tables_sms import SmppBindRow
from callcenter.metrics import MetricsRegistry

log = structlog.get_logger(__name__)

NODES = ClusterNodeRow.__table__
BINDS = SmppBindRow.__table__


@dataclass
class SmppAccountShare:
    """This node's claim on an SMSC account's binds and its share of the account's rate."""

    node_id: str
    engine: AsyncEngine
    account: str                       # system_id@host:port
    binds: int                         # connections this node holds: 1 (trx) or 2 (tx+rx)
    cap: float                         # the account's parts per second, over every bind
    max_binds: int                     # 0: no cap
    dead_after: float                  # [node] dead_after_seconds
    period: float                      # [node] heartbeat_seconds: how often the share is recomputed
    on_rate: Callable[[float, float], None] = lambda rate, hold: None   # (parts/s, hold seconds)
    rate: float = 0.0
    claimed: bool = False
    sharers: int = 0

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _live(self) -> object:
        return (NODES.c.stopped_at.is_(None)) & (NODES.c.last_seen_at >= store_now(self.dialect, -self.dead_after))

    async def _lock(self, conn: AsyncConnection) -> None:
        if self.dialect == "postgresql":
            digest = hashlib.sha256(f"smpp-binds\x1f{self.account}".encode()).digest()
            await conn.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest[:8], "big", signed=True))))
        elif self.dialect == "sqlite":
            await conn.exec_driver_sql("BEGIN IMMEDIATE")

    async def acquire(self) -> bool:
        """Claim this node's binds if the account's cap allows (the SMPP client's bind gate)."""
        async with self.engine.begin() as conn:
            await self._lock(conn)
            if self.max_binds:
                others = (await conn.execute(
                    select(func.coalesce(func.sum(BINDS.c.binds), 0))
                    .select_from(BINDS.join(NODES, NODES.c.node_id == BINDS.c.node_id))
                    .where(BINDS.c.account == self.account, BINDS.c.node_id != self.node_id, self._live()))
                ).scalar_one()
                if int(others) + self.binds > self.max_binds:
                    return False
            builder = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
            stmt = builder(BINDS).values(node_id=self.node_id, account=self.account, binds=self.binds,
                                         claimed_at=store_now(self.dialect))
            await conn.execute(stmt.on_conflict_do_update(index_elements=[BINDS.c.node_id], set_={
                "account": stmt.excluded.account, "binds": stmt.excluded.binds}))
        if not self.claimed:
            self.claimed = True
            log.info("smpp.binds_claimed", node=self.node_id, account=self.account, binds=self.binds,
                     max_binds=self.max_binds or None)
            await self.refresh(joining=True)
        return True

    async def release(self) -> None:
        """Hand the claim back (clean stop): the others take the whole rate at their next period."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(BINDS).where(BINDS.c.node_id == self.node_id))
        self.claimed = False

    async def refresh(self, *, joining: bool = False) -> float:
        """Recompute this node's share: cap / live nodes claiming the account (this one included)."""
        async with self.engine.connect() as conn:
            sharers = int((await conn.execute(
                select(func.count()).select_from(BINDS.join(NODES, NODES.c.node_id == BINDS.c.node_id))
                .where(BINDS.c.account == self.account, (BINDS.c.node_id == self.node_id) | self._live()))
            ).scalar_one())
        sharers = max(1, sharers)
        rate = self.cap / sharers
        if rate != self.rate:
            # Slowing down is safe at once; a node new to a shared account waits one period,
            # so the sum stays under the cap while the others learn of it.
            hold = self.period if joining and sharers > 1 else 0.0
            self.on_rate(rate, hold)
            log.info("smpp.rate_share", node=self.node_id, account=self.account, parts_per_second=round(rate, 3),
                     nodes=sharers, hold=hold)
        self.rate, self.sharers = rate, sharers
        return rate

    async def run(self, stop: asyncio.Event) -> None:
        """Recompute the share every period while claimed, until `stop`; a failed read keeps
        the last share."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.period):
                    await stop.wait()
            if not self.claimed or stop.is_set():
                continue
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the store may be away for a while
                log.warning("smpp.rate_share_failed", node=self.node_id, error=str(exc))

    def register_metrics(self, metrics: MetricsRegistry) -> None:
        """`sms_smpp_rate_share{account}` (parts/s this node may submit) and the sharing nodes."""
        share = metrics.gauge("sms_smpp_rate_share", "parts per second this node may submit on the account")
        sharers = metrics.gauge("sms_smpp_account_nodes", "live nodes holding binds to the account")

        async def update() -> None:
            share.set(self.rate, account=self.account)
            sharers.set(self.sharers, account=self.account)

        metrics.on_refresh(update)
