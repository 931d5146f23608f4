"""Kill `callcenter serve` in the middle of a burst of 50 texts, restart it: nothing lost, nothing doubled.

The service runs as an operator runs it (a subprocess, PostgreSQL, the node-smpp SMSC). The
test plays the parts of a real SMSC that node-smpp leaves out: it delivers again every
deliver_sm that got no ESME_ROK (as an SMSC does on the next bind), and hands over the
receipts of submits it answered while the service was down or dying, some of them twice
(an SMSC's queued receipts, smpp.md item 13). Nothing here waits a fixed time to assert on.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from callcenter.db.engine import sync_url
from tests.support.serve_nodes import ServeProcess
from tests.support.smsc import SmscSimulator

BURST = 50
FIRST_WAVE = 30
SERVICE = "12319"


def sender(i: int) -> str:
    return f"1350000{i:04d}"


def report(i: int) -> str:
    return f"第{i}号反映：龙岗大道{i}号门前路灯不亮，晚上很黑，请尽快维修。"


def serve_env(database_url: str, smsc: SmscSimulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLCENTER_")}
    env.update({
        "CALLCENTER_DATABASE__URL": database_url,
        "CALLCENTER_AGI__PORT": "0",
        "CALLCENTER_SMPP__HOST": smsc.host,
        "CALLCENTER_SMPP__PORT": str(smsc.port),
        "CALLCENTER_SMPP__SYSTEM_ID": "callcenter",
        "CALLCENTER_SMPP__PASSWORD": "secret",
        "CALLCENTER_SMPP__RECONNECT_MIN": "0.05",
        "CALLCENTER_SMPP__RECONNECT_MAX": "0.3",
        "CALLCENTER_SMPP__MAX_PARTS_PER_SECOND": "1000",
        "CALLCENTER_SMS__IN_DOUBT_WAIT": "8",
        "CALLCENTER_SMS__OUTBOX_POLL_INTERVAL": "0.1",
        # The in-doubt and sweep jobs of a killed node move after this (leased jobs).
        "CALLCENTER_NODE__JOB_LEASE_SECONDS": "3",
    })
    return env


async def bound_session(smsc: SmscSimulator, after: int, service: ServeProcess, timeout: float = 60.0) -> int:
    """The id of the first transceiver session newer than `after`."""
    async with asyncio.timeout(timeout):
        while True:
            assert service.proc.poll() is None, "serve exited:\n" + service.tail()
            sessions = [s["id"] for s in await smsc.sessions() if s["mode"] == "transceiver" and s["id"] > after]
            if sessions:
                return int(sessions[0])
            await asyncio.sleep(0.05)


def query(url: str, sql: str) -> list[Any]:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).all())
    finally:
        engine.dispose()


async def settled(url: str, timeout: float = 90.0) -> None:
    """Every report made into a case, every acknowledgement sent and its receipt matched."""
    async with asyncio.timeout(timeout):
        while True:
            cases = query(url, "SELECT count(*) FROM cases WHERE channel = 'sms'")[0][0]
            open_ = query(url, "SELECT count(*) FROM outbox WHERE status IN ('pending', 'sending', 'in_doubt')")[0][0]
            total, delivered = query(url, "SELECT count(*), count(*) FILTER (WHERE delivery_state = 'delivered') "
                                          "FROM outbox")[0]
            if cases >= BURST and open_ == 0 and delivered == total:
                return  # too many cases or messages fail the assertions below, fast
            await asyncio.sleep(0.2)


def accepted_by_destination(submits: list[dict[str, Any]], resps: list[dict[str, Any]]) -> dict[str, list[str]]:
    ok = {(r["session"], r["sequence"]) for r in resps if r["status"] == 0}
    out: dict[str, list[str]] = {}
    for submit in submits:
        if (submit["session"], submit["sequence"]) in ok:
            assert submit["esm_class"] & 0x40 == 0 and submit["data_coding"] == 8
            body = bytes.fromhex(submit["short_message_hex"]).decode("utf-16-be")
            out.setdefault(submit["destination_addr"], []).append(body)
    return out


@pytest.mark.postgres
async def test_kill_mid_burst_and_restart_loses_nothing_and_doubles_nothing(
        smsc: SmscSimulator, pg_database_url: str, tmp_path: Path) -> None:
    await smsc.configure(auto_receipt={"stat": "DELIVRD", "form": "both"})
    env = serve_env(pg_database_url, smsc)
    first = ServeProcess(env, tmp_path / "serve-1.log")
    second: ServeProcess | None = None
    try:
        session = await bound_session(smsc, 0, first)
        # The first part of the burst arrives at once; kill as soon as a few are answered.
        await asyncio.gather(*(smsc.deliver(source_addr=sender(i), destination_addr=SERVICE, data_coding=8,
                                            short_message_hex=report(i).encode("utf-16-be").hex())
                               for i in range(FIRST_WAVE)))
        await smsc.wait_for("deliver_sm_resp", count=5, session=session, of="deliver_sm", timeout=30)
        first.kill()
        answered = {r["sequence"] for r in await smsc.events("deliver_sm_resp", session=session)
                    if r["status"] == 0}
        stored_before = query(pg_database_url, "SELECT count(*) FROM sms_inbound")[0][0]
        print(f"killed with {len(answered)} of {FIRST_WAVE} answered, {stored_before} stored")

        second = ServeProcess(env, tmp_path / "serve-2.log")
        session2 = await bound_session(smsc, session, second)
        # As an SMSC would: deliver again everything without ESME_ROK, then the rest of the burst.
        unanswered = [d for d in await smsc.events("deliver_sm", session=session) if d["sequence"] not in answered]
        for pdu in unanswered:
            await smsc.deliver(source_addr=pdu["source_addr"], destination_addr=SERVICE,
                               data_coding=pdu["data_coding"], short_message_hex=pdu["short_message_hex"])
        for i in range(FIRST_WAVE, BURST):
            await smsc.deliver(source_addr=sender(i), destination_addr=SERVICE, data_coding=8,
                               short_message_hex=report(i).encode("utf-16-be").hex())
        # Receipts the SMSC had queued for submits it answered before the kill (some already delivered).
        submits = {(s["session"], s["sequence"]): s for s in await smsc.events("submit_sm", session=session)}
        for resp in await smsc.events("submit_sm_resp", session=session):
            submit = submits.get((resp["session"], resp["sequence"]))
            if resp["status"] == 0 and submit is not None:
                await smsc.receipt(resp["message_id"], source_addr=submit["destination_addr"],
                                   destination_addr=SERVICE, session=session2)

        await settled(pg_database_url)
    except BaseException:
        logs = first.tail() + ("\n--- restarted ---\n" + second.tail() if second else "")
        print(logs)
        raise
    finally:
        first.stop()
        if second is not None:
            assert second.stop() == 0, second.tail()

    # Exactly 50 drafts, one per sender, each with its own text.
    rows = query(pg_database_url, "SELECT reporter_phone, description, number FROM cases WHERE channel = 'sms'")
    assert len(rows) == BURST
    by_phone = {phone: (description, number) for phone, description, number in rows}
    assert set(by_phone) == {f"+86{sender(i)}" for i in range(BURST)}
    assert all(by_phone[f"+86{sender(i)}"][0] == report(i) for i in range(BURST))
    assert query(pg_database_url, "SELECT count(*) FROM sms_inbound")[0][0] == BURST
    # Every sender got exactly one acknowledgement, carrying its own intake number.
    acks = accepted_by_destination(await smsc.events("submit_sm"), await smsc.events("submit_sm_resp"))
    assert len(acks) == BURST
    for i in range(BURST):
        (ack,) = acks[f"86{sender(i)}"]
        assert ack.startswith(f"受理编号{by_phone[f'+86{sender(i)}'][1]}：")
    statuses = query(pg_database_url, "SELECT status, count(*) FROM outbox GROUP BY status")
    assert dict(statuses) == {"sent": BURST}
    # Receipts that overtook their submit_sm_resp, or came for submits in doubt, all found their part.
    assert query(pg_database_url, "SELECT count(*) FROM sms_receipts_unmatched WHERE matched_submit_id IS NULL")[0][0] == 0
