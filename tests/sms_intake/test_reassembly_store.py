"""Long MO texts joined in the store: two intake services (two nodes) on one database.

Each service has its own engine, as two `callcenter serve` processes would; the parts of
several long texts are fed to both at once, out of order, some twice. On SQLite and
PostgreSQL: every text is one draft with one acknowledgement, no part is counted twice, and
nothing stays pending. The timeout job keeps an incomplete text once however many nodes run it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select

from callcenter.app import Services, build_services
from callcenter.cases.model import CaseFlag
from callcenter.db import migrate
from callcenter.db.tables import CaseRow, OutboxRow
from callcenter.db.tables_sms import SmsInboundPartRow, SmsInboundRow
from callcenter.settings import Settings
from sms.gateway import InboundMessage, MoVerdict
from tests.sms_intake.conftest import Clock, use_clock

SERVICE = "12319"
TEXTS = 6


def citizen(i: int) -> str:
    return f"+86137000{i:05d}"


def story(i: int) -> str:
    return f"第{i}条：" + "布吉街道吉华路与中兴路交叉口的井盖缺失，夜间行人和电动车经过非常危险，" * 3


def parts_of(sender: str, ref: int, body: str, per_part: int = 40) -> list[InboundMessage]:
    raw = body.encode("utf-16-be")
    chunks = [raw[i:i + per_part * 2] for i in range(0, len(raw), per_part * 2)]
    return [InboundMessage(sender=sender, destination=SERVICE, data_coding=8, esm_class=0x40,
                           short_message=bytes([5, 0, 3, ref, len(chunks), seq]) + chunk)
            for seq, chunk in enumerate(chunks, start=1)]


@pytest.fixture
async def nodes(settings: Settings) -> AsyncIterator[list[Services]]:
    migrate.upgrade(settings.database.url)
    pair = [build_services(settings), build_services(settings)]
    try:
        yield pair
    finally:
        for node in pair:
            await node.close()


async def count(services: Services, query: Any) -> int:
    async with services.sessions() as session:
        return int(await session.scalar(query) or 0)


async def rows(services: Services, query: Any) -> list[Any]:
    async with services.sessions() as session:
        return list((await session.execute(query)).all())


async def test_parts_spread_over_two_nodes_make_one_draft_each(nodes: list[Services]) -> None:
    rng = random.Random(11)
    deliveries: list[tuple[int, InboundMessage]] = []
    for i in range(TEXTS):
        parts = parts_of(citizen(i), 0x30 + i, story(i))
        assert len(parts) >= 3
        copies = [*parts, rng.choice(parts)]  # one part delivered twice (a lost deliver_sm_resp)
        rng.shuffle(copies)
        deliveries += [(rng.randrange(2), part) for part in copies]

    async def deliver(node: int, message: InboundMessage) -> Any:
        assert nodes[node].sms is not None
        return await nodes[node].sms.intake.receive(message)

    results = await asyncio.gather(*(deliver(n, m) for n, m in deliveries))
    assert all(r.verdict is MoVerdict.STORED for r in results)
    assert sum(r.outcome == "draft" for r in results) == TEXTS
    assert sum(r.duplicate for r in results) == TEXTS

    a = nodes[0]
    drafts = await rows(a, select(CaseRow.description, CaseRow.reporter_phone).where(CaseRow.channel == "sms"))
    assert sorted(drafts, key=lambda d: d[1]) == [(story(i), citizen(i)) for i in range(TEXTS)]
    acks = await rows(a, select(OutboxRow.recipient).where(OutboxRow.template == "received"))
    assert sorted(r[0] for r in acks) == [citizen(i) for i in range(TEXTS)]
    assert await count(a, select(func.count()).select_from(SmsInboundPartRow)
                       .where(SmsInboundPartRow.status != "assembled")) == 0
    assert await count(a, select(func.count()).select_from(SmsInboundPartRow)) == len(deliveries) - TEXTS
    assert await a.sms.intake.pending_long_messages() == 0  # type: ignore[union-attr]


async def test_an_incomplete_text_is_kept_once_however_many_nodes_run_the_timeout(
        nodes: list[Services], clock: Clock) -> None:
    for node in nodes:
        use_clock(node, clock)
    parts = parts_of(citizen(1), 0x51, story(1))
    for node, part in zip(nodes, (parts[0], parts[2]), strict=False):
        assert node.sms is not None
        assert (await node.sms.intake.receive(part)).outcome == "part"
    assert nodes[0].sms is not None and nodes[1].sms is not None
    assert await nodes[1].sms.intake.pending_long_messages() == 1
    assert await nodes[0].sms.intake.expire_partials() == 0  # not yet
    clock.advance(seconds=nodes[0].settings.sms.reassembly_timeout + 1)
    kept = await asyncio.gather(nodes[0].sms.intake.expire_partials(), nodes[1].sms.intake.expire_partials())
    assert sorted(kept) == [0, 1]
    ((case,),) = await rows(nodes[0], select(CaseRow).where(CaseRow.channel == "sms"))
    assert CaseFlag.PARTIAL_MESSAGE in case.flags and "[第2/3段缺失]" in case.description
    # The missing part arrives late, through the other node: appended to that draft, no second one.
    late = await nodes[1].sms.intake.receive(parts[1])
    assert late.outcome == "late_part" and late.case_number == case.number
    assert await count(nodes[0], select(func.count()).select_from(CaseRow)) == 1
    ((row,),) = await rows(nodes[0], select(SmsInboundRow))
    assert row.partial and row.parts_present == [1, 2, 3]


async def test_a_part_completing_a_text_while_the_timeout_runs_makes_one_text(
        nodes: list[Services], clock: Clock) -> None:
    """The job and the last part race for the same set: under its lock one of them wins."""
    for node in nodes:
        use_clock(node, clock)
    assert nodes[0].sms is not None and nodes[1].sms is not None
    for round_ in range(5):
        parts = parts_of(citizen(round_), 0x60 + round_, story(round_))
        for part in parts[:-1]:
            await nodes[0].sms.intake.receive(part)
        clock.advance(seconds=nodes[0].settings.sms.reassembly_timeout + 1)
        await asyncio.gather(nodes[0].sms.intake.expire_partials(), nodes[1].sms.intake.receive(parts[-1]))
        texts = await rows(nodes[0], select(SmsInboundRow.text).where(SmsInboundRow.sender == citizen(round_)))
        assert len(texts) == 1, texts
        drafts = await count(nodes[0], select(func.count()).select_from(CaseRow)
                             .where(CaseRow.reporter_phone == citizen(round_)))
        assert drafts == 1
    assert await nodes[0].sms.intake.pending_long_messages() == 0


async def test_many_long_texts_through_one_node(nodes: list[Services]) -> None:
    """Enough parts on one pooled connection for psycopg to prepare the statements (and
    PostgreSQL to plan them generically): the part's ON CONFLICT must still find its index."""
    intake = nodes[0].sms.intake  # type: ignore[union-attr]
    many = 40
    results = [await intake.receive(part) for i in range(many) for part in parts_of(citizen(i), i, story(i))]
    assert sum(r.outcome == "draft" for r in results) == many
    assert all(r.verdict is MoVerdict.STORED for r in results)
