"""Supervisor notices (督办通知) and IVR screen pops over real HTTP, on SQLite and PostgreSQL.

Tasks are created through the tasks service and answered through the SMS intake service,
as the platform and a supervisor's phone would; the console only reads supervisor_tasks.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from callcenter.app import Services
from callcenter.cases.model import Channel
from callcenter.cases.numbering import CaseNumber
from callcenter.events import EventHub, DraftWatcher
from callcenter.service.cases import DraftInput
from callcenter.service.tasks import TaskKind, TaskService, TaskView
from sms.gateway import InboundMessage
from tests.console.conftest import SUPERVISOR_BANTIAN, SUPERVISOR_BUJI, Console, read_sse_event

GRID_BUJI = "44030700100101"     # 布吉圩社区第01网格 -> 张伟
GRID_BANTIAN = "44030700200101"  # 岗头社区第01网格 -> 李娜


async def draft(services: Services, grid: str, description: str = "布吉街道井盖丢失",
                reporter_phone: str | None = "13812345678") -> str:
    view = await services.cases.create_draft(DraftInput(
        channel=Channel.SMS, description=description, reporter_phone=reporter_phone, grid=grid),
        actor="sms:gateway")
    return view.number


def tasks(services: Services) -> TaskService:
    assert services.sms is not None
    return services.sms.tasks


async def send_task(services: Services, number: str, kind: TaskKind = TaskKind.VERIFY) -> TaskView:
    return await tasks(services).create(case_number=number, kind=kind, actor="platform:dcp")


async def supervisor_says(services: Services, phone: str, text: str) -> None:
    """A supervisor's SMS, through the intake pipeline as an HTTP gateway would deliver it."""
    assert services.sms is not None
    result = await services.sms.intake.receive(InboundMessage(sender=phone, destination="12319", text=text,
                                                              source="http"))
    assert result.command == "task_reply", result


async def escalate_overdue(services: Services) -> int:
    """The escalation pass as it runs once the limit has passed for every open task."""
    service = tasks(services)
    limit = dt.timedelta(minutes=services.settings.sms.task_escalation_minutes, seconds=1)
    original = service.now
    service.now = lambda: dt.datetime.now(dt.UTC) + limit
    try:
        return await service.escalate_due()
    finally:
        service.now = original


async def three_tasks(services: Services) -> tuple[str, str, TaskView, TaskView, TaskView]:
    """An answered task (布吉), an escalated one (坂田), a waiting one (布吉), in that order."""
    buji = await draft(services, GRID_BUJI)
    bantian = await draft(services, GRID_BANTIAN, description="坂田街道岗头社区路灯不亮")
    answered = await send_task(services, buji)
    await supervisor_says(services, SUPERVISOR_BUJI, f"属实 {answered.code}")
    escalated = await send_task(services, bantian, TaskKind.CHECK)
    assert await escalate_overdue(services) == 1
    waiting = await send_task(services, buji, TaskKind.CHECK)
    return buji, bantian, answered, escalated, waiting


def codes(data: dict[str, Any]) -> list[str]:
    return [item["code"] for item in data["items"]]


async def test_notices_by_state_newest_first_with_counts_and_a_case_filter(
        console_factory: Any, services: Services) -> None:
    console: Console = await (await console_factory()).signed_in("wangfang")
    empty = await console.get_json("/console/api/notices")
    assert empty["items"] == [] and empty["counts"] == {"sent": 0, "waiting": 0, "escalated": 0, "answered": 0}

    buji, bantian, answered, escalated, waiting = await three_tasks(services)

    every = await console.get_json("/console/api/notices?state=all")
    assert codes(every) == [waiting.code, escalated.code, answered.code]  # newest first
    assert every["counts"] == {"sent": 3, "waiting": 1, "escalated": 1, "answered": 1}
    assert every["limit_seconds"] == int(services.settings.sms.task_escalation_minutes * 60)
    by_code = {item["code"]: item for item in every["items"]}

    done = by_code[answered.code]
    assert (done["state"], done["state_label"], done["case_number"]) == ("answered", "已回复", buji)
    assert (done["kind"], done["kind_label"]) == ("verify", "核实")
    assert (done["answer"], done["answer_label"]) == ("confirmed", "属实")
    assert done["answer_text"] == f"属实 {answered.code}" and done["answered_at"] and not done["late"]
    assert done["grid"]["name"] == "布吉圩社区第01网格" and done["supervisor_name"] == "张伟"
    assert done["escalated_at"] is None and done["sent_at"]

    late = by_code[escalated.code]
    assert (late["state"], late["state_label"], late["kind_label"]) == ("escalated", "已升级", "核查")
    assert late["escalated_at"] and late["answered_at"] is None and late["answer_label"] is None
    assert late["grid"]["name"] == "岗头社区第01网格" and late["supervisor_name"] == "李娜"

    open_task = by_code[waiting.code]
    assert (open_task["state"], open_task["state_label"]) == ("waiting", "待回复")
    assert open_task["answered_at"] is None and open_task["escalated_at"] is None
    assert 0 <= open_task["waiting_seconds"] < open_task["limit_seconds"] and not open_task["overdue"]

    for state, expected in (("waiting", waiting), ("escalated", escalated), ("answered", answered)):
        one = await console.get_json(f"/console/api/notices?state={state}")
        assert codes(one) == [expected.code] and one["counts"]["sent"] == 3

    # One case's tasks, with that case's counts.
    mine = await console.get_json(f"/console/api/notices?case={buji}")
    assert codes(mine) == [waiting.code, answered.code]
    assert mine["counts"] == {"sent": 2, "waiting": 1, "escalated": 0, "answered": 1} and mine["case"] == buji
    theirs = await console.get_json(f"/console/api/notices?state=answered&case={bantian}")
    assert theirs["items"] == [] and theirs["counts"]["escalated"] == 1

    # A late answer still lands, and says it was late.
    await supervisor_says(services, SUPERVISOR_BANTIAN, "不属实")
    after = {item["code"]: item for item in (await console.get_json("/console/api/notices"))["items"]}
    assert after[escalated.code]["state"] == "answered" and after[escalated.code]["late"]
    assert after[escalated.code]["answer_label"] == "不属实"

    # limit caps each state; counts stay exact.
    capped = await console.get_json("/console/api/notices?state=answered&limit=1")
    assert len(capped["items"]) == 1 and capped["counts"]["answered"] == 2

    bad = await console.get_json("/console/api/notices?state=pending", status=400)
    assert bad["field"] == "state" and "状态" in bad["message"]
    assert (await console.get_json("/console/api/notices?case=123", status=400))["field"] == "case"
    assert (await console.get_json("/console/api/notices?limit=0", status=400))["field"] == "limit"
    unknown = buji[:-1] + next(d for d in "0123456789" if d != buji[-1])  # a wrong check digit
    assert (await console.get_json(f"/console/api/notices?case={unknown}", status=400))["field"] == "case"
    nowhere = CaseNumber.build(dt.date(2020, 1, 1), 1).value  # well formed, no such case
    assert (await console.get_json(f"/console/api/notices?case={nowhere}"))["items"] == []
    stranger: Console = await console_factory()
    assert (await stranger.http.get("/console/api/notices")).status == 401


async def test_the_supervisors_phone_is_masked_unless_the_role_may_see_it(
        console_factory: Any, services: Services) -> None:
    number = await draft(services, GRID_BUJI)
    await send_task(services, number)
    staff: Console = await (await console_factory()).signed_in("wangfang")
    leader: Console = await (await console_factory()).signed_in("zhaomin")
    (seen_by_staff,) = (await staff.get_json("/console/api/notices"))["items"]
    (seen_by_leader,) = (await leader.get_json("/console/api/notices"))["items"]
    assert seen_by_staff["supervisor_phone"] == "+86139****0001"
    assert seen_by_leader["supervisor_phone"] == SUPERVISOR_BUJI
    raw = json.dumps(await staff.get_json(f"/console/api/notices?case={number}"), ensure_ascii=False)
    assert "13900000001" not in raw


async def test_the_dashboard_counts_todays_supervision(console_factory: Any, services: Services) -> None:
    console: Console = await (await console_factory()).signed_in("zhaomin")
    before = (await console.get_json("/console/api/dashboard"))["supervision"]
    assert before["sent_today"] == 0 and before["waiting"] == 0 and before["oldest_waiting"] is None

    _buji, _bantian, _answered, _escalated, waiting = await three_tasks(services)
    figures = (await console.get_json("/console/api/dashboard"))["supervision"]
    assert figures["sent_today"] == 3
    assert (figures["answered_today"], figures["confirmed_today"], figures["not_confirmed_today"]) == (1, 1, 0)
    assert figures["waiting"] == 1 and figures["oldest_waiting"]["code"] == waiting.code
    assert figures["escalated_today"] == 1 and figures["escalated_unanswered"] == 1
    assert figures["limit_seconds"] == int(services.settings.sms.task_escalation_minutes * 60)

    await supervisor_says(services, SUPERVISOR_BANTIAN, "2")
    later = (await console.get_json("/console/api/dashboard"))["supervision"]
    assert (later["answered_today"], later["not_confirmed_today"], later["escalated_unanswered"]) == (2, 1, 0)


async def test_the_watcher_announces_sent_answered_and_escalated_tasks(services: Services) -> None:
    hub = EventHub()
    watcher = DraftWatcher(hub, services.sessions)
    number = await draft(services, GRID_BUJI)
    with hub.subscribe("wangfang") as sub:
        assert await watcher.check_tasks() is None  # the first look only takes the baseline
        task = await send_task(services, number)
        sent = await watcher.check_tasks()
        assert sent is not None and sent["kind"] == "sent"
        assert sent["counts"] == {"sent": 1, "answered": 0, "escalated": 0, "waiting": 1}
        assert await watcher.check_tasks() is None  # nothing changed since
        await escalate_overdue(services)
        escalated = await watcher.check_tasks()
        assert escalated is not None and escalated["kinds"] == ["escalated"]
        assert escalated["counts"]["escalated"] == 1 and escalated["counts"]["waiting"] == 0
        await supervisor_says(services, SUPERVISOR_BUJI, f"1 {task.code}")
        answered = await watcher.check_tasks()
        assert answered is not None and answered["kinds"] == ["answered"]
        assert answered["counts"] == {"sent": 1, "answered": 1, "escalated": 0, "waiting": 0}
        published = []
        while not sub.queue.empty():
            event = sub.queue.get_nowait()
            assert event is not None
            published.append((event.type, event.data["kind"]))
        assert published == [("notice", "sent"), ("notice", "escalated"), ("notice", "answered")]




async def test_the_event_stream_says_notice_when_a_task_is_sent_and_answered(
        console_factory: Any, services: Services) -> None:
    console: Console = await (await console_factory()).signed_in("wangfang")
    number = await draft(services, GRID_BUJI)
    async with console.http.get("/console/events") as stream:
        await read_sse_event(stream, "hello")
        task = await send_task(services, number)
        assert (await read_sse_event(stream, "notice"))["kind"] == "sent"
        await supervisor_says(services, SUPERVISOR_BUJI, f"属实{task.code}")
        answered = await read_sse_event(stream, "notice")
        assert answered["kind"] == "answered" and answered["counts"]["answered"] == 1


async def test_an_ivr_transfer_pops_the_callers_draft(console_factory: Any, services: Services) -> None:
    """The voice channel publishes {"agent": None, "phone", "call_id", "case_number"}."""
    from callcenter.console.state import console_key

    filed = await draft(services, GRID_BUJI, description="（语音留言）", reporter_phone="13712345678")
    console: Console = await (await console_factory()).signed_in("wangfang")
    assert console.http.app is not None
    hub = console.http.app[console_key].hub
    async with console.http.get("/console/events") as stream:
        await read_sse_event(stream, "hello")
        hub.publish("screen_pop", {"agent": None, "phone": "+8613712345678", "call_id": "c-9",
                                   "case_number": filed})
        pop = await read_sse_event(stream, "screen_pop")
        assert pop["case_number"] == filed and pop["phone_display"] == "+86137****5678" and pop["pop"]
        # A withheld number: no handle, but the draft the caller filed still pops.
        hub.publish("screen_pop", {"agent": None, "phone": "", "call_id": "c-10", "case_number": filed})
        withheld = await read_sse_event(stream, "screen_pop")
        assert withheld["pop"] is None and withheld["phone_display"] is None and withheld["case_number"] == filed
        # Neither a number nor a valid intake number: nothing to show.
        hub.publish("screen_pop", {"agent": None, "phone": "", "call_id": "c-11", "case_number": "12345"})
        hub.publish("screen_pop", {"agent": None, "phone": "13612345678", "call_id": "c-12", "case_number": None})
        last = await read_sse_event(stream, "screen_pop")
        assert last["call_id"] == "c-12" and last["case_number"] is None

    answer = await console.get_json(f"/console/screen-pop?pop={pop['pop']}&case={filed}")
    assert answer["case"]["number"] == filed and answer["case"]["status"] == "draft"
    assert answer["case"]["reporter_phone"] == "+86137****5678"
    assert [c["number"] for c in answer["open_cases"]] == [filed]
    alone = await console.get_json(f"/console/screen-pop?case={filed}")
    assert alone["case"]["number"] == filed and alone["pop"] is None and alone["open_cases"] == []
    plain = await console.get_json("/console/screen-pop?phone=13712345678")
    assert plain["case"] is None
    assert (await console.get_json("/console/screen-pop?case=12345", status=400))["field"] == "case"
