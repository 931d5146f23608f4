"""A new user's first draft, end to end (issue 5, done when: "A new user can open the console,
sign in, take a draft from the queue, listen to it, classify it and submit it, and the reporter
gets the SMS").

Every peer is real: the account comes from `callcenter staff create` in its own process
against the live service's SQLite file, the voicemail draft from the voice channel's own
action with a real WAV file, the browser is headless Chromium on a real port, and the
reporter's SMS leaves through the outbox sender and the gateway the service uses when no
SMSC is configured.

Set CALLCENTER_SCREENSHOTS=docs/screenshots to refresh docs/screenshots/draft-voicemail.png.
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from callcenter.db.tables import OutboxRow
from callcenter.db.tables_sms import SmsSubmitRow
from callcenter.ivr.engine import Invoke
from callcenter.metrics import MetricsRegistry
from callcenter.service.sms_channel import make_gateway
from callcenter.voice.actions import CallInfo, VoiceActions
from callcenter.voice.metrics import VoiceMetrics
from callcenter.voice.recordings import RecordingStore
from sms.gateway import ConsoleGateway
from tests.console.test_console_browser import (  # noqa: F401 - browser_available, live, shots: fixtures
    CHROMEDRIVER,
    CHROMIUM,
    ROOT,
    LiveConsole,
    active_id,
    browser_available,
    by_id,
    chord,
    css,
    keys,
    live,
    queue_numbers,
    screenshot,
    shots,
    wait,
)

NEW_USER, NEW_NAME, NEW_PASSWORD = "chenjing", "陈静", "第一天上班-Chen-2026"
REPORTER = "+8613512340001"
TONE_SECONDS, TONE_HZ, RATE = 1.0, 440.0, 8000


@pytest.fixture
def browser(browser_available: None) -> Iterator[Any]:  # noqa: F811 - the fixture, imported above
    """test_console_browser's browser, allowed to play audio without a click (headless)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download a driver
    profile = tempfile.mkdtemp(prefix="cc-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1440,1000", "--lang=zh-CN",
                 "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        logs = driver.get_log("browser")
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        problems = [entry["message"] for entry in logs if entry["level"] == "SEVERE"
                    and "Failed to load resource" not in entry["message"]]
        assert not problems, problems


# ---------------------------------------------------------------------------- helpers


def write_tone(path: Path) -> None:
    """What Asterisk's RECORD FILE writes: 8 kHz mono 16-bit PCM; here 1 s of a 440 Hz tone."""
    frames = int(RATE * TONE_SECONDS)
    samples = (int(12000 * math.sin(2 * math.pi * TONE_HZ * i / RATE)) for i in range(frames))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(b"".join(struct.pack("<h", s) for s in samples))


def create_account_with_the_cli(live: LiveConsole) -> None:
    """As an operator runs it: its own process, the live database's URL, the password on stdin."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLCENTER_")}
    env["CALLCENTER_DATABASE__URL"] = live.settings.database.url
    done = subprocess.run(
        [sys.executable, "-m", "callcenter", "staff", "create", "--username", NEW_USER, "--name", NEW_NAME,
         "--role", "staff"], cwd=ROOT, env=env, input=NEW_PASSWORD + "\n", text=True, capture_output=True,
        timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert f"{NEW_USER} ({NEW_NAME}, staff) created" in done.stderr


def voicemail(live: LiveConsole) -> str:
    """A voicemail as the voice channel files it: the IVR's file name, the voicemail action."""
    assert live.services is not None
    services = live.services
    store = RecordingStore("/var/spool/asterisk/recordings", Path(live.settings.console.recordings_dir))
    target = store.new_target("voicemail", "1767225600.42")
    write_tone(Path(live.settings.console.recordings_dir) / target.ref)
    actions = VoiceActions(cases=services.cases, engine=services.engine, sessions=services.sessions,
                           templates=services.templates, catalogue=services.catalogue, recordings=store,
                           metrics=VoiceMetrics.register(MetricsRegistry()), hours=None)
    result = live.run(actions.invoke(
        Invoke("voicemail_draft", {"recording": target.ref, "recording_ms": "1000", "caller": REPORTER,
                                   "call_id": "1767225600.42", "case_number": None}),
        CallInfo(call_id="1767225600.42", route="voicemail", caller=REPORTER)))
    assert result.outcome == "ok", result
    number = result.values["case_number"]
    view = live.run(live.cases.get(number))
    assert view.channel == "phone" and view.recording_ref == target.ref and view.reporter_phone == REPORTER
    assert list(view.flags) == ["needs_transcription", "voicemail"]  # the file has audio: no recording_* flag
    return number


def outbox_rows(live: LiveConsole) -> list[OutboxRow]:
    assert live.services is not None
    services = live.services

    async def read() -> list[OutboxRow]:
        async with services.sessions() as session:
            return list((await session.scalars(select(OutboxRow).order_by(OutboxRow.id))).all())

    return live.run(read())


def send_outbox_once(live: LiveConsole) -> list[SmsSubmitRow]:
    """One pass of the service's outbox sender through the gateway `serve` uses without an SMSC."""
    assert live.services is not None and live.services.sms is not None
    services, sms = live.services, live.services.sms
    sender = sms.outbox
    assert not live.settings.smpp.host, "this test needs the default settings: no SMSC configured"
    gateway = make_gateway(live.settings.smpp)
    assert isinstance(gateway, ConsoleGateway)

    async def once() -> list[SmsSubmitRow]:
        await gateway.start(sms.intake.receive_verdict, sender.handle_receipt)
        sender.gateway = gateway
        try:
            assert await sender.run_once() == 1
        finally:
            sender.gateway = None
            await gateway.stop()
        async with services.sessions() as session:
            return list((await session.scalars(select(SmsSubmitRow).order_by(SmsSubmitRow.id))).all())

    return live.run(once())


def audio_state(driver: Any) -> dict[str, Any]:
    return dict(driver.execute_script(
        "const a = document.getElementById('d-audio');"
        "return {ready: a.readyState, duration: a.duration, error: a.error && a.error.code,"
        "        time: a.currentTime, paused: a.paused, ended: a.ended, src: a.currentSrc};"))


# ---------------------------------------------------------------------------- the journey


def test_a_new_users_first_draft(live: LiveConsole, browser: Any, shots: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.keys import Keys

    create_account_with_the_cli(live)
    number = voicemail(live)
    assert outbox_rows(live) == []  # notify_reporter=False: nothing sent yet

    # Open the console: sent to sign in; sign in with the keyboard as the new user.
    browser.get(live.base_url + "/console/")
    wait(browser, lambda d: d.current_url.split("?")[0].endswith("/console/login"))
    wait(browser, lambda d: active_id(d) == "username")
    keys(browser, NEW_USER, Keys.TAB, NEW_PASSWORD, Keys.ENTER)
    wait(browser, lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    wait(browser, lambda d: "实时连接" in by_id(d, "live-status").text)
    assert by_id(browser, "user-name").text == NEW_NAME

    # The voicemail is in the queue; take it with the keyboard.
    wait(browser, lambda d: queue_numbers(d) == [number])
    assert "语音留言" in css(browser, f'#queue-list button[data-number="{number}"]')[0].text
    chord(browser, Keys.ALT, "q")
    wait(browser, lambda d: d.execute_script("return document.activeElement.dataset.number") == number)
    keys(browser, Keys.ENTER)
    wait(browser, lambda d: active_id(d) == "f-description" and by_id(d, "d-number").text == number)
    assert by_id(browser, "d-channel").text == "语音留言"
    assert "待转写" in by_id(browser, "d-flags").text

    # Listen: the player has the recording, the browser decodes it and plays it.
    assert by_id(browser, "d-audio").is_displayed() and not by_id(browser, "d-rec-missing").is_displayed()
    started = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "document.getElementById('d-audio').play().then(() => done('playing'), (e) => done(String(e)));")
    assert started == "playing"
    wait(browser, lambda d: audio_state(d)["ready"] >= 2)
    state = audio_state(browser)
    assert state["error"] is None and state["src"].endswith(f"/console/api/cases/{number}/recording")
    assert math.isclose(state["duration"], TONE_SECONDS, abs_tol=0.05), state
    wait(browser, lambda d: audio_state(d)["time"] > 0.2)  # the play head moves: it is being played
    wait(browser, lambda d: audio_state(d)["ended"])  # and reaches the end of the recording
    state = audio_state(browser)
    assert state["error"] is None and math.isclose(state["time"], TONE_SECONDS, abs_tol=0.05), state

    # Transcribe, classify by pinyin initials, pick the grid, all from the keyboard.
    assert active_id(browser) == "f-description"
    chord(browser, Keys.CONTROL, "a")
    keys(browser, "岗头社区路口的垃圾箱满了，垃圾溢出到人行道上")
    keys(browser, Keys.TAB)
    assert active_id(browser) == "f-category-q"
    keys(browser, "ljx")  # 垃圾箱
    wait(browser, lambda d: css(d, "#f-category-list [role=option]"))
    keys(browser, Keys.ARROW_DOWN, Keys.ENTER)
    wait(browser, lambda d: by_id(d, "f-category-chosen").text == "C0305 垃圾箱")
    assert active_id(browser) == "f-grid-q"
    keys(browser, "岗头")
    wait(browser, lambda d: len(css(d, "#f-grid-list [role=option]")) >= 2)
    keys(browser, Keys.ARROW_DOWN, Keys.ENTER)
    wait(browser, lambda d: by_id(d, "f-grid-chosen").text.startswith("44030700200101 岗头社区第01网格"))
    assert active_id(browser) == "f-address"
    keys(browser, "坂田街道岗头社区风门路口")
    days = live.settings.console.duplicate_window_days  # the duplicate check ran: nothing similar
    wait(browser, lambda d: f"近 {days} 天内同类别、同网格或相邻网格无其他案件" in by_id(d, "dup-hint").text)
    screenshot(browser, shots / "draft-voicemail.png")
    chord(browser, Keys.CONTROL, Keys.ENTER)  # save and submit

    # Submitted, in the new user's name; the reporter's SMS with the intake number is queued.
    wait(browser, lambda d: by_id(d, "d-status").text == "待立案")
    log = by_id(browser, "d-log").text
    assert NEW_NAME in log and "提交立案" in log
    wait(browser, lambda d: number not in queue_numbers(d))
    view = live.run(live.cases.get(number))
    assert view.status == "submitted" and view.category == "C0305" and view.grid == "44030700200101"
    assert view.description == "岗头社区路口的垃圾箱满了，垃圾溢出到人行道上"
    assert [(e.actor, e.action) for e in view.log] == [
        ("ivr", "created"), (f"staff:{NEW_NAME}", "updated"), (f"staff:{NEW_NAME}", "submitted")]

    assert live.services is not None
    received = live.services.templates.render("received", number=number)
    rows = outbox_rows(live)
    assert [(r.recipient, r.template, r.body, r.status) for r in rows] == [
        (REPORTER, "received", received, "pending")]
    assert f"受理编号{number}" in received
    wait(browser, lambda d: received in by_id(d, "d-sms").text)  # the page shows it going out

    # The outbox sender's pass: the SMS leaves through the gateway.
    parts = send_outbox_once(live)
    sent = outbox_rows(live)
    assert [(r.id, r.status) for r in sent] == [(rows[0].id, "sent")] and sent[0].sent_at is not None
    assert [(p.outbox_id, p.recipient, p.status) for p in parts] == [(rows[0].id, REPORTER, "accepted")]
    assert (parts[0].raw_message_id or "").startswith("CONSOLE")  # the console gateway's own id
    browser.refresh()
    wait(browser, lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    wait(browser, lambda d: by_id(d, "d-number").text == number)
    wait(browser, lambda d: "已发送" in by_id(d, "d-sms").text)
