"""The outbox sender against a hostile SMSC (node-smpp simulator): each message once, each receipt
on its own handset's message.

The simulator hands out short hex ids (A, B, … 10, 11 …) and writes them in decimal in its
receipts, so one receipt id reads as up to three stored parts (issue 10, Found 1). On top:
every 10th submit throttled, every 12th answered by a dropped link (alternately taken by the
SMSC, whose receipt then comes on the next bind, and not taken), every 7th receipt naming a
handset that got nothing (only for answered submits: a lie about the only proof a dropped
submit gets makes a resend the right call, and a second copy). What is counted comes from the
simulator's own log.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from callcenter.db.tables import OutboxRow
from callcenter.db.tables_sms import SmsIdBasesRow, SmsReceiptUnmatchedRow, SmsSubmitRow
from callcenter.settings import RetryRule
from sms.dlr import normalise_message_id
from tests.sms_intake.test_sms_smsc import queue, running
from tests.support.smsc import SmscSimulator

pytestmark = pytest.mark.asyncio(loop_scope="session")

MESSAGES = 60
STRANGER = "8613700000000"  # named by the lying receipts; no message went there
FAST_RETRY = {"ESME_RTHROTTLED": RetryRule(attempts=20, delay=0.2)}


def handset(i: int) -> str:
    return f"86138000{i:05d}"


async def accepted_per_destination(smsc: SmscSimulator) -> dict[str, int]:
    """Submits the SMSC took: answered ESME_ROK, or taken just before it dropped the link."""
    ok = {(r["session"], r["sequence"]) for r in await smsc.events("submit_sm_resp") if r["status"] == 0}
    counts: dict[str, int] = {}
    for submit in await smsc.events("submit_sm"):
        if (submit["session"], submit["sequence"]) in ok:
            counts[submit["destination_addr"]] = counts.get(submit["destination_addr"], 0) + 1
    for taken in await smsc.events("accepted_unanswered"):
        counts[taken["destination_addr"]] = counts.get(taken["destination_addr"], 0) + 1
    return counts


async def explain(smsc: SmscSimulator, wire: str, parts: list[SmsSubmitRow],
                  unmatched: list[SmsReceiptUnmatchedRow]) -> None:
    """What the SMSC and the store saw of one handset (printed when a count is wrong)."""
    for event in await smsc.events():
        if wire in (event.get("destination_addr"), event.get("source_addr"), event.get("true_handset")) or (
                event["kind"] in ("submit_sm_resp", "close", "connect", "bind")):
            print({k: v for k, v in event.items() if k not in ("pdu_hex", "short_message_hex", "tlvs", "text")})
    print([(p.id, p.status, p.smsc_message_id, p.receipt_state, p.attempts) for p in parts
           if p.recipient == "+" + wire])
    print([(u.id, u.message_id, u.reason, u.matched_submit_id, u.received_at) for u in unmatched
           if u.recipient == "+" + wire])


async def store(stack: Any) -> tuple[list[OutboxRow], list[SmsSubmitRow], list[SmsReceiptUnmatchedRow]]:
    async with stack.services.sessions() as session:
        rows = list(await session.scalars(select(OutboxRow).order_by(OutboxRow.id)))
        parts = list(await session.scalars(select(SmsSubmitRow).order_by(SmsSubmitRow.id)))
        unmatched = list(await session.scalars(select(SmsReceiptUnmatchedRow).order_by(SmsReceiptUnmatchedRow.id)))
    return rows, parts, unmatched


async def settle(stack: Any, smsc: SmscSimulator, timeout: float = 60.0) -> None:
    """Every message sent, and every receipt the simulator sent answered (so stored somewhere)."""
    try:
        await _settle(stack, smsc, timeout)
    except TimeoutError:
        rows, parts, unmatched = await store(stack)
        print("outbox:", sorted((r.id, r.status, r.delivery_state, r.last_error) for r in rows if r.status != "sent"))
        print("parts:", [(p.outbox_id, p.status, p.smsc_message_id, p.receipt_state) for p in parts
                         if p.status != "accepted"])
        print("unmatched:", [(u.message_id, u.recipient, u.reason, u.matched_submit_id) for u in unmatched])
        print("receipts sent:", len(await smsc.events("auto_receipt")))
        raise


async def _settle(stack: Any, smsc: SmscSimulator, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while True:
            rows, _, _ = await store(stack)
            receipts = await smsc.events("auto_receipt")
            answered = {(r["session"], r["sequence"]) for r in await smsc.events("deliver_sm_resp", of="receipt")
                        if r["status"] == 0}
            done = {r["submit_message_id"] for r in receipts if (r["session"], r["sequence"]) in answered}
            if (rows and all(r.status == "sent" for r in rows)
                    and done == {r["submit_message_id"] for r in receipts} and len(done) >= MESSAGES):
                return
            await asyncio.sleep(0.1)


async def test_hex_ids_decimal_receipts_throttling_drops_and_lying_receipts(
        smsc: SmscSimulator, reactor: Any, tmp_path: Path) -> None:
    await smsc.configure(message_id_start=9, message_id_pad=False, throttle_every=10, drop_every=12,
                         drop_accepts="alternate",
                         auto_receipt={"stat": "DELIVRD", "form": "both", "id_format": "dec",
                                       "wrong_handset_every": 7, "wrong_handset": STRANGER})
    async with running(smsc, reactor, tmp_path, loops=True, in_doubt_wait=2.0, retry=FAST_RETRY,
                       outbox_batch=20) as stack:
        for i in range(MESSAGES):
            await queue(stack.services, "+" + handset(i), f"受理编号2612030{i:05d}：您反映的问题已受理。", f"fault-{i}")
        stack.sms.outbox.wake()
        await settle(stack, smsc)
        # A last sweep, as the loop does every few seconds, for receipts that crossed their resp.
        await stack.sms.outbox.sweep_unmatched()
        await stack.sms.outbox.share_pairs()
        rows, parts, unmatched = await store(stack)

    # Each message reached the SMSC exactly once, dropped links and throttling notwithstanding.
    counts = await accepted_per_destination(smsc)
    for wire in (w for w, n in counts.items() if n != 1):
        await explain(smsc, wire, parts, unmatched)
    assert counts == {handset(i): 1 for i in range(MESSAGES)}
    assert await smsc.events("accepted_unanswered"), "no drop was taken by the SMSC: the test lost its edge"
    assert any(r["status"] == 0x58 for r in await smsc.events("submit_sm_resp"))

    # Every receipt on a part came for that part's id and named that part's handset.
    receipts = await smsc.events("auto_receipt")
    honest = {(r["true_handset"], r["submit_message_id"]) for r in receipts if not r["wrong_handset"]}
    by_receipt_id = {(r["true_handset"], r["message_id"]): r["submit_message_id"] for r in receipts}
    settled_parts = [p for p in parts if p.receipt_state is not None]
    for part in settled_parts:
        wire = part.recipient.lstrip("+")
        submit_id = by_receipt_id.get((wire, part.smsc_message_id), part.smsc_message_id)
        assert (wire, normalise_message_id(submit_id or "")) in honest, part.recipient
    # Parts whose only receipt named the stranger stay unsettled; those receipts are stored with a reason.
    lying = {r["submit_message_id"] for r in receipts if r["wrong_handset"]}
    assert len(settled_parts) == len(honest)
    strays = [u for u in unmatched if u.recipient == "+" + STRANGER]
    assert len({u.message_id for u in strays}) == len(lying) and all(u.matched_submit_id is None and u.reason for u in strays)
    assert all(r.delivery_state in ("delivered", None) for r in rows)
    # Receipts were decimal readings of hex ids; the link learned that from unambiguous pairs.
    async with stack.services.sessions() as session:
        (bases,) = list(await session.scalars(select(SmsIdBasesRow)))
    assert bases.hex_dec_pairs >= 3 and bases.same_pairs == 0 and bases.dec_hex_pairs == 0


async def test_receipts_before_their_responses_with_decimal_ids_and_hex_receipts(
        smsc: SmscSimulator, reactor: Any, tmp_path: Path) -> None:
    await smsc.configure(message_id_format="dec", message_id_start=5,
                         auto_receipt={"stat": "DELIVRD", "form": "text", "id_format": "hex", "before_resp": True})
    async with running(smsc, reactor, tmp_path, loops=True, in_doubt_wait=2.0, outbox_batch=20) as stack:
        for i in range(MESSAGES):
            await queue(stack.services, "+" + handset(i), f"您的案件2612030{i:05d}已办结。", f"early-{i}")
        stack.sms.outbox.wake()
        await settle(stack, smsc)

        async def all_delivered() -> bool:
            rows, _, _ = await store(stack)
            return all(r.delivery_state == "delivered" for r in rows)

        async with asyncio.timeout(20):
            while not await all_delivered():
                await stack.sms.outbox.sweep_unmatched()
                await asyncio.sleep(0.1)
        _, parts, unmatched = await store(stack)
    assert await accepted_per_destination(smsc) == {handset(i): 1 for i in range(MESSAGES)}
    assert all(u.matched_submit_id is not None for u in unmatched)  # every early receipt found its part
    assert len(parts) == MESSAGES
