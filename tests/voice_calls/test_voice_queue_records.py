"""Queue events onto call records (SQLite and PostgreSQL), the hub's addressed screen-pop, and
the start-up check of the recording folders. The real Asterisk does the same end to end in
tests/voice_calls/test_asterisk_ami.py."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select

from callcenter.events import EventHub
from callcenter.db.tables import CallRecordRow
from callcenter.settings import Settings
from callcenter.voice.queue_events import QueueUpdate
from callcenter.voice.queue_follow import InterfaceError, set_queue_interface
from callcenter.voice.recordings import check_recording_dirs
from callcenter.voice.records import CallRecord, CallRecords
from tests.voice_calls.conftest import Voice

pytestmark = pytest.mark.asyncio(loop_scope="session")

AT = dt.datetime(2026, 12, 3, 2, 0, tzinfo=dt.UTC)


def store(voice: Voice) -> CallRecords:
    return CallRecords(voice.services.sessions, voice.services.engine.dialect.name)


async def rows(voice: Voice) -> list[CallRecordRow]:
    async with voice.services.sessions() as session:
        return list((await session.scalars(select(CallRecordRow).order_by(CallRecordRow.call_id,
                                                                          CallRecordRow.leg))).all())


def update(kind: str, call_id: str = "1796285224.0", **values: object) -> QueueUpdate:
    return QueueUpdate(kind=kind, call_id=call_id, queue="hotline-agents", at=AT, caller="13812345678",
                       **values)  # type: ignore[arg-type]


async def test_a_queue_event_before_the_ivr_leg_is_written_waits_for_it(voice: Voice) -> None:
    records = store(voice)
    joined = asyncio.get_running_loop().create_task(records.apply_queue(update("joined"), wait=5, poll=0.02))
    await asyncio.sleep(0.1)  # the AGI session has ended, its row is being written
    assert await records.write(CallRecord(call_id="1796285224.0", route="hotline", caller="+8613812345678",
                                          started_at=AT, answered_at=AT, ended_at=AT, last_state="agent",
                                          outcome="transferred", case_number=None))
    assert await joined
    assert await records.apply_queue(update("answered", wait_seconds=7, interface="PJSIP/1001"), wait=0)
    assert await records.apply_queue(update("left", wait_seconds=9), wait=0), "a late leave is harmless"
    (row,) = await rows(voice)
    assert (row.queue_joined_at, row.queue_outcome, row.queue_wait_seconds, row.agent_interface) == (
        AT, "answered", 7, "PJSIP/1001")


async def test_a_caller_who_reached_the_queue_without_the_ivr_gets_a_record(voice: Voice) -> None:
    # the service was down: the dialplan sent the caller straight to the queue
    records = store(voice)
    assert await records.apply_queue(update("joined", call_id="1796285224.5"), wait=0.05, poll=0.01)
    assert await records.apply_queue(update("abandoned", call_id="1796285224.5", wait_seconds=40), wait=0)
    (row,) = await rows(voice)
    assert (row.route, row.leg, row.caller, row.queue_outcome, row.queue_wait_seconds) == (
        "queue", 1, "+8613812345678", "abandoned", 40)
    # a talk time for a call never seen is dropped, not invented
    assert not await records.apply_queue(update("completed", call_id="9.9", talk_seconds=3), wait=0)


async def test_staff_phones_are_unique_and_well_formed(voice: Voice) -> None:
    from callcenter.console.auth import StaffStore

    staff = StaffStore(voice.services.sessions, voice.services.settings.console)
    for name in ("wangfang", "lisi"):
        await staff.create_account(name, name, "staff", "correct horse battery")
    await set_queue_interface(voice.services.sessions, "wangfang", "PJSIP/1001")
    with pytest.raises(InterfaceError, match="already the phone of wangfang"):
        await set_queue_interface(voice.services.sessions, "lisi", "PJSIP/1001")
    with pytest.raises(InterfaceError, match="interface"):
        await set_queue_interface(voice.services.sessions, "lisi", "PJSIP/1002\r\nAction: x")
    with pytest.raises(InterfaceError, match="no staff account"):
        await set_queue_interface(voice.services.sessions, "nobody", "PJSIP/1003")
    await set_queue_interface(voice.services.sessions, "wangfang", None)
    await set_queue_interface(voice.services.sessions, "lisi", "PJSIP/1001")


async def test_an_addressed_screen_pop_reaches_only_that_persons_consoles() -> None:
    hub = EventHub()
    with hub.subscribe("wangfang") as first, hub.subscribe("WangFang") as second, hub.subscribe("lisi") as other:
        hub.publish("screen_pop", {"agent": "wangfang", "phone": "+8613812345678", "call_id": "1.1"})
        hub.publish("screen_pop", {"agent": None, "phone": "+8613812345678", "call_id": "1.2"})
        hub.publish("draft_created", {"number": "261203000019", "channel": "phone"})
        got = {name: [(e.type, e.data.get("call_id")) for e in _drain(sub)]
               for name, sub in (("first", first), ("second", second), ("other", other))}
    assert got["first"] == got["second"] == [("screen_pop", "1.1"), ("screen_pop", "1.2"), ("draft_created", None)]
    assert got["other"] == [("screen_pop", "1.2"), ("draft_created", None)]


def _drain(sub: object) -> list:  # type: ignore[type-arg]
    queue = sub.queue  # type: ignore[attr-defined]
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


async def test_the_default_folders_meet_and_a_wrong_one_is_named(tmp_path: Path) -> None:
    defaults = Settings()
    assert defaults.recordings.asterisk_dir == defaults.recordings.service_dir == defaults.console.recordings_dir
    here = tmp_path / "recordings"
    fine = Settings().model_copy(update={
        "recordings": defaults.recordings.model_copy(update={"asterisk_dir": str(here), "service_dir": str(here)}),
        "console": defaults.console.model_copy(update={"recordings_dir": str(here)})})
    assert check_recording_dirs(fine) == [] and here.is_dir(), "a missing folder is created"
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    wrong = fine.model_copy(update={
        "recordings": fine.recordings.model_copy(update={"service_dir": str(blocked / "sub"),
                                                         "asterisk_dir": "relative/dir"})})
    problems = check_recording_dirs(wrong)
    assert any("recordings.service_dir" in p and "cannot be created" in p for p in problems)
    assert any("recordings.asterisk_dir" in p and "absolute" in p for p in problems)
    assert any("console.recordings_dir" in p and "differs" in p for p in problems)
