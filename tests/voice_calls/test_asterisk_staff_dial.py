"""回拨市民 through a real Asterisk 22: the console's button rings the staff member's phone,
and once they answer the project's [callcenter-staff-dial] dials the reporter.

The staff phone is `Local/agent@test-agent/n` (answers, talks 3 s, hangs up); the carrier
trunk is `Local/<number>@test-carrier/n` ([ami] callback_channel): like a real carrier it
announces the number that answered (a connected-line update), then a test citizen answers.
What the carrier received is read from Asterisk itself (its AMI DialBegin and
its log of the test-citizen extension it ran), not from anything the service says.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select

from callcenter.db.tables import CaseLogRow, CaseRow
from callcenter.voice.ami_protocol import Event
from callcenter.voice.queue_follow import set_queue_interface
from callcenter.web.app import make_app
from tests.console.conftest import PASSWORD, Console
from tests.voice_calls.conftest import RealVoice
from tests.voice_calls.test_asterisk_ami import ami_voice, until  # noqa: F401 - the fixture

pytestmark = pytest.mark.asyncio(loop_scope="session")

STAFF_PHONE = "Local/agent@test-agent/n"
REPORTER = "13812345678"
HOTLINE = "075512319"  # [ami] callback_caller_id (default)


async def outcomes(voice: RealVoice, number: str) -> list[tuple[str, str]]:
    async with voice.services.sessions() as session:
        rows = (await session.scalars(
            select(CaseLogRow).join(CaseRow, CaseRow.id == CaseLogRow.case_id)
            .where(CaseRow.number == number, CaseLogRow.action == "staff_call").order_by(CaseLogRow.id))).all()
    return [(row.actor, row.changes["outcome"]) for row in rows]


async def test_the_staff_phone_rings_then_the_reporter_gets_the_hotline_calling(ami_voice: RealVoice) -> None:  # noqa: F811
    voice, asterisk = ami_voice, ami_voice.asterisk
    ami = voice.channel.ami
    assert ami is not None and voice.services.staff_dialer is voice.channel.staff_dialer
    seen: list[Event] = []
    ami.on_event(seen.append)
    await asterisk.set_global("CITIZEN_SCRIPT", "w1")
    from callcenter.console.auth import StaffStore

    await StaffStore(voice.services.sessions, voice.services.settings.console).create_account(
        "chenjing", "陈静", "staff", PASSWORD)
    await set_queue_interface(voice.services.sessions, "chenjing", STAFF_PHONE)
    case = await voice.case(REPORTER)
    offset = asterisk.log_offset()
    # The trunk announces who answered, as a carrier does: that must not reach the staff phone.
    ami.settings = ami.settings.model_copy(update={"callback_channel": "Local/{number}@test-carrier/n"})

    server = TestServer(make_app(voice.services), host="127.0.0.1")
    client = TestClient(server)
    await client.start_server()
    try:
        console = await Console(http=client).signed_in("chenjing")
        shown = await (await client.get(f"/console/api/cases/{case.number}")).json()
        assert shown["call_reporter"]["possible"] is True
        response = await client.post(f"/console/api/cases/{case.number}/call-reporter", json={},
                                     headers=console.headers())
        text = await response.text()
        assert response.status == 202, text
        assert "5678" not in text

        logged = await until(lambda: _ended(voice, case.number), "the call ended and was logged", limit=90)
        assert logged == [("staff:陈静", "calling"), ("voice", "reporter_answered")]
        page = await (await client.get(f"/console/api/cases/{case.number}")).text()
        assert "5678" not in page.replace("138****5678", "")  # only ever the masked form
    finally:
        ami.settings = voice.services.settings.ami
        await client.close()
        await server.close()
    await voice.settle(60)

    # The carrier trunk was asked for the reporter's number, with the hotline as caller id.
    dials = [e for e in seen if e.name == "DialBegin" and REPORTER in (e.get("DialString") or "")]
    assert len(dials) == 1, [e.name for e in seen]
    assert dials[0].get("CallerIDNum") == HOTLINE
    assert f"[{REPORTER}@test-citizen:1]" in asterisk.log_since(offset)
    # The staff phone's leg never learnt the number (Dial's I: no connected-line update).
    staff_leg = [e for e in seen if (e.get("Channel") or "").startswith("Local/agent@test-agent")]
    assert staff_leg, "the staff phone's leg shows in the events"
    assert not [dict(e.message.headers) for e in staff_leg
                if REPORTER in (e.get("ConnectedLineNum") or "") + (e.get("CallerIDNum") or "")]


async def _ended(voice: RealVoice, number: str) -> list[tuple[str, str]] | None:
    found = await outcomes(voice, number)
    return found if len(found) >= 2 else None


async def test_the_dialplan_dials_nothing_but_digits(ami_voice: RealVoice) -> None:  # noqa: F811
    """The context checks the number itself: an Originate with anything else in it (here a
    second channel smuggled in with `&`) rings the staff phone and dials nobody."""
    voice = ami_voice
    ami = voice.channel.ami
    assert ami is not None
    seen: list[Event] = []
    ami.on_event(seen.append)
    ref = "test-invalid-1"
    await ami.action("Originate", {
        "Channel": STAFF_PHONE, "Context": "callcenter-staff-dial", "Exten": "s", "Priority": "1",
        "Timeout": "10000", "Async": "true",
        "Variable": ["CALLCENTER_CASE_NUMBER=261203000019", "CALLCENTER_DIAL_NUMBER=12345&Local/666@test-citizen",
                     "CALLCENTER_DIAL_PREFIX=Local/", "CALLCENTER_DIAL_SUFFIX=@test-citizen/n",
                     f"CALLCENTER_STAFF_CALL={ref}"]})
    ended: Any = await until(lambda: [e for e in seen if e.name == "UserEvent" and e.get("Ref") == ref],
                             "the dialplan reports the refused call", limit=60)
    assert ended[0].get("DialStatus") == "INVALID"
    # The Originate's own DialBegin (the staff phone) is the only one: no trunk was dialled.
    assert [e.get("DialString") for e in seen if e.name == "DialBegin"] == ["agent@test-agent/n"]
    await voice.settle(60)


async def test_a_busy_staff_phone_is_logged_and_nobody_is_dialled(ami_voice: RealVoice) -> None:  # noqa: F811
    """The staff member's phone is busy: Asterisk's OriginateResponse (Reason 5) is logged as
    坐席话机忙, the reporter is never dialled, and the case may be called again."""
    voice = ami_voice
    dialer = voice.services.staff_dialer
    assert dialer is not None and voice.channel.ami is not None
    seen: list[Event] = []
    voice.channel.ami.on_event(seen.append)
    from callcenter.console.auth import StaffStore

    await StaffStore(voice.services.sessions, voice.services.settings.console).create_account(
        "sunli", "孙丽", "staff", PASSWORD)
    # test-citizen: a number ending in 2 is busy; here it stands for the staff phone
    await set_queue_interface(voice.services.sessions, "sunli", "Local/13800000002@test-citizen/n")
    account = await StaffStore(voice.services.sessions, voice.services.settings.console).authenticate(
        "sunli", PASSWORD)
    case = await voice.case(REPORTER)
    await dialer.call_reporter(case.number, account_id=account.id, actor=account.actor, role_sees_numbers=False)
    logged = await until(lambda: _ended(voice, case.number), "the busy staff phone is logged", limit=60)
    assert logged == [("staff:孙丽", "calling"), ("voice", "staff_busy")]
    assert not [e for e in seen if e.name == "DialBegin" and REPORTER in (e.get("DialString") or "")]
    await voice.settle(60)
