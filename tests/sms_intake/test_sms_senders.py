"""Three `callcenter serve` nodes share one PostgreSQL outbox; one is killed (SIGKILL) mid-burst.

Each node is its own process with its own SMPP bind to the node-smpp SMSC. The burst is put
in the outbox after all three are bound, so they compete for it through their leased claims.
When the SMSC has taken a third of it, one node is killed. Its expired leases are taken back
by the others as in doubt: parts the SMSC took are proven by their receipts (the SMSC delivers
a receipt left unanswered by the dead bind again on a live one), the rest are sent after
`sms.in_doubt_wait`. Counted at the SMSC: every message taken exactly once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, text

from callcenter.db import migrate
from callcenter.db.engine import sync_url
from callcenter.db.tables import OutboxRow
from tests.sms_intake.test_sms_kill import query, serve_env
from tests.support.serve_nodes import ServeProcess
from tests.support.smsc import SmscSimulator

BURST = 900
NODES = 3


def handset(i: int) -> str:
    return f"86139{i:08d}"


def enqueue(url: str, count: int) -> None:
    """The burst, as the case core leaves it in the outbox: one transaction."""
    now = dt.datetime.now(dt.UTC)
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(insert(OutboxRow.__table__), [  # type: ignore[arg-type]
                {"idempotency_key": f"senders-{i}", "case_id": None, "recipient": "+" + handset(i),
                 "template": "sms_reply", "body": f"受理编号2612031{i:05d}：您反映的问题已受理。",
                 "status": "pending", "attempts": 0, "not_before": now, "created_at": now}
                for i in range(count)])
    finally:
        engine.dispose()


async def bound_sessions(smsc: SmscSimulator, nodes: list[ServeProcess], count: int, timeout: float = 60.0) -> list[int]:
    async with asyncio.timeout(timeout):
        while True:
            for node in nodes:
                assert node.proc.poll() is None, "serve exited:\n" + node.tail()
            ids = [int(s["id"]) for s in await smsc.sessions() if s["mode"] == "transceiver"]
            if len(ids) >= count:
                return ids
            await asyncio.sleep(0.05)


@pytest.mark.postgres
async def test_three_senders_one_killed_mid_burst_submit_every_message_exactly_once(
        smsc: SmscSimulator, pg_database_url: str, tmp_path: Path) -> None:
    # Short hex ids, decimal receipts spread over every bind: receipts often reach another node
    # than the one that sent the part, sometimes before its submit_sm_resp is stored.
    await smsc.configure(message_id_start=9, message_id_pad=False,
                         auto_receipt={"stat": "DELIVRD", "form": "both", "id_format": "dec",
                                       "route": "round_robin"})
    migrate.upgrade(pg_database_url)
    base = serve_env(pg_database_url, smsc)
    # The three binds share the account's 250 parts/s; a node joining the account holds its
    # submits for one heartbeat (callcenter/cluster/smpp.py), kept short so every node sends
    # before the kill.
    base.update({"CALLCENTER_SMS__IN_DOUBT_WAIT": "4", "CALLCENTER_SMS__OUTBOX_LEASE": "3",
                 "CALLCENTER_SMPP__MAX_PARTS_PER_SECOND": "250", "CALLCENTER_NODE__HEARTBEAT_SECONDS": "0.3",
                 "CALLCENTER_NODE__DEAD_AFTER_SECONDS": "3"})
    nodes = [ServeProcess({**base, "CALLCENTER_NODE__ID": f"node-{n}"}, tmp_path / f"node-{n}.log")
             for n in range(NODES)]
    victim = nodes[1]
    try:
        sessions = await bound_sessions(smsc, nodes, NODES)
        await asyncio.sleep(1.0)  # past every node's join hold
        enqueue(pg_database_url, BURST)
        await smsc.wait_for("submit_sm", count=BURST // 3, timeout=60)
        victim.kill()
        async with asyncio.timeout(120):
            while True:
                open_ = query(pg_database_url, "SELECT count(*) FROM outbox WHERE status <> 'sent'")[0][0]
                if open_ == 0:
                    break
                await asyncio.sleep(0.2)
    except BaseException:
        for node in nodes:
            print(f"--- {node.log_path.name}\n{node.tail()}")
        raise
    finally:
        for node in nodes:
            if node is not victim:
                assert node.stop() == 0, node.tail()
            else:
                node.stop()

    ok = {(r["session"], r["sequence"]) for r in await smsc.events("submit_sm_resp") if r["status"] == 0}
    taken: dict[str, int] = {}
    per_session: dict[int, int] = {}
    for submit in await smsc.events("submit_sm"):
        if (submit["session"], submit["sequence"]) in ok:
            taken[submit["destination_addr"]] = taken.get(submit["destination_addr"], 0) + 1
            per_session[submit["session"]] = per_session.get(submit["session"], 0) + 1
    twice = {k: v for k, v in taken.items() if v != 1}
    assert not twice, f"{len(twice)} messages taken more than once"
    assert set(taken) == {handset(i) for i in range(BURST)}
    # The work was shared, the victim included, and its leases were taken back by the others.
    assert all(per_session.get(s, 0) > 0 for s in sessions), per_session
    taken_back = sum("sms.outbox.leases_taken_back" in n.log_path.read_text(errors="replace")
                     for n in nodes if n is not victim)
    print(f"per bind: {per_session}; nodes that took back leases: {taken_back}")
    stranded = query(pg_database_url, "SELECT count(*) FROM sms_submits WHERE status <> 'accepted'")[0][0]
    assert stranded == 0
    engine = create_engine(sync_url(pg_database_url))
    with engine.connect() as conn:
        doubled = conn.execute(text("SELECT count(*) FROM (SELECT outbox_id FROM sms_submits "
                                    "GROUP BY outbox_id HAVING count(*) > 1) AS d")).scalar()
    engine.dispose()
    assert doubled == 0
