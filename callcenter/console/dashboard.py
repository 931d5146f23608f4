"""The shift leader's view: today's figures, the period's counts and evaluation, and the
supervisor tasks (督办通知)."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from callcenter.cases.numbering import CaseNumber, InvalidCaseNumber
from callcenter.console.auth import ConsoleSession
from callcenter.console.inputs import FIELD_LABELS, fail
from callcenter.console.queries import NOTICE_STATES
from callcenter.console.serialise import (
    NOTICE_STATE_LABELS,
    category_json,
    escalation_seconds,
    grid_by_code,
    local_iso,
    notice_json,
)
from callcenter.console.signin import api
from callcenter.console.state import state_of
from callcenter.web.http import json_response


@api
async def notices(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    """督办通知: supervisor tasks by state, newest first, from supervisor_tasks.

    `state` is waiting, escalated, answered or all (default); `case` keeps one case's tasks;
    `limit` (1-200, default 50) caps the items of each state. `counts` are exact.
    """
    state = state_of(request)
    wanted = request.query.get("state", "all")
    if wanted not in (*NOTICE_STATES, "all"):
        raise fail(400, "invalid", "状态应为 waiting、escalated、answered 或 all", "state")
    case_number: str | None = None
    if request.query.get("case"):
        try:
            case_number = CaseNumber.parse(request.query["case"][:32]).value
        except InvalidCaseNumber as exc:
            raise fail(400, "invalid", "受理编号无效", "case") from exc
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 200:
        raise fail(400, "invalid", "条数应为 1 到 200", "limit")
    states = NOTICE_STATES if wanted == "all" else (wanted,)
    items, counts = await state.queries.notices(states, case_number, limit)
    now = dt.datetime.now(dt.UTC)
    return json_response({
        "now": now.isoformat(), "state": wanted, "case": case_number, "limit": limit,
        "limit_seconds": escalation_seconds(state), "counts": counts.as_dict(),
        "items": [notice_json(state, n, session, now) for n in items],
        "state_labels": NOTICE_STATE_LABELS})



# ---------------------------------------------------------------------------- dashboard

# GB/T 33358: at least 95 % of calls answered within 15 s (shown beside the figure).
ANSWER_TARGET_RATE = 0.95


def _parse_day(raw: str | None, default: dt.date, name: str) -> dt.date:
    if not raw:
        return default
    try:
        day = dt.date.fromisoformat(raw)
    except ValueError as exc:
        raise fail(400, "invalid", f"{FIELD_LABELS[name]}格式应为 YYYY-MM-DD", name) from exc
    if not 2000 <= day.year <= 2099:  # 0001-01-01 and 9999-12-31 overflowed the UTC arithmetic
        raise fail(400, "invalid", f"{FIELD_LABELS[name]}应在 2000 至 2099 年之间", name)
    return day


@api
async def dashboard(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = state_of(request)
    tz = state.tz
    now = dt.datetime.now(dt.UTC)
    today = now.astimezone(tz).date()
    first = _parse_day(request.query.get("from"), today, "from")
    last = _parse_day(request.query.get("to"), first if request.query.get("from") else today, "to")
    if last < first:
        raise fail(400, "invalid", "结束日期不能早于开始日期", "to")
    if (last - first).days > 366:
        raise fail(400, "invalid", "统计周期最长一年", "to")

    def start_of(day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(dt.UTC)

    today_start, today_end = start_of(today), start_of(today + dt.timedelta(days=1))
    period_start, period_end = start_of(first), start_of(last + dt.timedelta(days=1))
    queries = state.queries
    waiting, oldest = await queries.drafts_waiting()
    queued, sent, delivered = await queries.sms_out(today_start, today_end)
    receipts_delivered, undelivered = await queries.sms_delivery(today_start, today_end)
    sms_in = await queries.sms_in(today_start, today_end)
    calls = await queries.calls(today_start, today_end)
    by_category = await queries.counts_by("category", period_start, period_end)
    by_grid = await queries.counts_by("grid", period_start, period_end)
    evaluation = await queries.evaluation(period_start, period_end,
                                          dt.timedelta(hours=state.settings.closure_deadline_hours))
    today_intake = await queries.intake(today_start, today_end)
    supervision = await queries.supervision(today_start, today_end)
    oldest_task = supervision.oldest_waiting
    return json_response({
        "generated_at": now.isoformat(),
        "today": {
            "date": today.isoformat(), "intake": today_intake,
            # A rate whose denominator is 0 is null (暂无数据); see docs/console.md.
            "calls": calls.calls, "answered_within_15s": calls.answered_in_target,
            "answered_within_15s_rate": calls.answered_in_target_rate,
            "answered_within_15s_target": ANSWER_TARGET_RATE, "abandoned": calls.abandoned,
            "queued": calls.queued, "answered": calls.answered, "mean_wait_seconds": calls.mean_wait_seconds,
            "sms_in": sms_in, "sms_out": queued, "sms_sent": sent, "sms_delivered": delivered,
            "sms_undelivered": undelivered,
            "sms_delivery_rate": (round(receipts_delivered / (receipts_delivered + undelivered), 4)
                                  if receipts_delivered + undelivered else None)},
        "drafts": {"waiting": waiting, "oldest": None if oldest is None else {
            "number": oldest.number, "created_at": local_iso(oldest.created_at),
            "waiting_seconds": max(0, int((now - oldest.created_at).total_seconds()))},
            "target_seconds": state.settings.queue_target_minutes * 60},
        "period": {"from": first.isoformat(), "to": last.isoformat()},
        "by_category": [{**(category_json(state, code) or {}), "count": n} for code, n in by_category],
        "by_grid": [{**(grid_by_code(state, code) or {}), "count": n} for code, n in by_grid],
        "evaluation": {**evaluation.as_dict(), "deadline_hours": state.settings.closure_deadline_hours},
        "supervision": {
            "sent_today": supervision.sent, "answered_today": supervision.answered,
            "confirmed_today": supervision.confirmed, "not_confirmed_today": supervision.not_confirmed,
            "escalated_today": supervision.escalated, "waiting": supervision.waiting_now,
            "escalated_unanswered": supervision.escalated_open_now,
            "limit_seconds": escalation_seconds(state),
            "oldest_waiting": None if oldest_task is None else {
                "code": oldest_task.code, "case_number": oldest_task.case_number,
                "waiting_seconds": max(0, int((now - oldest_task.created_at).total_seconds()))}},
    })

