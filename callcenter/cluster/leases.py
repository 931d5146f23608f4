"""Work done once across nodes: a periodic job runs on the node that holds its lease.

Every node runs the same `LeasedJob` loop. Each tick, a node takes the job's row in
`cluster_leases` if nobody holds it or the lease expired, or renews it if it is already
the holder, in one conditional statement on the store's clock; only the holder runs the
job. When the holder dies its lease runs out (`[node] job_lease_seconds`) and the next
node to tick takes it; a clean shutdown hands it back at once.

The lease makes a job run on one node at a time as long as one run is shorter than the
lease. A job whose effects must happen exactly once (an escalation SMS) still writes them
with conditional statements (`UPDATE ... WHERE escalated_at IS NULL`) or idempotency keys,
so a run cut short by a lost lease and repeated elsewhere does no harm. How to put another
job under a lease: docs/multi-node.md ("Work done once").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from sqlalchemy import case, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from callcenter.cluster.store import store_now
from callcenter.db.tables import ClusterLeaseRow

log = structlog.get_logger(__name__)

LEASES = ClusterLeaseRow.__table__


@dataclass
class LeasedJob:
    """`work` every `interval` seconds, on whichever node holds the lease named `name`.

    `wake` (optional) starts the next tick early: something due was just written on this node.
    `eligible` (optional) says whether this node can do the work now (call-backs need AMI): a
    node that cannot neither takes the lease nor keeps it, so a node that can takes the job.
    """

    name: str
    work: Callable[[], Awaitable[object]]
    interval: float
    node_id: str
    engine: AsyncEngine
    lease_seconds: float = 30.0
    wake: asyncio.Event | None = None
    eligible: Callable[[], bool] | None = None
    held: bool = False
    runs: int = 0

    async def acquire(self) -> bool:
        """Take or renew the lease; True when this node holds it now."""
        dialect = self.engine.dialect.name
        now, expires = store_now(dialect), store_now(dialect, self.lease_seconds)
        builder = postgresql.insert if dialect == "postgresql" else sqlite.insert
        async with self.engine.begin() as conn:
            taken = await conn.execute(builder(LEASES).values(
                name=self.name, holder=self.node_id, acquired_at=now, expires_at=expires).on_conflict_do_nothing())
            if taken.rowcount != 1:
                taken = await conn.execute(
                    update(LEASES)
                    .where(LEASES.c.name == self.name,
                           or_(LEASES.c.holder == self.node_id, LEASES.c.expires_at < now))
                    .values(holder=self.node_id, expires_at=expires,
                            acquired_at=case((LEASES.c.holder == self.node_id, LEASES.c.acquired_at), else_=now)))
        held = taken.rowcount == 1
        if held != self.held:
            log.info("cluster.lease_taken" if held else "cluster.lease_lost", job=self.name, node=self.node_id)
        self.held = held
        return held

    async def release(self) -> None:
        """Hand the lease back (clean shutdown), so another node takes the job at its next tick."""
        if not self.held:
            return
        dialect = self.engine.dialect.name
        async with self.engine.begin() as conn:
            await conn.execute(update(LEASES).where(LEASES.c.name == self.name, LEASES.c.holder == self.node_id)
                               .values(expires_at=store_now(dialect, -1.0)))
        self.held = False
        log.info("cluster.lease_released", job=self.name, node=self.node_id)

    async def tick(self) -> bool:
        """One round: run the job if this node holds the lease. True when it ran."""
        if self.eligible is not None and not self.eligible():
            await self.release()
            return False
        if not await self.acquire():
            return False
        await self.work()
        self.runs += 1
        return True

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                # The store is away (restart, failover): one line a tick, not a traceback.
                log.error("cluster.job_store_failed", job=self.name, node=self.node_id,
                          error=(str(exc).splitlines() or [type(exc).__name__])[0][:300])
            except Exception:  # noqa: BLE001 - logged; the next tick tries again
                log.exception("cluster.job_failed", job=self.name, node=self.node_id)
            await self._pause()

    async def _pause(self) -> None:
        if self.wake is None:
            await asyncio.sleep(self.interval)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.interval):
                await self.wake.wait()
        self.wake.clear()
