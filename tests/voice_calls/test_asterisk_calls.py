"""Whole calls through a real Asterisk 22 running the project's own dialplan
(config/asterisk/, only ports and paths changed; tests/support/asterisk.py), the real
FastAGI listener and the real case service (SQLite and PostgreSQL).

The citizen is the other half of a Local channel: it waits, presses keys (SendDTMF) and
speaks (Playback of a synthesised Mandarin sentence) on a fixed timeline. It cannot hear
the prompts, so it presses keys while they play: every prompt takes barge-in. Calls of
one test run at the same time (distinct caller IDs) to keep the suite's wall time down.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from callcenter.cases.lifecycle import CaseStatus
from callcenter.voice.recordings import measure_speech
from tests.support.asterisk import AsteriskPeer, is_ci
from tests.support.baresip import Softphone, find_baresip
from tests.voice_calls.conftest import AFTER_HOURS, RealCall, RealVoice

pytestmark = pytest.mark.asyncio(loop_scope="session")

A, B, C, D, E, F = ("13812345678", "13912345678", "13712345678", "13612345678", "13512345678",
                    "15012345678")


def e164(number: str) -> str:
    return "+86" + number


def report_keys(voice: RealVoice, *, skip_to_beep: bool = True) -> list[str]:
    """Welcome → 1 report → 2 event → 1 市容环境 → (a key skips the instructions) → speak → #."""
    keys = ["w2", "d1", "w1.5", "d2", "w1.5", "d1", "w1"]
    keys += ["d*", "w1.5"] if skip_to_beep else ["w8"]
    return keys + [voice.say(), "w0.5", "d#"]


def script(*steps: str | list[str]) -> str:
    flat: list[str] = []
    for step in steps:
        flat.extend(step if isinstance(step, list) else [step])
    return "|".join(flat)


async def drafts_by_phone(voice: RealVoice) -> dict[str, list]:
    found: dict[str, list] = {}
    for draft in await voice.drafts():
        found.setdefault(draft.reporter_phone or "", []).append(draft)
    return found


def record_results(call: RealCall) -> list[str]:
    return [line.result.raw for line in call.lines
            if line.argv[:2] == ["RECORD", "FILE"] and line.result is not None]


async def test_every_flow_of_the_key_contract(real_voice: RealVoice) -> None:
    closed = await real_voice.case(C, status=CaseStatus.CLOSED)
    dispatched = await real_voice.case(B, status=CaseStatus.DISPATCHED)
    report = real_voice.place(script(report_keys(real_voice), "w2.5", "d1"), callerid=A)
    query = real_voice.place(script("w2", "d2", "w2", f"d{dispatched.number}#"), callerid=B)
    rate = real_voice.place(script("w2", "d3", "w2", f"d{closed.number}#", "w4", "d4"), callerid=C)
    person = real_voice.place(script("w2", "d0", "w12", "h"), callerid=D)
    await real_voice.settle(180)
    by_phone = await drafts_by_phone(real_voice)

    # 1 report: a draft with the caller's words, its number spoken and texted
    (draft,) = by_phone[e164(A)]
    call = real_voice.calls[report]
    assert (draft.kind, draft.category_major) == ("event", "01")
    assert call.number_heard() == draft.number
    assert measure_speech(real_voice.recordings / draft.recording_ref).speech_ms >= 2000
    assert len(await real_voice.outbox(draft.id)) == 1
    # barge-in: the key pressed during the category echo / instructions skipped to the beep
    skipped = [line for line in call.lines if line.argv[:2] == ["STREAM", "FILE"]
               and line.result is not None and line.result.digit == "*"]
    assert skipped and skipped[0].argv[2].rsplit("/", 1)[-1] in ("cat_event_01", "record_instructions")
    assert record_results(call)[0].startswith("200 result=35 (dtmf)")

    # 2 query by number: the status is spoken
    assert f"status_{dispatched.status}" in real_voice.calls[query].played()

    # 3 rate a closed case (the reporter, by caller ID)
    assert (await real_voice.services.cases.get(closed.number)).rating == 4
    assert "rate_thanks" in real_voice.calls[rate].played()

    # 0 a person: the IVR hands over; with nobody in the queue the dialplan takes a message
    person_call = real_voice.calls[person]
    assert person_call.set_variables()["CALLCENTER_NEXT"] == "agent"
    assert person_call.routes == ["hotline", "voicemail"]
    assert e164(D) not in by_phone  # hung up during the message prompt: nothing to file


async def test_a_hang_up_at_every_step_loses_nothing_said(real_voice: RealVoice) -> None:
    keys = report_keys(real_voice)
    calls = {
        "welcome": real_voice.place("w1|h", callerid=A),
        "report_kind": real_voice.place("w2|d1|w2|h", callerid=B),
        "before speaking": real_voice.place(script(keys[:9], "w1", "h"), callerid=C),
        "while speaking": real_voice.place(script(keys[:9], real_voice.say("report_rubbish"), "h"),
                                           callerid=D),
        "contact menu": real_voice.place(script(keys, "w2", "h"), callerid=E),
        "number": real_voice.place(script(keys, "w2.5", "d1", "w2", "h"), callerid=F),
    }
    await real_voice.settle(180)
    by_phone = await drafts_by_phone(real_voice)
    for step, phone in (("welcome", A), ("report_kind", B), ("before speaking", C)):
        assert e164(phone) not in by_phone, step
        assert real_voice.calls[calls[step]].set_variables().get("CALLCENTER_NEXT") is None, step
    for step, phone in (("while speaking", D), ("contact menu", E), ("number", F)):
        (draft,) = by_phone[e164(phone)]  # what the caller said is filed
        assert measure_speech(real_voice.recordings / draft.recording_ref).speech_ms >= 1000, step
        assert len(await real_voice.outbox(draft.id)) == 1, step  # and its number texted


async def test_a_silent_caller_files_nothing_and_reaches_a_person(real_voice: RealVoice) -> None:
    # a real line: frames of silence, no keys after choosing the category
    tag = real_voice.place(script("w2", "d1", "w1.5", "d2", "w1.5", "d1", real_voice.silent(), "h"))
    await real_voice.settle(180)
    call = real_voice.calls[tag]
    hotline = call.sessions[0][1]
    takes = [line for line in hotline if line.argv[:2] == ["RECORD", "FILE"]]
    assert len(takes) == 3
    # what a real Asterisk leaves of silence: a take about 1 s long, not empty
    assert all(line.result is not None and line.result.endpos and line.result.endpos >= 4000
               for line in takes)
    assert call.set_variables()["CALLCENTER_NEXT"] == "agent"
    assert not any(d.kind for d in await real_voice.drafts())  # no report filed as speech


async def test_after_hours_a_message_is_taken(real_voice: RealVoice) -> None:
    real_voice.clock.value = AFTER_HOURS
    tag = real_voice.place(script("w2", "d0", "w1", "d*", "w1.5", "d*", "w1.5", real_voice.say(), "h"))
    await real_voice.settle(120)
    call = real_voice.calls[tag]
    assert call.routes == ["hotline", "voicemail"]
    assert call.sessions[0][1][-1].argv[-2:] == ["CALLCENTER_NEXT", "voicemail"]
    (draft,) = await real_voice.drafts()
    assert "needs_transcription" in draft.flags
    assert measure_speech(real_voice.recordings / draft.recording_ref).speech_ms >= 2000
    assert len(await real_voice.outbox(draft.id)) == 1


@contextmanager
def queue_member(asterisk: AsteriskPeer, interface: str = "Local/agent@test-agent/n") -> Iterator[None]:
    asterisk.cli(f"queue add member {interface} to hotline-agents")
    try:
        yield
    finally:
        asterisk.cli(f"queue remove member {interface} from hotline-agents")


async def test_the_queue_with_an_agent_answering_gets_the_case_number(real_voice: RealVoice) -> None:
    with queue_member(real_voice.asterisk):
        # report, then 0 after the number: a person, who is told which draft it is
        # (0 again in case the first one fell on the number, which takes no keys)
        tag = real_voice.place(script(report_keys(real_voice), "w2.5", "d1", "w8", "d0", "w2", "d0", "w2", "d0",
                                      "w12", "h"))
        await real_voice.settle(150)
    (draft,) = await real_voice.drafts()
    call = real_voice.calls[tag]
    assert call.number_heard() == draft.number
    assert call.set_variables().get("CALLCENTER_CASE_NUMBER") == draft.number, \
        [(line.command, line.result and line.result.raw) for line in call.lines[-12:]]
    log = real_voice.asterisk.log_since(0)
    assert f"AGENT_ANSWERS case={draft.number}" in log  # the agent's channel inherited it
    assert "voicemail" not in call.routes


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends: nobody listens


@pytest.mark.parametrize("in_hours", [True, False], ids=["in-hours", "after-hours"])
async def test_service_down_the_caller_hears_an_apology(real_voice: RealVoice, in_hours: bool) -> None:
    asterisk = real_voice.asterisk
    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).strftime("%a").lower()
    other_day = "sun" if today != "sun" else "mon"
    hours = "*,*,*,*" if in_hours else f"*,{other_day},*,*"
    await asterisk.set_agi_nodes([closed_port(), closed_port()])
    await asterisk.set_global("CALLCENTER_STAFF_HOURS", hours)
    try:
        tag = real_voice.place("w25|h")
        await real_voice.settle(60)
    finally:
        await asterisk.set_agi_nodes([real_voice.port])
        await asterisk.set_global("CALLCENTER_STAFF_HOURS", "08:30-17:30,mon-fri,*,*,Asia/Shanghai")
    log = asterisk.log_of(tag)
    assert "Playing 'callcenter/zh/service_unavailable" in log, log[-3000:]
    assert ("Queue(" in log) is in_hours  # in hours the caller still tries for a person
    assert "Playing 'callcenter/zh/system_busy" in log
    assert "does not exist" not in log
    assert real_voice.calls[tag].sessions == []


async def test_100_concurrent_calls_every_draft_accounted_for(real_voice: RealVoice) -> None:
    calls = 100
    tags = {}
    for i in range(calls):
        phone = f"139{i:08d}"
        tags[phone] = real_voice.place(script(report_keys(real_voice), "w2.5", "d1"), callerid=phone)
    await real_voice.settle(600)
    by_phone = await drafts_by_phone(real_voice)
    missing = []
    for phone, tag in tags.items():
        drafts = by_phone.get(e164(phone), [])
        if len(drafts) != 1 or real_voice.calls[tag].number_heard() != drafts[0].number:
            missing.append((phone, len(drafts), real_voice.calls[tag].played()[-5:]))
            continue
        assert len(await real_voice.outbox(drafts[0].id)) == 1
    assert missing == []
    assert len(await real_voice.drafts()) == calls


async def test_a_real_sip_call_with_rfc4733_keys(real_voice: RealVoice, tmp_path: Path) -> None:
    """Debian's baresip as phone 1002 (pjsip.conf) dials 12319 and queries a case by
    number with RFC 4733 telephone-events: keys over RTP, not a Local channel's frames."""
    if find_baresip() is None:
        reason = "baresip not installed (Debian: apt-get install baresip-core; scripts/test installs it as root)"
        if is_ci():
            pytest.fail(f"{reason}; CI=true, refusing to skip", pytrace=False)
        pytest.skip(reason)
    case = await real_voice.case("13800000000", status=CaseStatus.DISPATCHED)
    phone = Softphone(real_voice.asterisk, tmp_path / "baresip")
    await phone.start()
    try:
        await phone.dial("12319")
        await asyncio.sleep(4)  # the welcome is playing: 2 during it chooses the status query
        await phone.keys("2")
        await asyncio.sleep(2)
        await phone.keys(case.number + "#", gap=0.5)
        await asyncio.sleep(10)  # the status is read out, then goodbye
        await real_voice.settle(60)
    finally:
        await phone.stop()
    (call,) = [c for c in real_voice.calls.values() if c.sessions]
    assert f"status_{case.status}" in call.played(), phone.log()[-2000:]
    assert "PJSIP/1002" in real_voice.asterisk.log_since(0)
    assert "DTMF end '#' received on PJSIP/1002" in real_voice.asterisk.log_since(0)
