"""Work done once: a leased job runs on one node at a time and moves when its holder dies
or hands it back."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from callcenter.app import build_services
from callcenter.cluster.leases import LeasedJob
from callcenter.db import migrate
from callcenter.db.engine import create_engine
from callcenter.db.tables import ClusterLeaseRow
from callcenter.settings import DatabaseSettings
from tests.cluster.conftest import eventually, node_settings


@pytest.fixture
async def engines(database_url: str) -> AsyncIterator[list[AsyncEngine]]:
    """Three engines on one store: three nodes' worth of connections."""
    migrate.upgrade(database_url)
    made = [create_engine(DatabaseSettings(url=database_url)) for _ in range(3)]
    try:
        yield made
    finally:
        for engine in made:
            await engine.dispose()


def jobs(engines: list[AsyncEngine], runs: list[str], lease: float) -> list[LeasedJob]:
    made: list[LeasedJob] = []
    for i, engine in enumerate(engines):
        node = f"node-{i + 1}"

        async def work(node: str = node) -> None:
            runs.append(node)
        made.append(LeasedJob("escalation-sweep", work, 0.05, node, engine, lease_seconds=lease))
    return made


async def test_the_job_runs_on_one_node_while_all_tick(engines: list[AsyncEngine]) -> None:
    runs: list[str] = []
    nodes = jobs(engines, runs, lease=30)
    for _ in range(5):
        results = await asyncio.gather(*(job.tick() for job in nodes))
        assert sum(results) == 1
    assert len(runs) == 5 and len(set(runs)) == 1
    assert [job.held for job in nodes].count(True) == 1


async def test_a_dead_holders_job_moves_after_the_lease_and_a_clean_stop_hands_it_over_at_once(
        engines: list[AsyncEngine]) -> None:
    runs: list[str] = []
    first, second, third = jobs(engines, runs, lease=1.0)
    assert await first.tick()
    assert not await second.tick() and not await third.tick()

    # node-1 dies (stops ticking, keeps its row): nobody runs the job until the lease ends.
    assert not await second.tick()
    await eventually(second.tick, timeout=10, step=0.1)
    assert runs[-1] == "node-2" and not await third.tick()
    assert not await first.tick(), "a node back from the dead must not take a live lease"

    # node-2 stops cleanly: node-3 takes over at its next tick, not a lease later.
    await second.release()
    assert await third.tick()
    assert runs[-1] == "node-3"


async def test_running_loops_share_the_work(engines: list[AsyncEngine]) -> None:
    runs: list[str] = []
    nodes = jobs(engines, runs, lease=0.5)
    tasks = [asyncio.create_task(job.run()) for job in nodes]
    try:
        await eventually(lambda: len(runs) >= 10, timeout=10)
        holder = runs[0]
        assert set(runs) == {holder}
        # Kill the holder's loop: another node carries on.
        tasks[int(holder[-1]) - 1].cancel()
        before = len(runs)
        await eventually(lambda: any(node != holder for node in runs[before:]), timeout=10)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_node_that_cannot_do_the_work_leaves_it_to_one_that_can(engines: list[AsyncEngine]) -> None:
    """Call-backs need AMI: a holder whose link drops hands the job over at its next tick."""
    runs: list[str] = []
    first, second, _ = jobs(engines, runs, lease=30)
    link_up = {"node-1": True, "node-2": True}
    first.eligible = lambda: link_up["node-1"]
    second.eligible = lambda: link_up["node-2"]
    assert await first.tick() and not await second.tick()
    link_up["node-1"] = False
    assert not await first.tick() and not first.held
    assert await second.tick(), "taken at once, not a lease later"
    link_up["node-1"] = True
    assert not await first.tick(), "the link is back, but node-2 holds the job now"


async def test_a_wake_runs_the_next_tick_early(engines: list[AsyncEngine]) -> None:
    runs: list[str] = []
    (job, *_) = jobs(engines, runs, lease=30)
    job.interval, job.wake = 3600.0, asyncio.Event()
    task = asyncio.create_task(job.run())
    try:
        await eventually(lambda: len(runs) == 1, timeout=10)
        job.wake.set()
        await eventually(lambda: len(runs) == 2, timeout=5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_job_added_to_a_running_cluster_starts_and_stops_with_its_owner(
        database_url: str, tmp_path: Path) -> None:
    """Channels start after the web app: their jobs join a running cluster and leave it."""
    migrate.upgrade(database_url)
    services = build_services(node_settings(database_url, tmp_path, "only"))
    cluster = services.cluster
    assert cluster is not None
    runs: list[str] = []

    async def work() -> None:
        runs.append("ran")
    try:
        await cluster.start()
        cluster.add_job("late-job", work, 0.05)
        await eventually(lambda: len(runs) >= 2, timeout=10)
        await cluster.remove_job("late-job")
        stopped_at = len(runs)
        await asyncio.sleep(0.2)
        assert len(runs) == stopped_at
        async with services.sessions() as session:
            expires = await session.scalar(select(ClusterLeaseRow.expires_at).where(ClusterLeaseRow.name == "late-job"))
        assert expires is not None and expires < dt.datetime.now(dt.UTC), "handed back on removal"
        with pytest.raises(ValueError):
            cluster.add_job("cluster-housekeeping", work, 1.0)
    finally:
        await cluster.stop()
        await services.close()
