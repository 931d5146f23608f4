"""The `recover` script: a caller's recording survives the death of the node that took it.

Against the real FastAGI server and case service (SQLite and PostgreSQL) with the scripted
Asterisk. The hotline half is a real hotline call whose connection drops at RECORD FILE
before any audio reached the disk (the node's view of its own death: nothing to file); the
test then writes the take where Asterisk would have finished it and runs `recover` with the
channel variables the hotline left, as the dialplan's `ivr-lost` does on a live node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from callcenter.cases.catalogue import CaseKind
from callcenter.cases.model import CaseFlag
from tests.agi.asterisk_peer import DISCONNECT, CallTranscript, Command, Reply
from tests.voice_calls.conftest import CALLER_E164, Voice, sounds, write_wav

pytestmark = pytest.mark.asyncio(loop_scope="session")

TRAIL = ("CALLCENTER_RECORDING", "CALLCENTER_REPORT_KEYS")


def dies_at_record_file(command: Command) -> Reply | None:
    """The node's connection drops as RECORD FILE starts: no answer, no audio yet."""
    return DISCONNECT if command.name == "record file" else None


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry.get("event") == name]


async def lost_mid_take(voice: Voice, script: str = "hotline", dtmf: str = "121.",
                        **options: Any) -> CallTranscript:
    """An IVR that dies while the caller speaks; the take then lands on the volume."""
    transcript = await voice.call(voice.peer(script, dtmf, on_command=dies_at_record_file, **options))
    assert await voice.drafts() == []  # nothing reached the disk while that node was there
    ref = transcript.variables["CALLCENTER_RECORDING"]
    write_wav(voice.recordings / ref, 16_000)  # RECORD FILE ran on to its end: 2 s of speech
    return transcript


async def recover(voice: Voice, variables: dict[str, str]) -> CallTranscript:
    return await voice.call(voice.peer("recover", variables=variables))


async def test_the_lost_take_is_filed_once_with_its_recording_and_categories(
        voice: Voice, agi_logs: list[dict[str, Any]], no_tracebacks: Any) -> None:
    lost = await lost_mid_take(voice)
    ref = lost.variables["CALLCENTER_RECORDING"]
    # both set before the take's instructions, so before RECORD FILE
    set_at = {argv[2]: i for i, argv in enumerate(lost.argvs)
              if argv[:2] == ["SET", "VARIABLE"] and argv[2] in TRAIL}
    instructions_at = next(i for i, argv in enumerate(lost.argvs) if "callcenter/zh/record_instructions" in argv)
    assert set(set_at) == set(TRAIL) and max(set_at.values()) < instructions_at
    (recorded,) = [argv for argv in lost.argvs if argv[:2] == ["RECORD", "FILE"]]
    assert recorded[2].endswith("/" + ref.removesuffix(".wav"))  # the take RECORD FILE writes
    assert lost.variables["CALLCENTER_REPORT_KEYS"] == "draft=create_draft&kind=event&major=1&min_ms=1000"
    assert "CALLCENTER_CASE_NUMBER" not in lost.variables

    trail = {name: lost.variables[name] for name in TRAIL}
    first = await recover(voice, trail)
    (draft,) = await voice.drafts()
    assert draft.recording_ref == ref and draft.source_ref == f"voice:{ref}"
    assert (draft.kind, draft.category_major) == (CaseKind.EVENT.value,
                                                  voice.services.catalogue.major_by_digit(CaseKind.EVENT, 1).code)
    assert draft.reporter_phone == CALLER_E164
    assert CaseFlag.NEEDS_TRANSCRIPTION.value in draft.flags and "recording_missing" not in draft.flags
    assert first.variables["CALLCENTER_CASE_NUMBER"] == draft.number  # the person sees it
    assert first.variables["CALLCENTER_NEXT"] == "agent"
    assert sounds(first) == []  # the dialplan speaks (apology, queue); recover says nothing
    assert [e["case_number"] for e in events(agi_logs, "voice.recovered")] == [draft.number]

    # the dead node had committed it but not named it on the channel; or a second recover
    again = await recover(voice, trail)
    assert [d.number for d in await voice.drafts()] == [draft.number]  # returned, not doubled
    assert again.variables["CALLCENTER_CASE_NUMBER"] == draft.number
    assert await voice.outbox() == []  # no SMS from recovery: the person gives the number


async def test_a_draft_already_named_on_the_channel_is_left_alone(
        voice: Voice, agi_logs: list[dict[str, Any]], no_tracebacks: Any) -> None:
    lost = await lost_mid_take(voice)
    trail = {name: lost.variables[name] for name in TRAIL}
    filed = await recover(voice, trail)
    (draft,) = await voice.drafts()
    before = len(agi_logs)
    # the dead node committed its draft and set the number before it died
    named = await recover(voice, {**trail, "CALLCENTER_CASE_NUMBER": filed.variables["CALLCENTER_CASE_NUMBER"]})
    assert [d.id for d in await voice.drafts()] == [draft.id]
    assert [e["reason"] for e in events(agi_logs[before:], "voice.recover_nothing")] == ["already_filed"]
    assert not events(agi_logs[before:], "voice.recovered")
    assert not events(agi_logs[before:], "voice.draft_created")
    assert named.variables["CALLCENTER_CASE_NUMBER"] == draft.number
    assert named.variables["CALLCENTER_NEXT"] == "agent"


async def test_no_recording_on_the_channel_is_nothing_to_do(
        voice: Voice, agi_logs: list[dict[str, Any]], no_tracebacks: Any) -> None:
    # lost at the menus: the caller goes to the queue as before, with nothing filed
    nothing = await recover(voice, {})
    assert await voice.drafts() == []
    assert "CALLCENTER_CASE_NUMBER" not in nothing.variables
    assert nothing.variables["CALLCENTER_NEXT"] == "agent"
    assert [e["reason"] for e in events(agi_logs, "voice.recover_nothing")] == ["no_recording"]


async def test_a_silent_or_missing_take_files_nothing(
        voice: Voice, agi_logs: list[dict[str, Any]], no_tracebacks: Any) -> None:
    lost = await lost_mid_take(voice)
    trail = {name: lost.variables[name] for name in TRAIL}
    write_wav(voice.recordings / trail["CALLCENTER_RECORDING"], 0, seconds_of_silence=1.0)
    await recover(voice, trail)
    await recover(voice, {**trail, "CALLCENTER_RECORDING": trail["CALLCENTER_RECORDING"].replace("report-", "other-")})
    assert await voice.drafts() == []
    reasons = [e["reason"] for e in events(agi_logs, "voice.recover_nothing")]
    assert reasons == ["silent", "recording missing"]


HOSTILE_NAMES = [
    "../../../etc/passwd",
    "/etc/passwd",
    "report-20261203T101010-call-0123abcd.wav/../../secret.wav",
    "..",
    "report-20261203T101010-call-0123abcd.mp3",
    'report-20261203T101010-c"; rm -rf /-0123abcd.wav',
    "report-20261203T101010-${SHELL}-0123abcd.wav",
    "REPORT-20261203T101010-call-0123abcd.wav",
    "report-20261203T101010-录音-0123abcd.wav",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
async def test_a_hostile_recording_name_is_a_logged_rejection(
        voice: Voice, name: str, tmp_path: Path, agi_logs: list[dict[str, Any]], no_tracebacks: Any) -> None:
    # a file with speech where a traversal or an absolute path would lead
    outside = tmp_path / "secret.wav"
    write_wav(outside, 16_000)
    target = outside if name == "/etc/passwd" else None
    value = str(target) if target else name
    transcript = await recover(voice, {"CALLCENTER_RECORDING": value,
                                       "CALLCENTER_REPORT_KEYS": "draft=create_draft&kind=event&major=1&min_ms=1000"})
    assert await voice.drafts() == []
    (rejected,) = events(agi_logs, "voice.recover_rejected")
    assert rejected["reason"] == "recording name"
    assert transcript.variables["CALLCENTER_NEXT"] == "agent"  # still to a person, no crash
    assert "CALLCENTER_CASE_NUMBER" not in transcript.variables


@pytest.mark.parametrize("keys", [
    "draft=rate_case&case_number=1",
    "draft=create_draft&kind=event&major=1;Hangup()",
    "draft=create_draft&kind=event&kind=component",
    "draft=create_draft&min_ms=-1",
    "kind=event&major=1",
    "draft=create_draft&" + "x=1&" * 80,
])
async def test_report_keys_the_ivr_would_not_write_are_rejected(
        voice: Voice, keys: str, agi_logs: list[dict[str, Any]], no_tracebacks: Any) -> None:
    lost = await lost_mid_take(voice)
    transcript = await recover(voice, {"CALLCENTER_RECORDING": lost.variables["CALLCENTER_RECORDING"],
                                       "CALLCENTER_REPORT_KEYS": keys})
    assert await voice.drafts() == []
    assert [e["reason"] for e in events(agi_logs, "voice.recover_rejected")] == ["report keys"]
    assert transcript.variables["CALLCENTER_NEXT"] == "agent"


async def test_a_voicemail_whose_node_died_is_filed_as_voicemail_of_its_case(
        voice: Voice, no_tracebacks: Any) -> None:
    related = await voice.case()
    lost = await lost_mid_take(voice, "voicemail", ".", variables={"CALLCENTER_CASE_NUMBER": related.number})
    assert lost.variables["CALLCENTER_REPORT_KEYS"] == \
        f"draft=voicemail_draft&case_number={related.number}&min_ms=1000"
    trail = {name: lost.variables[name] for name in (*TRAIL, "CALLCENTER_CASE_NUMBER")}
    assert trail["CALLCENTER_CASE_NUMBER"] == related.number  # the hotline's case, not this message's
    recovered = await recover(voice, trail)
    (message,) = await voice.drafts()
    assert CaseFlag.VOICEMAIL.value in message.flags
    assert message.recording_ref == trail["CALLCENTER_RECORDING"]
    assert related.number in message.description
    assert recovered.variables["CALLCENTER_CASE_NUMBER"] == message.number
    # once named, a second recover leaves it
    await recover(voice, {**trail, "CALLCENTER_CASE_NUMBER": message.number})
    assert [d.id for d in await voice.drafts()] == [message.id]
