"""Whole calls through the default flows: the real FastAGI server, the scripted Asterisk,
the real case service (SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from callcenter.agi.protocol import DTMF_KEYS
from callcenter.cases.lifecycle import CaseStatus
from callcenter.cases.model import CaseFlag
from callcenter.voice import VoiceChannel
from callcenter.voice.actions import receipt_key
from tests.agi.asterisk_peer import Command, split_agi_args
from tests.voice_calls.conftest import (
    AFTER_HOURS,
    ASTERISK_DIR,
    CALLER_E164,
    OTHER,
    OTHER_E164,
    Voice,
    number_heard,
    sounds,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


def wrong_check_digit(number: str) -> str:
    return number[:-1] + str((int(number[-1]) + 1) % 10)


async def test_report_files_draft_with_recording_category_and_number_by_voice_and_sms(
        voice: Voice, no_tracebacks: Any) -> None:
    # 1 report, 2 event (事件), 1 major 01 市容环境, speak then #, 1 = text this number
    transcript = await voice.call(voice.peer("hotline", "121.#1"))
    drafts = await voice.drafts()
    assert len(drafts) == 1
    draft = drafts[0]
    assert draft.status == "draft" and draft.reporter_phone == CALLER_E164
    # the recording: named in RECORD FILE under Asterisk's mount, read under the service's
    records = [argv for argv in transcript.argvs if argv[:2] == ["RECORD", "FILE"]]
    assert len(records) == 1
    path, fmt, escape, max_ms, offset, silence = records[0][2:]
    assert path == f"{ASTERISK_DIR}/{draft.recording_ref.removesuffix('.wav')}"
    assert (fmt, escape, offset, silence) == ("wav", "#", "0", "s=5") and max_ms == "120000"
    assert "BEEP" not in records[0]  # our own beep is played just before
    heard = sounds(transcript)
    assert heard[heard.index("record_instructions"):][:2] == ["record_instructions", "beep"]
    assert (voice.recordings / draft.recording_ref).is_file()
    # the category: kind and major stored as keyed, the major's 其他 row suggested, staff confirm
    assert draft.category_code is None
    assert (draft.kind, draft.category_major) == ("event", "01")
    assert "事件E01大类（市容环境）" in draft.description
    assert draft.suggested_category == "E0199"
    assert draft.flags == [CaseFlag.NEEDS_TRANSCRIPTION.value]
    # the caller hears the number digit by digit, and gets it by SMS once
    assert number_heard(transcript) == draft.number
    outbox = await voice.outbox(draft.id)
    assert [(o.recipient, o.template, o.idempotency_key) for o in outbox] == [
        (CALLER_E164, "received", receipt_key(draft.number))]
    assert outbox[0].body.startswith(f"受理编号{draft.number}")
    assert transcript.variables["CALLCENTER_NEXT"] == "hangup"
    assert not transcript.bad_lines and not transcript.pipelined
    assert transcript.commands[-1] == 'SET VARIABLE "CALLCENTER_NEXT" "hangup"'
    snapshot = {m["name"]: m for m in (await voice.services.metrics.snapshot())["metrics"]}
    assert snapshot["voice_recordings_total"]["samples"] == [
        {"labels": {"kind": "report", "state": "ok"}, "value": 1.0}]
    assert snapshot["voice_calls_answered_total"]["samples"][0]["value"] == 1.0


async def test_component_report_keeps_the_major_without_a_suggestion(voice: Voice) -> None:
    await voice.call(voice.peer("hotline", "116.#1"))  # 部件 06 其他设施类: no 99 row
    (draft,) = await voice.drafts()
    assert "部件C06大类" in draft.description and "其他" not in draft.description
    assert draft.suggested_category is None and draft.category_code is None


async def test_report_to_a_keyed_number(voice: Voice) -> None:
    transcript = await voice.call(voice.peer("hotline", f"112.#2{OTHER}#"))
    (draft,) = await voice.drafts()
    assert draft.reporter_phone == OTHER_E164
    assert [o.recipient for o in await voice.outbox(draft.id)] == [OTHER_E164]
    assert number_heard(transcript) == draft.number
    assert "enter_callback_number" in sounds(transcript)


async def test_landline_caller_hears_the_number_without_sms(voice: Voice) -> None:
    transcript = await voice.call(voice.peer("hotline", "111.#1", callerid="075512345678"))
    (draft,) = await voice.drafts()
    assert draft.reporter_phone == "+8675512345678"
    assert await voice.outbox(draft.id) == []
    assert number_heard(transcript) == draft.number
    assert "number_also_by_sms" not in sounds(transcript)


async def test_status_by_phone_catches_a_wrong_check_digit(voice: Voice) -> None:
    case = await voice.case()
    dtmf = f"2{wrong_check_digit(case.number)}#{case.number}#"
    transcript = await voice.call(voice.peer("hotline", dtmf))
    heard = sounds(transcript)
    # the second try's keys come during the "wrong check digit" prompt and answer it
    assert heard[:3] == ["welcome", "status_enter_number", "status_wrong_check_digit"]
    assert heard.count("status_wrong_check_digit") == 1
    assert heard[heard.index("status_is") + 1] == f"status_{case.status}"
    assert transcript.variables["CALLCENTER_NEXT"] == "hangup"
    assert await voice.drafts() == []


async def test_status_line_route_with_query_string(voice: Voice) -> None:
    case = await voice.case(status=CaseStatus.DISPATCHED)
    transcript = await voice.call(voice.peer("status?line=8001", f"{case.number}#"))
    heard = sounds(transcript)
    assert heard[heard.index("status_is") + 1] == "status_dispatched"


async def test_status_of_an_unknown_number_is_asked_again_then_a_person(voice: Voice) -> None:
    unknown = "26010100042" + "0"
    from callcenter.cases.numbering import damm_check_digit
    unknown = unknown[:-1] + damm_check_digit(unknown[:-1])
    transcript = await voice.call(voice.peer("status", f"{unknown}#" * 3))
    assert sounds(transcript).count("status_not_found") >= 2
    assert transcript.variables["CALLCENTER_NEXT"] == "agent"


async def test_rating_by_phone_only_by_the_reporter(voice: Voice) -> None:
    case = await voice.case(status=CaseStatus.CLOSED)
    stranger = await voice.call(voice.peer("hotline", f"3{case.number}#4", callerid=OTHER))
    assert "rate_not_reporter" in sounds(stranger)
    assert (await voice.services.cases.get(case.number)).rating is None
    reporter = await voice.call(voice.peer("hotline", f"3{case.number}#4"))
    assert "rate_thanks" in sounds(reporter)
    rated = await voice.services.cases.get(case.number)
    assert rated.rating == 4 and rated.log[-1].actor == "ivr"
    assert reporter.variables["CALLCENTER_NEXT"] == "hangup"


async def test_rating_an_open_case_is_refused(voice: Voice) -> None:
    case = await voice.case(status=CaseStatus.DISPATCHED)
    transcript = await voice.call(voice.peer("hotline", f"3{case.number}#"))
    assert "rate_not_closed" in sounds(transcript)
    assert (await voice.services.cases.get(case.number)).rating is None


async def test_callback_route_rates_the_case_it_was_originated_for(voice: Voice) -> None:
    case = await voice.case(status=CaseStatus.CLOSED)
    # The callee's caller ID on an outbound call is not theirs; the case comes with the call.
    by_variable = voice.peer("callback", "5", callerid="075512319",
                             variables={"CALLCENTER_CASE_NUMBER": case.number})
    transcript = await voice.call(by_variable)
    assert sounds(transcript)[0] == "callback_intro"
    assert (await voice.services.cases.get(case.number)).rating == 5
    by_argument = voice.peer("callback", "3", callerid="075512319", env={"agi_arg_1": case.number})
    transcript = await voice.call(by_argument)
    assert not any(argv[:2] == ["GET", "VARIABLE"] for argv in transcript.argvs)
    assert (await voice.services.cases.get(case.number)).rating == 3


async def test_zero_goes_to_a_person_and_pops_the_screen(voice: Voice) -> None:
    with voice.services.events.subscribe() as console:
        transcript = await voice.call(voice.peer("hotline", "0"))
        assert transcript.variables["CALLCENTER_NEXT"] == "agent"
        assert "CALLCENTER_CASE_NUMBER" not in transcript.variables
        assert sounds(transcript)[-1] == "transfer_to_agent"
        # after a report: the agent's console gets the draft's number with the call
        transcript = await voice.call(voice.peer("hotline", "121.#10"))
        (draft,) = await voice.drafts()
        assert transcript.variables["CALLCENTER_NEXT"] == "agent"
        assert transcript.variables["CALLCENTER_CASE_NUMBER"] == draft.number
        pops = []
        while not console.queue.empty():
            event = console.queue.get_nowait()
            if event is not None and event.type == "screen_pop":
                pops.append(dict(event.data))
    assert [(p["phone"], p["case_number"]) for p in pops] == [(CALLER_E164, None), (CALLER_E164, draft.number)]
    assert all(p["call_id"] for p in pops)


async def test_three_silent_tries_reach_a_person(voice: Voice) -> None:
    transcript = await voice.call(voice.peer("hotline", ""))
    heard = sounds(transcript)
    assert heard.count("no_input") == 2 and heard.count("main_menu") == 3
    assert transcript.variables["CALLCENTER_NEXT"] == "agent"
    invalid = await voice.call(voice.peer("hotline", "777"))
    assert sounds(invalid).count("invalid_input") == 2
    assert invalid.variables["CALLCENTER_NEXT"] == "agent"


async def test_after_hours_zero_goes_to_voicemail_which_becomes_a_flagged_draft(voice: Voice) -> None:
    voice.clock.value = AFTER_HOURS
    first = await voice.call(voice.peer("hotline", "0"))
    assert first.variables["CALLCENTER_NEXT"] == "voicemail"
    assert sounds(first)[-1] == "after_hours"
    silent = await voice.call(voice.peer("hotline", ""))  # three silent tries, after hours
    assert silent.variables["CALLCENTER_NEXT"] == "voicemail"
    # the dialplan's voicemail extension runs the voicemail route on the same channel
    transcript = await voice.call(voice.peer("voicemail", ".#", variables=first.variables))
    (draft,) = await voice.drafts()
    assert set(draft.flags) == {CaseFlag.NEEDS_TRANSCRIPTION.value, CaseFlag.VOICEMAIL.value,
                                CaseFlag.AFTER_HOURS.value}
    assert draft.description.startswith("电话留言") and (voice.recordings / draft.recording_ref).is_file()
    assert number_heard(transcript) == draft.number
    assert [o.recipient for o in await voice.outbox(draft.id)] == [CALLER_E164]
    assert transcript.variables["CALLCENTER_NEXT"] == "hangup"


async def test_voicemail_in_hours_is_not_flagged_after_hours(voice: Voice) -> None:
    # The queue gave up (nobody answered): voicemail during staff hours.
    await voice.call(voice.peer("voicemail", ".#"))
    (draft,) = await voice.drafts()
    assert draft.flags == [CaseFlag.NEEDS_TRANSCRIPTION.value, CaseFlag.VOICEMAIL.value]


async def test_unknown_route_ends_cleanly_and_other_calls_go_on(voice: Voice, agi_logs: Any) -> None:
    unknown, good = await voice.calls([voice.peer("no-such-ivr", "1"), voice.peer("status", "")])
    assert unknown.argvs == [["VERBOSE", "callcenter: no FastAGI route for 'no-such-ivr'", "1"]]
    assert unknown.server_closed and "CALLCENTER_NEXT" not in unknown.variables
    assert good.variables["CALLCENTER_NEXT"] == "agent"
    assert any(e["event"] == "agi.unknown_route" for e in agi_logs)


async def test_every_command_is_one_well_formed_line(voice: Voice) -> None:
    case = await voice.case(status=CaseStatus.CLOSED)
    transcripts = await voice.calls([
        voice.peer("hotline", "121.#1"), voice.peer("hotline", f"3{case.number}#4"),
        voice.peer("voicemail", ".#"), voice.peer("hotline", "0")])
    for transcript in transcripts:
        assert not transcript.bad_lines and not transcript.pipelined
        for line in transcript.commands:
            argv = split_agi_args(line)
            if argv[:2] == ["STREAM", "FILE"]:
                assert argv[2].startswith("callcenter/zh/") and set(argv[3]) <= set(DTMF_KEYS)


async def test_shutdown_hands_callers_to_a_person_with_owed_work_done(voice: Voice) -> None:
    def shut_down_while_recording(command: Command) -> None:
        if command.name == "record file":
            voice.channel.hand_over_calls()
        return None

    transcript = await voice.call(voice.peer("hotline", "121.#1", on_command=shut_down_while_recording))
    (draft,) = await voice.drafts()
    assert transcript.variables["CALLCENTER_NEXT"] == "agent"
    assert transcript.variables["CALLCENTER_CASE_NUMBER"] == draft.number
    assert len(await voice.outbox(draft.id)) == 1  # the number SMS the caller was owed
    assert "record_saved" not in sounds(transcript)  # no more prompts once draining
    late = await voice.call(voice.peer("hotline", "1"))
    assert late.commands[2:] == ['SET VARIABLE "CALLCENTER_NEXT" "agent"']


async def test_the_call_is_marked_with_its_node_and_its_draft_at_once(voice: Voice) -> None:
    """What the dialplan needs when this node dies mid-call (config/asterisk/extensions.conf):
    CALLCENTER_NODE right after ANSWER (never start this call again elsewhere), and the
    draft's number as soon as it is committed (the person it goes to sees it)."""
    node = voice.services.settings.node_id()
    transcript = await voice.call(voice.peer("hotline", "121.#1"))
    (draft,) = await voice.drafts()
    assert transcript.commands[:2] == ["ANSWER", f'SET VARIABLE "CALLCENTER_NODE" "{node}"']
    case_set = f'SET VARIABLE "CALLCENTER_CASE_NUMBER" "{draft.number}"'
    assert transcript.commands.count(case_set) == 1
    record = next(i for i, line in enumerate(transcript.commands) if line.startswith("RECORD FILE"))
    # right after the take (and the speech check, which is no command): before any prompt
    assert transcript.commands.index(case_set) == record + 1
    assert transcript.variables["CALLCENTER_CASE_NUMBER"] == draft.number


async def test_voice_settings_override_every_flow(voice: Voice) -> None:
    voice_section = voice.services.settings.voice.model_copy(update={
        "record_max_seconds": 30, "record_silence_seconds": 2, "digit_timeout_seconds": 3.0, "retries": 2})
    settings = voice.services.settings.model_copy(update={"voice": voice_section})
    channel = VoiceChannel(dataclasses.replace(voice.services, settings=settings), now=voice.clock)
    assert channel.flows["hotline"].states["after_number"].tries == 1  # "no key: goodbye" stays
    voice.server.start(channel.routes)
    transcript = await voice.call(voice.peer("hotline", "121.#1"))
    record = next(argv for argv in transcript.argvs if argv[:2] == ["RECORD", "FILE"])
    assert record[5:] == ["30000", "0", "s=2"]
    assert ["WAIT", "FOR", "DIGIT", "3000"] in transcript.argvs
    silent = await voice.call(voice.peer("hotline", ""))
    assert sounds(silent).count("main_menu") == 2 and silent.variables["CALLCENTER_NEXT"] == "agent"
