"""The SMS intake pipeline against a real store (SQLite and PostgreSQL), fed inbound events.

What goes out is checked at the outbox (durable queue) level here; what reaches an SMSC is
checked against the simulator in test_sms_smsc.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from sqlalchemy import func, select

from callcenter.app import Services, build_services
from callcenter.cases.lifecycle import CaseStatus
from callcenter.cases.model import CaseFlag, Channel
from callcenter.cases.numbering import CaseNumber
from callcenter.db.tables import CaseLogRow, CaseRow, OutboxRow
from callcenter.db.tables_sms import SmsBlocklistRow, SmsInboundPartRow, SmsInboundRow, SmsOptOutRow
from callcenter.service.cases import DraftInput, PlatformEvent
from callcenter.service.sms_intake import IntakeResult
from callcenter.service.tasks import TaskKind
from callcenter.settings import Settings
from sms.gateway import InboundMessage, MoVerdict
from tests.sms_intake.conftest import (
    GRID_BUJI,
    GRID_DAFEN,
    SHIFT_LEADER,
    SUPERVISOR_1,
    SUPERVISOR_2,
    Clock,
    fail_inserts,
    heal_inserts,
    use_clock,
)

CITIZEN = "+8613812345678"
OTHER = "+8613987654321"
SERVICE = "12319"
REPORT = "龙岗大道布吉段路灯不亮已经三天了，晚上很危险，请尽快维修。"


def sms(services: Services) -> Any:
    assert services.sms is not None
    return services.sms


def ucs2(sender: str, body: str, **fields: Any) -> InboundMessage:
    return InboundMessage(sender=sender, destination=SERVICE, short_message=body.encode("utf-16-be"),
                          data_coding=8, **fields)


def udh_part(sender: str, ref: int, total: int, seq: int, body: bytes, coding: int = 8) -> InboundMessage:
    return InboundMessage(sender=sender, destination=SERVICE, short_message=bytes([5, 0, 3, ref, total, seq]) + body,
                          data_coding=coding, esm_class=0x40)


async def receive(services: Services, message: InboundMessage) -> IntakeResult:
    return await sms(services).intake.receive(message)  # type: ignore[no-any-return]


async def outbox(services: Services, recipient: str | None = None) -> list[OutboxRow]:
    async with services.sessions() as session:
        query = select(OutboxRow).order_by(OutboxRow.id)
        if recipient:
            query = query.where(OutboxRow.recipient == recipient)
        return list(await session.scalars(query))


async def sms_cases(services: Services) -> list[CaseRow]:
    async with services.sessions() as session:
        return list(await session.scalars(select(CaseRow).where(CaseRow.channel == "sms").order_by(CaseRow.id)))


async def inbound(services: Services) -> list[SmsInboundRow]:
    async with services.sessions() as session:
        return list(await session.scalars(select(SmsInboundRow).order_by(SmsInboundRow.id)))


# ---------------------------------------------------------------- free text -> draft + ack


async def test_a_chinese_text_becomes_a_draft_with_a_suggestion_and_an_ack(services: Services) -> None:
    result = await receive(services, ucs2("8613812345678", REPORT))
    assert result.verdict is MoVerdict.STORED and result.outcome == "draft" and not result.duplicate
    view = await services.cases.get(result.case_number or "")
    assert view.channel == Channel.SMS and view.status == CaseStatus.DRAFT
    assert view.description == REPORT and view.reporter_phone == CITIZEN
    assert view.suggested_category is not None and 0 < (view.suggested_confidence or 0) <= 1
    (ack,) = await outbox(services, CITIZEN)
    assert ack.template == "received" and ack.body.startswith(f"受理编号{view.number}") and len(ack.body) <= 70
    (row,) = await inbound(services)
    assert (row.outcome, row.case_number, row.sender, row.copies) == ("draft", view.number, CITIZEN, 1)
    assert view.source_ref == row.message_key


async def test_a_redelivered_text_makes_no_second_case_and_no_second_ack(services: Services) -> None:
    first = await receive(services, ucs2(CITIZEN, REPORT))
    again = await receive(services, ucs2(CITIZEN, REPORT))
    assert again.verdict is MoVerdict.STORED and again.duplicate and again.case_number == first.case_number
    assert len(await sms_cases(services)) == 1 and len(await outbox(services)) == 1
    (row,) = await inbound(services)
    assert row.copies == 2
    # The same words from another number are another report.
    other = await receive(services, ucs2(OTHER, REPORT))
    assert other.case_number != first.case_number and len(await sms_cases(services)) == 2


async def test_the_same_text_after_the_redelivery_window_is_a_new_report(services: Services, clock: Clock) -> None:
    use_clock(services, clock)
    first = await receive(services, ucs2(CITIZEN, REPORT))
    clock.advance(seconds=services.settings.sms.redelivery_window + 1)
    later = await receive(services, ucs2(CITIZEN, REPORT))
    assert not later.duplicate and later.case_number != first.case_number


async def test_a_gateway_id_deduplicates_exactly(services: Services) -> None:
    a = await receive(services, InboundMessage(sender=CITIZEN, destination=SERVICE, text="井盖丢了",
                                               message_id="k-1", source="http"))
    b = await receive(services, InboundMessage(sender=CITIZEN, destination=SERVICE, text="井盖丢了",
                                               message_id="k-1", source="http"))
    c = await receive(services, InboundMessage(sender=CITIZEN, destination=SERVICE, text="井盖丢了",
                                               message_id="k-2", source="http"))
    assert b.duplicate and b.case_number == a.case_number
    assert not c.duplicate and c.case_number != a.case_number


@pytest.mark.parametrize(("payload", "coding", "expected"), [
    ("路灯坏了😀请修".encode("utf-16-be"), 8, "路灯坏了😀请修"),               # surrogate pair kept whole
    ("东门垃圾堆放".encode("gbk"), 15, "东门垃圾堆放"),                          # GBK by configuration
    (b"Lamp broken \x00 Bantian \x1b\x65", 0, "Lamp broken @ Bantian €"),     # GSM 7-bit, unpacked septets
    ("Caf\xe9 Fußweg blockiert".encode("latin-1"), 3, "Café Fußweg blockiert"),
])
async def test_codings_decode(services: Services, payload: bytes, coding: int, expected: str) -> None:
    result = await receive(services, InboundMessage(sender=CITIZEN, destination=SERVICE, short_message=payload,
                                                    data_coding=coding))
    view = await services.cases.get(result.case_number or "")
    assert view.description == expected and CaseFlag.LOSSY_TEXT not in view.flags


# ---------------------------------------------------------------- long messages


_STORY = ("布吉街道大芬社区油画村北门附近的人行道上有一个污水井盖破损严重，中间裂开一条大缝，"
          "昨天晚上有一位老人路过时差点踩空摔倒，附近还有一所小学，每天早上很多孩子经过这里上学，"
          "非常危险，希望有关部门尽快派人来更换井盖并设置警示标志。另外北门路口的路灯也坏了好几盏，"
          "晚上一片漆黑，行人和电动车经常在这里相撞，")
# 133 UTF-16 units, then an emoji whose surrogate pair straddles the 134-unit cut between parts 2 and 3.
LONG = _STORY[:133] + "😀" + "谢谢！请尽快处理，有进展请短信告知我。"
assert len(LONG.encode("utf-16-be")) // 2 == 133 + 2 + 19


def split_ucs2(body: str, per_part: int = 67) -> list[bytes]:
    raw = body.encode("utf-16-be")
    size = per_part * 2
    return [raw[i:i + size] for i in range(0, len(raw), size)]


async def test_a_long_message_in_three_parts_out_of_order_makes_one_draft(services: Services) -> None:
    chunks = split_ucs2(LONG)
    assert len(chunks) == 3  # the emoji's surrogate pair may straddle a part boundary; joining fixes it
    results = [await receive(services, udh_part(CITIZEN, 0xA7, 3, seq, chunks[seq - 1])) for seq in (3, 1, 2)]
    assert [r.outcome for r in results[:2]] == ["part", "part"] and results[2].outcome == "draft"
    view = await services.cases.get(results[2].case_number or "")
    assert view.description == LONG and not view.flags
    assert len(await outbox(services, CITIZEN)) == 1
    async with services.sessions() as session:
        states = set(await session.scalars(select(SmsInboundPartRow.status)))
    assert states == {"assembled"}


async def test_sar_parts_and_the_same_reference_from_two_senders_stay_apart(services: Services) -> None:
    chunks = split_ucs2(LONG)
    other_text = "坂田街道岗头社区路面塌陷，有一个大坑，车辆经过很危险，请尽快处理。" * 5
    other_chunks = split_ucs2(other_text)
    assert len(other_chunks) == 3
    for seq in (2, 1):
        await receive(services, ucs2_raw(CITIZEN, chunks[seq - 1], sar=(0x1234, 3, seq)))
        await receive(services, ucs2_raw(OTHER, other_chunks[seq - 1], sar=(0x1234, 3, seq)))
    last_a = await receive(services, ucs2_raw(CITIZEN, chunks[2], sar=(0x1234, 3, 3)))
    last_b = await receive(services, ucs2_raw(OTHER, other_chunks[2], sar=(0x1234, 3, 3)))
    assert (await services.cases.get(last_a.case_number or "")).description == LONG
    assert (await services.cases.get(last_b.case_number or "")).description == other_text


def ucs2_raw(sender: str, body: bytes, *, sar: tuple[int, int, int]) -> InboundMessage:
    return InboundMessage(sender=sender, destination=SERVICE, short_message=body, data_coding=8,
                          sar_msg_ref_num=sar[0], sar_total_segments=sar[1], sar_segment_seqnum=sar[2])


async def test_a_redelivered_part_is_ignored_even_after_completion(services: Services) -> None:
    chunks = split_ucs2(LONG)
    for seq in (1, 1, 2, 3):
        await receive(services, udh_part(CITIZEN, 9, 3, seq, chunks[seq - 1]))
    again = await receive(services, udh_part(CITIZEN, 9, 3, 3, chunks[2]))
    assert again.duplicate
    assert len(await sms_cases(services)) == 1 and await sms(services).intake.pending_long_messages() == 0


async def test_an_incomplete_message_becomes_a_flagged_draft_and_a_late_part_joins_it(
        services: Services, clock: Clock) -> None:
    use_clock(services, clock)
    chunks = split_ucs2(LONG)
    await receive(services, udh_part(CITIZEN, 0x42, 3, 1, chunks[0]))
    await receive(services, udh_part(CITIZEN, 0x42, 3, 3, chunks[2]))
    assert await sms(services).intake.expire_partials() == 0  # not yet
    clock.advance(seconds=services.settings.sms.reassembly_timeout + 1)
    assert await sms(services).intake.expire_partials() == 1
    (case,) = await sms_cases(services)
    assert CaseFlag.PARTIAL_MESSAGE in case.flags and "[第2/3段缺失]" in case.description
    assert case.description.startswith(LONG[:20])
    assert len(await outbox(services, CITIZEN)) == 1  # the citizen still gets the intake number
    late = await receive(services, udh_part(CITIZEN, 0x42, 3, 2, chunks[1]))
    assert late.outcome == "late_part" and late.case_number == case.number
    view = await services.cases.get(case.number)
    assert "[第2/3段迟到]" in view.description and len(await sms_cases(services)) == 1


async def test_stored_parts_survive_a_restart(services: Services, settings: Settings) -> None:
    chunks = split_ucs2(LONG)
    await receive(services, udh_part(CITIZEN, 7, 3, 2, chunks[1]))
    await receive(services, udh_part(CITIZEN, 7, 3, 1, chunks[0]))
    restarted = build_services(settings)  # a new process: nothing in memory
    try:
        result = await restarted.sms.intake.receive(udh_part(CITIZEN, 7, 3, 3, chunks[2]))  # type: ignore[union-attr]
        assert result.outcome == "draft"
        assert (await restarted.cases.get(result.case_number or "")).description == LONG
    finally:
        await restarted.close()


# ---------------------------------------------------------------- store failure


async def test_a_store_failure_answers_a_temporary_error_and_the_redelivery_succeeds(services: Services) -> None:
    await fail_inserts(services.engine, "sms_inbound")
    failed = await receive(services, ucs2(CITIZEN, REPORT))
    assert failed.verdict is MoVerdict.RETRY_LATER
    assert await sms_cases(services) == [] and await outbox(services) == []
    await heal_inserts(services.engine, "sms_inbound")
    again = await receive(services, ucs2(CITIZEN, REPORT))
    assert again.verdict is MoVerdict.STORED and again.outcome == "draft"
    assert len(await sms_cases(services)) == 1 and len(await outbox(services)) == 1


async def test_a_draft_that_cannot_be_written_stores_nothing_and_the_redelivery_makes_one(
        services: Services) -> None:
    """The text, its draft and its reply are one transaction: a failure leaves nothing half done."""
    await fail_inserts(services.engine, "cases")
    assert (await receive(services, ucs2(CITIZEN, REPORT))).verdict is MoVerdict.RETRY_LATER
    assert await inbound(services) == [] and await outbox(services) == []
    await heal_inserts(services.engine, "cases")
    again = await receive(services, ucs2(CITIZEN, REPORT))
    assert again.outcome == "draft" and len(await sms_cases(services)) == 1 and len(await inbound(services)) == 1


async def test_an_interrupted_command_resumes_on_redelivery_and_is_answered_once(services: Services) -> None:
    """A query is committed with its group as `received`, then answered: a failure in between
    is finished by the redelivery, with one reply."""
    first = await receive(services, ucs2(CITIZEN, REPORT))
    await fail_inserts(services.engine, "outbox")
    query = f"CX {first.case_number}"
    assert (await receive(services, ucs2(CITIZEN, query))).verdict is MoVerdict.RETRY_LATER
    assert [r.outcome for r in await inbound(services)] == ["draft", "received"]
    await heal_inserts(services.engine, "outbox")
    again = await receive(services, ucs2(CITIZEN, query))
    assert again.verdict is MoVerdict.STORED and again.outcome == "command" and again.command == "query"
    rows = await inbound(services)
    assert [r.outcome for r in rows] == ["draft", "command"] and rows[1].copies == 2
    assert len(await outbox(services, CITIZEN)) == 2  # the intake number, then one status reply


# ---------------------------------------------------------------- keywords


async def close_case(services: Services, number: str) -> None:
    await services.cases.update_transcription(number, {"category": "C0101", "grid": GRID_BUJI}, actor="staff:x")
    await services.cases.submit(number, actor="staff:x")
    for i, status in enumerate([CaseStatus.REGISTERED, CaseStatus.DISPATCHED, CaseStatus.FEEDBACK,
                                CaseStatus.CLOSED]):
        await services.cases.apply_platform_event(number, PlatformEvent(event_id=f"e{i}-{number}", status=status))


async def test_status_query_full_for_the_reporter_coarse_for_anyone_else(services: Services) -> None:
    number = (await receive(services, ucs2(CITIZEN, REPORT))).case_number or ""
    mine = await receive(services, ucs2(CITIZEN, f"CX {number}"))
    theirs = await receive(services, ucs2(OTHER, f"查询{number}"))
    assert mine.outcome == theirs.outcome == "command" and mine.command == "query"
    (reply_mine,) = [r for r in await outbox(services, CITIZEN) if r.template == "sms_reply"]
    (reply_theirs,) = await outbox(services, OTHER)
    assert reply_mine.body.startswith(f"受理编号{number}：当前状态已受理") and len(reply_mine.body) <= 70
    assert reply_theirs.body == f"受理编号{number}：已受理，待审核。详细进度仅告知反映人。"
    # A redelivered query is not answered twice; a bad check digit and an unknown number are answered.
    await receive(services, ucs2(CITIZEN, f"CX {number}"))
    assert len([r for r in await outbox(services, CITIZEN) if r.template == "sms_reply"]) == 1
    wrong = number[:-1] + str((int(number[-1]) + 1) % 10)
    await receive(services, ucs2(OTHER, f"CX{wrong}"))
    unknown = CaseNumber.build(dt.date(2026, 1, 1), 99999).value
    await receive(services, ucs2(OTHER, f"CX {unknown}"))
    replies = [r.body for r in await outbox(services, OTHER)]
    assert replies[1] == f"受理编号{wrong}有误，请核对12位编号后重发。"
    assert replies[2].startswith(f"受理编号{unknown}不存在")


async def test_rating_only_by_the_reporter_and_only_when_closed(services: Services) -> None:
    number = (await receive(services, ucs2(CITIZEN, REPORT))).case_number or ""
    await receive(services, ucs2(CITIZEN, f"PJ {number} 5"))
    await close_case(services, number)
    await receive(services, ucs2(OTHER, f"PJ {number} 1"))
    await receive(services, ucs2(CITIZEN, f"评价{number} 4分"))
    view = await services.cases.get(number)
    assert view.rating == 4
    replies = [r.body for r in await outbox(services) if r.template == "sms_reply"]
    assert replies == [f"受理编号{number}：尚未结案，结案后可回复PJ评价。",
                       f"受理编号{number}：仅反映人本人可以评价。",
                       f"受理编号{number}：已收到您的评价4分，感谢您的支持。"]


async def test_opt_out_and_help(services: Services) -> None:
    await receive(services, ucs2(CITIZEN, "TD"))
    await receive(services, ucs2(OTHER, "帮助"))
    async with services.sessions() as session:
        assert await session.get(SmsOptOutRow, CITIZEN) is not None
    (td,) = await outbox(services, CITIZEN)
    (bz,) = await outbox(services, OTHER)
    assert td.body.startswith("退订成功") and bz.body.startswith("城管热线短信")
    assert len(td.body) <= 70 and len(bz.body) <= 70
    assert len(await sms_cases(services)) == 0


# ---------------------------------------------------------------- supervisor tasks


async def test_a_task_notice_its_answer_on_the_case_and_escalation(services: Services, clock: Clock) -> None:
    use_clock(services, clock)
    number = (await receive(services, ucs2(CITIZEN, REPORT))).case_number or ""
    await services.cases.update_transcription(number, {"grid": GRID_DAFEN}, actor="staff:x")
    tasks = sms(services).tasks
    first = await tasks.create(case_number=number, kind=TaskKind.VERIFY, actor="platform:p")
    second = await tasks.create(case_number=number, kind=TaskKind.CHECK, actor="platform:p", grid=GRID_BUJI,
                                request_id="req-1")
    assert await tasks.create(case_number=number, kind=TaskKind.CHECK, actor="platform:p", grid=GRID_BUJI,
                              request_id="req-1") == second  # a retried request is the same task
    assert (first.supervisor_phone, second.supervisor_phone) == (SUPERVISOR_2, SUPERVISOR_1)
    (notice,) = await outbox(services, SUPERVISOR_2)
    assert notice.template == "task_notice" and notice.body.startswith(f"受理编号{number}【核实任务{first.code}】")
    assert f"回复1 {first.code}" in notice.body and len(notice.body) <= 70

    answer = await receive(services, ucs2(SUPERVISOR_2, f"1 {first.code}"))
    assert answer.command == "task_reply" and answer.case_number == number
    view = await services.cases.get(number)
    (entry,) = [e for e in view.log if e.action == "task_answered"]
    assert entry.changes["answer"] == "confirmed" and entry.actor == "supervisor:李娜"
    ack = (await outbox(services, SUPERVISOR_2))[-1]
    assert ack.body == f"受理编号{number}：任务{first.code}已记录为“属实”，谢谢。"

    clock.advance(minutes=services.settings.sms.task_escalation_minutes + 1)
    assert await tasks.escalate_due() == 1
    assert await tasks.escalate_due() == 0  # once
    (escalation,) = await outbox(services, SHIFT_LEADER)
    assert escalation.body.startswith(f"受理编号{number}：核查任务{second.code}已30分钟无人回复")
    # A late answer without the code still lands: it is the supervisor's only open task.
    late = await receive(services, ucs2(SUPERVISOR_1, "不属实"))
    assert late.command == "task_reply"
    views = {t.code: t for t in await tasks.list_for_case(number)}
    assert views[first.code].answer == "confirmed" and views[second.code].answer == "not_confirmed"
    assert views[second.code].escalated_at is not None
    actions = [e.action for e in (await services.cases.get(number)).log]
    assert actions.count("task_sent") == 2 and "task_escalated" in actions and actions.count("task_answered") == 2


async def test_a_bare_1_from_a_citizen_is_answered_with_help_not_recorded(services: Services) -> None:
    result = await receive(services, ucs2(CITIZEN, "1"))
    assert result.command == "help"
    (reply,) = await outbox(services, CITIZEN)
    assert reply.body.startswith("城管热线短信")


# ---------------------------------------------------------------- flood, loop, blocklist


async def test_a_storm_from_one_number_is_folded_into_one_draft(services: Services) -> None:
    limit = services.settings.sms.rate_limit
    texts = [f"第{i}条：东门步行街有人乱摆摊，占道经营{i}处" for i in range(limit + 4)]
    results = [await receive(services, ucs2(CITIZEN, body)) for body in texts]
    assert [r.outcome for r in results] == ["draft"] * limit + ["folded"] * 4
    storm = {r.case_number for r in results[limit:]}
    assert len(storm) == 1
    view = await services.cases.get(storm.pop() or "")
    assert CaseFlag.FLOOD_FOLDED in view.flags
    assert all(body in view.description for body in texts[limit:])
    # One ack per draft, none per folded text.
    assert len(await outbox(services, CITIZEN)) == limit + 1
    assert len(await inbound(services)) == limit + 4  # every text kept


async def test_the_same_text_in_a_loop_blocks_the_number(services: Services) -> None:
    threshold = services.settings.sms.loop_threshold
    for _ in range(threshold + 2):
        await receive(services, ucs2(OTHER, "自动回复：您好，我现在不方便接听"))
    async with services.sessions() as session:
        (block,) = (await session.scalars(select(SmsBlocklistRow))).all()
    assert block.number == OTHER and block.reason == "loop" and block.expires_at is not None
    after = await receive(services, ucs2(OTHER, "另一条消息"))
    assert after.outcome == "blocked"
    assert len(await outbox(services, OTHER)) == 1  # only the first text's ack, nothing for the loop


async def test_a_blocklisted_number_is_stored_but_not_answered(services: Services) -> None:
    result = await receive(services, ucs2("13666666666", REPORT))
    assert result.verdict is MoVerdict.STORED and result.outcome == "blocked"
    assert await sms_cases(services) == [] and await outbox(services) == []
    (row,) = await inbound(services)
    assert row.text == REPORT


# ---------------------------------------------------------------- bad input


async def test_bad_input_is_answered_and_kept(services: Services) -> None:
    empty = await receive(services, ucs2(CITIZEN, ""))
    assert empty.verdict is MoVerdict.STORED and empty.outcome == "empty"
    odd = await receive(services, InboundMessage(sender=OTHER, destination=SERVICE,
                                                 short_message="路灯".encode("utf-16-be") + b"\xd8", data_coding=8))
    assert odd.outcome == "draft"
    assert CaseFlag.LOSSY_TEXT in (await services.cases.get(odd.case_number or "")).flags
    nul = await receive(services, InboundMessage(sender="+8613711112222", destination=SERVICE,
                                                 short_message="井盖\x00丢失".encode("utf-16-be"), data_coding=8))
    assert (await services.cases.get(nul.case_number or "")).description == "井盖\ufffd丢失"
    broken_udh = await receive(services, InboundMessage(sender="+8613711113333", destination=SERVICE,
                                                        short_message=b"\x09\x00\x03garbage\xff\xfe", esm_class=0x40))
    assert broken_udh.outcome == "draft"
    assert CaseFlag.LOSSY_TEXT in (await services.cases.get(broken_udh.case_number or "")).flags
    huge = "很长的反映内容。" * 1300  # 10,400 characters
    big = await receive(services, InboundMessage(sender="+8613711114444", destination=SERVICE, text=huge,
                                                 source="http"))
    view = await services.cases.get(big.case_number or "")
    assert "text_truncated" in view.flags and len(view.description) <= services.settings.sms.max_text_chars
    async with services.sessions() as session:
        stored = await session.scalar(select(SmsInboundRow.text).where(SmsInboundRow.case_number == view.number))
    assert stored == huge  # the whole text is kept
    garbage = await receive(services, InboundMessage(sender="+8613711115555", destination=SERVICE,
                                                     short_message=bytes(range(256)) * 2, data_coding=0xF6))
    assert garbage.verdict is MoVerdict.STORED and garbage.case_number is not None
    async with services.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(SmsInboundRow)) == 6


async def test_an_alphanumeric_sender_makes_a_draft_without_an_ack(services: Services) -> None:
    result = await receive(services, InboundMessage(sender="CITYGOV", destination=SERVICE, text="测试上报"))
    assert result.outcome == "draft" and await outbox(services) == []


async def test_draft_input_unchanged_for_staff(services: Services) -> None:
    """The SMS channel leaves the case core's own drafts alone (no SMS rows, same ack)."""
    view = await services.cases.create_draft(DraftInput(channel=Channel.STAFF, description="路灯不亮",
                                                        reporter_phone=CITIZEN), actor="staff:x")
    assert await inbound(services) == [] and len(await outbox(services, CITIZEN)) == 1
    async with services.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(CaseLogRow)
                                    .where(CaseLogRow.case_id == view.id)) == 1


# ---------------------------------------------------------------- groups


async def test_texts_arriving_together_are_stored_in_groups_in_arrival_order(services: Services) -> None:
    intake = sms(services).intake
    senders = [f"+86135{n:08d}" for n in range(40)]
    results = await asyncio.gather(*(receive(services, ucs2(s, f"{REPORT}（{i}）")) for i, s in enumerate(senders)))
    assert [r.outcome for r in results] == ["draft"] * 40
    serials = [int((r.case_number or "")[6:11]) for r in results]
    assert serials == sorted(serials) and len(set(serials)) == 40  # numbered in arrival order
    groups = services.metrics.counter("sms_mo_groups_total").total()
    assert groups < 40  # several texts per transaction
    assert [row.sender for row in await inbound(services)] == senders
    assert intake._queue == []


async def test_a_store_failure_answers_try_again_for_its_whole_group(services: Services) -> None:
    await fail_inserts(services.engine, "outbox")  # the receipts of the group's drafts cannot be written
    results = await asyncio.gather(*(receive(services, ucs2(f"+86135{n:08d}", REPORT)) for n in range(12)))
    assert {r.verdict for r in results} == {MoVerdict.RETRY_LATER}
    assert await inbound(services) == [] and await sms_cases(services) == []
    await heal_inserts(services.engine, "outbox")
    again = await asyncio.gather(*(receive(services, ucs2(f"+86135{n:08d}", REPORT)) for n in range(12)))
    assert {r.verdict for r in again} == {MoVerdict.STORED} and len(await sms_cases(services)) == 12


async def test_one_senders_replies_keep_the_order_of_the_texts(services: Services) -> None:
    first = await receive(services, ucs2(CITIZEN, REPORT))
    # A query (finished after its group) and then a report from the same sender, arriving together
    # with other senders' texts: the query's answer is queued before the new report's receipt.
    results = await asyncio.gather(
        receive(services, ucs2(OTHER, "井盖丢了")),
        receive(services, ucs2(CITIZEN, f"CX{first.case_number}")),
        receive(services, ucs2(CITIZEN, "路口积水很深，车辆无法通行")),
        receive(services, ucs2("+8613600000000", "垃圾没人清运")))
    assert [r.outcome for r in results] == ["draft", "command", "draft", "draft"]
    replies = [row.template for row in await outbox(services, CITIZEN)]
    assert replies == ["received", "sms_reply", "received"]


async def test_a_text_without_a_sender_is_refused_for_good(services: Services) -> None:
    result = await receive(services, InboundMessage(sender="  ", destination=SERVICE, text="路灯坏了"))
    assert result.verdict is MoVerdict.REFUSED and await inbound(services) == []


async def test_a_long_text_past_the_flood_limit_is_folded_not_stuck(services: Services) -> None:
    """A completed long text that must be folded finishes under its part's sender lock."""
    for i in range(services.settings.sms.rate_limit):
        await receive(services, ucs2(CITIZEN, f"{REPORT}（{i}）"))
    story = "布吉街道大芬社区油画村北门附近的人行道上有一个污水井盖破损严重，" * 3
    raw = story.encode("utf-16-be")
    chunks = [raw[i:i + 134] for i in range(0, len(raw), 134)]
    results = []
    async with asyncio.timeout(10):
        for seq, chunk in enumerate(chunks, start=1):
            results.append(await receive(services, udh_part(CITIZEN, 0x33, len(chunks), seq, chunk)))
    assert results[-1].outcome == "folded"
    assert [r.outcome for r in await inbound(services)][-1] == "folded"
