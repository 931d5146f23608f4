"""Draining at shutdown (VoiceChannel.drain), against the scripted Asterisk on a real socket:
a call in progress finishes normally within `drain_seconds`; one that is still busy after
the hand-over time is cut like a hang-up, with its owed work done and the draft's number
already on the channel for the person the dialplan sends the caller to."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.agi.asterisk_peer import Command, Reply
from tests.voice_calls.conftest import Voice, number_heard

pytestmark = pytest.mark.asyncio(loop_scope="session")


def events(logs: list[dict[str, Any]]) -> list[str]:
    return [entry["event"] for entry in logs]


async def test_a_call_in_progress_finishes_normally_while_the_node_drains(
        voice: Voice, agi_logs: list[dict[str, Any]]) -> None:
    drains: list[asyncio.Task[None]] = []

    def drain_while_recording(command: Command) -> None:
        if command.name == "record file" and not drains:
            drains.append(asyncio.ensure_future(voice.channel.drain(30, 5)))
        return None

    transcript = await voice.call(voice.peer("hotline", "121.#1", on_command=drain_while_recording))
    await asyncio.wait_for(drains[0], 10)  # returns as soon as the call has ended
    (draft,) = await voice.drafts()
    assert voice.channel.draining
    assert transcript.variables["CALLCENTER_NEXT"] == "hangup"  # the IVR's own goodbye
    assert number_heard(transcript) == draft.number
    assert len(await voice.outbox(draft.id)) == 1
    assert "voice.drained" in events(agi_logs)
    assert "voice.drain_hand_over" not in events(agi_logs) and "voice.hand_over" not in events(agi_logs)


async def test_a_call_still_busy_after_the_drain_is_cut_with_its_owed_work_done(
        voice: Voice, agi_logs: list[dict[str, Any]]) -> None:
    drains: list[asyncio.Task[None]] = []

    def stuck_at_the_contact_menu(command: Command) -> Reply | None:
        if "contact_choice" in command.line:
            if not drains:
                drains.append(asyncio.ensure_future(voice.channel.drain(0.2, 0.3)))
            return b""  # Asterisk never answers: no next step for a hand-over
        return None

    transcript = await voice.call(voice.peer("hotline", "121.#", on_command=stuck_at_the_contact_menu))
    await asyncio.wait_for(drains[0], 10)
    (draft,) = await voice.drafts()
    logged = events(agi_logs)
    assert logged.index("voice.drain_hand_over") < logged.index("voice.drain_cut")
    assert "voice.drain_timeout" not in logged  # nothing had to be cancelled
    # the dialplan sees no CALLCENTER_NEXT (ivr-lost: the staff queue) and the draft's number
    assert "CALLCENTER_NEXT" not in transcript.variables
    assert transcript.variables["CALLCENTER_CASE_NUMBER"] == draft.number
    assert len(await voice.outbox(draft.id)) == 1  # the number SMS owed to the caller
    assert voice.channel.factory is not None and voice.channel.factory.active_calls == 0
