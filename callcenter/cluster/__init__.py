"""Several service nodes on one store (issue 11): identity and liveness, console events
between nodes, token revocations everywhere at once, periodic work done once.

`Cluster` is what a node runs for this: the heartbeat (`nodes`), on PostgreSQL the event bus
(`bus`: LISTEN/NOTIFY, the hub's relay), and its leased jobs (`leases`). The embedded SQLite
store is one node: heartbeat and leases work the same, events stay in the in-process hub.
See docs/multi-node.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from callcenter.cluster.bus import ClusterBus, TokenCache
from callcenter.cluster.leases import LeasedJob
from callcenter.cluster.nodes import NodeRegistry, NodeView
from callcenter.db.engine import sync_url
from callcenter.events import EventHub
from callcenter.metrics import MetricsRegistry
from callcenter.settings import Settings

log = structlog.get_logger(__name__)

__all__ = ["Cluster", "ClusterBus", "LeasedJob", "NodeRegistry", "NodeView"]

def listen_conninfo(url: str) -> str:
    """A libpq URL for the listening connection (psycopg directly, outside the pool)."""
    return sync_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass
class Cluster:
    node_id: str
    settings: Settings
    engine: AsyncEngine
    nodes: NodeRegistry
    bus: ClusterBus | None
    jobs: list[LeasedJob] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, repr=False)
    _job_tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict, repr=False)
    _running: bool = False

    @classmethod
    def build(cls, settings: Settings, engine: AsyncEngine, hub: EventHub, tokens: TokenCache,
              metrics: MetricsRegistry) -> Cluster:
        node_id = settings.node_id()
        nodes = NodeRegistry(node_id, engine, settings.node)
        nodes.register_metrics(metrics)
        bus = None
        if engine.dialect.name == "postgresql":
            bus = ClusterBus(node_id, engine, listen_conninfo(settings.database.url), hub, tokens,
                             poll_seconds=settings.node.event_poll_seconds)
        cluster = cls(node_id=node_id, settings=settings, engine=engine, nodes=nodes, bus=bus)
        cluster.add_job("cluster-housekeeping", cluster.housekeeping, settings.jobs.cluster_housekeeping_seconds)
        held = metrics.gauge("cluster_job_held", "1 for each periodic job this node holds the lease of, else 0")

        async def refresh() -> None:
            held.clear()
            for job in cluster.jobs:
                held.set(1.0 if job.held else 0.0, job=job.name, node=node_id)
        metrics.on_refresh(refresh)
        return cluster

    def add_job(self, name: str, work: Callable[[], Awaitable[object]], interval: float, *,
                wake: asyncio.Event | None = None, eligible: Callable[[], bool] | None = None) -> LeasedJob:
        """Put a periodic job under a lease: it runs on one live node at a time.

        Jobs added before `start` start with the cluster; one added later (a channel started
        after the web app) starts at once."""
        if any(job.name == name for job in self.jobs):
            raise ValueError(f"job {name!r} is already registered")
        job = LeasedJob(name, work, interval, self.node_id, self.engine, self.settings.node.job_lease_seconds,
                        wake=wake, eligible=eligible)
        self.jobs.append(job)
        if self._running:
            self._start_job(job)
        return job

    async def remove_job(self, name: str) -> None:
        """Stop a job on this node (its owner is stopping) and hand its lease to another node."""
        job = next((j for j in self.jobs if j.name == name), None)
        if job is None:
            return
        self.jobs.remove(job)
        task = self._job_tasks.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await job.release()

    @property
    def running(self) -> bool:
        return self._running

    def _start_job(self, job: LeasedJob) -> None:
        self._job_tasks[job.name] = asyncio.get_running_loop().create_task(job.run(), name=f"job-{job.name}")

    async def housekeeping(self) -> None:
        pruned = await self.bus.prune(self.settings.node.event_retention_seconds) if self.bus else 0
        forgotten = await self.nodes.forget_old()
        if pruned or forgotten:
            log.info("cluster.housekeeping", node=self.node_id, events_pruned=pruned, nodes_forgotten=forgotten)

    async def start(self) -> None:
        await self.nodes.join()
        if self.bus is not None:
            await self.bus.start()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.nodes.run(), name="cluster-heartbeat")]
        self._running = True
        for job in self.jobs:
            self._start_job(job)

    async def stop(self) -> None:
        self._running = False
        tasks = [*self._tasks, *self._job_tasks.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._job_tasks = {}
        if self.bus is not None:
            await self.bus.stop()
        for job in self.jobs:
            with contextlib.suppress(Exception):
                await job.release()
        with contextlib.suppress(Exception):
            await self.nodes.leave()
