"""Bad input from the peer: hostile caller IDs and names, garbage or endless env blocks, a
peer that disconnects mid-command, absurd result lines. Each such call ends cleanly with a
log line; a report played at the same time is filed untouched."""

from __future__ import annotations

from typing import Any

import pytest

from callcenter.cases.model import CaseFlag
from tests.agi.asterisk_peer import DISCONNECT, CallTranscript, Command, Reply, ScriptedAsterisk
from tests.voice_calls.conftest import CALLER_E164, Voice, number_heard

pytestmark = pytest.mark.asyncio(loop_scope="session")

HOSTILE_IDS = [
    "13812345678\rHANGUP",
    '"13812345678" <13812345678>',
    "1" * 1024,
    '13812345678"; SET VARIABLE CALLCENTER_NEXT hangup; "',
    "13812345678\\",
]
HOSTILE_NAMES = ['"Citizen" \\" HANGUP', "王" * 400, "'; DROP TABLE cases; --", "\x1b[31mred\x1b[0m"]


async def with_a_good_report(voice: Voice, bad: list[ScriptedAsterisk]) -> list[CallTranscript]:
    """Play the bad calls and one good report together; the report must be filed intact."""
    good = voice.peer("hotline", "121.#1")
    transcripts = await voice.calls([*bad, good])
    mine = [d for d in await voice.drafts() if f"-{transcripts[-1].env['agi_uniqueid']}-" in (d.recording_ref or "")]
    assert len(mine) == 1, "the good call's report is missing"
    assert mine[0].reporter_phone == CALLER_E164 and mine[0].flags == [CaseFlag.NEEDS_TRANSCRIPTION.value]
    assert number_heard(transcripts[-1]) == mine[0].number
    assert [o.recipient for o in await voice.outbox(mine[0].id)] == [CALLER_E164]
    return transcripts[:-1]


async def test_hostile_caller_ids_and_names_inject_nothing(voice: Voice, no_tracebacks: Any) -> None:
    peers = [voice.peer("hotline", "121.#1", callerid=raw) for raw in HOSTILE_IDS]
    peers += [voice.peer("hotline", "121.#1", env={"calleridname": name}) for name in HOSTILE_NAMES]
    transcripts = await with_a_good_report(voice, peers)
    for peer, transcript in zip(peers, transcripts, strict=True):
        hostile = transcript.env["agi_callerid"], transcript.env["agi_calleridname"]
        assert not transcript.bad_lines and not transcript.pipelined
        assert transcript.variables["CALLCENTER_NEXT"] == "hangup", hostile  # the call went on
        sent = "\n".join(transcript.commands)
        assert "HANGUP" not in sent and "DROP" not in sent and "王" not in sent
        assert not any(line.startswith("SET VARIABLE") and "CALLCENTER_NEXT" in line and "hangup" in line
                       for line in transcript.commands[:-1])
    drafts = await voice.drafts()
    assert len(drafts) == len(peers) + 1
    for transcript in transcripts:
        (draft,) = [d for d in drafts if f"-{transcript.env['agi_uniqueid']}-" in (d.recording_ref or "")]
        # only a well-formed number becomes the reporter's phone and gets the SMS
        expected = CALLER_E164 if transcript.env["agi_callerid"] == "13812345678" else None
        assert draft.reporter_phone == expected
        assert len(await voice.outbox(draft.id)) == (1 if expected else 0)


async def test_a_line_feed_in_the_caller_id_ends_that_call_only(voice: Voice, agi_logs: Any) -> None:
    """A LF splits the env block: `HANGUP` is not an agi_* line, so the peer is not AGI."""
    (transcript,) = await with_a_good_report(voice, [voice.peer("hotline", "1", callerid="13812345678\nHANGUP")])
    assert transcript.commands == [] and transcript.server_closed
    assert any(e["event"] == "agi.protocol_error" for e in agi_logs)


async def test_garbage_and_endless_env_blocks(voice: Voice, agi_logs: Any) -> None:
    garbage = voice.peer("hotline", env_bytes=b"\x00\xffGET / HTTP/1.1\r\nHost: x\r\n\r\n")
    endless = voice.peer("hotline", flood_env=True)
    binary = voice.peer("hotline", env_bytes=bytes(range(256)) * 64)
    transcripts = await with_a_good_report(voice, [garbage, endless, binary])
    for transcript in transcripts:
        assert transcript.commands == [] and not transcript.timed_out
    assert transcripts[1].env_bytes_sent < 8 * 1024 * 1024  # cut off long before the flood ends
    assert sum(e["event"] == "agi.protocol_error" for e in agi_logs) >= 3


def disconnect_at(name: str) -> Any:
    def respond(command: Command) -> Reply | None:
        return DISCONNECT if command.name == name else None
    return respond


async def test_peer_disconnecting_mid_command(voice: Voice, no_tracebacks: Any) -> None:
    names = ["answer", "stream file", "wait for digit", "get data", "record file", "set variable"]
    peers = [voice.peer("hotline", "2" if name == "get data" else "121.#1", on_command=disconnect_at(name))
             for name in names]
    transcripts = await with_a_good_report(voice, peers)
    for name, transcript in zip(names, transcripts, strict=True):
        assert transcript.commands and transcript.argvs[-1][0].lower() == name.split()[0], name


def absurd(name: str, reply: Reply) -> Any:
    def respond(command: Command) -> Reply | None:
        return reply if command.name == name else None
    return respond


ABSURD = [
    ("wait for digit", "200 result=99999999999999999999999999 endpos=-7"),
    ("stream file", "200 result=abc endpos=%%%"),
    ("stream file", "299 result=0"),
    ("stream file", "510 Invalid or unknown command"),
    ("get data", "520-Invalid command syntax.  Proper usage follows:\nbla\n520 End of proper usage."),
    ("wait for digit", b"\xff\xfe\xfd\n"),
    ("stream file", "HELLO THERE"),
    ("answer", "200 result=0 " + "x" * 10_000),
    ("record file", "200 result=0 (timeout) endpos=99999999999999999999"),
]


async def test_absurd_result_lines_end_the_call_cleanly(voice: Voice, agi_logs: Any) -> None:
    peers = [voice.peer("hotline", "2" if name == "get data" else "121.#1", on_command=absurd(name, reply))
             for name, reply in ABSURD]
    transcripts = await with_a_good_report(voice, peers)
    for (name, reply), transcript in zip(ABSURD, transcripts, strict=True):
        assert transcript.server_closed and not transcript.timed_out, (name, reply)
        # a caller still on the line is never just dropped: the IVR finished or handed over
        nxt = transcript.variables.get("CALLCENTER_NEXT")
        assert nxt in ("agent", "hangup") or any(
            e["event"] in ("agi.protocol_error", "voice.peer_not_agi") for e in agi_logs), (name, reply)
    assert not [e for e in agi_logs if e["event"] in ("agi.handler_failed", "voice.ivr_failed")]
