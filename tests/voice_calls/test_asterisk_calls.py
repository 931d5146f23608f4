"""Whole calls through a real Asterisk 22 running the project's own dialplan
(config/asterisk/, only ports and paths changed; tests/support/asterisk.py), the real
FastAGI listener and the real case service (SQLite and PostgreSQL).

The citizen is the other half of a Local channel: it waits, presses keys (SendDTMF) and
speaks (Playback of a synthesised Mandarin sentence) on a fixed timeline; it cannot see
the prompts, so keys are pressed while a prompt plays (every prompt takes barge-in).
"""

from __future__ import annotations

import pytest

from tests.voice_calls.conftest import CALLER_E164, RealVoice

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_report_call_files_draft_and_caller_hears_its_number(real_voice: RealVoice) -> None:
    # welcome → 1 report, 2 event, 1 市容环境; speak after the beep, # ends; 1 = this number
    script = "|".join(["w2", "d1", "w2", "d2", "w2", "d1", "w12", real_voice.say(), "w1", "d#",
                       "w3", "d1"])
    call = await real_voice.run(script)
    drafts = await real_voice.drafts()
    assert len(drafts) == 1, call.argvs
    draft = drafts[0]
    assert draft.reporter_phone == CALLER_E164
    assert (draft.kind, draft.category_major) == ("event", "01")
    assert call.number_heard() == draft.number
    assert (real_voice.recordings / draft.recording_ref).stat().st_size > 16000
