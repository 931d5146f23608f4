"""Rating call-backs (回访): asked for in the IVR and by staff, placed through AMI on closure,
retried, given up, rated. The IVR runs on the scripted AGI peer, AMI is the scripted AMI on
a real socket, the store is the suite's database (SQLite and PostgreSQL). The same service
against the real Asterisk: tests/voice_calls/test_asterisk_ami.py."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from callcenter.cases.lifecycle import CaseStatus
from callcenter.settings import AmiSettings, CallbackSettings
from callcenter.voice.ami import AmiClient
from callcenter.voice.callbacks import CallbackRefused, CallbackService
from tests.support.waiting import until as _until
from tests.voice_calls.ami_peer import ScriptedAmi
from tests.voice_calls.conftest import CALLER_E164, OTHER, Voice, sounds

pytestmark = pytest.mark.asyncio(loop_scope="session")

SHANGHAI = dt.timezone(dt.timedelta(hours=8))


class Now:
    def __init__(self, value: dt.datetime) -> None:
        self.value = value

    def __call__(self) -> dt.datetime:
        return self.value


async def until(condition: Callable[[], Any], what: str, limit: float = 10.0) -> Any:
    return await _until(condition, what, limit, every=0.01)


@pytest_asyncio.fixture(loop_scope="session")
async def ami() -> AsyncIterator[tuple[ScriptedAmi, AmiClient]]:
    peer = ScriptedAmi()
    await peer.start()
    client = AmiClient(AmiSettings(enabled=True, host="127.0.0.1", port=peer.port, username=peer.username,
                                   secret=peer.secret, reconnect_min=0.02, reconnect_max=0.1),
                       queue="hotline-agents")
    await client.start()
    assert await client.wait_connected(10)
    try:
        yield peer, client
    finally:
        await client.stop()
        await peer.stop()


def service(voice: Voice, client: AmiClient | None, now: Now) -> CallbackService:
    settings = CallbackSettings(enabled=True, hours_start="09:00", hours_end="20:00", max_attempts=2,
                                retry_minutes=30)
    callbacks = CallbackService(voice.services.sessions, settings, ami=client, now=now, settle_seconds=0)
    if client is not None:
        client.on_event(callbacks.on_event)
    return callbacks


def originate_response(action_id: str, ok: bool, reason: str, uniqueid: str = "<unknown>") -> list[str]:
    return ["Event: OriginateResponse", "Privilege: call,all", f"ActionID: {action_id}",
            f"Response: {'Success' if ok else 'Failure'}", "Channel: PJSIP/13812345678@carrier",
            "Context: callcenter-callback", "Exten: s", f"Reason: {reason}", f"Uniqueid: {uniqueid}",
            "CallerIDNum: <unknown>", "CallerIDName: <unknown>"]


async def test_placed_on_closure_retried_on_busy_then_given_up(voice: Voice, ami: tuple[ScriptedAmi, AmiClient]) -> None:
    peer, client = ami
    now = Now(dt.datetime(2026, 3, 2, 10, 0, tzinfo=SHANGHAI))
    callbacks = service(voice, client, now)
    case = await voice.case(status=CaseStatus.FEEDBACK)
    await callbacks.request(case.number, by="wangfang")
    assert await callbacks.run_once() == 0 and peer.named("Originate") == [], "not closed: not called"
    await voice.services.cases.apply_platform_event(case.number, _closed(case.number))
    assert await callbacks.run_once() == 1
    (first,) = peer.named("Originate")
    assert first["Channel"] == ["PJSIP/13812345678@carrier"] and first["Context"] == ["callcenter-callback"]
    assert f"CALLCENTER_CASE_NUMBER={case.number}" in first["Variable"]
    assert (await callbacks.get(case.number)).status == "calling"  # type: ignore[union-attr]
    peer.emit(originate_response(first["ActionID"][0], ok=False, reason="5"))
    view = await until(lambda: _with_result(callbacks, case.number), "the busy line was recorded")
    assert (view.status, view.attempts, view.last_result) == ("waiting", 1, "busy")
    assert view.next_attempt_at is not None and view.next_attempt_at > now.value
    assert await callbacks.run_once() == 0, "the retry waits retry_minutes"
    now.value += dt.timedelta(minutes=31)
    assert await callbacks.run_once() == 1
    second = peer.named("Originate")[1]
    peer.emit(originate_response(second["ActionID"][0], ok=False, reason="3"))
    view = await until(lambda: _final(callbacks, case.number), "the call-back was given up")
    assert (view.status, view.attempts, view.last_result, view.score) == ("unreached", 2, "no_answer", None)
    log = (await voice.services.cases.get(case.number)).log
    assert [(e.action, e.changes.get("outcome")) for e in log if e.action.startswith("callback")] == [
        ("callback_requested", None), ("callback", "unreached")]


async def test_an_answered_call_back_records_the_score_the_ivr_stored(
        voice: Voice, ami: tuple[ScriptedAmi, AmiClient]) -> None:
    peer, client = ami
    now = Now(dt.datetime.now(dt.UTC))
    callbacks = service(voice, client, now)
    callbacks.in_hours = lambda at: True  # type: ignore[method-assign] - the real clock may be at night
    case = await voice.case(status=CaseStatus.CLOSED)
    await callbacks.request(case.number, by="ivr")
    assert await callbacks.run_once() == 1
    (sent,) = peer.named("Originate")
    peer.emit(originate_response(sent["ActionID"][0], ok=True, reason="4", uniqueid="1796285224.9"))
    await until(lambda: _with_result(callbacks, case.number), "answered")
    # the callback IVR (route callback) files the rating while the call is up
    transcript = await voice.call(voice.peer("callback", "4", callerid="075512319",
                                             variables={"CALLCENTER_CASE_NUMBER": case.number}))
    assert "rate_thanks" in sounds(transcript)
    peer.emit(["Event: Hangup", "Privilege: call,all", "Channel: PJSIP/carrier-00000009",
               "Uniqueid: 1796285224.9", "Cause: 16", "Cause-txt: Normal Clearing"])
    view = await until(lambda: _final(callbacks, case.number), "the call-back ended")
    assert (view.status, view.score, view.attempts) == ("rated", 4, 1)
    assert (await voice.services.cases.get(case.number)).rating == 4


async def test_calls_wait_for_the_calling_hours_and_for_ami(voice: Voice, ami: tuple[ScriptedAmi, AmiClient]) -> None:
    peer, client = ami
    now = Now(dt.datetime(2026, 3, 2, 21, 30, tzinfo=SHANGHAI))  # after 20:00 local
    callbacks = service(voice, client, now)
    case = await voice.case(status=CaseStatus.CLOSED)
    await callbacks.request(case.number, by="ivr")
    assert await callbacks.run_once() == 0 and peer.named("Originate") == []
    view = await callbacks.get(case.number)
    assert view is not None and view.next_attempt_at == dt.datetime(2026, 3, 3, 9, 0, tzinfo=SHANGHAI)
    now.value = dt.datetime(2026, 3, 3, 9, 0, tzinfo=SHANGHAI)
    down = service(voice, None, now)  # no AMI: nothing placed, nothing counted
    assert await down.run_once() == 0
    view = await callbacks.get(case.number)
    assert view is not None and (view.status, view.attempts) == ("waiting", 0)
    assert await callbacks.run_once() == 1


async def test_requests_are_refused_clearly(voice: Voice) -> None:
    callbacks = service(voice, None, Now(dt.datetime.now(dt.UTC)))
    with pytest.raises(CallbackRefused, match="not an intake number"):
        await callbacks.request("12345", by="wangfang")
    anonymous = await voice.case(phone=None, status=CaseStatus.CLOSED)
    with pytest.raises(CallbackRefused, match="no number"):
        await callbacks.request(anonymous.number, by="wangfang")
    with pytest.raises(CallbackRefused, match="not a phone number"):
        await callbacks.request(anonymous.number, by="wangfang", phone="12\r\n")
    view = await callbacks.request(anonymous.number, by="wangfang", phone="139 1234 5678")
    assert view.phone == "+8613912345678" and view.status == "waiting"


async def test_the_reporter_asks_in_the_ivr_when_the_case_is_not_closed(voice: Voice) -> None:
    voice.channel.actions.callbacks = service(voice, None, Now(dt.datetime.now(dt.UTC)))
    case = await voice.case(status=CaseStatus.DISPATCHED)
    stranger = await voice.call(voice.peer("hotline", f"3{case.number}#1", callerid=OTHER))
    assert "rate_not_reporter" in sounds(stranger)
    assert await voice.channel.actions.callbacks.get(case.number) is None
    reporter = await voice.call(voice.peer("hotline", f"3{case.number}#1"))
    heard = sounds(reporter)
    # "1" pressed while "not closed yet" plays is the answer to the offer (barge-in)
    assert heard[heard.index("rate_not_closed"):][:2] == ["rate_not_closed", "callback_registered"]
    view = await voice.channel.actions.callbacks.get(case.number)
    assert view is not None and (view.phone, view.status) == (CALLER_E164, "waiting")


async def test_without_call_backs_the_ivr_says_so(voice: Voice) -> None:
    assert voice.channel.actions.callbacks is None  # [callback] enabled = false by default
    case = await voice.case(status=CaseStatus.DISPATCHED)
    transcript = await voice.call(voice.peer("hotline", f"3{case.number}#1"))
    assert "callback_unavailable" in sounds(transcript)


def _closed(number: str) -> Any:
    from callcenter.service.cases import PlatformEvent

    return PlatformEvent(event_id=f"{number}-closed", status=CaseStatus.CLOSED)


async def _with_result(callbacks: CallbackService, number: str) -> Any:
    view = await callbacks.get(number)
    return view if view is not None and view.last_result is not None else None


async def _final(callbacks: CallbackService, number: str) -> Any:
    view = await callbacks.get(number)
    return view if view is not None and view.status not in ("waiting", "calling") else None
