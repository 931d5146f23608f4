"""With AMI on every node (docker-compose.yml: both nodes follow the one Asterisk), each node
sees the same AgentConnect and publishes the same screen-pop, and the bus carries each to the
other node: the answering agent's console must still pop once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from callcenter.voice.ami_protocol import AmiProtocol, Event
from callcenter.voice.queue_follow import QueueFollower, set_queue_interface
from callcenter.voice.records import CallRecords
from tests.cluster.conftest import NodeFactory, eventually
from tests.cluster.test_events import next_frames, open_stream

pytestmark = pytest.mark.postgres

TRANSCRIPT = Path(__file__).resolve().parents[1] / "voice_calls" / "transcripts" / "ami_queue_asterisk22.raw"
MEMBER = "Local/agent@test-agent/n"  # the queue member that answers in the transcript


def queue_events() -> list[Event]:
    """Every event of a real Asterisk 22 AMI connection (a call answered by MEMBER, then one
    abandoned), as each node's AMI client receives it."""
    protocol = AmiProtocol()
    return [m for m in protocol.feed(TRANSCRIPT.read_bytes()) if isinstance(m, Event)]


async def test_an_answered_call_pops_the_agents_consoles_once_on_every_node(
        pg_database_url: str, make_node: NodeFactory) -> None:
    a = await make_node(pg_database_url, "node-a")
    b = await make_node(pg_database_url, "node-b")
    for node in (a, b):
        await eventually(lambda node=node: node.services.cluster.bus.listening)  # type: ignore[union-attr]
    await set_queue_interface(a.services.sessions, "wangfang", MEMBER)
    streams = {"a": await open_stream(a, "wangfang"), "b": await open_stream(b, "wangfang")}
    followers = [QueueFollower(CallRecords(n.services.sessions, n.services.engine.dialect.name), n.services.sessions,
                               n.services.events, queues={"hotline-agents"}, leave_grace=0.1) for n in (a, b)]
    try:
        for event in queue_events():
            for follower in followers:  # both nodes' AMI clients get every event
                follower(event)
        await eventually(lambda: all(f.popped for f in followers))
        frames = await asyncio.gather(*(next_frames(stream, 3.0) for stream in streams.values()))
    finally:
        for follower in followers:
            await follower.drain()
            await follower.stop()
    for name, got in zip(streams, frames, strict=True):
        pops = [data for kind, data in got if kind == "screen_pop"]
        assert [p["call_id"] for p in pops] == ["1796284932.0"], f"node {name}: {pops}"
        assert pops[0]["case_number"] == "261124000012"
