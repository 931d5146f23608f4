"""A caller may hang up during any command of any flow. Each scenario is played once in
full, then again hanging up at command 0, 1, 2 ... N-1, and after each call:

- nothing the caller said is lost: from the RECORD FILE on there is exactly one draft with
  its recording, and exactly one SMS with its number; before it there is none;
- a rating counts once the caller pressed the score, not before;
- the server sends at most one more command after the hang-up (the one that learns of it),
  ends the session itself, and logs no crash.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from callcenter.cases.lifecycle import CaseStatus
from callcenter.db.tables import CaseRow
from tests.agi.asterisk_peer import DISCONNECT, CallTranscript, Command, Reply
from tests.voice_calls.conftest import OTHER, Voice, VoicePeer

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass(frozen=True)
class Scenario:
    name: str
    script: str
    dtmf: str                   # {n}: the case number made by `case`
    case: CaseStatus | None = None
    files_draft: bool = False   # the flow records and files what the caller says
    rates: bool = False         # the flow stores a rating
    variables: bool = False     # the case number comes as a channel variable (callback)


SCENARIOS = [
    Scenario("report, SMS to the caller", "hotline", "121.#1", files_draft=True),
    Scenario("report, keyed contact number", "hotline", f"112.#2{OTHER}#", files_draft=True),
    Scenario("report, then a person", "hotline", "113.#10", files_draft=True),
    Scenario("status by hotline", "hotline", "2{n}#", case=CaseStatus.DISPATCHED),
    Scenario("status line", "status", "{n}#", case=CaseStatus.DRAFT),
    Scenario("rating by hotline", "hotline", "3{n}#4", case=CaseStatus.CLOSED, rates=True),
    Scenario("call-back rating", "callback", "5", case=CaseStatus.CLOSED, rates=True, variables=True),
    Scenario("voicemail", "voicemail", ".#", files_draft=True),
    Scenario("a person", "hotline", "0"),
]


async def drafts_of(voice: Voice, transcript: CallTranscript) -> list[CaseRow]:
    marker = f"-{transcript.env['agi_uniqueid']}-"
    return [d for d in await voice.drafts() if d.recording_ref and marker in d.recording_ref]


async def play(voice: Voice, scenario: Scenario, **options: Any) -> tuple[CallTranscript, str | None]:
    number = None
    if scenario.case is not None:
        number = (await voice.case(status=scenario.case)).number
    extra: dict[str, Any] = {}
    if scenario.variables and number:
        extra["variables"] = {"CALLCENTER_CASE_NUMBER": number}
    peer = voice.peer(scenario.script, scenario.dtmf.format(n=number), **extra, **options)
    return await voice.call(peer), number


def index_of(transcript: CallTranscript, predicate: Callable[[list[str]], bool]) -> int:
    return next(i for i, argv in enumerate(transcript.argvs) if predicate(argv))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_hang_up_at_every_step_loses_nothing(voice: Voice, scenario: Scenario, no_tracebacks: Any) -> None:
    full, _ = await play(voice, scenario)
    assert not full.hung_up and full.variables.get("CALLCENTER_NEXT") in ("hangup", "agent")
    record_at = index_of(full, lambda a: a[:2] == ["RECORD", "FILE"]) if scenario.files_draft else None
    score_at = None
    if scenario.rates:  # the command that takes the score comes just before the thanks
        score_at = index_of(full, lambda a: a[:3] == ["STREAM", "FILE", "callcenter/zh/rate_thanks"]) - 1
    for k in range(len(full.commands)):
        transcript, number = await play(voice, scenario, hangup_after=k)
        where = f"hang-up at command {k} ({full.commands[k]!r})"
        assert transcript.hung_up and transcript.server_closed and not transcript.timed_out, where
        assert len(transcript.commands) <= k + 2, f"{where}: kept talking: {transcript.commands[k:]}"
        drafts = await drafts_of(voice, transcript)
        if record_at is not None and k >= record_at:
            assert len(drafts) == 1, where
            draft = drafts[0]
            assert (voice.recordings / draft.recording_ref).is_file(), where
            assert "recording_missing" not in draft.flags and "recording_empty" not in draft.flags
            outbox = await voice.outbox(draft.id)
            assert len(outbox) == 1 and outbox[0].template == "received", where
        else:
            assert drafts == [], where
        if number is not None:
            rating = (await voice.services.cases.get(number)).rating
            expected = (int(scenario.dtmf[-1]) if score_at is not None and k > score_at else None)
            assert rating == expected, where
    assert await voice.outbox() != [] or not scenario.files_draft


async def test_asterisk_exiting_on_hangup_mid_recording_still_files_the_report(voice: Voice) -> None:
    """AGIEXITONHANGUP=yes: two HANGUP lines and the socket closes."""
    full, _ = await play(voice, SCENARIOS[0])
    record_at = index_of(full, lambda a: a[:2] == ["RECORD", "FILE"])
    transcript, _ = await play(voice, SCENARIOS[0], hangup_after=record_at, exit_on_hangup=True)
    (draft,) = await drafts_of(voice, transcript)
    assert len(await voice.outbox(draft.id)) == 1


async def test_connection_lost_during_recording_files_what_reached_the_disk(voice: Voice) -> None:
    """No answer to RECORD FILE at all (the socket drops): the file on the volume decides."""

    def drop_during_recording(peer: VoicePeer) -> Callable[[Command], Reply | None]:
        def respond(command: Command) -> Reply | None:
            if command.name == "record file":
                peer._write(command, "200 result=-1 (hangup) endpos=16000")  # noqa: SLF001
                return DISCONNECT
            return None
        return respond

    peer = voice.peer("hotline", "121.#1")
    peer.on_command = drop_during_recording(peer)
    transcript = await voice.call(peer)
    (draft,) = await drafts_of(voice, transcript)
    assert draft.flags == ["needs_transcription"]
    assert len(await voice.outbox(draft.id)) == 1
    # ...and a drop before anything was said leaves no draft
    silent = voice.peer("hotline", "121.#1", audio="header")
    silent.on_command = drop_during_recording(silent)
    assert await drafts_of(voice, await voice.call(silent)) == []


async def test_abandoned_calls_are_counted_by_menu_step(voice: Voice) -> None:
    await voice.call(voice.peer("hotline", "1", hangup_after=4))
    await voice.call(voice.peer("hotline", "", hangup_after=0))
    snapshot = {m["name"]: m for m in (await voice.services.metrics.snapshot())["metrics"]}
    samples = {tuple(sorted(s["labels"].items())): s["value"]
               for s in snapshot["voice_calls_abandoned_total"]["samples"]}
    assert samples == {(("flow", "hotline"), ("state", "answer")): 1.0,
                       (("flow", "hotline"), ("state", "report_kind")): 1.0}

