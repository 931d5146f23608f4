"""The outbox's one owner against a real store (SQLite and PostgreSQL): one key scheme, the
caller's transaction, every writer through it."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from callcenter.app import Services
from callcenter.cases.model import Channel
from callcenter.db.tables import OutboxRow
from callcenter.service.cases import DraftInput
from callcenter.service.outbox import OutgoingSms, enqueue, outbox_key

NOW = dt.datetime(2026, 12, 3, 8, 0, tzinfo=dt.UTC)


async def rows(services: Services) -> list[OutboxRow]:
    async with services.sessions() as session:
        return list(await session.scalars(select(OutboxRow).order_by(OutboxRow.id)))


def test_one_key_scheme_names_the_kind_and_the_event() -> None:
    key = outbox_key("receipt", "261203000019")
    assert re.fullmatch(r"receipt:[0-9a-f]{64}", key)
    assert key == outbox_key("receipt", "261203000019") != outbox_key("receipt", "261203000024")
    assert outbox_key("case", "261203000019", "closed", 5, "+8613812345678") != outbox_key(
        "case", "261203000019", "closed", 6, "+8613812345678")
    assert len(outbox_key("sms-reply", "x" * 500)) <= 128
    with pytest.raises(ValueError, match="unknown outbox message kind"):
        outbox_key("voice-receipt", "1")


async def test_a_message_is_queued_once_and_only_with_its_transaction(services: Services) -> None:
    message = OutgoingSms(key=outbox_key("sms-reply", "fp:abc:1"), recipient="+8613812345678",
                          template="sms_reply", body="已收到")
    async with services.sessions() as session, session.begin():
        assert await enqueue(session, [message], NOW) == 1
        assert await enqueue(session, [message], NOW) == 0  # a retry inside the same transaction
    async with services.engine.begin() as conn:
        assert await enqueue(conn, [message], NOW) == 0     # and in a later one
    with pytest.raises(RuntimeError):
        async with services.sessions() as session, session.begin():
            other = OutgoingSms(key=outbox_key("sms-reply", "fp:def:1"), recipient="+8613812345678",
                                template="sms_reply", body="不会发出")
            await enqueue(session, [other], NOW)
            raise RuntimeError("the change failed")  # the message goes with it
    (row,) = await rows(services)
    assert (row.idempotency_key, row.status, row.attempts, row.not_before) == (message.key, "pending", 0, NOW)


async def test_one_intake_number_per_case_whichever_path_asks(services: Services) -> None:
    """The draft's receipt, a phone report's "send me the number" and submit share the key."""
    view = await services.cases.create_draft(
        DraftInput(channel=Channel.SMS, description="井盖丢了", reporter_phone="13812345678"), actor="sms")
    assert await services.cases.send_receipt(view.number, "+8613812345678") is False
    assert await services.cases.send_receipt(view.number, "+8613987654321") is False
    silent = await services.cases.create_draft(
        DraftInput(channel=Channel.PHONE, description="电话报告，待转写", reporter_phone="13812345678",
                   notify_reporter=False), actor="ivr")
    assert await services.cases.send_receipt(silent.number, "+8613987654321") is True
    assert await services.cases.send_receipt(silent.number, "+8613987654321") is False
    found = [(r.case_id, r.template, r.recipient, r.idempotency_key) for r in await rows(services)]
    assert found == [(view.id, "received", "+8613812345678", outbox_key("receipt", view.number)),
                     (silent.id, "received", "+8613987654321", outbox_key("receipt", silent.number))]


def test_no_writer_inserts_into_the_outbox_table_itself() -> None:
    """The owner is the only module that builds an INSERT into `outbox` (issue 10, finding 5)."""
    root = Path(__file__).resolve().parents[2] / "callcenter"
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "outbox.py" and path.parent.name == "service":
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r"(?<!class )OutboxRow\(|insert\(\s*(OutboxRow|OUTBOX)", text):
            offenders.append(str(path.relative_to(root)))
    assert offenders == []


async def test_concurrent_drafts_take_consecutive_serials_without_gaps(services: Services) -> None:
    views = await asyncio.gather(*(services.cases.create_draft(
        DraftInput(channel=Channel.STAFF, description=f"井盖丢了 {i}"), actor="staff:x") for i in range(64)))
    serials = sorted(int(v.number[6:11]) for v in views)
    assert serials == list(range(serials[0], serials[0] + 64))
