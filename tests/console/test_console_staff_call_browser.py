"""回拨市民 in a real headless Chromium (SQLite): the button on a case, by keyboard, its answer,
and hidden or disabled when the call cannot be made. AMI is the scripted peer on a real socket
(the real Asterisk: tests/voice_calls/test_asterisk_staff_dial.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from callcenter.cases.model import Channel
from callcenter.voice.ami import AmiClient
from callcenter.voice.queue_follow import set_queue_interface
from tests.console.test_console_browser import (  # noqa: F401 - fixtures
    LiveConsole,
    active_id,
    browser,
    browser_available,
    by_id,
    chord,
    keys,
    live,
    screenshot,
    shots,
    sign_in,
    wait,
)
from tests.support.staff_dial import start_staff_dialer
from tests.voice_calls.ami_peer import ScriptedAmi

PHONE = "13812345678"


def connect_ami(live: LiveConsole) -> tuple[ScriptedAmi, AmiClient]:  # noqa: F811
    """The scripted AMI peer and a dialer on the live console's own loop."""
    services = live.services
    assert services is not None

    async def start() -> tuple[ScriptedAmi, AmiClient]:
        peer, client, _ = await start_staff_dialer(services, reconnect_min=0.05, reconnect_max=0.2)
        await set_queue_interface(services.sessions, "wangfang", "PJSIP/1001")
        return peer, client

    return live.run(start())


def test_the_button_calls_by_keyboard_and_says_what_happens(live: LiveConsole, browser: Any,  # noqa: F811
                                                            shots: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.keys import Keys

    peer, client = connect_ami(live)
    try:
        number = live.draft(reporter_phone=PHONE)
        sign_in(browser, live, view=f"#/case/{number}")
        wait(browser, lambda d: by_id(d, "d-number").text == number)
        button = by_id(browser, "btn-call-reporter")
        assert button.is_displayed() and button.is_enabled() and button.text == "回拨市民"
        # In the tab order just before the form: Shift+Tab from the description, Enter to call.
        browser.execute_script("document.getElementById('f-description').focus()")
        chord(browser, Keys.SHIFT, Keys.TAB)
        wait(browser, lambda d: active_id(d) == "btn-call-reporter", 3)
        keys(browser, Keys.ENTER)
        wait(browser, lambda d: "正在呼叫您的话机" in by_id(d, "call-reporter-status").text)
        assert [a["Channel"] for a in peer.named("Originate")] == [["PJSIP/1001"]]
        # The log shows the call (live update); the page never held the number.
        wait(browser, lambda d: "回拨市民" in by_id(d, "d-log").text)
        assert "正在呼叫坐席话机" in by_id(browser, "d-log").text
        # while the call is under way the button stays off, the status still says what happens
        wait(browser, lambda d: not by_id(d, "btn-call-reporter").is_enabled())
        assert "正在呼叫您的话机" in by_id(browser, "call-reporter-status").text
        # Asterisk says the call ended (the dialplan's UserEvent): the page shows it, the button is back.
        action_id = peer.named("Originate")[0]["ActionID"][0]
        live.loop.call_soon_threadsafe(peer.emit, [
            "Event: UserEvent", "Privilege: user,all", "UserEvent: CallcenterStaffDial", f"Ref: {action_id}",
            f"Case: {number}", "DialStatus: NOANSWER"])
        wait(browser, lambda d: "市民未接听" in by_id(d, "d-log").text)
        wait(browser, lambda d: by_id(d, "btn-call-reporter").is_enabled())
        assert PHONE not in browser.page_source
        screenshot(browser, shots / "call-reporter.png")

        # Asterisk goes away while the page still offers the button: the refusal is shown.
        later = live.draft(reporter_phone="13912345678")
        browser.execute_script("location.hash = arguments[0]", f"#/case/{later}")
        wait(browser, lambda d: by_id(d, "d-number").text == later and by_id(d, "btn-call-reporter").is_enabled())
        live.run(peer.stop())
        wait(browser, lambda _: not client.connected)
        by_id(browser, "btn-call-reporter").click()
        wait(browser, lambda d: by_id(d, "call-reporter-status").text == "呼叫系统暂不可用，请稍后再试")
        assert "error" in (by_id(browser, "call-reporter-status").get_attribute("class") or "")
    finally:
        live.run(client.stop())
        live.run(peer.stop())


def test_hidden_without_a_number_disabled_with_the_reason_otherwise(live: LiveConsole, browser: Any) -> None:  # noqa: F811
    # Without AMI on the node: no button at all.
    public = live.draft(reporter_phone=PHONE)
    sign_in(browser, live, view=f"#/case/{public}")
    wait(browser, lambda d: by_id(d, "d-number").text == public)
    assert not by_id(browser, "btn-call-reporter").is_displayed()
    assert by_id(browser, "call-reporter-status").text == ""

    peer, client = connect_ami(live)
    try:
        without = live.draft(channel=Channel.STAFF, reporter_phone=None)
        confidential = live.draft(reporter_phone=PHONE, confidential=True)
        browser.execute_script("location.hash = arguments[0]", f"#/case/{without}")
        wait(browser, lambda d: by_id(d, "d-number").text == without)
        assert not by_id(browser, "btn-call-reporter").is_displayed()

        browser.execute_script("location.hash = arguments[0]", f"#/case/{confidential}")
        wait(browser, lambda d: by_id(d, "d-number").text == confidential)
        wait(browser, lambda d: by_id(d, "call-reporter-status").text == "市民要求匿名或保密，只有值班长可以回拨")
        button = by_id(browser, "btn-call-reporter")
        assert button.is_displayed() and not button.is_enabled()
        assert peer.named("Originate") == []
    finally:
        live.run(client.stop())
        live.run(peer.stop())
