"""回拨市民: staff call a reporter from the console without seeing the number (SQLite and
PostgreSQL). The AMI client talks to the scripted AMI peer on a real socket; the real
Asterisk placing such a call: tests/voice_calls/test_asterisk_staff_dial.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from callcenter.app import Services
from callcenter.cases.model import Channel
from callcenter.cases.numbering import damm_check_digit
from callcenter.db.tables import CaseLogRow, CaseRow
from callcenter.service.cases import DraftInput
from callcenter.settings import AmiSettings
from callcenter.voice.ami import AmiClient
from callcenter.voice.queue_follow import set_queue_interface
from tests.console.conftest import Console
from tests.support.staff_dial import start_staff_dialer
from tests.support.waiting import until
from tests.voice_calls.ami_peer import ScriptedAmi

PHONE = "13812345678"


@pytest.fixture
async def ami(services: Services) -> AsyncIterator[tuple[ScriptedAmi, AmiClient]]:
    """The scripted AMI peer, our AMI client logged in to it, and the dialer on the services."""
    peer, client, dialer = await start_staff_dialer(
        services, reconnect_min=0.02, reconnect_max=0.1, callback_channel="PJSIP/{number}@carrier",
        callback_caller_id="075512319")
    try:
        yield peer, client
    finally:
        await dialer.drain()
        services.staff_dialer = None
        await client.stop()
        await peer.stop()


async def draft(services: Services, phone: str | None, **flags: bool) -> str:
    view = await services.cases.create_draft(
        DraftInput(channel=Channel.STAFF, description="井盖缺失", reporter_phone=phone, category="C0101",
                   notify_reporter=False, **flags), actor="test")
    return view.number


async def staff_calls(services: Services, number: str) -> list[CaseLogRow]:
    async with services.sessions() as session:
        return list((await session.scalars(
            select(CaseLogRow).join(CaseRow, CaseRow.id == CaseLogRow.case_id)
            .where(CaseRow.number == number, CaseLogRow.action == "staff_call").order_by(CaseLogRow.id))).all())


def variables(action: dict[str, list[str]]) -> dict[str, str]:
    return dict(item.partition("=")[::2] for item in action.get("Variable", []))


async def click(console: Console, number: str, status: int) -> tuple[dict[str, Any], str]:
    response = await console.http.post(f"/console/api/cases/{number}/call-reporter", json={},
                                       headers=console.headers())
    text = await response.text()
    assert response.status == status, text
    return await response.json(), text


async def test_rings_the_staff_phone_then_the_reporter_and_logs_it(
        console_factory: Any, services: Services, ami: tuple[ScriptedAmi, AmiClient]) -> None:
    peer, _ = ami
    await set_queue_interface(services.sessions, "wangfang", "PJSIP/1001")
    console = await (await console_factory()).signed_in("wangfang")
    number = await draft(services, PHONE)
    shown = await console.get_json(f"/console/api/cases/{number}")
    assert shown["call_reporter"] == {"possible": True, "reason": None, "message": None}

    answer, text = await click(console, number, 202)
    assert (answer["case_number"], answer["status"]) == (number, "calling")
    assert "正在呼叫您的话机" in answer["message"]
    assert "12345678" not in text and "5678" not in text  # not even masked: the browser is told nothing
    (originate,) = peer.named("Originate")
    assert (originate["Channel"], originate["Context"], originate["Exten"]) == (
        ["PJSIP/1001"], ["callcenter-staff-dial"], ["s"])
    assert PHONE not in originate["CallerID"][0] and number in originate["CallerID"][0]
    sent = variables(originate)
    assert sent["CALLCENTER_DIAL_NUMBER"] == PHONE and sent["CALLCENTER_CASE_NUMBER"] == number
    assert (sent["CALLCENTER_DIAL_PREFIX"], sent["CALLCENTER_DIAL_SUFFIX"]) == ("PJSIP/", "@carrier")
    assert sent["CALLCENTER_DIAL_CID"] == "075512319"
    assert sent["CALLCENTER_STAFF_CALL"] == originate["ActionID"][0]

    (entry,) = await staff_calls(services, number)
    assert (entry.actor, entry.changes["outcome"], entry.changes["interface"]) == (
        "staff:王芳", "calling", "PJSIP/1001")
    assert entry.changes["phone"] == "+86138****5678"

    # While that call is under way the case says so, and a second click places nothing.
    assert (await console.get_json(f"/console/api/cases/{number}"))["call_reporter"]["reason"] == "busy"
    again, _ = await click(console, number, 409)
    assert (again["error"], again["message"]) == ("busy", "正在呼叫中，请勿重复点击")
    assert len(peer.named("Originate")) == 1

    # The dialplan reports the end of the call: logged; the case may be called again.
    peer.emit(["Event: UserEvent", "Privilege: user,all", "UserEvent: CallcenterStaffDial",
               f"Ref: {sent['CALLCENTER_STAFF_CALL']}", f"Case: {number}", "DialStatus: ANSWER"])
    entries = await until(lambda: _with_outcomes(services, number, 2), "the end of the call is logged")
    assert (entries[-1].actor, entries[-1].changes) == ("voice", {"outcome": "reporter_answered"})
    shown = await console.get_json(f"/console/api/cases/{number}")
    assert shown["log"][-1]["action_label"] == "回拨市民" and shown["log"][-1]["actor_label"] == "呼叫系统"
    await click(console, number, 202)
    assert len(peer.named("Originate")) == 2


async def _with_outcomes(services: Services, number: str, count: int) -> list[CaseLogRow] | None:
    entries = await staff_calls(services, number)
    return entries if len(entries) >= count else None


async def test_a_staff_phone_nobody_answers_is_logged_and_frees_the_case(
        console_factory: Any, services: Services, ami: tuple[ScriptedAmi, AmiClient]) -> None:
    peer, _ = ami
    await set_queue_interface(services.sessions, "lijun", "PJSIP/1002")
    console = await (await console_factory()).signed_in("lijun")
    number = await draft(services, PHONE)
    await click(console, number, 202)
    action_id = peer.named("Originate")[0]["ActionID"][0]
    peer.emit(["Event: OriginateResponse", "Privilege: call,all", f"ActionID: {action_id}", "Response: Failure",
               "Channel: PJSIP/1002", "Context: callcenter-staff-dial", "Exten: s", "Reason: 3",
               "Uniqueid: <null>", "CallerIDNum: <unknown>", "CallerIDName: <unknown>"])
    entries = await until(lambda: _with_outcomes(services, number, 2), "the staff leg's outcome is logged")
    assert entries[-1].changes == {"outcome": "staff_no_answer"}
    await click(console, number, 202)


async def test_every_refusal_is_a_clear_4xx_in_chinese(
        console_factory: Any, services: Services, ami: tuple[ScriptedAmi, AmiClient]) -> None:
    peer, client = ami
    await set_queue_interface(services.sessions, "wangfang", "PJSIP/1001")
    await set_queue_interface(services.sessions, "zhaomin", "PJSIP/1003")
    staff = await (await console_factory()).signed_in("wangfang")
    leader = await (await console_factory()).signed_in("zhaomin")
    no_phone_account = await (await console_factory()).signed_in("lijun")

    without = await draft(services, None)
    refused, _ = await click(staff, without, 422)
    assert (refused["error"], refused["message"]) == ("no_phone", "该案件没有市民电话号码，无法回拨")

    unknown = "26010100042" + damm_check_digit("26010100042")
    assert (await click(staff, unknown, 404))[0]["error"] == "not_found"
    assert (await click(staff, "not-a-number", 404))[0]["error"] == "not_found"

    # Anonymous or confidential: only a role that may see numbers calls them (docs/privacy.md).
    for flags in ({"anonymous": True}, {"confidential": True}):
        private = await draft(services, PHONE, **flags)
        refused, _ = await click(staff, private, 403)
        assert (refused["error"], refused["message"]) == ("private", "市民要求匿名或保密，只有值班长可以回拨")
        assert (await staff.get_json(f"/console/api/cases/{private}"))["call_reporter"]["reason"] == "private"
        _, text = await click(leader, private, 202)
        assert "5678" not in text  # the role may see numbers; this answer still carries none

    public = await draft(services, PHONE)
    refused, _ = await click(no_phone_account, public, 409)
    assert (refused["error"], refused["message"]) == ("no_interface", "您的账号未绑定话机，请联系管理员设置坐席分机")

    # Without CSRF token: refused like every console write.
    response = await staff.http.post(f"/console/api/cases/{public}/call-reporter", json={})
    assert response.status == 403 and (await response.json())["error"] == "csrf"

    placed = len(peer.named("Originate"))
    await peer.stop()  # Asterisk gone: the AMI link drops
    await until(lambda: not client.connected, "the AMI client notices")
    refused, _ = await click(staff, public, 503)
    assert (refused["error"], refused["message"]) == ("ami_down", "呼叫系统暂不可用，请稍后再试")
    assert (await staff.get_json(f"/console/api/cases/{public}"))["call_reporter"]["reason"] == "ami_down"
    assert len(peer.named("Originate")) == placed
    assert await staff_calls(services, public) == []  # nothing was placed, nothing logged


async def test_without_ami_there_is_no_button_and_a_click_says_the_call_system_is_unavailable(
        console_factory: Any, services: Services) -> None:
    await set_queue_interface(services.sessions, "wangfang", "PJSIP/1001")
    console = await (await console_factory()).signed_in("wangfang")
    number = await draft(services, PHONE)
    assert (await console.get_json(f"/console/api/cases/{number}"))["call_reporter"]["reason"] == "ami_off"
    refused, _ = await click(console, number, 503)
    assert refused["message"] == "呼叫系统暂不可用，请稍后再试"


async def test_asterisk_refusing_the_originate_is_a_503_and_logged(
        console_factory: Any, services: Services, ami: tuple[ScriptedAmi, AmiClient]) -> None:
    peer, _ = ami
    peer.refuse_originate = True
    await set_queue_interface(services.sessions, "wangfang", "PJSIP/1001")
    console = await (await console_factory()).signed_in("wangfang")
    number = await draft(services, PHONE)
    refused, _ = await click(console, number, 503)
    assert refused["error"] == "ami_down"
    assert [e.changes["outcome"] for e in await staff_calls(services, number)] == ["calling", "refused"]
    peer.refuse_originate = False
    await click(console, number, 202)  # the refused attempt does not hold the case


@pytest.mark.parametrize("channel", ["PJSIP/{number}@carrier,30,D(1)", "PJSIP/{number}@${EVIL}",
                                     "PJSIP/{number} @carrier", "PJSIP/{number}@carrier&Local/1@x", "PJSIP/{number}|x"])
def test_a_trunk_the_dialplan_would_take_apart_is_refused_at_start_up(channel: str) -> None:
    """The staff-dial context splices callback_channel into Dial(): options or variables in it
    would reach Dial, so settings refuse them."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="no commas, &"):
        AmiSettings(callback_channel=channel)
    assert AmiSettings(callback_channel="Local/{number}@test-citizen/n").callback_channel.endswith("/n")


async def test_a_stored_number_no_carrier_can_dial_is_refused_not_a_crash(
        console_factory: Any, services: Services, ami: tuple[ScriptedAmi, AmiClient]) -> None:
    """A number written before today's checks (an old import): a 422, and nothing sent to Asterisk."""
    from sqlalchemy import update

    peer, _ = ami
    await set_queue_interface(services.sessions, "wangfang", "PJSIP/1001")
    console = await (await console_factory()).signed_in("wangfang")
    number = await draft(services, PHONE)
    async with services.sessions() as session, session.begin():
        await session.execute(update(CaseRow).where(CaseRow.number == number).values(reporter_phone="+86 12"))
    refused, _ = await click(console, number, 422)
    assert (refused["error"], refused["message"]) == ("no_phone", "该案件的电话号码无法拨打")
    assert peer.named("Originate") == []
