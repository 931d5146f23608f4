"""The staff queue and rating call-backs through a real Asterisk 22 over AMI.

The project's own dialplan, queues.conf and manager.conf (tests/support/asterisk.py changes
only ports and paths); the service's AMI client logs in like in production. The agent is a
queue member `Local/agent@test-agent/n` (answers, talks 3 s, hangs up); the citizen called
back is `Local/<number>@test-citizen/n` (answers and presses keys, is busy, or never answers).
Nothing here is scripted on the Asterisk side beyond those two test contexts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select

from callcenter.app import build_services
from callcenter.cases.lifecycle import CaseStatus
from callcenter.cases.model import Channel
from callcenter.console.auth import StaffStore
from callcenter.events import EventHub, Subscription
from callcenter.console.queries import ConsoleQueries
from callcenter.db import migrate
from callcenter.db.tables import CallRecordRow, CaseLogRow, CaseRow
from callcenter.service.cases import DraftInput, PlatformEvent
from callcenter.settings import Settings
from callcenter.voice import VoiceChannel
from callcenter.voice.queue_follow import set_queue_interface
from tests.support.asterisk import AsteriskPeer
from tests.support.asterisk_fixtures import Sounds
from tests.support.waiting import until as _until
from tests.voice_calls.conftest import CALLER_E164, Clock, RealVoice

pytestmark = pytest.mark.asyncio(loop_scope="session")

QUEUE = "hotline-agents"
AGENT = "Local/agent@test-agent/n"


async def until(condition: Callable[[], Any], what: str, limit: float = 60.0) -> Any:
    return await _until(condition, what, limit, every=0.1)


def ami_secret(asterisk: AsteriskPeer) -> str:
    text = (asterisk.etc / "manager.conf").read_text(encoding="utf-8")
    section = text[text.index("[callcenter]"):]
    match = re.search(r"^secret\s*=\s*(\S+)", section, re.M)
    assert match, "manager.conf [callcenter] has a secret"
    return match.group(1)


@pytest_asyncio.fixture(loop_scope="session")
async def ami_voice(settings: Settings, tmp_path: Path, asterisk: AsteriskPeer, ivr_sounds: Sounds,
                    caller_speech: Sounds, reactor: Any, clock: Clock) -> AsyncIterator[RealVoice]:  # noqa: F811
    """The voice channel with AMI (queue events, call-backs) against the real Asterisk."""
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    configured = settings.model_copy(update={
        "recordings": settings.recordings.model_copy(
            update={"asterisk_dir": str(recordings), "service_dir": str(recordings)}),
        "console": settings.console.model_copy(update={"recordings_dir": str(recordings)}),
        "ami": settings.ami.model_copy(update={
            "enabled": True, "host": "127.0.0.1", "port": asterisk.ports.ami, "secret": ami_secret(asterisk),
            "reconnect_min": 0.1, "reconnect_max": 1.0, "callback_channel": "Local/{number}@test-citizen/n",
            "callback_ring_seconds": 5}),
        "callback": settings.callback.model_copy(update={
            "enabled": True, "hours_start": "00:00", "hours_end": "24:00", "max_attempts": 2,
            "retry_minutes": 0.02, "poll_seconds": 0.2}),
    })
    migrate.upgrade(configured.database.url)
    services = build_services(configured)
    channel = VoiceChannel(services, now=clock)
    voice = RealVoice(services, channel, asterisk, clock, recordings, caller_speech, 0)
    channel.routes = {route: voice._record(handler, route) for route, handler in channel.routes.items()}
    listening = channel.listen(reactor, "127.0.0.1", 0)
    voice.port = listening.getHost().port  # type: ignore[attr-defined]
    await asterisk.set_agi_nodes([voice.port])
    await channel.start_ami()
    assert channel.ami is not None and await channel.ami.wait_connected(30), "AMI login to the real Asterisk"
    await asterisk.acli(f"queue add member {AGENT} to {QUEUE}")
    try:
        yield voice
    finally:
        try:
            await asterisk.acli(f"queue remove member {AGENT} from {QUEUE}")
            await voice.settle(60)
            assert channel.queue_follower is not None
            await channel.queue_follower.drain()
        finally:
            await channel.stop()
            await services.close()


async def staff(voice: RealVoice, username: str, interface: str) -> None:
    store = StaffStore(voice.services.sessions, voice.services.settings.console)
    await store.create_account(username, username, "staff", "correct horse battery")
    await set_queue_interface(voice.services.sessions, username, interface)


async def legs(voice: RealVoice) -> list[CallRecordRow]:
    async with voice.services.sessions() as session:
        return list((await session.scalars(
            select(CallRecordRow).order_by(CallRecordRow.call_id, CallRecordRow.leg))).all())


def pops(sub: Subscription) -> list[dict[str, Any]]:
    found = []
    while not sub.queue.empty():
        event = sub.queue.get_nowait()
        if event is not None and event.type == "screen_pop":
            found.append(dict(event.data))
    return found


async def queue_outcome(voice: RealVoice) -> list[CallRecordRow]:
    rows = await legs(voice)
    return rows if rows and all(r.queue_outcome is not None for r in rows if r.queue_joined_at) and any(
        r.queue_joined_at for r in rows) else []


async def talked(voice: RealVoice) -> list[CallRecordRow]:
    rows = await legs(voice)
    return rows if rows and all(r.talk_seconds is not None for r in rows) else []


async def test_agent_answer_time_comes_from_agentconnect_and_pops_only_that_agent(ami_voice: RealVoice) -> None:
    voice, asterisk = ami_voice, ami_voice.asterisk
    await staff(voice, "wangfang", AGENT)
    await staff(voice, "lisi", "PJSIP/1002")
    hub = voice.services.events
    assert isinstance(hub, EventHub)
    follower = voice.channel.queue_follower
    assert follower is not None
    # The agent is on a break when the caller arrives: the wait is the queue's, not the IVR's
    await asterisk.acli(f"queue pause member {AGENT} queue {QUEUE}")
    with hub.subscribe("wangfang") as mine, hub.subscribe("lisi") as other:
        voice.place("w2|d0")  # main menu: 0 = a person
        await until(lambda: len(follower.tracker) == 1, "the caller joined the staff queue")
        await asyncio.sleep(3)
        await asterisk.acli(f"queue unpause member {AGENT} queue {QUEUE}")
        await voice.settle(120)
        # AgentComplete may still be on its way when the channels are gone
        (record,) = await until(lambda: talked(voice), "the agent's talk time was stored")
        mine_pops, other_pops = pops(mine), pops(other)
    assert (record.route, record.outcome, record.queue_outcome) == ("hotline", "transferred", "answered")
    assert record.agent_interface == AGENT and record.caller == CALLER_E164
    assert record.queue_wait_seconds is not None and record.queue_wait_seconds >= 3
    assert record.agent_answered_at is not None and record.queue_joined_at is not None
    waited = (record.agent_answered_at - record.queue_joined_at).total_seconds()
    assert abs(waited - record.queue_wait_seconds) <= 1, "AgentConnect HoldTime agrees with the event times"
    assert record.talk_seconds is not None and record.talk_seconds >= 2  # the agent talks 3 s
    # the screen-pop reached wangfang's console only
    assert [(p["agent"], p["call_id"]) for p in mine_pops] == [("wangfang", record.call_id)]
    assert other_pops == []
    # the dashboard's GB/T 33358 figures come from the queue, not from the IVR's answer
    now = dt.datetime.now(dt.UTC)
    figures = await ConsoleQueries(voice.services.sessions).calls(now - dt.timedelta(days=400),
                                                                  now + dt.timedelta(days=400))
    assert (figures.calls, figures.queued, figures.answered, figures.answered_in_target, figures.abandoned) == (
        1, 1, 1, 1, 0)
    assert figures.mean_wait_seconds == record.queue_wait_seconds
    metrics = voice.channel.metrics
    assert [metrics.queue_calls.value(queue=QUEUE, outcome=o) for o in ("joined", "answered")] == [1, 1]
    # the conversation is recorded (MixMonitor starts once an agent answered), named by the
    # call; the Local channels exchange no audio, so the file holds only its header here
    assert asterisk.recording_dir is not None
    assert (asterisk.recording_dir / f"agent-{record.call_id}.wav").is_file()


async def test_a_caller_who_hangs_up_in_the_queue_is_abandoned(ami_voice: RealVoice) -> None:
    voice, asterisk = ami_voice, ami_voice.asterisk
    follower = voice.channel.queue_follower
    assert follower is not None
    await asterisk.acli(f"queue pause member {AGENT} queue {QUEUE}")
    try:
        voice.place("w2|d0|w15|h")
        await voice.settle(120)
        await follower.drain()
        (record,) = await until(lambda: queue_outcome(voice), "the abandon was stored")
    finally:
        await asterisk.acli(f"queue unpause member {AGENT} queue {QUEUE}")
    assert record.queue_outcome == "abandoned" and record.agent_answered_at is None
    assert record.queue_wait_seconds is not None and record.queue_wait_seconds >= 1
    assert follower.popped == []
    assert asterisk.recording_dir is not None
    assert not (asterisk.recording_dir / f"agent-{record.call_id}.wav").exists(), "no empty agent-*.wav"
    now = dt.datetime.now(dt.UTC)
    figures = await ConsoleQueries(voice.services.sessions).calls(now - dt.timedelta(days=400),
                                                                  now + dt.timedelta(days=400))
    assert (figures.queued, figures.answered, figures.abandoned, figures.answered_in_target_rate) == (1, 0, 1, 0.0)
    assert voice.channel.metrics.queue_calls.value(queue=QUEUE, outcome="abandoned") == 1


async def closed_case(voice: RealVoice, phone: str) -> str:
    cases = voice.services.cases
    view = await cases.create_draft(DraftInput(channel=Channel.STAFF, description="路灯不亮", reporter_phone=phone,
                                               category="C0101", notify_reporter=False), actor="test")
    await cases.submit(view.number, actor="test")
    for index, step in enumerate([CaseStatus.REGISTERED, CaseStatus.DISPATCHED, CaseStatus.FEEDBACK]):
        await cases.apply_platform_event(view.number, PlatformEvent(event_id=f"{view.number}-{index}", status=step))
    return view.number


async def close(voice: RealVoice, number: str) -> None:
    await voice.services.cases.apply_platform_event(number, PlatformEvent(event_id=f"{number}-c",
                                                                          status=CaseStatus.CLOSED))


async def test_a_rating_call_back_is_placed_on_closure_and_its_score_lands_on_the_case(
        ami_voice: RealVoice) -> None:
    voice, asterisk = ami_voice, ami_voice.asterisk
    callbacks = voice.channel.callbacks
    assert callbacks is not None
    # the callback flow: intro, then "press 1-5"; the citizen listens, then presses 4
    await asterisk.set_global("CITIZEN_SCRIPT", "w10|d4")
    number = await closed_case(voice, "13812345678")
    requested = await callbacks.request(number, by="ivr")
    assert requested.status == "waiting"
    assert await callbacks.run_once() == 0, "not closed yet: nobody is called"
    await close(voice, number)
    callbacks.start()
    done = await until(lambda: _final(callbacks, number), "the call-back ended", limit=120)
    assert (done.status, done.score, done.attempts, done.last_result) == ("rated", 4, 1, "answered")
    assert voice.channel.metrics.callbacks.value(result="rated") == 1
    async with voice.services.sessions() as session:
        case = await session.scalar(select(CaseRow).where(CaseRow.number == number))
        assert case is not None and case.rating == 4
        entries = (await session.scalars(select(CaseLogRow).where(
            CaseLogRow.case_id == case.id, CaseLogRow.action == "callback"))).all()
    assert [(e.actor, e.changes["outcome"], e.changes["score"]) for e in entries] == [("callback", "rated", 4)]
    await voice.settle(60)
    # the callback leg has its own call record (route callback), settled by the rating
    records = [r for r in await legs(voice) if r.route == "callback"]
    assert [(r.outcome, r.queue_joined_at) for r in records] == [("settled", None)]


async def test_a_call_back_nobody_answers_is_retried_then_given_up(ami_voice: RealVoice) -> None:
    voice = ami_voice
    callbacks = voice.channel.callbacks
    assert callbacks is not None
    busy = await closed_case(voice, "13812345672")      # test-citizen: ends in 2 -> busy
    silent = await closed_case(voice, "13812345673")    # ends in 3 -> rings, never answers
    for number in (busy, silent):
        await close(voice, number)
        await callbacks.request(number, by="wangfang")
    callbacks.start()
    results = {n: await until(lambda n=n: _final(callbacks, n), f"call-back {n} gave up", limit=120)
               for n in (busy, silent)}
    assert {n: (v.status, v.attempts, v.last_result, v.score) for n, v in results.items()} == {
        busy: ("unreached", 2, "busy", None), silent: ("unreached", 2, "no_answer", None)}


async def _final(callbacks: Any, number: str) -> Any:
    view = await callbacks.get(number)
    return view if view is not None and view.status not in ("waiting", "calling") else None


async def test_the_voicemail_leg_after_the_queue_keeps_its_own_record(real_voice: RealVoice) -> None:
    """hotline 0 -> nobody in the queue (JOINEMPTY) -> voicemail: two AGI sessions on one
    channel, one agi_uniqueid; the voicemail's draft is on the second leg's record."""
    voice = real_voice
    # welcome (0 barges in), transfer prompt, no agent, voicemail instructions and beep
    voice.place("|".join(["w2", "d0", "w15", voice.say(), "w1", "d#"]))
    await voice.settle(150)
    (draft,) = await voice.drafts()
    records = await legs(voice)
    assert [(r.leg, r.route, r.outcome) for r in records] == [(1, "hotline", "transferred"), (2, "voicemail", "settled")]
    assert records[0].call_id == records[1].call_id
    assert (records[0].case_number, records[1].case_number) == (None, draft.number)
