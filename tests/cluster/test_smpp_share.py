"""The bind gate and the rate share of one SMSC account (callcenter/cluster/smpp.py), on
SQLite and PostgreSQL: node heartbeats in the store, no SMSC (test_smpp_cluster.py has one)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from callcenter.cluster.nodes import NodeRegistry
from callcenter.cluster.smpp import SmppAccountShare
from callcenter.db import migrate
from callcenter.db.engine import create_engine
from callcenter.settings import DatabaseSettings, NodeSettings

ACCOUNT = "callcenter@127.0.0.1:2775"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    migrate.upgrade(database_url)
    made = create_engine(DatabaseSettings(url=database_url))
    try:
        yield made
    finally:
        await made.dispose()


async def node(engine: AsyncEngine, name: str, rates: list[tuple[float, float]], *, max_binds: int = 0,
               binds: int = 1) -> tuple[NodeRegistry, SmppAccountShare]:
    registry = NodeRegistry(name, engine, NodeSettings(id=name, heartbeat_seconds=0.2, dead_after_seconds=1.0))
    await registry.join()
    share = SmppAccountShare(node_id=name, engine=engine, account=ACCOUNT, binds=binds, cap=30.0,
                             max_binds=max_binds, dead_after=1.0, period=0.2,
                             on_rate=lambda rate, hold: rates.append((rate, hold)))
    return registry, share


async def test_the_cap_is_split_between_live_claims_and_a_dead_node_stops_counting(engine: AsyncEngine) -> None:
    rates_a: list[tuple[float, float]] = []
    rates_b: list[tuple[float, float]] = []
    rates_c: list[tuple[float, float]] = []
    reg_a, a = await node(engine, "node-a", rates_a, max_binds=3)
    _, b = await node(engine, "node-b", rates_b, max_binds=3)
    reg_c, c = await node(engine, "node-c", rates_c, max_binds=3, binds=2)  # tx+rx: two binds
    assert await a.acquire()
    assert rates_a == [(30.0, 0.0)]               # alone: the whole cap at once
    assert await b.acquire()
    assert rates_b == [(15.0, 0.2)]               # joins: its share, held one period
    assert await a.refresh() == 15.0
    assert not await c.acquire()                  # 1 + 1 + 2 binds > 3
    assert await a.acquire()                      # a reconnect keeps its own claim
    # node-b's heartbeat stops (kill -9): after dead_after its claim no longer counts.
    beats = [asyncio.create_task(reg.run()) for reg in (reg_a, reg_c)]
    try:
        await asyncio.sleep(1.5)
        assert await a.refresh() == 30.0
        assert await c.acquire()                  # 1 + 2 binds <= 3
        assert rates_c == [(15.0, 0.2)]
        assert await a.refresh() == 15.0
        await c.release()                         # a clean stop hands the share back at once
        assert await a.refresh() == 30.0
    finally:
        for task in beats:
            task.cancel()
        await asyncio.gather(*beats, return_exceptions=True)


async def test_two_nodes_asking_at_once_never_exceed_the_bind_cap(engine: AsyncEngine) -> None:
    shares = [(await node(engine, f"node-{n}", [], max_binds=2))[1] for n in range(5)]
    for _ in range(3):
        admitted = await asyncio.gather(*(s.acquire() for s in shares))
        assert sum(admitted) == 2, admitted
