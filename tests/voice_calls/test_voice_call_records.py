"""Every IVR call leaves exactly one call_records row (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from callcenter.db.tables import CallRecordRow
from tests.voice_calls.conftest import CALLER_E164, IN_HOURS, Voice

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def records(voice: Voice) -> list[CallRecordRow]:
    async with voice.services.sessions() as session:
        return list((await session.scalars(select(CallRecordRow).order_by(CallRecordRow.id))).all())


async def test_completed_report_is_settled_with_its_draft(voice: Voice, no_tracebacks: Any) -> None:
    await voice.call(voice.peer("hotline", "121.#1", env={"uniqueid": "1795000000.1"}))
    (draft,) = await voice.drafts()
    (record,) = await records(voice)
    assert (record.call_id, record.route, record.caller) == ("1795000000.1", "hotline", CALLER_E164)
    assert record.outcome == "settled" and record.case_number == draft.number
    assert record.started_at == record.answered_at == record.ended_at == IN_HOURS  # the test clock
    assert record.last_state


async def test_hang_up_mid_menu_is_abandoned(voice: Voice) -> None:
    transcript = await voice.call(voice.peer("hotline", "1", hangup_after=4))
    assert transcript.hung_up
    (record,) = await records(voice)
    assert record.outcome == "abandoned" and record.answered_at is not None
    assert record.last_state == "report_kind" and record.case_number is None


async def test_hang_up_before_the_answer_is_abandoned_unanswered(voice: Voice) -> None:
    await voice.call(voice.peer("hotline", "", hangup_after=0))
    (record,) = await records(voice)
    assert record.outcome == "abandoned" and record.answered_at is None and record.last_state is None


async def test_zero_is_transferred(voice: Voice) -> None:
    transcript = await voice.call(voice.peer("hotline", "0"))
    assert transcript.variables["CALLCENTER_NEXT"] == "agent"
    (record,) = await records(voice)
    assert record.outcome == "transferred" and record.case_number is None


async def test_the_voicemail_leg_keeps_its_own_record_and_draft(
        voice: Voice, agi_logs: list[dict[str, Any]]) -> None:
    """hotline -> queue -> voicemail: two AGI sessions on one channel (one agi_uniqueid)."""
    first = await voice.call(voice.peer("hotline", "0", env={"uniqueid": "1795000000.7"}))
    assert first.variables["CALLCENTER_NEXT"] == "agent"
    second = await voice.call(voice.peer("voicemail", "#", env={"uniqueid": "1795000000.7"},
                                         variables=first.variables))
    assert second.variables["CALLCENTER_NEXT"] == "hangup"
    (draft,) = await voice.drafts()
    legs = await records(voice)
    assert [(r.call_id, r.leg, r.route, r.outcome) for r in legs] == [
        ("1795000000.7", 1, "hotline", "transferred"), ("1795000000.7", 2, "voicemail", "settled")]
    assert legs[1].case_number == draft.number and legs[0].case_number is None
    assert not [e for e in agi_logs if e.get("event") == "voice.call_record_duplicate"]
