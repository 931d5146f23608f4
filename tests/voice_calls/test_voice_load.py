"""Hundreds of calls at once through one server process: every draft accounted for."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from tests.voice_calls.conftest import Voice, number_heard

pytestmark = pytest.mark.asyncio(loop_scope="session")

CALLS = 300


async def test_300_concurrent_reports_leave_300_drafts_each_with_recording_and_one_sms(
        voice: Voice, no_tracebacks: Any) -> None:
    # distinct callers, both kinds, every major
    peers = []
    for i in range(CALLS):
        kind, major = (1, 1 + i % 6) if i % 2 else (2, 1 + i % 5)
        # read_timeout: a guard against a hung server, not a speed goal (bench/ has those);
        # on a loaded CI machine 300 calls on one loop can take >10 s between two commands
        peers.append(voice.peer("hotline", f"1{kind}{major}.#1", callerid=f"139{i:08d}", read_timeout=120))
    transcripts = await voice.calls(peers)
    assert voice.channel.active_calls == 0

    drafts = await voice.drafts()
    assert len(drafts) == CALLS
    assert len({d.number for d in drafts}) == CALLS
    assert len({d.recording_ref for d in drafts}) == CALLS
    by_call = {t.env["agi_uniqueid"]: t for t in transcripts}
    outbox = await voice.outbox()
    sms_per_case = Counter(o.case_id for o in outbox)
    for draft in drafts:
        assert (voice.recordings / draft.recording_ref).is_file()
        assert draft.flags == ["needs_transcription"]
        assert sms_per_case[draft.id] == 1
        (call_id,) = [cid for cid in by_call if f"-{cid}-" in draft.recording_ref]
        transcript = by_call.pop(call_id)
        assert number_heard(transcript) == draft.number
        assert draft.reporter_phone == "+86" + transcript.env["agi_callerid"]
        assert transcript.variables["CALLCENTER_NEXT"] == "hangup"
    assert by_call == {} and len(outbox) == CALLS
    snapshot = {m["name"]: m for m in (await voice.services.metrics.snapshot())["metrics"]}
    assert snapshot["voice_calls_total"]["samples"] == [{"labels": {"route": "hotline"}, "value": float(CALLS)}]
    assert snapshot["voice_call_seconds"]["samples"][0]["count"] == CALLS
