"""Staff ask for a reporter's rating call-back (回访) from the console (SQLite and PostgreSQL).
Placing the call is the voice channel's (tests/voice_calls/test_voice_callbacks.py)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from callcenter.app import Services
from callcenter.cases.model import Channel
from callcenter.cases.numbering import damm_check_digit
from callcenter.db.tables import CallbackRequestRow, CaseLogRow
from callcenter.service.cases import DraftInput
from callcenter.settings import Settings, load_settings
from tests.console.conftest import Console


@pytest.fixture
def settings(database_url: str) -> Settings:
    base = load_settings(environ={})
    return base.model_copy(update={
        "database": base.database.model_copy(update={"url": database_url}),
        "callback": base.callback.model_copy(update={"enabled": True})})


async def draft(services: Services, phone: str | None) -> str:
    view = await services.cases.create_draft(
        DraftInput(channel=Channel.STAFF, description="井盖缺失", reporter_phone=phone, category="C0101",
                   notify_reporter=False), actor="test")
    return view.number


async def test_staff_register_a_call_back_for_the_reporter(console_factory: Any, services: Services) -> None:
    console: Console = await (await console_factory()).signed_in("wangfang")
    number = await draft(services, "13812345678")
    answer = await console.send("POST", f"/console/api/cases/{number}/callback", {})
    assert (answer["case_number"], answer["status"]) == (number, "waiting")
    async with services.sessions() as session:
        (row,) = (await session.scalars(select(CallbackRequestRow))).all()
        logged = (await session.scalars(select(CaseLogRow).where(CaseLogRow.action == "callback_requested"))).all()
    assert (row.phone, row.status, row.attempts) == ("+8613812345678", "waiting", 0)
    assert row.requested_by.startswith("wangfang") or "王" in row.requested_by
    assert len(logged) == 1 and "5678" in logged[0].changes["phone"] and "1234" not in logged[0].changes["phone"]


async def test_refusals_are_in_chinese(console_factory: Any, services: Services) -> None:
    console: Console = await (await console_factory()).signed_in("wangfang")
    anonymous = await draft(services, None)
    refused = await console.send("POST", f"/console/api/cases/{anonymous}/callback", {}, status=422)
    assert (refused["error"], refused["message"]) == ("no_phone", "该案件没有可回访的电话号码")
    given = await console.send("POST", f"/console/api/cases/{anonymous}/callback", {"phone": "13912345678"})
    assert given["status"] == "waiting"
    unknown = "26010100042" + damm_check_digit("26010100042")  # a valid number nobody filed
    missing = await console.send("POST", f"/console/api/cases/{unknown}/callback", {}, status=404)
    assert missing["error"] == "not_found"
    bad = await console.send("POST", f"/console/api/cases/{anonymous}/callback", {"phone": "12\r\n3"}, status=422)
    assert bad["error"] == "invalid"
