"""Work done once: a leased job runs on one node at a time and moves when its holder dies
or hands it back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from callcenter.cluster.leases import LeasedJob
from callcenter.db import migrate
from callcenter.db.engine import create_engine
from callcenter.settings import DatabaseSettings
from tests.cluster.conftest import eventually


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
