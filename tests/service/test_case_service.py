"""The case service against a real store: SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import func, select

from callcenter.app import Services
from callcenter.cases.lifecycle import CaseStatus, RejectionReason
from callcenter.cases.model import Channel
from callcenter.cases.numbering import damm_valid
from callcenter.db.tables import CaseLogRow, CaseRow, OutboxRow
from callcenter.service.cases import CaseFilter, DraftInput, PlatformEvent
from callcenter.service.errors import CaseNotFound, Conflict, InvalidInput, TransitionRefused

STAFF = "staff:王芳"


@pytest.fixture
def grid(services: Services) -> str:
    grids = services.grids.search("街道", limit=1)
    assert grids, "the Longgang sample grid file must load"
    return grids[0].code.value


async def outbox(services: Services, number: str) -> list[OutboxRow]:
    async with services.sessions() as session:
        rows = await session.scalars(
            select(OutboxRow).join(CaseRow, OutboxRow.case_id == CaseRow.id)
            .where(CaseRow.number == number).order_by(OutboxRow.id))
        return list(rows)


async def draft(services: Services, **fields: object) -> str:
    data: dict[str, object] = {"channel": Channel.STAFF, "description": "人行道井盖丢失，很危险",
                               "reporter_phone": "13812345678"}
    data.update(fields)
    view = await services.cases.create_draft(DraftInput(**data), actor=STAFF)  # type: ignore[arg-type]
    return view.number


async def test_a_draft_gets_a_checked_number_a_log_entry_and_a_receipt_sms(services: Services) -> None:
    view = await services.cases.create_draft(
        DraftInput(channel=Channel.STAFF, description="路灯不亮", reporter_phone="138 1234 5678"), actor=STAFF)
    assert damm_valid(view.number) and len(view.number) == 12
    assert view.status == "draft" and view.reporter_phone == "+8613812345678"
    assert view.suggested_category is not None  # 路灯 is in the keyword table
    assert [e.action for e in view.log] == ["created"] and view.log[0].actor == STAFF
    sms = await outbox(services, view.number)
    assert len(sms) == 1 and sms[0].recipient == "+8613812345678" and sms[0].template == "received"
    assert sms[0].body.startswith(f"受理编号{view.number}")


async def test_numbers_are_unique_and_dated_under_concurrent_writers(services: Services) -> None:
    numbers = await asyncio.gather(*(draft(services, reporter_phone=None) for _ in range(64)))
    assert len(set(numbers)) == 64
    today = dt.datetime.now(dt.UTC).astimezone(services.cases._tz).strftime("%y%m%d")
    assert all(n.startswith(today) and damm_valid(n) for n in numbers)


async def test_the_daily_serial_restarts_each_day(services: Services) -> None:
    moments = iter([dt.datetime(2026, 11, 24, 15, 59, tzinfo=dt.UTC),   # 23:59 in Shanghai
                    dt.datetime(2026, 11, 24, 16, 1, tzinfo=dt.UTC)])   # 00:01 next day
    first_time = next(moments)
    services.cases.now = lambda: first_time
    first = await draft(services)
    second_time = next(moments)
    services.cases.now = lambda: second_time
    second = await draft(services)
    assert first.startswith("261124") and second.startswith("261125")
    assert second[6:11] == "00001"


async def test_redelivered_source_makes_no_second_case(services: Services) -> None:
    a = await draft(services, channel=Channel.SMS, source_ref="smsc:abc:1")
    b = await draft(services, channel=Channel.SMS, source_ref="smsc:abc:1")
    assert a == b
    async with services.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(CaseRow)) == 1


@pytest.mark.parametrize(("fields", "field"), [
    ({"description": ""}, "description"),
    ({"category": "C9999"}, "category"),
    ({"category": "X01"}, "category"),
    ({"grid": "4403071020010"}, "grid"),
    ({"grid": "99999999999999"}, "grid"),
    ({"reporter_phone": "13812345678\nHANGUP"}, "reporter_phone"),
    ({"description": "x" * 5000}, "description"),
    ({"lon": 114.2}, "lat"),
])
async def test_bad_input_names_the_field_and_writes_nothing(services: Services, fields: dict[str, object],
                                                            field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        await draft(services, **fields)
    assert info.value.field == field
    async with services.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(CaseRow)) == 0
        assert await session.scalar(select(func.count()).select_from(OutboxRow)) == 0


async def test_markup_and_sql_looking_text_is_stored_verbatim(services: Services) -> None:
    text = "<script>alert(1)</script>'; DROP TABLE cases; --"
    number = await draft(services, description=text)
    assert (await services.cases.get(number)).description == text


async def test_transcription_submit_and_platform_lifecycle(services: Services, grid: str) -> None:
    number = await draft(services)
    view = await services.cases.update_transcription(
        number, {"category": "C0101", "grid": grid, "address": "龙岗大道1号"}, actor=STAFF, expected_version=1)
    assert (view.category, view.kind, view.category_edition) == ("C0101", "component", "CJ/T 214-2005")
    assert view.version == 2 and view.log[-1].changes["grid_code"]["to"] == grid

    with pytest.raises(Conflict):
        await services.cases.update_transcription(number, {"address": "x"}, actor="staff:b", expected_version=1)

    await services.cases.submit(number, actor=STAFF)
    steps = [("e1", CaseStatus.REGISTERED, "registered"), ("e2", CaseStatus.DISPATCHED, "dispatched"),
             ("e3", CaseStatus.PROCESSING, None), ("e4", CaseStatus.FEEDBACK, None),
             ("e5", CaseStatus.VERIFIED, None), ("e6", CaseStatus.CLOSED, "closed")]
    for event_id, status, _ in steps:
        view = await services.cases.apply_platform_event(
            number, PlatformEvent(event_id=event_id, status=status,
                                  platform_number="E0103202611240001" if event_id == "e1" else None))
    assert view.status == "closed" and view.platform_number == "E0103202611240001"
    templates = [row.template for row in await outbox(services, number)]
    assert templates == ["received", "registered", "dispatched", "closed"]
    platform_entries = [e for e in view.log if e.action == "platform_event"]
    assert [e.event_id for e in platform_entries] == ["e1", "e2", "e3", "e4", "e5", "e6"]

    rated = await services.cases.rate(number, 5, actor="citizen", phone="13812345678")
    assert rated.rating == 5
    with pytest.raises(TransitionRefused):
        await services.cases.rate(number, 4, actor="citizen", phone="13900000000")


async def test_a_repeated_platform_event_is_applied_once(services: Services, grid: str) -> None:
    number = await draft(services, category="C0101", grid=grid)
    await services.cases.submit(number, actor=STAFF)
    event = PlatformEvent(event_id="evt-1", status=CaseStatus.REGISTERED, platform_number="C0101X")
    results = await asyncio.gather(*(services.cases.apply_platform_event(number, event) for _ in range(5)),
                                   return_exceptions=True)
    assert all(not isinstance(r, Exception) or isinstance(r, TransitionRefused) for r in results)
    async with services.sessions() as session:
        count = await session.scalar(select(func.count()).select_from(CaseLogRow)
                                     .where(CaseLogRow.event_id == "evt-1"))
    assert count == 1
    assert [r.template for r in await outbox(services, number)].count("registered") == 1


async def test_illegal_transition_is_refused_with_the_reason_and_changes_nothing(services: Services) -> None:
    number = await draft(services)
    with pytest.raises(TransitionRefused, match="draft"):
        await services.cases.apply_platform_event(number, PlatformEvent(event_id="x", status=CaseStatus.CLOSED))
    view = await services.cases.get(number)
    assert view.status == "draft" and [e.action for e in view.log] == ["created"]
    with pytest.raises(TransitionRefused, match="category"):  # the case's state refuses it: 409
        await services.cases.submit(number, actor=STAFF)


async def test_rejection_tells_the_reporter_why(services: Services) -> None:
    number = await draft(services)
    view = await services.cases.reject(number, RejectionReason.OUT_OF_SCOPE, actor=STAFF, note="属于物业")
    assert view.status == "rejected" and view.log[-1].reason == "属于物业"
    body = (await outbox(services, number))[-1].body
    assert "不予立案" in body and "不属于城管受理范围" in body


async def test_merge_tells_every_reporter_and_later_changes_reach_them(services: Services, grid: str) -> None:
    master = await draft(services, reporter_phone="13800000001", category="C0101", grid=grid)
    dup1 = await draft(services, reporter_phone="13800000002")
    dup2 = await draft(services, reporter_phone="13800000003")
    await services.cases.merge(dup2, dup1, actor=STAFF)
    view = await services.cases.merge(dup1, master, actor=STAFF)
    assert view.status == "merged" and view.master_number == master
    merged_sms = [r for r in await outbox(services, dup1) if r.template == "merged"]
    assert {r.recipient for r in merged_sms} == {"+8613800000002", "+8613800000003"}
    assert all(master in r.body for r in merged_sms)
    assert (await services.cases.get(dup2)).master_number == master

    await services.cases.submit(master, actor=STAFF)
    await services.cases.apply_platform_event(master, PlatformEvent(event_id="m1", status=CaseStatus.REGISTERED))
    registered = [r.recipient for r in await outbox(services, master) if r.template == "registered"]
    assert sorted(registered) == ["+8613800000001", "+8613800000002", "+8613800000003"]

    with pytest.raises(InvalidInput):
        await services.cases.merge(master, master, actor=STAFF)
    with pytest.raises(TransitionRefused):
        await services.cases.merge(master, dup1, actor=STAFF)


async def test_search_filters_and_pages(services: Services, grid: str) -> None:
    for i in range(7):
        await draft(services, description=f"第{i}处 积存垃圾", category="E0103" if i % 2 else None,
                    grid=grid if i < 3 else None, reporter_phone="13800000009" if i == 0 else None)
    everything = await services.cases.search(CaseFilter(), limit=5)
    assert everything.total == 7 and len(everything.items) == 5
    assert (await services.cases.search(CaseFilter(category="E0103"))).total == 3
    assert (await services.cases.search(CaseFilter(grid=grid))).total == 3
    assert (await services.cases.search(CaseFilter(reporter_phone="13800000009"))).total == 1
    assert (await services.cases.search(CaseFilter(text="第4处"))).total == 1
    assert (await services.cases.search(CaseFilter(text="%"))).total == 0
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    assert (await services.cases.search(CaseFilter(created_from=later))).total == 0


async def test_unknown_number_and_bad_check_digit(services: Services) -> None:
    number = await draft(services)
    wrong = number[:-1] + str((int(number[-1]) + 1) % 10)
    with pytest.raises(InvalidInput, match="check digit"):
        await services.cases.get(wrong)
    from callcenter.cases.numbering import CaseNumber

    unused = CaseNumber.build(dt.date(2020, 1, 1), 1).value
    with pytest.raises(CaseNotFound):
        await services.cases.get(unused)


async def test_nul_in_a_recording_reference_is_refused(services: Services) -> None:
    with pytest.raises(InvalidInput) as info:
        await draft(services, recording_ref="/var/rec/a\x00b.wav")
    assert info.value.field == "recording_ref"


async def test_draft_listeners_hear_each_new_draft_once(services: Services) -> None:
    heard: list[str] = []
    services.cases.on_draft_created = lambda view: heard.append(view.number)
    first = await draft(services, channel=Channel.SMS, source_ref="m-1")
    await draft(services, channel=Channel.SMS, source_ref="m-1")  # a redelivery: no new draft

    def broken(_view: object) -> None:
        raise RuntimeError("listener bug")

    services.cases.on_draft_created = broken
    second = await draft(services)  # a failing listener does not lose the report
    assert heard == [first]
    assert (await services.cases.get(second)).status == "draft"


async def test_a_broad_search_counts_up_to_the_cap(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    import callcenter.service.cases as module

    monkeypatch.setattr(module, "COUNT_CAP", 3)
    for _ in range(5):
        await draft(services, reporter_phone=None)
    page = await services.cases.search(CaseFilter(), limit=2)
    assert (page.total, page.total_is_exact, len(page.items)) == (3, False, 2)
    page = await services.cases.search(CaseFilter(text="不存在的内容"))
    assert (page.total, page.total_is_exact) == (0, True)


async def test_a_revoked_token_stops_working_at_once(services: Services) -> None:
    from callcenter.service.tokens import Role

    token = await services.tokens.create(Role.STAFF, "临时")
    assert (await services.tokens.verify(token)) is not None
    assert (await services.tokens.verify(token)) is not None  # served from the cache
    await services.tokens.revoke("临时")
    assert await services.tokens.verify(token) is None


async def test_a_phone_draft_keeps_the_callers_kind_and_major(services: Services) -> None:
    view = await services.cases.create_draft(
        DraftInput(channel=Channel.PHONE, description="电话报告，垃圾桶满了", kind="event", category_major="01",
                   recording_ref="r1.wav"), actor="ivr")
    assert (view.kind, view.category_major, view.category) == ("event", "01", None)
    assert view.suggested_category is None or view.suggested_category.startswith("E01")
    confirmed = await services.cases.update_transcription(view.number, {"category": "E0103"}, actor=STAFF)
    assert (confirmed.kind, confirmed.category_major) == ("event", "01")
    for fields, field in [({"kind": "event"}, "category_major"), ({"category_major": "01"}, "kind"),
                          ({"kind": "thing", "category_major": "01"}, "kind"),
                          ({"kind": "component", "category_major": "42"}, "category_major")]:
        with pytest.raises(InvalidInput) as info:
            await draft(services, **fields)
        assert info.value.field == field


async def test_submit_sends_the_number_to_a_reporter_who_never_got_it(services: Services, grid: str) -> None:
    silent = await draft(services, notify_reporter=False, category="C0101", grid=grid)
    landline = await draft(services, notify_reporter=False, category="C0101", reporter_phone="075512345678")
    told = await draft(services, category="C0101")
    for number in (silent, landline, told):
        await services.cases.submit(number, actor=STAFF)
    assert [r.template for r in await outbox(services, silent)] == ["received"]
    assert (await outbox(services, silent))[0].body.startswith(f"受理编号{silent}")
    assert await outbox(services, landline) == []  # a landline cannot read an SMS
    assert [r.template for r in await outbox(services, told)] == ["received"]  # not twice
