"""Shared limits: the per-number flood limit and the loop window count in the store, so texts
from one number spread over several nodes are limited as if one node had them all.

Two-node tests: two wired services, each with its own engine and node id, on one throwaway
PostgreSQL, receiving at the same time. The counters themselves run on SQLite too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from callcenter.app import Services, build_services
from callcenter.db import migrate
from callcenter.db.tables import CaseRow
from callcenter.db.tables_sms import RateWindowRow, SmsBlocklistRow, SmsInboundRow
from callcenter.db.unit import run_in_transaction
from callcenter.service.rate_windows import SharedWindows
from callcenter.settings import Settings, load_settings
from sms.gateway import InboundMessage

SERVICE = "12319"


def settings_for(database_url: str, node_id: str, tmp_path: Path) -> Settings:
    base = load_settings(environ={})
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text("", encoding="utf-8")
    return base.model_copy(update={
        "database": base.database.model_copy(update={"url": database_url}),
        "node": base.node.model_copy(update={"id": node_id}),
        "sms": base.sms.model_copy(update={"blocklist_file": str(blocklist), "intake_linger": 0.01}),
    })


@pytest.fixture
async def two_nodes(pg_database_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    migrate.upgrade(pg_database_url)
    made = [build_services(settings_for(pg_database_url, f"node-{n}", tmp_path)) for n in "ab"]
    try:
        yield made
    finally:
        for services in made:
            await services.close()


def text(sender: str, body: str) -> InboundMessage:
    return InboundMessage(sender=sender, destination=SERVICE, short_message=body.encode("utf-16-be"), data_coding=8)


async def receive_on(nodes: list[Services], messages: list[InboundMessage]) -> list[str]:
    """Every message at once, alternating between the nodes; their outcomes in order."""
    results = await asyncio.gather(*(nodes[i % len(nodes)].sms.intake.receive(m)  # type: ignore[union-attr]
                                     for i, m in enumerate(messages)))
    return [r.outcome for r in results]


@pytest.mark.postgres
async def test_a_flood_over_two_nodes_is_limited_as_on_one(two_nodes: list[Services]) -> None:
    a, _ = two_nodes
    limit = a.settings.sms.rate_limit
    # Warm both nodes up (connections, caches), so their groups below really overlap.
    await receive_on(two_nodes, [text(f"1351234100{n}", "预热：龙岗大道路灯不亮") for n in range(2)])
    sender = "13512340001"
    bodies = [f"第{i}条：布吉路{i}号井盖丢失，很危险" for i in range(limit + 9)]
    outcomes = await receive_on(two_nodes, [text(sender, b) for b in bodies])
    assert Counter(outcomes) == {"draft": limit, "folded": 9}
    async with a.sessions() as session:
        cases = (await session.execute(select(CaseRow.number, CaseRow.flags, CaseRow.description)
                                       .where(CaseRow.reporter_phone == "+86" + sender))).all()
    storms = [c for c in cases if "flood_folded" in (c.flags or [])]
    assert len(cases) == limit + 1 and len(storms) == 1, "one flood draft, whichever node folded first"
    async with a.sessions() as session:
        folded = (await session.scalars(select(SmsInboundRow.folded_into).where(
            SmsInboundRow.sender == "+86" + sender, SmsInboundRow.outcome == "folded"))).all()
    assert folded == [storms[0].number] * 9, "every folded text is kept on that draft"


@pytest.mark.postgres
async def test_the_same_text_in_a_loop_over_two_nodes_blocks_the_number(two_nodes: list[Services]) -> None:
    a, b = two_nodes
    threshold = a.settings.sms.loop_threshold
    sender = "13512340002"
    loop = text(sender, "自动回复：您好，我现在不方便接听")
    # Half on each node, one after the other: neither node alone reaches the threshold.
    for i in range(threshold):
        node = a if i % 2 == 0 else b
        await node.sms.intake.receive(loop)  # type: ignore[union-attr]
    async with a.sessions() as session:
        blocks = (await session.scalars(select(SmsBlocklistRow).where(SmsBlocklistRow.number == "+86" + sender))).all()
    assert [block.reason for block in blocks] == ["loop"]
    after = await b.sms.intake.receive(text(sender, "另一条消息"))  # type: ignore[union-attr]
    assert after.outcome == "blocked"


async def test_the_windows_count_a_group_in_order_and_forget_old_buckets(database_url: str, tmp_path: Path) -> None:
    """The counters alone, on both stores: one group's copies count in order, a window slides."""
    migrate.upgrade(database_url)
    services = build_services(settings_for(database_url, "only", tmp_path))
    try:
        now = dt.datetime(2026, 12, 3, 8, 0, 0, tzinfo=dt.UTC)
        windows = SharedWindows(services.sessions, bucket_seconds=10, loop_window=60, horizon=60, now=lambda: now)

        async def arrive(texts: list[tuple[str, str]], at: dt.datetime) -> list[int]:
            return await run_in_transaction(services.engine, lambda conn: windows.arrive(conn, texts, at))

        same, other = ("+8613500000001", "h1"), ("+8613500000001", "h2")
        assert await arrive([same, other, same, same], now) == [1, 1, 2, 3]
        assert await arrive([same], now + dt.timedelta(seconds=30)) == [4]
        # 75 s later the first group's bucket is out of the 60 s window; the 30 s one is not.
        assert await arrive([same, other], now + dt.timedelta(seconds=75)) == [2, 1]
        now = now + dt.timedelta(seconds=200)
        assert await windows.prune() == 6  # five loop buckets and the number's lock row
        async with services.sessions() as session:
            left = await session.scalar(select(func.count()).select_from(RateWindowRow))
        assert left == 0
    finally:
        await services.close()


@pytest.mark.postgres
async def test_pruning_skips_a_number_an_intake_group_holds(pg_database_url: str, tmp_path: Path) -> None:
    """The prune never waits for (or deadlocks with) a group holding a number's lock row."""
    migrate.upgrade(pg_database_url)
    services = build_services(settings_for(pg_database_url, "only", tmp_path))
    try:
        then = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
        windows = SharedWindows(services.sessions, bucket_seconds=10, loop_window=60, horizon=60)
        await run_in_transaction(services.engine, lambda conn: windows.arrive(
            conn, [("+8613500000001", "h1"), ("+8613500000002", "h2")], then))
        async with services.engine.connect() as held, held.begin():
            # A group in progress for the first number: its lock row is held.
            await held.run_sync(lambda conn: windows.arrive(conn, [("+8613500000001", "h3")], then))
            async with asyncio.timeout(10):
                gone = await windows.prune()
            assert gone == 3  # both old loop buckets and the free number's lock row
        assert await windows.prune() == 2  # the rest once the group has committed
    finally:
        await services.close()
