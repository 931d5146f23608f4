"""The console over real HTTP on SQLite and PostgreSQL: sign-in, lock-out, CSRF, expiry,
hostile text, concurrent edits, recordings, screen pops, dashboard and the live stream."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from callcenter.app import Services
from callcenter.cases.lifecycle import CaseStatus, RejectionReason
from callcenter.cases.model import Channel
from callcenter.db.tables import CallRecordRow, CaseLogRow, ConsoleSessionRow, OutboxRow, StaffAccountRow
from callcenter.db.tables_sms import SmsInboundRow
from callcenter.service.cases import DraftInput, PlatformEvent
from tests.console.conftest import PASSWORD, Console, read_sse_event

HOSTILE = '<script>alert("x")</script><img src=x onerror="alert(1)">'


async def draft(services: Services, **fields: Any) -> str:
    values: dict[str, Any] = {"channel": Channel.SMS, "description": "布吉街道井盖丢失",
                              "reporter_phone": "13812345678", **fields}
    view = await services.cases.create_draft(DraftInput(**values), actor="sms:gateway")
    return view.number


# ---------------------------------------------------------------------------- sign-in


async def test_sign_in_sets_a_strict_http_only_cookie_and_the_page_has_a_strict_csp(console_factory: Any) -> None:
    console: Console = await console_factory()
    response = await console.http.get("/console/", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"].startswith("/console/login")

    response = await console.sign_in("wangfang")
    assert response.status == 303 and response.headers["Location"] == "/console/"
    cookie = response.headers.getall("Set-Cookie")
    session_cookie = next(c for c in cookie if c.startswith("cc_console="))
    assert "HttpOnly" in session_cookie and "SameSite=Strict" in session_cookie and "Path=/console" in session_cookie

    page = await console.http.get("/console/")
    assert page.status == 200
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    html = await page.text()
    assert '<script type="module" src="/console/static/app.js"></script>' in html
    assert html.count("<script") == 1, "no inline scripts"

    me = await console.get_json("/console/api/me")
    assert me["display_name"] == "王芳" and me["role"] == "staff" and len(me["csrf_token"]) >= 32
    static = await console.http.get("/console/static/app.js")
    assert static.status == 200 and static.headers["Content-Type"].startswith("text/javascript")
    assert (await console.http.get("/console/static/..%2Fauth.py")).status == 404
    assert (await console.http.get("/console/static/login.html")).status == 404


async def test_wrong_password_and_unknown_user_get_the_same_answer(console_factory: Any) -> None:
    console: Console = await console_factory()
    wrong = await console.sign_in("wangfang", "not-the-password")
    unknown = await console.sign_in("nobody", "not-the-password")
    assert wrong.status == unknown.status == 401
    assert "用户名或密码错误" in await wrong.text() and "用户名或密码错误" in await unknown.text()
    assert "cc_console" not in console.http.session.cookie_jar.filter_cookies(console.http.make_url("/console/"))


async def test_five_wrong_passwords_lock_the_account_for_fifteen_minutes(
        console_factory: Any, services: Services) -> None:
    console: Console = await console_factory()
    for attempt in range(4):
        assert (await console.sign_in("lijun", f"wrong-{attempt}")).status == 401
    locked = await console.sign_in("lijun", "wrong-5")
    assert locked.status == 423 and "账户已锁定" in await locked.text()
    # The right password does not help while locked.
    again = await console.sign_in("lijun", PASSWORD)
    assert again.status == 423
    async with services.sessions() as session:
        row = await session.scalar(select(StaffAccountRow).where(StaffAccountRow.username == "lijun"))
        assert row is not None and row.locked_until is not None
        minutes = (row.locked_until - dt.datetime.now(dt.UTC)).total_seconds() / 60
        assert 14 < minutes <= 15
    # Another account is not affected.
    assert (await (await console_factory()).sign_in("wangfang")).status == 303
    # When the lock runs out, the right password works and the count starts again.
    async with services.sessions() as session, session.begin():
        await session.execute(update(StaffAccountRow).where(StaffAccountRow.username == "lijun")
                              .values(locked_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    assert (await console.sign_in("lijun", PASSWORD)).status == 303
    async with services.sessions() as session:
        row = await session.scalar(select(StaffAccountRow).where(StaffAccountRow.username == "lijun"))
        assert row is not None and row.failed_attempts == 0 and row.locked_until is None


async def test_sign_out_ends_the_session(console_factory: Any) -> None:
    console: Console = await (await console_factory()).signed_in("wangfang")
    refused = await console.http.post("/console/logout", allow_redirects=False)
    assert refused.status == 403
    response = await console.http.post("/console/logout", headers=console.headers(), allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/console/login?m=signed_out"
    assert (await console.http.get("/console/api/me")).status == 401
    page = await console.http.get("/console/login?m=signed_out")
    assert "您已安全退出" in await page.text()


# ---------------------------------------------------------------------------- CSRF and expiry


async def test_forged_requests_without_the_csrf_token_are_refused(console_factory: Any, services: Services) -> None:
    number = await draft(services)
    console: Console = await (await console_factory()).signed_in("wangfang")
    case = await console.get_json(f"/console/api/cases/{number}")
    body = {"version": case["version"], "address": "伪造的地址"}
    for headers in ({}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": ""}):
        response = await console.http.patch(f"/console/api/cases/{number}", json=body, headers=headers)
        assert response.status == 403
        assert (await response.json())["error"] == "csrf"
    for path, payload in ((f"/console/api/cases/{number}/submit", {"version": 1}),
                          (f"/console/api/cases/{number}/reject", {"reason": "invalid"}),
                          ("/console/api/cases", {"description": "伪造"})):
        assert (await console.http.post(path, json=payload)).status == 403
    after = await services.cases.get(number)
    assert after.address is None and after.status == "draft" and len(after.log) == 1

    # The sign-in form needs its own token too (no login CSRF).
    fresh: Console = await console_factory()
    response = await fresh.http.post("/console/login", data={"username": "wangfang", "password": PASSWORD},
                                     allow_redirects=False)
    assert response.status == 403 and "页面已过期" in await response.text()


async def test_an_idle_session_expires_and_the_page_says_so(console_factory: Any, services: Services) -> None:
    console: Console = await (await console_factory()).signed_in("wangfang")
    assert (await console.http.get("/console/api/queue")).status == 200
    async with services.sessions() as session, session.begin():
        await session.execute(update(ConsoleSessionRow).values(
            expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    response = await console.http.get("/console/api/queue")
    assert response.status == 401 and (await response.json())["error"] == "session_expired"
    page = await console.http.get("/console/", allow_redirects=False)
    assert page.status == 303 and "m=expired" in page.headers["Location"]
    login = await console.http.get(page.headers["Location"])
    assert "登录已超时，请重新登录" in await login.text()
    # Writes are refused too, even with the old CSRF token.
    assert (await console.http.post("/console/api/cases", json={"description": "x"},
                                    headers=console.headers())).status == 401


async def test_background_polling_does_not_keep_a_session_alive(console_factory: Any, services: Services) -> None:
    console: Console = await (await console_factory()).signed_in("wangfang")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    async with services.sessions() as session, session.begin():
        await session.execute(update(ConsoleSessionRow).values(last_seen=past))
    async with services.sessions() as session:
        before = (await session.scalars(select(ConsoleSessionRow))).one().expires_at
    assert (await console.http.get("/console/api/queue", headers={"X-Console-Background": "1"})).status == 200
    async with services.sessions() as session:
        assert (await session.scalars(select(ConsoleSessionRow))).one().expires_at == before
    assert (await console.http.get("/console/api/queue")).status == 200
    async with services.sessions() as session:
        assert (await session.scalars(select(ConsoleSessionRow))).one().expires_at > before


# ---------------------------------------------------------------------------- hostile and missing input


async def test_hostile_text_comes_back_as_data_and_is_never_reflected_as_markup(
        console_factory: Any, services: Services) -> None:
    number = await draft(services, description=HOSTILE, address=HOSTILE[:200])
    console: Console = await (await console_factory()).signed_in("wangfang")
    response = await console.http.get(f"/console/api/cases/{number}")
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    case = await response.json()
    assert case["description"] == HOSTILE and case["address"] == HOSTILE[:200]
    assert case["sms_thread"][0]["body"] == HOSTILE
    queue = await console.get_json("/console/api/queue")
    assert queue["items"][0]["excerpt"] == HOSTILE[:80]

    page = await console.http.get('/console/login?m=<script>x</script>&next=/console/"><script>alert(1)</script>')
    text = await page.text()
    assert "<script>" not in text and "alert(1)" not in text
    assert 'name="next" value="/console/"' in text


@pytest.mark.parametrize(("body", "field"), [
    ({}, "version"),
    ({"version": "1"}, "version"),
    ({"version": 1, "category": "C9999"}, "category"),
    ({"version": 1, "grid": "123"}, "grid"),
    ({"version": 1, "address": "x" * 300}, "address"),
    ({"version": 1, "description": "a\x00b"}, "description"),
    ({"version": 1, "surprise": 1}, "surprise"),
])
async def test_bad_transcriptions_are_refused_in_chinese_and_change_nothing(
        console_factory: Any, services: Services, body: dict[str, Any], field: str) -> None:
    number = await draft(services)
    console: Console = await (await console_factory()).signed_in("wangfang")
    answer = await console.send("PATCH", f"/console/api/cases/{number}", body, status=422)
    assert answer["field"] == field
    assert any("\u4e00" <= ch <= "\u9fff" for ch in answer["message"]), answer
    assert (await services.cases.get(number)).version == 1


async def test_missing_values_are_named(console_factory: Any, services: Services) -> None:
    number = await draft(services)
    console: Console = await (await console_factory()).signed_in("wangfang")
    answer = await console.send("POST", "/console/api/cases", {"description": "   "}, status=422)
    assert answer["message"] == "请填写问题描述"
    # The case's state, not the request, is what is wrong: 409, as the API answers.
    answer = await console.send("POST", f"/console/api/cases/{number}/submit", {"version": 1}, status=409)
    assert answer["message"] == "提交前请先选择类别" and answer["field"] == "category"
    answer = await console.send("POST", f"/console/api/cases/{number}/merge", {"into": number}, status=422)
    assert answer["message"] == "不能合并到自身"
    answer = await console.send("POST", f"/console/api/cases/{number}/reject", {"reason": "boring"}, status=422)
    assert answer["field"] == "reason"
    assert (await console.get_json("/console/api/cases/12345", status=422))["message"] == "受理编号无效"


# ---------------------------------------------------------------------------- two staff, one draft


async def test_the_second_editor_is_told_and_nothing_is_lost(console_factory: Any, services: Services) -> None:
    number = await draft(services)
    wang: Console = await (await console_factory()).signed_in("wangfang")
    li: Console = await (await console_factory()).signed_in("lijun")
    seen_by_wang = await wang.get_json(f"/console/api/cases/{number}")
    seen_by_li = await li.get_json(f"/console/api/cases/{number}")

    await li.send("PATCH", f"/console/api/cases/{number}",
                  {"version": seen_by_li["version"], "address": "布吉街道吉华路12号"})
    conflict = await wang.send("PATCH", f"/console/api/cases/{number}",
                               {"version": seen_by_wang["version"], "seen_log": len(seen_by_wang["log"]),
                                "description": "王芳补充：井盖缺失，有行人险些跌落"}, status=409)
    assert conflict["message"] == "该案件已被他人修改"
    assert conflict["current"]["address"] == "布吉街道吉华路12号"
    assert [(e["actor_label"], e["action"]) for e in conflict["others"]] == [("李军", "updated")]
    assert conflict["others"][0]["changes"]["address"]["to"] == "布吉街道吉华路12号"
    # Wang's change was not applied behind her back ...
    assert (await services.cases.get(number)).description == "布吉街道井盖丢失"
    # ... and saving again against the version she was shown keeps both changes.
    saved = await wang.send("PATCH", f"/console/api/cases/{number}",
                            {"version": conflict["current"]["version"],
                             "description": "王芳补充：井盖缺失，有行人险些跌落"})
    assert saved["address"] == "布吉街道吉华路12号" and saved["description"].startswith("王芳补充")
    actors = [e.actor for e in (await services.cases.get(number)).log]
    assert actors == ["sms:gateway", "staff:李军", "staff:王芳"]


async def test_submit_with_a_stale_version_is_a_conflict_too(console_factory: Any, services: Services) -> None:
    number = await draft(services, category="C0101")
    console: Console = await (await console_factory()).signed_in("wangfang")
    await services.cases.update_transcription(number, {"address": "别人改的"}, actor="staff:李军")
    answer = await console.send("POST", f"/console/api/cases/{number}/submit", {"version": 1, "seen_log": 1},
                                status=409)
    assert answer["current"]["status"] == "draft" and answer["others"][0]["actor"] == "staff:李军"


# ---------------------------------------------------------------------------- staff actions reach the log


async def test_staff_actions_are_logged_with_the_staff_members_name(console_factory: Any, services: Services) -> None:
    first = await draft(services, reporter_phone="13800000001")
    second = await draft(services, reporter_phone="13800000002")
    third = await draft(services, reporter_phone="13800000003")
    console: Console = await (await console_factory()).signed_in("wangfang")
    case = await console.send("PATCH", f"/console/api/cases/{first}",
                              {"version": 1, "category": "C0101", "grid": "44030700100101", "address": "布吉圩"})
    case = await console.send("POST", f"/console/api/cases/{first}/submit", {"version": case["version"]})
    assert case["status"] == "submitted" and case["log"][-1]["actor_label"] == "王芳"
    merged = await console.send("POST", f"/console/api/cases/{second}/merge", {"into": first})
    assert merged["status"] == "merged" and merged["master_number"] == first
    rejected = await console.send("POST", f"/console/api/cases/{third}/reject",
                                  {"reason": "out_of_scope", "note": "属物业管理范围"})
    assert rejected["status"] == "rejected"
    async with services.sessions() as session:
        actors = (await session.scalars(select(CaseLogRow.actor).where(CaseLogRow.actor.like("staff:%")))).all()
        outbox = (await session.scalars(select(OutboxRow).where(OutboxRow.recipient == "+8613800000002"))).all()
    assert set(actors) == {"staff:王芳"} and len(actors) == 5  # update, submit, merged, merged_in, rejected
    assert any(first in row.body and row.template == "merged" for row in outbox)


# ---------------------------------------------------------------------------- recordings


async def test_recordings_play_only_from_inside_the_recordings_directory(
        console_factory: Any, services: Services, tmp_path: Path) -> None:
    root = Path(services.settings.console.recordings_dir)
    (root / "2026" / "11").mkdir(parents=True)
    audio = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(32)
    (root / "2026" / "11" / "vm-1.wav").write_bytes(audio)
    (root / "notes.txt").write_text("not audio")
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"secret")
    (root / "escape.wav").symlink_to(secret)
    console: Console = await (await console_factory()).signed_in("wangfang")

    good = await draft(services, channel=Channel.PHONE, description="", recording_ref="2026/11/vm-1.wav",
                       flags=["needs_transcription"])
    case = await console.get_json(f"/console/api/cases/{good}")
    assert case["recording_available"] and case["channel_label"] == "语音留言"
    response = await console.http.get(case["recording_url"])
    assert response.status == 200 and response.headers["Content-Type"] == "audio/wav"
    assert await response.read() == audio
    ranged = await console.http.get(case["recording_url"], headers={"Range": "bytes=0-3"})
    assert ranged.status == 206 and await ranged.read() == b"RIFF"

    for ref in ("../secret.wav", "../../../../etc/passwd", "/etc/passwd", str(secret), "escape.wav",
                "notes.txt", "2026/11/missing.wav", "..\\secret.wav"):
        number = await draft(services, channel=Channel.PHONE, description="录音", recording_ref=ref)
        case = await console.get_json(f"/console/api/cases/{number}")
        assert case["has_recording"] and not case["recording_available"] and case["recording_url"] is None
        response = await console.http.get(f"/console/api/cases/{number}/recording")
        assert response.status == 404, ref
        assert (await response.json())["message"] == "录音缺失"
    # Only for signed-in staff.
    stranger: Console = await console_factory()
    assert (await stranger.http.get(f"/console/api/cases/{good}/recording")).status == 401


# ---------------------------------------------------------------------------- privacy and screen pops


async def test_phone_numbers_are_masked_unless_the_role_may_see_them(
        console_factory: Any, services: Services) -> None:
    number = await draft(services, reporter_phone="13812345678")
    secret = await draft(services, reporter_phone="13912345678", confidential=True)
    staff: Console = await (await console_factory()).signed_in("wangfang")
    leader: Console = await (await console_factory()).signed_in("zhaomin")
    assert (await staff.get_json(f"/console/api/cases/{number}"))["reporter_phone"] == "+86138****5678"
    assert (await leader.get_json(f"/console/api/cases/{number}"))["reporter_phone"] == "+8613812345678"
    assert (await leader.get_json(f"/console/api/cases/{secret}"))["reporter_phone"] == "+86139****5678"
    queue = await staff.get_json("/console/api/queue")
    assert "13812345678" not in json.dumps(queue, ensure_ascii=False)
    case = await staff.get_json(f"/console/api/cases/{number}")
    assert "13812345678" not in json.dumps(case, ensure_ascii=False)


async def test_screen_pop_shows_the_callers_cases_and_files_a_draft_with_their_number(
        console_factory: Any, services: Services) -> None:
    open_case = await draft(services, reporter_phone="13712345678", description="路灯不亮")
    old_case = await draft(services, reporter_phone="13712345678", description="垃圾满溢")
    await services.cases.reject(old_case, RejectionReason.INVALID, actor="staff:李军")
    await draft(services, reporter_phone="13600000000", description="别人的案件")
    staff: Console = await (await console_factory()).signed_in("wangfang")

    pop = await staff.get_json("/console/screen-pop?phone=137-1234-5678")
    assert [c["number"] for c in pop["open_cases"]] == [open_case]
    assert [c["number"] for c in pop["history"]] == [old_case]
    assert pop["phone"] is None and pop["phone_display"] == "+86137****5678"
    page = await staff.http.get("/console/screen-pop?phone=13712345678")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")

    created = await staff.send("POST", "/console/api/cases", {"pop": pop["pop"], "description": "来电反映：井盖松动"},
                               status=201)
    view = await services.cases.get(created["number"])
    assert view.reporter_phone == "+8613712345678" and view.channel == "phone"
    assert view.log[0].actor == "staff:王芳"
    assert (await staff.get_json("/console/screen-pop?phone=abc", status=422))["message"] == "电话号码无效"
    assert (await staff.send("POST", "/console/api/cases", {"pop": "nope", "description": "x"},
                             status=400))["error"] == "pop_invalid"


# ---------------------------------------------------------------------------- dashboard


async def _walk(services: Services, number: str, statuses: list[CaseStatus]) -> None:
    for index, status in enumerate(statuses):
        await services.cases.apply_platform_event(
            number, PlatformEvent(event_id=f"{number}-{index}", status=status,
                                  platform_number=f"AJ{number}" if status == CaseStatus.REGISTERED else None))


async def test_dashboard_figures_come_from_the_cases_and_their_log(
        console_factory: Any, services: Services) -> None:
    console: Console = await (await console_factory()).signed_in("zhaomin")
    closed = await draft(services, category="C0101", grid="44030700100101", reporter_phone="13800000011")
    registered = await draft(services, category="C0101", grid="44030700100102", reporter_phone="13800000012")
    duplicate = await draft(services, category="E0101" if services.catalogue.get("E0101") else "C0102",
                            grid="44030700100101", reporter_phone="13800000013")
    merged = await draft(services, category="C0101", grid="44030700100101", reporter_phone="13800000014")
    waiting = await draft(services, description="等待受理", reporter_phone=None)
    for number in (closed, registered):
        await services.cases.submit(number, actor="staff:王芳")
    await _walk(services, closed, [CaseStatus.REGISTERED, CaseStatus.DISPATCHED, CaseStatus.FEEDBACK,
                                   CaseStatus.CLOSED])
    await _walk(services, registered, [CaseStatus.REGISTERED])
    await services.cases.reject(duplicate, RejectionReason.DUPLICATE, actor="staff:王芳")
    await services.cases.merge(merged, registered, actor="staff:王芳")

    today = dt.datetime.now(dt.UTC).astimezone(dt.timezone(dt.timedelta(hours=8))).date()
    later = today + dt.timedelta(days=4)  # registration + 72 h falls inside
    data = await console.get_json(f"/console/api/dashboard?from={today}&to={later}")
    evaluation = data["evaluation"]
    assert evaluation["intake"] == 5 and evaluation["registered"] == 2
    assert evaluation["due"] == 2 and evaluation["closed"] == 1 and evaluation["closed_on_time"] == 1
    assert evaluation["closure_rate"] == 0.5 and evaluation["on_time_closure_rate"] == 0.5
    assert evaluation["repeats"] == 2 and evaluation["repeat_rate"] == 0.4
    assert data["drafts"]["waiting"] == 1 and data["drafts"]["oldest"]["number"] == waiting
    assert data["today"]["calls"] == 0 and data["today"]["answered_within_15s_rate"] is None
    assert data["today"]["sms_in"] == 0
    assert data["today"]["sms_out"] >= 4 and data["today"]["sms_delivery_rate"] is None
    by_category = {row["code"]: row["count"] for row in data["by_category"]}
    assert by_category["C0101"] == 2  # the merged duplicate is not counted twice
    by_grid = {row["code"]: row["count"] for row in data["by_grid"]}
    assert by_grid["44030700100102"] == 1 and data["by_grid"][0]["name"]

    # A period without due cases has no rates rather than 0 %.
    earlier = today - dt.timedelta(days=30)
    empty = await console.get_json(f"/console/api/dashboard?from={earlier}&to={earlier}")
    assert empty["evaluation"]["due"] == 0 and empty["evaluation"]["closure_rate"] is None
    bad = await console.get_json(f"/console/api/dashboard?from={today}&to={earlier}", status=400)
    assert bad["message"] == "结束日期不能早于开始日期"
    assert (await console.get_json("/console/api/dashboard?from=yesterday", status=400))["field"] == "from"


async def test_dashboard_counts_todays_calls_and_sms_from_stored_rows(
        console_factory: Any, services: Services) -> None:
    console: Console = await (await console_factory()).signed_in("zhaomin")
    empty = (await console.get_json("/console/api/dashboard"))["today"]
    assert (empty["calls"], empty["abandoned"], empty["sms_in"]) == (0, 0, 0)
    assert empty["answered_within_15s_rate"] is None and empty["sms_delivery_rate"] is None  # 暂无数据
    assert empty["answered_within_15s_target"] == 0.95

    tz = dt.timezone(dt.timedelta(hours=8))  # cases.timezone of the test settings
    today = dt.datetime.now(dt.UTC).astimezone(tz).date()
    base = dt.datetime.combine(today, dt.time(1, 0), tzinfo=tz)  # 01:00 local today
    yesterday = base - dt.timedelta(days=1)
    second = dt.timedelta(seconds=1)
    calls = [  # (started, queue outcome from AMI, seconds waited in the queue)
        (base, "answered", 3), (base, "answered", 15), (base, "answered", 16), (base, "abandoned", 20),
        (base, None, None), (yesterday, "answered", 1)]
    sent = [  # (sent_at, status, delivery_state)
        *[(base, "sent", "delivered")] * 4, (base, "sent", "undeliverable"), (base, "sent", "expired"),
        (base, "failed", None), (base, "sent", "enroute"), (base, "sent", None),
        (yesterday, "sent", "undeliverable")]
    async with services.sessions() as session, session.begin():
        for index, (started, queue_outcome, wait) in enumerate(calls):
            session.add(CallRecordRow(
                call_id=f"1795477691.{index}", leg=1, route="hotline", caller=None, started_at=started,
                answered_at=started, ended_at=started + 60 * second, last_state="menu",
                outcome="settled" if queue_outcome is None else "transferred",
                queue_joined_at=None if queue_outcome is None else started + 30 * second,
                queue_outcome=queue_outcome, queue_wait_seconds=wait))
        # the voicemail leg of the abandoned call: one call, two legs
        session.add(CallRecordRow(
            call_id="1795477691.3", leg=2, route="voicemail", caller=None, started_at=base + 90 * second,
            answered_at=base + 90 * second, ended_at=base + 120 * second, last_state="goodbye", outcome="settled"))
        for index, received in enumerate([base, base, yesterday]):
            session.add(SmsInboundRow(
                message_key=f"k{index}", fingerprint=f"f{index}", source="http", sender="+8613800000001",
                destination="12345", text="路灯不亮", text_hash=f"h{index}", received_at=received,
                last_seen_at=received, outcome="draft"))
        for index, (at, status, state) in enumerate(sent):
            session.add(OutboxRow(
                idempotency_key=f"dash-{index}", recipient="+8613800000001", template="received", body="x",
                status=status, not_before=at, created_at=at, sent_at=at, delivery_state=state,
                delivered_at=at if state == "delivered" else None))
    figures = (await console.get_json("/console/api/dashboard"))["today"]
    # GB/T 33358 counts the calls that asked for a person: answered by one within 15 s of joining
    assert figures["calls"] == 5 and figures["queued"] == 4 and figures["answered"] == 3
    assert figures["answered_within_15s"] == 2 and figures["answered_within_15s_rate"] == 0.5
    assert figures["abandoned"] == 1 and figures["mean_wait_seconds"] == 11.3
    assert figures["sms_in"] == 2
    assert figures["sms_delivered"] == 4 and figures["sms_undelivered"] == 3
    assert figures["sms_delivery_rate"] == round(4 / 7, 4)


# ---------------------------------------------------------------------------- live events




async def test_the_event_stream_announces_drafts_from_any_path_and_pops_only_for_its_agent(
        console_factory: Any, services: Services) -> None:
    from callcenter.console.state import console_key

    wang: Console = await (await console_factory()).signed_in("wangfang")
    li: Console = await (await console_factory()).signed_in("lijun")
    assert wang.http.app is not None
    hub = wang.http.app[console_key].hub
    assert (await (await console_factory()).http.get("/console/events")).status == 401
    async with wang.http.get("/console/events") as wang_stream, li.http.get("/console/events") as li_stream:
        assert wang_stream.headers["Content-Type"].startswith("text/event-stream")
        await read_sse_event(wang_stream, "hello")
        await read_sse_event(li_stream, "hello")
        # A draft written straight through the case service (as the SMS channel does) ...
        number = await draft(services, description="短信：坂田社区路灯不亮")
        assert (await read_sse_event(wang_stream, "draft_created"))["number"] == number
        assert (await read_sse_event(li_stream, "draft_created"))["number"] == number
        # ... and a screen pop addressed to one agent reaches only that agent, masked for staff.
        hub.publish("screen_pop", {"agent": "lijun", "phone": "13712345678", "call_id": "c-1"})
        hub.publish("screen_pop", {"agent": "wangfang", "phone": "13612345678", "call_id": "c-2"})
        li_pop = await read_sse_event(li_stream, "screen_pop")
        wang_pop = await read_sse_event(wang_stream, "screen_pop")
        assert li_pop["call_id"] == "c-1" and li_pop["phone_display"] == "+86137****5678" and li_pop["phone"] is None
        assert wang_pop["call_id"] == "c-2"
        answer = await li.get_json(f"/console/screen-pop?pop={li_pop['pop']}")
        assert answer["phone_display"] == "+86137****5678"


async def test_the_hub_drops_a_draft_announced_twice_and_odd_event_types() -> None:
    from callcenter.events import EventHub

    hub = EventHub(queue_size=2)
    with hub.subscribe("wangfang") as sub:
        assert hub.publish("draft_created", {"number": "261124000421"}) is not None
        assert hub.publish("draft_created", {"number": "261124000421"}) is None
        assert hub.publish("bad type\nevent: x", {}) is None
        hub.publish("case_updated", {"number": "1"})
        hub.publish("case_updated", {"number": "2"})  # the queue holds 2: this one overflows
        assert sub.overflowed
        first = await sub.next(1)
        assert first is not None and first.type == "draft_created"
        hub.close()
        assert sub.closed
    assert hub.subscriber_count == 0


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_resolve_recording_refuses_paths_outside(tmp_path: Path) -> None:
    from callcenter.console.serialise import resolve_recording

    root = tmp_path / "rec"
    root.mkdir()
    (root / "a.wav").write_bytes(b"x")
    assert resolve_recording(root, "a.wav") == (root / "a.wav").resolve()
    assert resolve_recording(root, str(root / "a.wav")) == (root / "a.wav").resolve()
    assert resolve_recording(root, "file:a.wav") == (root / "a.wav").resolve()
    for ref in ("", None, "../a.wav", "/a.wav", "a.wav/..", "a.wav\x00.txt", "x" * 600):
        assert resolve_recording(root, ref) is None
    assert resolve_recording(tmp_path / "nope", "a.wav") is None
