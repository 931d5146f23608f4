"""Events to every console: what one node publishes reaches the consoles of another through
PostgreSQL LISTEN/NOTIFY, also after the listening connection is killed and comes back."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse

from tests.cluster.conftest import Node, NodeFactory, eventually
from tests.console.conftest import read_sse_event
from callcenter.db.pgcluster import PostgresCluster

pytestmark = pytest.mark.postgres


async def open_stream(node: Node, username: str) -> ClientResponse:
    console = await node.console(username)
    response = await console.http.get("/console/events")
    assert response.status == 200
    await read_sse_event(response, "hello")
    return response


async def next_frames(response: ClientResponse, timeout: float) -> list[tuple[str, dict[str, Any]]]:
    """Every event frame that arrives within `timeout` seconds."""
    frames: list[tuple[str, dict[str, Any]]] = []

    async def read() -> None:
        event = ""
        while True:
            line = (await response.content.readline()).decode("utf-8").rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event:
                frames.append((event, json.loads(line[6:])))
                event = ""
    try:
        await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        pass
    return frames


def kill_listener(pg_cluster: PostgresCluster, node_id: str) -> int:
    rows = pg_cluster.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        (f"callcenter-listen {node_id}",))
    return len(rows)


async def test_screen_pops_and_case_changes_reach_the_consoles_of_another_node(
        pg_database_url: str, make_node: NodeFactory) -> None:
    a = await make_node(pg_database_url, "node-a")
    b = await make_node(pg_database_url, "node-b")
    assert a.services.cluster and a.services.cluster.bus and b.services.cluster and b.services.cluster.bus
    await eventually(lambda: b.services.cluster.bus.listening)  # type: ignore[union-attr]
    wangfang_b = await open_stream(b, "wangfang")
    lijun_b = await open_stream(b, "lijun")

    # A draft filed by a console on node A; then a change to it. Both reach node B's consoles.
    console_a = await a.console("zhaomin")
    draft = await console_a.send("POST", "/console/api/cases", {"description": "井盖缺失，在布吉路口"}, status=201)
    number = draft["number"]
    created = await read_sse_event(wangfang_b, "draft_created", timeout=10)
    assert created["number"] == number
    await console_a.send("PATCH", f"/console/api/cases/{number}",
                         {"address": "布吉路与吉华路交叉口", "version": draft["version"]})
    updated = await read_sse_event(wangfang_b, "case_updated", timeout=10)
    assert updated["number"] == number

    # A screen-pop published on node A for wangfang (the voice channel's call) pops her console
    # on node B, and nobody else's.
    a.services.events.publish("screen_pop", {"phone": "+8613812345678", "agent": "wangfang",
                                             "call_id": "1733200000.42"})
    pop = await read_sse_event(wangfang_b, "screen_pop", timeout=10)
    assert pop["call_id"] == "1733200000.42" and pop["phone_display"] != "+8613812345678"  # masked for staff
    others = await next_frames(lijun_b, 1.0)
    assert [kind for kind, _ in others if kind == "screen_pop"] == []
    assert [data["number"] for kind, data in others if kind == "case_updated"] == [number]


async def test_events_published_while_the_listener_is_down_arrive_after_it_reconnects(
        pg_database_url: str, pg_cluster: PostgresCluster, make_node: NodeFactory) -> None:
    """The backstop poll is set far beyond the test: only the reconnect's catch-up read can
    bring the event in."""
    a = await make_node(pg_database_url, "node-a", event_poll_seconds=120)
    b = await make_node(pg_database_url, "node-b", event_poll_seconds=120)
    bus_b = b.services.cluster.bus  # type: ignore[union-attr]
    assert bus_b is not None
    bus_b.reconnect_min = 1.0  # time to publish while it is away
    await eventually(lambda: bus_b.listening)
    stream = await open_stream(b, "wangfang")

    a.services.events.publish("case_updated", {"number": "261203000019", "status": "submitted"})
    first = await read_sse_event(stream, "case_updated", timeout=10)
    assert first["number"] == "261203000019"

    assert kill_listener(pg_cluster, "node-b") == 1
    await eventually(lambda: not bus_b.listening, timeout=10)
    a.services.events.publish("case_updated", {"number": "261203000027", "status": "dispatched"})
    await a.services.cluster.bus.flush()  # type: ignore[union-attr]
    assert not bus_b.listening, "the event must be written while node B is not listening"

    missed = await read_sse_event(stream, "case_updated", timeout=15)
    assert missed["number"] == "261203000027"
    assert bus_b.connects == 2

    # And the new connection carries NOTIFY again.
    a.services.events.publish("case_updated", {"number": "261203000035", "status": "closed"})
    again = await read_sse_event(stream, "case_updated", timeout=10)
    assert again["number"] == "261203000035"


async def test_every_event_arrives_once_in_order_under_a_burst_from_two_nodes(
        pg_database_url: str, make_node: NodeFactory, tmp_path: Path) -> None:
    a = await make_node(pg_database_url, "node-a")
    b = await make_node(pg_database_url, "node-b")
    c = await make_node(pg_database_url, "node-c")
    for node in (a, b, c):
        await eventually(lambda node=node: node.services.cluster.bus.listening)  # type: ignore[misc, union-attr]
    stream = await open_stream(c, "zhaomin")
    # Both bursts together stay within a console's queue (256): beyond it the hub tells the console to resync.
    count = 100
    for i in range(count):
        a.services.events.publish("case_updated", {"number": f"A{i:04d}", "status": "submitted"})
        b.services.events.publish("case_updated", {"number": f"B{i:04d}", "status": "submitted"})
        if i % 25 == 0:
            await asyncio.sleep(0)  # let the writers group what is queued

    seen: list[str] = []

    async def collect() -> bool:
        seen.extend(d["number"] for kind, d in await next_frames(stream, 0.3) if kind == "case_updated")
        return len(seen) >= 2 * count
    try:
        await eventually(collect, timeout=20, step=0)
    except AssertionError:
        raise AssertionError(f"{len(seen)} of {2 * count} events arrived") from None
    assert sorted(seen) == sorted([f"A{i:04d}" for i in range(count)] + [f"B{i:04d}" for i in range(count)])
    # Each node's own events keep their order.
    assert [n for n in seen if n[0] == "A"] == [f"A{i:04d}" for i in range(count)]
    assert [n for n in seen if n[0] == "B"] == [f"B{i:04d}" for i in range(count)]
