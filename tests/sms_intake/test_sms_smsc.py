"""The SMS channel end to end against the node-smpp SMSC simulator (an independent peer).

Texts go in as deliver_sm from the simulator; what the citizen would see is read back from
the simulator's own log of submit_sm PDUs (decoded here by hand, not by our code). Covers
the smpp.md scenarios at the message/outbox level: throttling, in-doubt submits after a
dropped link, receipts before their submit_sm_resp, id base/case mismatches, duplicate
receipts, out-of-order and colliding-reference long messages, an emoji at a part boundary,
unusual TLVs, malformed PDUs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select

from callcenter.app import Services, build_services
from callcenter.cases.lifecycle import CaseStatus
from callcenter.db import migrate
from callcenter.db.tables import CaseRow, OutboxRow
from callcenter.db.tables_sms import SmsInboundRow, SmsReceiptUnmatchedRow, SmsSubmitRow
from callcenter.service.cases import PlatformEvent
from callcenter.service.sms_channel import SmsRuntime, make_gateway
from callcenter.service.tokens import Role
from callcenter.settings import Settings, load_settings
from sms.gateway import SmppGateway, wait_ready
from tests.sms_intake.conftest import GRID_BUJI, Clock, fail_inserts, heal_inserts, sms_overrides
from tests.support.smsc import ESME_RTHROTTLED, ESME_RX_T_APPN, SmscSimulator

pytestmark = pytest.mark.asyncio(loop_scope="session")

SERVICE = "12319"
CITIZEN, CITIZEN_E164, CITIZEN_WIRE = "13812345678", "+8613812345678", "8613812345678"
OTHER, OTHER_WIRE = "13987654321", "8613987654321"
SUPERVISOR_WIRE, LEADER_WIRE = "8613900000001", "8613800000000"
REPORT = "龙岗大道布吉段路灯不亮已经三天了，晚上很危险，请尽快维修。"


@dataclass
class Stack:
    services: Services
    gateway: SmppGateway
    smsc: SmscSimulator
    clock: Clock
    runtime: SmsRuntime | None

    @property
    def sms(self) -> Any:
        return self.services.sms


def stack_settings(smsc: SmscSimulator, tmp_path: Path, **sms: Any) -> Settings:
    base = load_settings(environ={})
    base = base.model_copy(update={
        "database": base.database.model_copy(update={"url": f"sqlite:///{tmp_path / 'sms.sqlite3'}"}),
        "smpp": base.smpp.model_copy(update={
            "host": smsc.host, "port": smsc.port, "system_id": "callcenter", "password": "secret",
            "enquire_link_interval": 5.0, "enquire_link_timeout": 2.0, "response_timeout": 5.0,
            "reconnect_min": 0.05, "reconnect_max": 0.3, "max_parts_per_second": 1000.0,
            "throttle_pause": 0.01}),
    })
    return sms_overrides(base, tmp_path, **sms)


@contextlib.asynccontextmanager
async def running(smsc: SmscSimulator, reactor: Any, tmp_path: Path, *, loops: bool, bound: bool = True,
                  smpp: dict[str, Any] | None = None, **sms: Any) -> AsyncIterator[Stack]:
    """The SMS channel bound to the simulator; with `loops` the outbox sender runs by itself."""
    settings = stack_settings(smsc, tmp_path, **sms)
    if smpp:
        settings = settings.model_copy(update={"smpp": settings.smpp.model_copy(update=smpp)})
    migrate.upgrade(settings.database.url)
    services = build_services(settings)
    assert services.sms is not None
    clock = Clock()
    gateway = make_gateway(settings.smpp, reactor=reactor)
    assert isinstance(gateway, SmppGateway)
    runtime: SmsRuntime | None = None
    if loops:
        runtime = SmsRuntime(services.sms, settings, gateway)
        await runtime.start()
    else:
        for target in (services.cases, services.sms.intake, services.sms.outbox, services.sms.tasks):
            target.now = clock
        services.sms.outbox.gateway = gateway
        await services.sms.outbox.recover()
        await gateway.start(services.sms.intake.receive_verdict, services.sms.outbox.handle_receipt)
    try:
        if bound:
            await gateway.client.wait_bound(5)
        yield Stack(services, gateway, smsc, clock, runtime)
    finally:
        if runtime is not None:
            await runtime.stop()
        else:
            await gateway.stop()
        await services.close()


@pytest_asyncio.fixture(loop_scope="session")
async def live(smsc: SmscSimulator, reactor: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running(smsc, reactor, tmp_path, loops=True) as stack:
        yield stack


@pytest_asyncio.fixture(loop_scope="session")
async def manual(smsc: SmscSimulator, reactor: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running(smsc, reactor, tmp_path, loops=False) as stack:
        yield stack


# ---------------------------------------------------------------- helpers (independent decoding)


async def deliver(smsc: SmscSimulator, sender: str, text: str | None = None, *, hex_body: str | None = None,
                  coding: int = 8, **fields: Any) -> int:
    """Send one deliver_sm and return its deliver_sm_resp status."""
    body = hex_body if hex_body is not None else (text or "").encode("utf-16-be").hex()
    seq = await smsc.deliver(source_addr=sender, destination_addr=SERVICE, data_coding=coding,
                             short_message_hex=body, **fields)
    session = (await smsc.events("deliver_sm", sequence=seq))[-1]["session"]  # sequences restart per link
    (resp,) = await smsc.wait_for("deliver_sm_resp", session=session, sequence=seq, of="deliver_sm", timeout=10)
    return int(resp["status"])


async def resend(smsc: SmscSimulator, sender: str, text: str, sequence: int, **fields: Any) -> int:
    """The SMSC retransmits a deliver_sm: same bytes, same sequence number, same connection."""
    session = (await smsc.events("deliver_sm", sequence=sequence))[-1]["session"]
    before = len(await smsc.events("deliver_sm_resp", session=session, sequence=sequence, of="deliver_sm"))
    await smsc.deliver(source_addr=sender, destination_addr=SERVICE, data_coding=8,
                       short_message_hex=text.encode("utf-16-be").hex(), resend_sequence=sequence, **fields)
    found = await smsc.wait_for("deliver_sm_resp", count=before + 1, timeout=10, session=session,
                                sequence=sequence, of="deliver_sm")
    return int(found[-1]["status"])


async def relink(stack: Stack) -> None:
    """The link drops (our last resp may be lost with it) and the client binds again."""
    await stack.smsc.drop()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while len([s for s in await stack.smsc.sessions() if s.get("mode")]) == 0 or not stack.gateway.ready:
        assert loop.time() < deadline, "no new bind after the drop"
        await asyncio.sleep(0.05)


def _parts(submit: dict[str, Any]) -> tuple[tuple[int, int, int] | None, bytes]:
    raw = bytes.fromhex(submit["short_message_hex"])
    if submit["esm_class"] & 0x40:
        header = raw[: raw[0] + 1]
        assert header[1:3] == b"\x00\x03", "8-bit concatenation IE expected"
        return (header[3], header[4], header[5]), raw[len(header):]
    return None, raw


async def accepted(smsc: SmscSimulator, wire: str | None = None) -> list[dict[str, Any]]:
    """submit_sm PDUs (to `wire`) that the simulator answered with ESME_ROK."""
    where = {"destination_addr": wire} if wire else {}
    submits = await smsc.events("submit_sm", **where)
    ok = {(r["session"], r["sequence"]) for r in await smsc.events("submit_sm_resp") if r["status"] == 0}
    return [s for s in submits if (s["session"], s["sequence"]) in ok]


async def texts_to(smsc: SmscSimulator, wire: str) -> list[str]:
    """What the handset would show: single parts, and long messages joined by reference."""
    out: list[str] = []
    pending: dict[tuple[int, int], dict[int, bytes]] = {}
    for submit in await accepted(smsc, wire):
        concat, body = _parts(submit)
        assert submit["data_coding"] == 8
        if concat is None:
            out.append(body.decode("utf-16-be"))
            continue
        ref, total, seq = concat
        pending.setdefault((ref, total), {})[seq] = body  # a repeated part replaces itself, as handsets do
        if len(pending[(ref, total)]) == total:
            parts = pending.pop((ref, total))
            out.append(b"".join(parts[i] for i in range(1, total + 1)).decode("utf-16-be"))
    return out


async def wait_texts(smsc: SmscSimulator, wire: str, count: int, timeout: float = 10.0) -> list[str]:
    async with asyncio.timeout(timeout):
        while True:
            found = await texts_to(smsc, wire)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.02)


async def until(predicate: Any, timeout: float = 10.0) -> Any:
    """Poll an async predicate until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await asyncio.sleep(0.02)


async def sms_cases(services: Services) -> list[CaseRow]:
    async with services.sessions() as session:
        return list(await session.scalars(select(CaseRow).where(CaseRow.channel == "sms").order_by(CaseRow.id)))


async def outbox_rows(services: Services) -> list[OutboxRow]:
    async with services.sessions() as session:
        return list(await session.scalars(select(OutboxRow).order_by(OutboxRow.id)))


async def submit_rows(services: Services, outbox_id: int) -> list[SmsSubmitRow]:
    async with services.sessions() as session:
        return list(await session.scalars(
            select(SmsSubmitRow).where(SmsSubmitRow.outbox_id == outbox_id).order_by(SmsSubmitRow.seq)))


async def queue(services: Services, recipient: str, body: str, key: str) -> int:
    """Put a message in the outbox the way the case core does."""
    now = services.sms.outbox.now()  # type: ignore[union-attr]
    async with services.sessions() as session, session.begin():
        row = OutboxRow(idempotency_key=key, case_id=None, recipient=recipient, template="sms_reply", body=body,
                        status="pending", attempts=0, not_before=now, created_at=now)
        session.add(row)
        await session.flush()
        return row.id


# ---------------------------------------------------------------- intake through the SMSC


async def test_a_chinese_text_becomes_a_draft_and_the_sender_gets_the_intake_number(live: Stack) -> None:
    assert await deliver(live.smsc, CITIZEN, REPORT) == 0
    (case,) = await sms_cases(live.services)
    assert case.description == REPORT and case.reporter_phone == CITIZEN_E164 and case.status == "draft"
    assert case.suggested_category is not None and case.suggested_confidence is not None
    (ack,) = await wait_texts(live.smsc, CITIZEN_WIRE, 1)
    assert ack.startswith(f"受理编号{case.number}：") and len(ack) <= 70
    (submit,) = await accepted(live.smsc, CITIZEN_WIRE)
    assert submit["source_addr"] == SERVICE and submit["registered_delivery"] == 1
    assert submit["dest_addr_ton"] == 1 and submit["validity_period"].endswith("R")


async def test_a_long_message_out_of_order_and_a_redelivery_make_one_case(live: Stack) -> None:
    story = ("布吉街道大芬社区油画村北门附近的人行道上有一个污水井盖破损严重，中间裂开一条大缝，"
             "昨天晚上有一位老人路过时差点踩空摔倒，附近还有一所小学，每天早上很多孩子经过这里上学，"
             "非常危险，希望有关部门尽快派人来更换井盖并设置警示标志。另外北门路口的路灯也坏了好几盏，"
             "晚上一片漆黑，行人和电动车经常在这里相撞，请一并处理。")
    raw = story.encode("utf-16-be")
    chunks = [raw[i:i + 134] for i in range(0, len(raw), 134)]
    assert len(chunks) == 3
    for seq in (2, 3, 1):
        udh = bytes([5, 0, 3, 0x5A, 3, seq])
        assert await deliver(live.smsc, CITIZEN, hex_body=(udh + chunks[seq - 1]).hex(), esm_class=0x40) == 0
    # The same reference from another sender is another message (keyed by sender).
    assert await deliver(live.smsc, OTHER, hex_body=(bytes([5, 0, 3, 0x5A, 2, 1]) + "路面塌陷".encode("utf-16-be")).hex(),
                         esm_class=0x40) == 0
    # The SMSC delivers the last part again (our resp was lost): still one case, one ack.
    udh = bytes([5, 0, 3, 0x5A, 3, 1])
    assert await deliver(live.smsc, CITIZEN, hex_body=(udh + chunks[0]).hex(), esm_class=0x40) == 0
    assert await deliver(live.smsc, CITIZEN, REPORT) == 0
    (last,) = [e["sequence"] for e in (await live.smsc.events("deliver_sm"))[-1:]]
    assert await resend(live.smsc, CITIZEN, REPORT, last) == 0  # retransmitted: same sequence
    await wait_texts(live.smsc, CITIZEN_WIRE, 2)  # both acks out before the link drops
    await relink(live)
    assert await deliver(live.smsc, CITIZEN, REPORT) == 0  # delivered again on the new bind
    cases = await sms_cases(live.services)
    assert [c.description for c in cases] == [story, REPORT]
    acks = await wait_texts(live.smsc, CITIZEN_WIRE, 2)
    assert [a[4:16] for a in acks] == [c.number for c in cases]
    assert live.sms.intake.pending_long_messages == 1  # OTHER's part 1/2 waits for its part 2


async def test_a_store_failure_is_a_temporary_error_and_the_redelivery_lands_once(live: Stack) -> None:
    await fail_inserts(live.services.engine, "sms_inbound")
    assert await deliver(live.smsc, CITIZEN, REPORT) == ESME_RX_T_APPN
    assert await sms_cases(live.services) == []
    await heal_inserts(live.services.engine, "sms_inbound")
    assert await deliver(live.smsc, CITIZEN, REPORT) == 0  # the SMSC delivers again
    await wait_texts(live.smsc, CITIZEN_WIRE, 1)  # the ack is out: the drop cannot leave it in doubt
    await relink(live)
    assert await deliver(live.smsc, CITIZEN, REPORT) == 0  # and once more: our resp was lost with the link
    assert len(await sms_cases(live.services)) == 1
    assert len(await wait_texts(live.smsc, CITIZEN_WIRE, 1)) == 1


async def test_status_query_and_rating_are_answered_by_sms(live: Stack) -> None:
    services = live.services
    await deliver(live.smsc, CITIZEN, REPORT)
    (case,) = await sms_cases(services)
    await deliver(live.smsc, CITIZEN, f"CX {case.number}")
    await deliver(live.smsc, OTHER, f"查询{case.number}")
    texts = await wait_texts(live.smsc, CITIZEN_WIRE, 2)
    assert texts[1].startswith(f"受理编号{case.number}：当前状态已受理，更新于")
    (coarse,) = await wait_texts(live.smsc, OTHER_WIRE, 1)
    assert coarse == f"受理编号{case.number}：已受理，待审核。详细进度仅告知反映人。"

    await services.cases.update_transcription(case.number, {"category": "C0101", "grid": GRID_BUJI}, actor="staff:x")
    await services.cases.submit(case.number, actor="staff:x")
    for i, status in enumerate([CaseStatus.REGISTERED, CaseStatus.DISPATCHED, CaseStatus.FEEDBACK,
                                CaseStatus.CLOSED]):
        await services.cases.apply_platform_event(case.number, PlatformEvent(event_id=f"e{i}", status=status,
                                                                             platform_number="AJ-2026-0042"))
    await deliver(live.smsc, CITIZEN, f"PJ {case.number} 5")
    texts = await wait_texts(live.smsc, CITIZEN_WIRE, 2 + 3 + 1)
    # Notices (registered, dispatched, closed) and the reply of one case keep their order.
    assert [t.split("：", 1)[1][:7] for t in texts[2:5]] == ["您反映的问题已", "您反映的问题已", "问题已处理完毕"]
    assert "已立案" in texts[2] and "已派遣" in texts[3]
    assert texts[-1] == f"受理编号{case.number}：已收到您的评价5分，感谢您的支持。"
    assert (await services.cases.get(case.number)).rating == 5
    await deliver(live.smsc, CITIZEN, f"CX{case.number}")
    texts = await wait_texts(live.smsc, CITIZEN_WIRE, 7)
    assert texts[-1].startswith(f"受理编号{case.number}：当前状态已结案，案卷号AJ-2026-0042")


async def test_opt_out_stops_notices_but_not_the_ack_of_a_new_report(live: Stack) -> None:
    services = live.services
    await deliver(live.smsc, CITIZEN, REPORT)
    (old,) = await sms_cases(services)
    await wait_texts(live.smsc, CITIZEN_WIRE, 1)
    await deliver(live.smsc, CITIZEN, "退订")
    assert (await wait_texts(live.smsc, CITIZEN_WIRE, 2))[1].startswith("退订成功")
    await services.cases.update_transcription(old.number, {"category": "C0101"}, actor="staff:x")
    await services.cases.submit(old.number, actor="staff:x")
    await services.cases.apply_platform_event(old.number, PlatformEvent(event_id="reg", status=CaseStatus.REGISTERED))
    await deliver(live.smsc, CITIZEN, "东门步行街井盖缺失，很危险。")
    texts = await wait_texts(live.smsc, CITIZEN_WIRE, 3)
    new = (await sms_cases(services))[1]
    assert texts[2].startswith(f"受理编号{new.number}：")

    async def suppressed() -> bool:
        return any(r.template == "registered" and r.status == "suppressed" for r in await outbox_rows(services))

    await until(suppressed)
    assert not any("已立案" in t for t in await texts_to(live.smsc, CITIZEN_WIRE))


async def test_supervisor_notice_answer_and_escalation(live: Stack) -> None:
    services = live.services
    token = await services.tokens.create(Role.PLATFORM, "platform")
    staff = await services.tokens.create(Role.STAFF, "staff")
    from callcenter.web.app import make_app

    client = TestClient(TestServer(make_app(services), host="127.0.0.1"))
    await client.start_server()
    try:
        await deliver(live.smsc, CITIZEN, REPORT)
        (case,) = await sms_cases(services)
        auth = {"Authorization": f"Bearer {token}"}
        response = await client.post("/api/v1/tasks", json={"case": case.number, "kind": "verify", "grid": GRID_BUJI},
                                     headers=auth)
        assert response.status == 201, await response.text()
        task = await response.json()
        assert task["supervisor_name"] == "张伟" and task["status"] == "sent"
        (notice,) = await wait_texts(live.smsc, SUPERVISOR_WIRE, 1)
        assert notice.startswith(f"受理编号{case.number}【核实任务{task['code']}】") and len(notice) <= 70

        assert await deliver(live.smsc, "13900000001", f"1 {task['code']}") == 0
        view = await services.cases.get(case.number)
        (answered,) = [e for e in view.log if e.action == "task_answered"]
        assert answered.changes["answer"] == "confirmed" and answered.changes["task"] == task["code"]
        assert (await wait_texts(live.smsc, SUPERVISOR_WIRE, 2))[1].endswith("已记录为“属实”，谢谢。")

        # A second task nobody answers goes to the shift leader once the configured time has passed.
        response = await client.post("/api/v1/tasks", json={"case": case.number, "kind": "check"}, headers=auth)
        assert response.status == 409 and (await response.json())["field"] == "grid"  # the case has no grid yet
        await services.cases.update_transcription(case.number, {"grid": GRID_BUJI}, actor="staff:x")
        response = await client.post("/api/v1/tasks", json={"case": case.number, "kind": "check"}, headers=auth)
        second = await response.json()
        clock = Clock(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=services.settings.sms.task_escalation_minutes + 1))
        services.sms.tasks.now = clock  # type: ignore[union-attr]
        services.sms.outbox.now = clock  # type: ignore[union-attr]  # the same "later" for the sender
        assert await services.sms.tasks.escalate_due() == 1  # type: ignore[union-attr]
        (escalation,) = await wait_texts(live.smsc, LEADER_WIRE, 1)
        assert escalation.startswith(f"受理编号{case.number}：核查任务{second['code']}已30分钟无人回复")
        listed = await client.get(f"/api/v1/tasks?case={case.number}", headers={"Authorization": f"Bearer {staff}"})
        items = (await listed.json())["items"]
        assert [(t["code"], t["status"], t["answer"]) for t in items] == [
            (task["code"], "answered", "confirmed"), (second["code"], "escalated", None)]

        metrics = await (await client.get("/api/v1/metrics", headers={"Authorization": f"Bearer {staff}"})).json()
        by_name = {m["name"]: m for m in metrics["metrics"]}
        assert by_name["sms_bind_state"]["samples"] == [{"labels": {"link": "trx"}, "value": 5.0}]
        assert by_name["sms_drafts_created_total"]["samples"][0]["value"] == 1
        assert by_name["sms_mt_parts_submitted_total"]["samples"][0]["value"] >= 3
        assert "sms_outbox_depth" in by_name and "sms_receipt_latency_seconds" in by_name
    finally:
        await client.close()


# ---------------------------------------------------------------- outbox sender


async def test_a_throttled_submit_is_retried_later_not_at_once(manual: Stack) -> None:
    services, smsc, clock = manual.services, manual.smsc, manual.clock
    await smsc.script_submits({"status": ESME_RTHROTTLED})
    outbox_id = await queue(services, CITIZEN_E164, "受理编号261124000019：测试限速重发。", "throttle-1")
    await manual.sms.outbox.run_once()
    (row,) = await outbox_rows(services)
    assert row.status == "pending" and "ESME_RTHROTTLED" in (row.last_error or "")
    assert row.not_before > clock() + dt.timedelta(seconds=29)  # Jasmin's 30 s
    await manual.sms.outbox.run_once()
    assert len(await smsc.events("submit_sm")) == 1  # not yet
    clock.advance(seconds=31)
    await manual.sms.outbox.run_once()
    assert await texts_to(smsc, CITIZEN_WIRE) == ["受理编号261124000019：测试限速重发。"]
    (row,) = await outbox_rows(services)
    (part,) = await submit_rows(services, outbox_id)
    assert row.status == "sent" and row.attempts == 2 and part.attempts == 2 and part.smsc_message_id


async def test_a_drop_in_the_middle_of_a_long_message_resends_only_after_the_wait_and_once(manual: Stack) -> None:
    """Part 1 accepted, the SMSC closes the link on part 2 (no resp): part 2 is in doubt.

    It is not resent before sms.in_doubt_wait; then parts 2 and 3 go out with the same
    reference, and the handset ends up with each part exactly once.
    """
    services, smsc, clock = manual.services, manual.smsc, manual.clock
    body = "受理编号261124000019：" + "您反映的井盖问题已派遣至区城管局处理，请保持电话畅通。" * 5
    await smsc.script_submits({}, {"drop": True})
    outbox_id = await queue(services, CITIZEN_E164, body, "drop-1")
    await manual.sms.outbox.run_once()
    assert [p.status for p in await submit_rows(services, outbox_id)] == ["accepted", "in_doubt", "queued"]
    (row,) = await outbox_rows(services)
    assert row.status == "in_doubt"
    await manual.gateway.client.wait_bound(5)  # rebound by itself
    await manual.sms.outbox.run_once()
    clock.advance(seconds=services.settings.sms.in_doubt_wait - 1)
    await manual.sms.outbox.run_once()
    assert len(await smsc.events("submit_sm")) == 2  # waiting for proof either way, nothing resent
    clock.advance(seconds=2)
    await manual.sms.outbox.run_once()
    submits = await smsc.events("submit_sm")
    assert [_parts(s)[0][2] for s in submits] == [1, 2, 2, 3]  # type: ignore[index]
    assert len({_parts(s)[0][0] for s in submits}) == 1  # type: ignore[index]  # one reference throughout
    assert [_parts(s)[0][2] for s in await accepted(smsc)] == [1, 2, 3]  # type: ignore[index]
    assert await texts_to(smsc, CITIZEN_WIRE) == [body]
    (row,) = await outbox_rows(services)
    assert row.status == "sent"


async def test_a_black_hole_link_leaves_the_message_in_doubt_until_proof_or_wait(
        smsc: SmscSimulator, reactor: Any, tmp_path: Path) -> None:
    """The SMSC stops answering anything: enquire_link times out, the submit is in doubt."""
    fast = {"enquire_link_interval": 0.2, "enquire_link_timeout": 0.3, "response_timeout": 2.0}
    async with running(smsc, reactor, tmp_path, loops=False, smpp=fast) as stack:
        services, clock = stack.services, stack.clock
        await smsc.configure(blackhole=True)
        outbox_id = await queue(services, CITIZEN_E164, "受理编号261124000019：黑洞链路测试。", "hole-1")
        await stack.sms.outbox.run_once()
        (part,) = await submit_rows(services, outbox_id)
        assert part.status == "in_doubt"
        await smsc.configure(blackhole=False)
        # The client may have reconnected and sent its bind into the black hole before it was
        # lifted: that bind is answered by no one until the link gives it up and binds again.
        await stack.gateway.client.wait_bound(30)
        clock.advance(seconds=services.settings.sms.in_doubt_wait + 1)
        await stack.sms.outbox.run_once()
        assert await texts_to(smsc, CITIZEN_WIRE) == ["受理编号261124000019：黑洞链路测试。"]
        (row,) = await outbox_rows(services)
        assert row.status == "sent"


async def test_a_refused_bind_keeps_the_queue_until_the_smsc_accepts_us(
        smsc: SmscSimulator, reactor: Any, tmp_path: Path) -> None:
    await smsc.configure(password="changed")
    async with running(smsc, reactor, tmp_path, loops=True, bound=False) as stack:
        await until(lambda: _refused(smsc))
        assert not stack.gateway.ready
        await queue(stack.services, CITIZEN_E164, "受理编号261124000019：鉴权失败后补发。", "bind-1")
        await stack.sms.outbox.run_once()
        (row,) = await outbox_rows(stack.services)
        assert row.status == "pending" and await smsc.events("submit_sm") == []
        await smsc.configure(password="secret")
        assert await wait_ready(stack.gateway, 10)  # the client keeps retrying with back-off
        assert await wait_texts(smsc, CITIZEN_WIRE, 1) == ["受理编号261124000019：鉴权失败后补发。"]


async def _refused(smsc: SmscSimulator) -> bool:
    return any(b["status"] == 0x0E for b in await smsc.events("bind"))


async def test_in_doubt_resolved_by_a_receipt_on_the_new_bind_is_not_resent(manual: Stack) -> None:
    """The SMSC took the part but the link died before its resp; the receipt comes after rebind."""
    services, smsc, clock = manual.services, manual.smsc, manual.clock
    await smsc.script_submits({"withhold": True, "message_id": "7A0000F1"})
    outbox_id = await queue(services, CITIZEN_E164, "受理编号261124000019：收据确认测试。", "doubt-1")
    sender = asyncio.create_task(manual.sms.outbox.run_once())
    await smsc.wait_for("submit_sm", 1)
    await smsc.drop()
    await sender
    (part,) = await submit_rows(services, outbox_id)
    assert part.status == "in_doubt"
    await manual.gateway.client.wait_bound(5)
    await smsc.receipt("7a0000f1", source_addr=CITIZEN_WIRE, destination_addr=SERVICE, form="text")
    await smsc.wait_for("deliver_sm_resp", of="receipt")
    clock.advance(seconds=services.settings.sms.in_doubt_wait + 1)
    await manual.sms.outbox.run_once()
    assert len(await smsc.events("submit_sm")) == 1  # never sent twice
    (row,) = await outbox_rows(services)
    (part,) = await submit_rows(services, outbox_id)
    assert row.status == "sent" and row.delivery_state == "delivered" and part.smsc_message_id == "7A0000F1"


async def test_a_receipt_before_its_submit_resp_is_matched(manual: Stack) -> None:
    services, smsc = manual.services, manual.smsc
    await smsc.script_submits({"withhold": True, "message_id": "0005F3A0AB1", "receipt_before_resp": True,
                               "receipt": {"stat": "DELIVRD", "message_id": "5f3a0ab1", "form": "both"}})
    outbox_id = await queue(services, CITIZEN_E164, "受理编号261124000019：先到的状态报告。", "early-1")
    sender = asyncio.create_task(manual.sms.outbox.run_once())
    await smsc.wait_for("deliver_sm_resp", of="receipt")

    async def stored() -> list[SmsReceiptUnmatchedRow]:
        async with services.sessions() as session:
            return list(await session.scalars(select(SmsReceiptUnmatchedRow)))

    (early,) = await until(stored)
    assert early.message_id == "5F3A0AB1" and early.matched_submit_id is None
    assert await smsc.release_withheld() == 1
    await sender
    (part,) = await submit_rows(services, outbox_id)
    (row,) = await outbox_rows(services)
    assert part.smsc_message_id == "5F3A0AB1" and part.receipt_state == "delivered"
    assert row.status == "sent" and row.delivery_state == "delivered" and row.delivered_at is not None
    (early,) = await stored()
    assert early.matched_submit_id == part.id


async def test_a_long_reply_is_split_at_67_with_receipts_in_every_form(manual: Stack) -> None:
    services, smsc = manual.services, manual.smsc
    head = "受理编号261124000019：" + "井盖已更换完毕，请您留意。" * 3 + "谢" * 10
    assert len(head) == 66  # the emoji's surrogate pair would straddle the 67-unit cut
    body = head + "😀" + "请回复PJ评价，谢谢您的支持与监督！" * 4
    ids = ["0005F3A1001", "5F3A1002", "5F3A1003"]
    await smsc.script_submits(*({"message_id": i} for i in ids))
    outbox_id = await queue(services, CITIZEN_E164, body, "long-1")
    await manual.sms.outbox.run_once()
    parts = await accepted(smsc, CITIZEN_WIRE)
    assert len(parts) == 3
    refs = set()
    for seq, submit in enumerate(parts, start=1):
        concat, payload = _parts(submit)
        assert concat is not None and concat[1:] == (3, seq) and submit["registered_delivery"] == 1
        refs.add(concat[0])
        assert len(payload) <= 134
        payload.decode("utf-16-be")  # strict: no surrogate pair was cut
    assert len(refs) == 1 and _parts(parts[0])[1].decode("utf-16-be") == head
    assert await texts_to(smsc, CITIZEN_WIRE) == [body]
    # Receipts: TLV only with another case, text only in decimal (id base mismatch), both; one twice.
    await smsc.receipt("5f3a1001", form="tlv", source_addr=CITIZEN_WIRE)
    await smsc.receipt(str(0x5F3A1002), form="text", source_addr=CITIZEN_WIRE)
    await smsc.receipt("5F3A1003", form="both", source_addr=CITIZEN_WIRE)
    await smsc.receipt("5F3A1003", form="both", source_addr=CITIZEN_WIRE)
    await smsc.wait_for("deliver_sm_resp", count=4, of="receipt", status=0)
    states = [p.receipt_state for p in await submit_rows(services, outbox_id)]
    assert states == ["delivered"] * 3
    (row,) = await outbox_rows(services)
    assert row.delivery_state == "delivered"
    delivered = services.metrics.counter("sms_mt_delivered_total")
    receipts = services.metrics.counter("sms_receipts_total")
    assert delivered.total() == 1 and receipts.value(match="duplicate") == 1
    async with services.sessions() as session:
        assert list(await session.scalars(select(SmsReceiptUnmatchedRow))) == []


# ---------------------------------------------------------------- bad input


async def test_malformed_pdus_odd_tlvs_and_bad_text_lose_no_report(live: Stack) -> None:
    smsc, services = live.smsc, live.services
    # A deliver_sm whose body stops in the middle of a field: answered with an error, link stays.
    body = b"\x00\x01\x01138"  # service_type, ton, npi, then a source_addr without its NUL
    await smsc.send_raw(struct.pack(">LLLL", 16 + len(body), 0x00000005, 0, 0xABCD) + body)
    sessions_before = await smsc.sessions()
    assert await deliver(smsc, CITIZEN, "人行道上有共享单车乱停放，堵住了盲道。") == 0
    assert await smsc.sessions() == sessions_before
    # A TLV that smpplib cannot parse (ussd_service_op) and a vendor tag.
    assert await deliver(smsc, "13700000001", "广场上的健身器材坏了。", tlvs={"ussd_service_op": 1},
                         raw_tlvs=[{"tag": 0x1401, "hex": "cafe"}]) == 0
    # Empty, invalid UCS-2 and 10 KB of text (message_payload).
    assert await deliver(smsc, "13700000002", hex_body="") == 0
    assert await deliver(smsc, "13700000003", hex_body="8def706fd8") == 0
    huge = ("很长的反映内容。" * 1300).encode("utf-16-be")
    assert await deliver(smsc, "13700000004", hex_body="", tlvs={"message_payload": {"hex": huge.hex()}}) == 0
    # An SMSC-initiated unbind: answered, and the client binds again.
    await smsc.unbind()
    await smsc.wait_for("unbind_resp_received")
    await until(lambda: _rebound(smsc, sessions_before))
    await live.gateway.client.wait_bound(5)
    sessions_before = await smsc.sessions()
    # Garbage with an impossible command_length kills the link; the client binds again.
    await smsc.send_raw(bytes.fromhex("00000003ffffffff"))
    await until(lambda: _rebound(smsc, sessions_before))
    await live.gateway.client.wait_bound(5)
    assert await deliver(smsc, "13700000005", "桥下积水严重。") == 0
    async with services.sessions() as session:
        rows = list(await session.scalars(select(SmsInboundRow).order_by(SmsInboundRow.id)))
    assert [r.outcome for r in rows] == ["draft", "draft", "empty", "draft", "draft", "draft"]
    assert rows[3].lossy and len(rows[4].text) == 10_400
    cases = {c.number: c for c in await sms_cases(services)}
    assert "text_truncated" in cases[rows[4].case_number or ""].flags


async def _rebound(smsc: SmscSimulator, before: list[dict[str, Any]]) -> bool:
    now = await smsc.sessions()
    return bool(now) and now != before and all(s["mode"] for s in now)


# ---------------------------------------------------------------- redelivery or repetition, mistyped, binary


async def test_a_repeated_rating_before_and_after_closing_is_answered_both_times(live: Stack) -> None:
    """Issue 10, finding 2: the citizen's second `PJ` is not the SMSC redelivering the first."""
    services = live.services
    await deliver(live.smsc, CITIZEN, REPORT)
    (case,) = await sms_cases(services)
    rate = f"PJ {case.number} 5"
    assert await deliver(live.smsc, CITIZEN, rate) == 0
    texts = await wait_texts(live.smsc, CITIZEN_WIRE, 2)
    assert texts[1] == f"受理编号{case.number}：尚未结案，结案后可回复PJ评价。"
    await services.cases.update_transcription(case.number, {"category": "C0101", "grid": GRID_BUJI}, actor="staff:x")
    await services.cases.submit(case.number, actor="staff:x")
    for i, status in enumerate([CaseStatus.REGISTERED, CaseStatus.DISPATCHED, CaseStatus.FEEDBACK,
                                CaseStatus.CLOSED]):
        await services.cases.apply_platform_event(case.number, PlatformEvent(event_id=f"e{i}", status=status))
    assert await deliver(live.smsc, CITIZEN, rate) == 0  # the same text, same connection, a new PDU
    texts = await wait_texts(live.smsc, CITIZEN_WIRE, 6)
    assert texts[-1] == f"受理编号{case.number}：已收到您的评价5分，感谢您的支持。"
    assert (await services.cases.get(case.number)).rating == 5
    async with services.sessions() as session:
        rows = list(await session.scalars(select(SmsInboundRow).where(SmsInboundRow.command == "rate")
                                          .order_by(SmsInboundRow.id)))
    assert [(r.copies, r.detail) for r in rows] == [(1, "not closed"), (1, "rated")]


async def test_the_smsc_resending_or_redelivering_a_query_gets_no_second_answer(live: Stack) -> None:
    services = live.services
    await deliver(live.smsc, CITIZEN, REPORT)
    (case,) = await sms_cases(services)
    query = f"CX{case.number}"
    assert await deliver(live.smsc, CITIZEN, query) == 0
    (first,) = [e["sequence"] for e in (await live.smsc.events("deliver_sm"))[-1:]]
    assert await resend(live.smsc, CITIZEN, query, first) == 0  # same sequence: a retransmission
    await wait_texts(live.smsc, CITIZEN_WIRE, 2)  # the replies are out before the link drops
    await relink(live)
    assert await deliver(live.smsc, CITIZEN, query) == 0  # a new bind: our ROK may have been lost
    await asyncio.sleep(0.3)
    assert len(await wait_texts(live.smsc, CITIZEN_WIRE, 2)) == 2  # the intake number and one status
    assert await deliver(live.smsc, CITIZEN, query) == 0  # now the citizen asks again on this link
    assert len(await wait_texts(live.smsc, CITIZEN_WIRE, 3)) == 3


async def test_vendor_message_id_tlvs_tell_a_redelivery_from_a_new_text(live: Stack) -> None:
    """The SMSC's own id in a TLV repeats on a redelivery and differs for a new submission."""
    def vendor_id(value: str) -> list[dict[str, Any]]:
        return [{"tag": 0x1401, "hex": value.encode().hex()}]

    assert await deliver(live.smsc, CITIZEN, REPORT, raw_tlvs=vendor_id("MO-0001")) == 0
    await wait_texts(live.smsc, CITIZEN_WIRE, 1)
    await relink(live)
    assert await deliver(live.smsc, CITIZEN, REPORT, raw_tlvs=vendor_id("MO-0001")) == 0  # redelivered
    assert len(await sms_cases(live.services)) == 1
    await relink(live)
    assert await deliver(live.smsc, CITIZEN, REPORT, raw_tlvs=vendor_id("MO-0002")) == 0  # sent again
    assert len(await sms_cases(live.services)) == 2
    assert len(await wait_texts(live.smsc, CITIZEN_WIRE, 2)) == 2


@pytest.mark.parametrize("mistyped", ["CX 261203 000019", "PJ {number} 6", "查询", "T12 7"])
async def test_a_mistyped_command_gets_the_help_reply_not_a_case(live: Stack, mistyped: str) -> None:
    await deliver(live.smsc, OTHER, REPORT)
    (case,) = await sms_cases(live.services)
    assert await deliver(live.smsc, CITIZEN, mistyped.format(number=case.number)) == 0
    (reply,) = await wait_texts(live.smsc, CITIZEN_WIRE, 1)
    assert reply.startswith("城管热线短信：直接发送问题描述即可反映") and len(reply) <= 70
    assert len(await sms_cases(live.services)) == 1
    async with live.services.sessions() as session:
        row = await session.scalar(select(SmsInboundRow).where(SmsInboundRow.sender == CITIZEN_E164))
    assert row is not None and (row.outcome, row.command) == ("command", "help")
    assert row.detail is not None and row.detail.startswith("malformed")


async def test_a_binary_text_is_kept_for_staff_without_an_intake_number(live: Stack) -> None:
    payload = bytes([0x06, 0x05, 0x04, 0x0B, 0x84, 0x23, 0xF0, 0x00, 0xFF, 0x80, 0x41])
    for coding in (0x04, 0xF5):
        assert await deliver(live.smsc, CITIZEN, hex_body=payload.hex(), coding=coding) == 0
    cases = await sms_cases(live.services)
    assert len(cases) == 2 and all("binary_message" in c.flags for c in cases)
    assert all(c.description.startswith("【二进制短信") and "\ufffd" not in c.description for c in cases)
    async with live.services.sessions() as session:
        rows = list(await session.scalars(select(SmsInboundRow).order_by(SmsInboundRow.id)))
    assert [(r.outcome, r.raw_hex) for r in rows] == [("binary", payload.hex())] * 2
    await asyncio.sleep(0.3)
    assert await texts_to(live.smsc, CITIZEN_WIRE) == []  # no intake number for a binary message
    assert [o for o in await outbox_rows(live.services)] == []
