"""The asyncio AMI client against a scripted AMI on a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from callcenter.metrics import MetricsRegistry
from callcenter.settings import AmiSettings, Settings, load_settings
from callcenter.voice.ami import AmiClient, AmiError, AmiUnavailable, national_number
from callcenter.voice.metrics import VoiceMetrics
from tests.voice_calls.ami_peer import Member, ScriptedAmi

NUMBER = "261124000012"


async def until(condition: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Wait for a state change the client makes on its own (a guard, not a timing check)."""
    deadline = asyncio.get_running_loop().time() + limit
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.01)


def ami_settings(peer: ScriptedAmi, **changes: Any) -> AmiSettings:
    values: dict[str, Any] = {"enabled": True, "host": "127.0.0.1", "port": peer.port,
                              "username": peer.username, "secret": peer.secret,
                              "reconnect_min": 0.02, "reconnect_max": 0.1, "action_timeout": 2.0,
                              "connect_timeout": 2.0}
    values.update(changes)
    return AmiSettings(**values)


@pytest_asyncio.fixture
async def peer() -> AsyncIterator[ScriptedAmi]:
    ami = ScriptedAmi(members=[Member("PJSIP/1001"), Member("PJSIP/1002", paused=True),
                               Member("PJSIP/1003", status=2, in_call=True), Member("PJSIP/1004", status=5)],
                      waiting=2)
    await ami.start()
    try:
        yield ami
    finally:
        await ami.stop()


@pytest_asyncio.fixture
async def metrics() -> tuple[MetricsRegistry, VoiceMetrics]:
    registry = MetricsRegistry()
    return registry, VoiceMetrics.register(registry)


async def connected_client(peer: ScriptedAmi, voice_metrics: VoiceMetrics | None = None,
                           **changes: Any) -> AmiClient:
    client = AmiClient(ami_settings(peer, **changes), queue="hotline-agents", metrics=voice_metrics,
                       poll_interval=0.02)
    await client.start()
    assert await client.wait_connected(10)
    return client


async def test_logs_in_with_events_and_originates_a_callback(peer: ScriptedAmi) -> None:
    client = await connected_client(peer)
    try:
        action_id = await client.originate_callback("138 1234 5678", NUMBER)
    finally:
        await client.stop()
    (login,) = peer.named("Login")
    assert login["Username"] == ["callcenter"] and login["Events"] == ["on"]
    (originate,) = peer.named("Originate")
    assert {k: v for k, v in originate.items()} == {
        "Action": ["Originate"], "ActionID": [action_id], "Channel": ["PJSIP/13812345678@carrier"],
        "Context": ["callcenter-callback"], "Exten": ["s"], "Priority": ["1"], "CallerID": ["075512319"],
        "Timeout": ["45000"], "Async": ["true"], "Variable": [f"CALLCENTER_CASE_NUMBER={NUMBER}"]}
    assert peer.named("Logoff"), "a clean stop logs off"


async def test_refused_and_invalid_callbacks(peer: ScriptedAmi) -> None:
    client = await connected_client(peer)
    try:
        with pytest.raises(ValueError):
            await client.originate_callback("13812345678\r\nAction: Command", NUMBER)
        with pytest.raises(ValueError):
            await client.originate_callback("13812345678", NUMBER[:-1] + "9")
        assert peer.named("Originate") == []
        peer.refuse_originate = True
        with pytest.raises(AmiError, match="Originate failed"):
            await client.originate_callback("13812345678", NUMBER)
    finally:
        await client.stop()
    assert national_number("+8675512345678") == "075512345678"


async def test_queue_status_feeds_the_metrics(peer: ScriptedAmi,
                                              metrics: tuple[MetricsRegistry, VoiceMetrics]) -> None:
    registry, voice_metrics = metrics
    client = await connected_client(peer, voice_metrics)
    registry.on_refresh(client.refresh_metrics)
    try:
        snapshot = await client.queue_status()
        assert (snapshot.waiting, snapshot.members, snapshot.available, snapshot.paused, snapshot.in_call,
                snapshot.unreachable) == (2, 4, 1, 1, 1, 1)
        assert (snapshot.completed, snapshot.abandoned, snapshot.holdtime) == (7, 2, 12)
        data = {m["name"]: m["samples"] for m in (await registry.snapshot())["metrics"]}
    finally:
        await client.stop()
    assert data["voice_queue_waiting"] == [{"labels": {"queue": "hotline-agents"}, "value": 2.0}]
    members = {s["labels"]["state"]: s["value"] for s in data["voice_queue_members"]}
    assert members == {"logged_in": 3.0, "available": 1.0, "paused": 1.0, "in_call": 1.0}
    assert data["voice_ami_connected"] == [{"labels": {}, "value": 1.0}]


async def test_reconnects_when_asterisk_restarts(peer: ScriptedAmi,
                                                 metrics: tuple[MetricsRegistry, VoiceMetrics]) -> None:
    _, voice_metrics = metrics
    client = await connected_client(peer, voice_metrics)
    try:
        await peer.stop()
        await until(lambda: voice_metrics.ami_connected.value() == 0, "the client noticed Asterisk went away")
        assert not client.connected
        with pytest.raises(AmiUnavailable):
            await client.originate_callback("13812345678", NUMBER)
        await client.refresh_metrics()  # no connection: nothing to report, no error
        await peer.start()  # same port, as a restarted Asterisk
        await until(lambda: client.connected, "the client reconnected")
        assert client.connections == 2 and peer.logins == 2
        await client.originate_callback("13812345678", NUMBER)
        assert len(peer.named("Originate")) == 1
    finally:
        await client.stop()


async def test_wrong_secret_keeps_retrying_without_connecting(peer: ScriptedAmi) -> None:
    client = AmiClient(ami_settings(peer, secret="wrong"), queue="hotline-agents", poll_interval=0.02)
    await client.start()
    try:
        await until(lambda: peer.logins >= 3, "three login attempts with back-off")
        assert not client.connected and client.connections == 0
        with pytest.raises(AmiUnavailable):
            await client.queue_status()
    finally:
        await client.stop()


async def test_an_unanswered_action_times_out_and_the_connection_is_renewed(peer: ScriptedAmi) -> None:
    client = await connected_client(peer, action_timeout=0.3)
    try:
        peer.silent_actions.add("originate")
        with pytest.raises(AmiUnavailable, match="no answer"):
            await client.originate_callback("13812345678", NUMBER)
        await until(lambda: client.connections == 2 and client.connected, "a fresh connection")
        peer.silent_actions.clear()
        snapshot = await client.queue_status()  # the renewed connection answers
        assert snapshot.members == 4
    finally:
        await client.stop()


async def test_nothing_listening_is_retried_quietly() -> None:
    closed = ScriptedAmi()
    await closed.start()
    port = closed.port
    await closed.stop()
    client = AmiClient(AmiSettings(enabled=True, host="127.0.0.1", port=port, reconnect_min=0.02,
                                   reconnect_max=0.05), queue="hotline-agents")
    await client.start()
    try:
        assert not await client.wait_connected(0.2)
        with pytest.raises(AmiUnavailable):
            await client.originate_callback("13812345678", NUMBER)
    finally:
        await client.stop()


def test_ami_is_off_by_default_and_configured_by_environment() -> None:
    assert Settings().ami.enabled is False
    settings = load_settings(environ={"CALLCENTER_AMI__ENABLED": "true", "CALLCENTER_AMI__HOST": "asterisk",
                                      "CALLCENTER_AMI__SECRET": "x", "CALLCENTER_AMI__PORT": "5038"})
    assert (settings.ami.enabled, settings.ami.host, settings.ami.port) == (True, "asterisk", 5038)
    with pytest.raises(ValueError, match="number"):
        AmiSettings(callback_channel="PJSIP/fixed@carrier")


async def test_events_reach_every_listener_even_after_one_fails(peer: ScriptedAmi) -> None:
    client = AmiClient(ami_settings(peer), queue="hotline-agents", poll_interval=0.02)
    seen: list[tuple[str, dict[str, str]]] = []

    def broken(event: Any) -> None:
        raise RuntimeError("a listener's bug")

    client.on_event(broken)
    client.on_event(lambda event: seen.append((event.name, event.message.variables())))
    await client.start()
    try:
        assert await client.wait_connected(10)
        # after login the peer streams FullyBooted and a Newchannel with a ChanVariable
        await until(lambda: len(seen) >= 2, "the events after login")
        peer.emit(["Event: QueueCallerJoin", "Uniqueid: 1796285224.0", "Queue: hotline-agents",
                   "ChanVariable: CALLCENTER_CASE_NUMBER=261124000012", "ChanVariable: OTHER=x"])
        await until(lambda: len(seen) >= 3, "the emitted event")
        assert seen == [("FullyBooted", {}), ("Newchannel", {"CALLCENTER_CASE_NUMBER": NUMBER}),
                        ("QueueCallerJoin", {"CALLCENTER_CASE_NUMBER": NUMBER, "OTHER": "x"})]
        snapshot = await client.queue_status()  # the reader is still answering actions
        assert snapshot.members == 4
    finally:
        await client.stop()
