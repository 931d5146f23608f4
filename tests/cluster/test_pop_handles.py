"""Screen-pop handles work on every node: the handle node A's stream gave a console opens on
node B (the caller's cases, a draft with the caller's number), with no sticky sessions.

Two nodes (each its own engine and app on a real socket) on one store: PostgreSQL as a
cluster runs, and SQLite, where the second app stands for the service restarted on the same
file. An expired, altered or forged handle is a clear 4xx on every node, never a 500.
"""

from __future__ import annotations

import base64
import time

from sqlalchemy import func, select

from callcenter.cases.model import Channel
from callcenter.console.pop_handles import KEY_NAME, PopSealer
from callcenter.db.tables import CaseRow, SharedKeyRow
from callcenter.service.cases import DraftInput
from tests.cluster.conftest import Node, NodeFactory
from tests.cluster.test_events import open_stream
from tests.console.conftest import read_sse_event

CALLER = "+8613812345678"


async def stored_key(node: Node) -> bytes:
    async with node.services.engine.connect() as conn:
        row = await conn.execute(select(SharedKeyRow.secret).where(SharedKeyRow.name == KEY_NAME))
        return bytes(row.scalar_one())


async def test_a_handle_from_one_nodes_stream_opens_the_callers_cases_on_another(
        database_url: str, make_node: NodeFactory) -> None:
    a = await make_node(database_url, "node-a")
    b = await make_node(database_url, "node-b")
    mine = await a.services.cases.create_draft(DraftInput(
        channel=Channel.SMS, description="布吉街道井盖丢失", reporter_phone=CALLER), actor="sms:gateway")
    await a.services.cases.create_draft(DraftInput(
        channel=Channel.SMS, description="别人的案件", reporter_phone="13600000000"), actor="sms:gateway")

    # wangfang (staff: sees numbers masked) has her stream on node A; her call pops there.
    stream = await open_stream(a, "wangfang")
    a.services.events.publish("screen_pop", {"phone": CALLER, "agent": "wangfang", "call_id": "1764700000.7"})
    pop = await read_sse_event(stream, "screen_pop", timeout=10)
    handle = pop["pop"]
    assert pop["phone"] is None and pop["phone_display"] == "+86138****5678"
    assert "13812345678" not in handle and b"13812345678" not in base64.urlsafe_b64decode(handle)

    # Her next request goes to node B (no affinity): it opens the caller's cases ...
    on_b = await b.console("wangfang")
    answer = await on_b.get_json(f"/console/screen-pop?pop={handle}")
    assert [c["number"] for c in answer["open_cases"]] == [mine.number]
    assert answer["phone"] is None and answer["phone_display"] == "+86138****5678"
    # ... and files a draft with the caller's number, which the browser never saw.
    created = await on_b.send("POST", "/console/api/cases", {"pop": handle, "description": "来电反映：路灯不亮"},
                              status=201)
    view = await b.services.cases.get(created["number"])
    assert view.reporter_phone == CALLER and view.channel == "phone"

    # The handle node B's answer gave opens on node A as well.
    on_a = await a.console("wangfang")
    again = await on_a.get_json(f"/console/screen-pop?pop={answer['pop']}")
    assert sorted(c["number"] for c in again["open_cases"]) == sorted([mine.number, created["number"]])


async def test_expired_altered_and_forged_handles_are_refused_on_every_node(
        database_url: str, make_node: NodeFactory) -> None:
    a = await make_node(database_url, "node-a")
    b = await make_node(database_url, "node-b")
    leader_a = await a.console("zhaomin")
    handle = (await leader_a.get_json(f"/console/screen-pop?phone={CALLER}"))["pop"]
    # A handle made two hours ago with the key the nodes share (read from the store).
    two_hours_ago = time.time() - 7200
    expired = PopSealer(await stored_key(a), a.services.settings.console.pop_ttl_minutes * 60.0,
                        clock=lambda: two_hours_ago).seal(CALLER)
    # One character changed, in the tag and in the sealed number.
    altered = [handle[:-2] + ("A" if handle[-2] != "A" else "B") + handle[-1],
               handle[:30] + ("A" if handle[30] != "A" else "B") + handle[31:]]
    forged = ["x" * 64, base64.urlsafe_b64encode(bytes(48)).decode(), "来电", "nope"]

    for node in (a, b):
        console = await node.console("wangfang")
        assert (await console.get_json(f"/console/screen-pop?pop={handle}"))["phone_display"] == "+86138****5678"
        for bad, status, error in [(expired, 404, "pop_expired"), *((h, 400, "pop_invalid") for h in altered + forged)]:
            got = await console.get_json(f"/console/screen-pop?pop={bad}", status=status)
            assert got["error"] == error and got["message"].startswith("来电信息"), got
            got = await console.send("POST", "/console/api/cases", {"pop": bad, "description": "来电反映"},
                                     status=status)
            assert got["error"] == error and got["message"].endswith("请手工填写电话号码"), got
        # Longer than any handle: refused by the form's own limit.
        too_long = await console.send("POST", "/console/api/cases", {"pop": handle + "A", "description": "x"},
                                      status=422)
        assert too_long["error"] == "invalid"
    async with a.services.engine.connect() as conn:  # no refused handle filed anything
        assert (await conn.execute(select(func.count()).select_from(CaseRow))).scalar_one() == 0
