"""Outbox claims between two senders on one store (SQLite and PostgreSQL): a live lease is never
taken back, an expired one is, and a sender that lost its lease sends none of what it still held.

The SMSC here is a scripted gateway that holds every submit until the test releases it, so the
moment of each claim and each take-back is the test's choice; the store is real.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from sqlalchemy import select, update

from callcenter.app import Services
from callcenter.cluster.nodes import NodeRegistry
from callcenter.cases.model import Channel
from callcenter.db.tables import OutboxRow
from callcenter.db.tables_sms import SmsSubmitRow
from callcenter.service.cases import DraftInput
from callcenter.service.outbox_sender import OutboxSender
from callcenter.settings import Settings
from sms.gateway import OutboundPart, SubmitOutcome
from sms.parts import ReferenceAllocator
from sms.smpp.session import Status
from tests.sms_intake.conftest import Clock, sms_overrides, use_clock

LEASE = 1.0  # seconds of the claim's lease (renewed every third of it, real time)


class HoldingGateway:
    """Accepts every part, but only when the test says so."""

    name = "holding"

    def __init__(self) -> None:
        self.submitted: list[OutboundPart] = []
        self.release = asyncio.Event()
        self._ids = itertools.count(0x5F3A0000)

    @property
    def ready(self) -> bool:
        return True

    def bind_states(self) -> dict[str, int]:
        return {"trx": 5}

    async def start(self, *_: object) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def submit(self, part: OutboundPart) -> SubmitOutcome:
        self.submitted.append(part)
        await self.release.wait()
        return SubmitOutcome(status=Status.ROK, message_id=format(next(self._ids), "X"))


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    base = sms_overrides(settings, tmp_path)
    return base.model_copy(update={"sms": base.sms.model_copy(update={"outbox_lease": LEASE})})


def second_node(services: Services, clock: Clock) -> OutboxSender:
    """Another node's sender on the same store."""
    first = services.sms.outbox  # type: ignore[union-attr]
    return OutboxSender(sessions=services.sessions, smpp=first.smpp, settings=first.settings,
                        metrics=services.metrics, node="node-b", now=clock, dead_after=first.dead_after)


async def enqueue(services: Services, clock: Clock, bodies: list[str]) -> list[int]:
    async with services.sessions() as session, session.begin():
        rows = [OutboxRow(idempotency_key=f"lease-{i}", case_id=None, recipient=f"+86138000000{i:02d}",
                          template="sms_reply", body=body, status="pending", attempts=0, not_before=clock(),
                          created_at=clock()) for i, body in enumerate(bodies)]
        session.add_all(rows)
        await session.flush()
        return [r.id for r in rows]


async def rows(services: Services) -> list[OutboxRow]:
    async with services.sessions() as session:
        return list(await session.scalars(select(OutboxRow).order_by(OutboxRow.id)))


async def parts(services: Services) -> list[SmsSubmitRow]:
    async with services.sessions() as session:
        return list(await session.scalars(select(SmsSubmitRow).order_by(SmsSubmitRow.outbox_id, SmsSubmitRow.seq)))


async def until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_a_live_lease_is_never_taken_back_and_an_expired_one_is(services: Services, clock: Clock) -> None:
    use_clock(services, clock)
    node_a = services.sms.outbox  # type: ignore[union-attr]
    node_a.node = "node-a"
    node_b = second_node(services, clock)
    gateway_a, gateway_b = HoldingGateway(), HoldingGateway()
    gateway_b.release.set()
    node_a.gateway, node_b.gateway = gateway_a, gateway_b
    await enqueue(services, clock, ["受理编号261203000011：已受理。", "受理编号261203000029：已受理。"])

    sending = asyncio.create_task(node_a.run_once())
    await until(lambda: len(gateway_a.submitted) == 2)
    claimed = await rows(services)
    assert {(r.status, r.lease_owner) for r in claimed} == {("sending", "node-a")}
    # Node B, even restarting (recover), leaves node A's live claim alone and finds nothing to send.
    await node_b.recover()
    assert await node_b.run_once() == 0
    assert gateway_b.submitted == []
    assert {r.status for r in await rows(services)} == {"sending"}
    # Node A answers; its claim settles as sent and frees the lease.
    gateway_a.release.set()
    await sending
    assert [(r.status, r.lease_owner, r.lease_expires_at) for r in await rows(services)] == [("sent", None, None)] * 2
    # A claim whose lease ran out (its node died mid-submit) is taken back as in doubt, not resent.
    gateway_a.release.clear()
    async with services.sessions() as session, session.begin():
        session.add(OutboxRow(idempotency_key="lease-dead", case_id=None, recipient="+8613800000099",
                              template="sms_reply", body="您的案件261203000037已办结。", status="pending",
                              attempts=0, not_before=clock(), created_at=clock()))
    stuck = asyncio.create_task(node_a.run_once())
    await until(lambda: len(gateway_a.submitted) == 3)
    assert await node_b.take_back_expired() == 0
    clock.advance(seconds=LEASE + 1)
    assert await node_b.take_back_expired() == 1
    dead = (await rows(services))[-1]
    assert (dead.status, dead.lease_owner, dead.last_error) == ("in_doubt", None, "lease expired, held by node-a")
    assert [p.status for p in await parts(services) if p.outbox_id == dead.id] == ["in_doubt"]
    assert gateway_b.submitted == []
    stuck.cancel()
    await asyncio.gather(stuck, return_exceptions=True)


async def test_a_sender_that_lost_its_lease_sends_none_of_the_parts_it_still_held(
        services: Services, clock: Clock) -> None:
    use_clock(services, clock)
    node_a = services.sms.outbox  # type: ignore[union-attr]
    node_a.node = "node-a"
    node_b = second_node(services, clock)
    gateway_a = HoldingGateway()
    node_a.gateway = gateway_a
    (outbox_id,) = await enqueue(services, clock, ["井盖已更换完毕，请您留意。" * 12])  # three parts
    sending = asyncio.create_task(node_a.run_once())
    await until(lambda: len(gateway_a.submitted) == 1)
    clock.advance(seconds=LEASE + 1)
    assert await node_b.take_back_expired() == 1
    # Node A's renewal (every third of the lease) finds the claim gone before part 1 is answered.
    await asyncio.sleep(LEASE)
    gateway_a.release.set()
    await sending
    assert len(gateway_a.submitted) == 1  # parts 2 and 3 never left node A
    assert [p.status for p in await parts(services)] == ["accepted", "in_doubt", "in_doubt"]
    (row,) = await rows(services)
    assert row.id == outbox_id and row.status == "in_doubt"  # as node B left it


async def test_two_nodes_never_give_one_handset_one_reference_for_two_long_messages(
        services: Services, clock: Clock) -> None:
    """Both nodes' counters propose the same reference; the second node sees the first's in the store."""
    use_clock(services, clock)
    node_a = services.sms.outbox  # type: ignore[union-attr]
    node_a.node = "node-a"
    node_b = second_node(services, clock)
    node_a._allocator, node_b._allocator = ReferenceAllocator(bits=8, state=7), ReferenceAllocator(bits=8, state=7)
    gateway_a, gateway_b = HoldingGateway(), HoldingGateway()
    gateway_b.release.set()
    node_a.gateway, node_b.gateway = gateway_a, gateway_b
    handset = "+8613800000077"
    cases = [await services.cases.create_draft(
        DraftInput(channel=Channel.STAFF, description=f"路灯不亮 {n}", notify_reporter=False), actor="staff:test")
        for n in range(2)]
    long_body = "您反映的问题已转交处置部门，请保持电话畅通。" * 4  # 88 characters: two UCS-2 parts

    async def queue(case_id: int, key: str) -> None:
        async with services.sessions() as session, session.begin():
            session.add(OutboxRow(idempotency_key=key, case_id=case_id, recipient=handset, template="status",
                                  body=long_body, status="pending", attempts=0, not_before=clock(),
                                  created_at=clock()))

    await queue(cases[0].id, "long-a")
    sending = asyncio.create_task(node_a.run_once())
    await until(lambda: len(gateway_a.submitted) == 1)  # node A holds part 1 of its message
    await queue(cases[1].id, "long-b")
    assert await node_b.run_once() == 1
    gateway_a.release.set()
    await sending
    refs = {}
    for part in await parts(services):
        refs.setdefault(part.outbox_id, set()).add(part.concat_ref)
    assert len(refs) == 2 and all(len(r) == 1 for r in refs.values())
    first, second = (r.pop() for r in refs.values())
    assert first == 7 and second != first, "the second node must skip the reference in flight to that handset"


async def test_a_receipt_queued_by_the_case_service_wakes_the_sender(services: Services, clock: Clock) -> None:
    """Drafts from the phone, the console or Open311 queue their receipt SMS outside the SMS channel;
    the sender must not wait for its next poll (here 60 s) to send it."""
    sender = services.sms.outbox  # type: ignore[union-attr]
    sender.settings = sender.settings.model_copy(update={"outbox_poll_interval": 60.0})
    gateway = HoldingGateway()
    gateway.release.set()
    sender.gateway = gateway
    stop = asyncio.Event()
    running = asyncio.create_task(sender.run(stop))
    try:
        await asyncio.sleep(0.2)  # the first pass found nothing; the loop now waits for a wake or 60 s
        view = await services.cases.create_draft(
            DraftInput(channel=Channel.PHONE, description="井盖丢了", reporter_phone="13800000088"), actor="ivr")
        await until(lambda: len(gateway.submitted) == 1, timeout=5.0)
        assert gateway.submitted[0].destination.endswith("13800000088")
        assert await services.cases.send_receipt(view.number, "+8613800000099") is False, "queued once per case"
    finally:
        stop.set()
        await running


async def test_an_expired_lease_stays_with_a_node_that_still_beats(
        services: Services, clock: Clock, settings: Settings) -> None:
    """A lease can run out while its node lives: its renewal waited on a row lock held by a
    node stalled mid-transaction. Taking such claims back sent them twice (the stalled node's
    locks made every node's renewals wait, then it took all their claims on waking)."""
    use_clock(services, clock)
    node_a = services.sms.outbox  # type: ignore[union-attr]
    node_a.node = "node-a"
    node_b = second_node(services, clock)
    assert node_b.dead_after == settings.node.dead_after_seconds
    a_beats = NodeRegistry("node-a", services.engine, settings.node)
    await a_beats.join()
    ids = await enqueue(services, clock, ["受理编号261203000045：已受理。", "受理编号261203000053：已受理。"])
    async with services.sessions() as session, session.begin():
        await session.execute(update(OutboxRow).where(OutboxRow.id.in_(ids)).values(
            status="sending", lease_owner="node-a", lease_expires_at=clock()))
    clock.advance(seconds=LEASE + 1)
    # Node A beats: another node leaves its expired claims alone.
    assert await node_b.take_back_expired() == 0
    assert {(r.status, r.lease_owner) for r in await rows(services)} == {("sending", "node-a")}
    # Node A itself takes back what no batch of its holds any more (a commit that failed),
    # but not a message one of its batches is still sending.
    node_a._in_flight.add(ids[1])
    assert await node_a.take_back_expired() == 1
    assert [(r.status, r.last_error) for r in await rows(services)] == [
        ("in_doubt", "lease expired, held by node-a"), ("sending", None)]
    # Once node A stops (or misses its heartbeats), the rest is taken back by another node.
    node_a._in_flight.clear()
    await a_beats.leave()
    assert await node_b.take_back_expired() == 1
    assert [r.status for r in await rows(services)] == ["in_doubt", "in_doubt"]


class PacedGateway(HoldingGateway):
    """A gateway that says at what rate it submits, as the SMPP gateway does (its share of the
    account's rate)."""

    def __init__(self, parts_per_second: float) -> None:
        super().__init__()
        self.parts_per_second = parts_per_second


async def test_a_claim_holds_no_more_than_the_gateway_sends_in_a_few_seconds(
        services: Services, clock: Clock, settings: Settings) -> None:
    """What a node has claimed but not yet sent when it dies waits `in_doubt_wait` before
    another node sends it: at 5 parts/s a claim takes 2 s of it (10 messages), not 50."""
    use_clock(services, clock)
    node = services.sms.outbox  # type: ignore[union-attr]
    assert (settings.sms.outbox_batch, settings.sms.outbox_claim_seconds) == (50, 2.0)
    await enqueue(services, clock, [f"受理编号26120300{i:04d}：已受理。" for i in range(30)])
    node.gateway = PacedGateway(parts_per_second=5.0)
    assert node.batch_size() == 10
    claimed = await node._claim(clock())
    assert len(claimed) == 10
    assert sum(r.status == "sending" for r in await rows(services)) == 10
    # A gateway that does not pace (or paces fast) leaves the batch at outbox_batch.
    node.gateway = PacedGateway(parts_per_second=500.0)
    assert node.batch_size() == 50
    node.gateway = HoldingGateway()
    assert node.batch_size() == 50
    assert len(await node._claim(clock())) == 20
