"""Case actions: the live queue, one case, duplicates, its recording, and the staff's writes
(draft, transcription, submit, 不予立案, merge). Each write goes through the case service
with the actor "staff:<姓名>" and tells every console what changed."""

from __future__ import annotations

import datetime as dt
from typing import Any

import structlog
from aiohttp import web

from callcenter.cases.catalogue import CategoryCode, InvalidCategoryCode
from callcenter.cases.grids import InvalidGridCode
from callcenter.cases.model import CaseFlag, CaseView, Channel
from callcenter.console.auth import ConsoleSession
from callcenter.console.inputs import (
    CallbackIn,
    DraftIn,
    MergeIn,
    RejectIn,
    SubmitIn,
    TranscriptionIn,
    fail,
    read_input,
)
from callcenter.console.queries import CaseBrief
from callcenter.console.screen_pop import open_pop
from callcenter.console.serialise import (
    AUDIO_TYPES,
    brief_json,
    case_json,
    category_json,
    channel_label,
    flag_labels,
    local_iso,
    log_json,
    may_see_phone,
    phone_out,
    recordings_root,
    resolve_recording,
    sees_numbers,
    text_out,
    visible_flags,
)
from callcenter.console.signin import api
from callcenter.console.state import ConsoleState, state_of
from callcenter.privacy import restore_masked
from callcenter.service.cases import DraftInput
from callcenter.service.errors import Conflict
from callcenter.web.http import json_response

log = structlog.get_logger(__name__)


@api
async def queue(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = state_of(request)
    rows, total = await state.queries.queue()
    now = dt.datetime.now(dt.UTC)
    target = state.settings.queue_target_minutes * 60
    items = []
    root = recordings_root(state)
    for row in rows:
        suggested = category_json(state, row.suggested_category)
        arrived = CaseFlag.RECORDING_MISSING in row.flags and resolve_recording(root, row.recording_ref) is not None
        items.append({
            "number": row.number, "channel": row.channel,
            "channel_label": channel_label(row.channel, row.flags, row.recording, row.menu_choice),
            "flag_labels": flag_labels(visible_flags(row.flags, arrived)),
            "created_at": local_iso(row.created_at),
            "waiting_seconds": max(0, int((now - row.created_at).total_seconds())), "target_seconds": target,
            "suggested_category": suggested, "category": category_json(state, row.category),
            # Masked before it is cut short, so half a number cannot slip past the mask.
            "excerpt": (text_out(row.description, session, state,
                                 private=row.anonymous or row.confidential) or "")[:80],
            "reporter_phone": phone_out(row.reporter_phone, session, state,
                                         private=row.anonymous or row.confidential)})
    return json_response({"now": now.isoformat(), "total": total, "items": items})


async def case_payload(state: ConsoleState, view: CaseView, session: ConsoleSession) -> dict[str, Any]:
    inbound = await state.queries.inbound_for(view.number) if view.channel == Channel.SMS.value else []
    payload = case_json(state, view, session, await state.queries.outbox_for(view.id), inbound)
    payload["call_reporter"] = await _call_reporter_state(state, view, session)
    return payload


async def _call_reporter_state(state: ConsoleState, view: CaseView, session: ConsoleSession) -> dict[str, Any]:
    """Whether the 回拨市民 button works for this reader, and if not why (the same check the
    click makes). Never the number: only whether there is one."""
    from callcenter.voice.staff_dial import refusal_for

    dialer = state.services.staff_dialer
    if dialer is None:  # no AMI on this node: the button is not shown at all
        return {"possible": False, "reason": "ami_off", "message": "未接入呼叫系统"}
    interface = await dialer.interface_of(session.account.id)
    last = next((e for e in reversed(view.log) if e.action == "staff_call"), None)
    refused = refusal_for(has_phone=bool(view.reporter_phone), private=view.anonymous or view.confidential,
                          role_sees_numbers=may_see_phone(session, state),
                          interface=interface, dialer_up=dialer.available,
                          under_way=last is not None and dialer.under_way(last.changes.get("outcome"), last.at))
    return {"possible": refused is None, "reason": refused.code if refused else None,
            "message": refused.message if refused else None}


@api
async def get_case(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = state_of(request)
    view = await state.services.cases.get(request.match_info["number"])
    return json_response(await case_payload(state, view, session))


@api
async def duplicates(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    """Candidates for the draft being edited, weighed by the form's category and grid (not
    the saved ones), by caller and by text, so that drafts nobody has transcribed yet (no
    category or grid, only a suggestion and their words) are weighed too. Each item says why."""
    state = state_of(request)
    view = await state.services.cases.get(request.match_info["number"], with_log=False)
    category_raw = request.query.get("category") or view.category or view.suggested_category
    grid_raw = request.query.get("grid") or view.grid
    try:
        category = str(CategoryCode.parse(category_raw)) if category_raw else None
        grid = state.services.grids.get(grid_raw) if grid_raw else None
    except (InvalidCategoryCode, InvalidGridCode) as exc:
        raise fail(422, "invalid", "类别或网格代码无效") from exc
    grids = [grid.code.value, *(g.code.value for g in state.services.grids.neighbours(grid.code))] if grid else []
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=state.settings.duplicate_window_days)
    candidates = await state.queries.duplicate_candidates(view.number, since, category, view.reporter_phone)
    weighed = []
    for brief, suggested in candidates:
        score, why = _weigh(view, brief, suggested, category, grids)
        if score:
            weighed.append((score, brief, why))
    weighed.sort(key=lambda item: (-item[0], -item[1].created_at.timestamp()))
    items = [{**brief_json(state, brief, session), "why": why} for _, brief, why in weighed[:20]]
    body: dict[str, Any] = {"items": items, "category": category_json(state, category), "grids": grids,
                            "window_days": state.settings.duplicate_window_days}
    if not items and not (category and grid):
        body["needs"] = "category_and_grid"
    return json_response(body)


def _bigrams(text: str) -> set[str]:
    chars = [ch for ch in text if ch.isalnum()]
    return {a + b for a, b in zip(chars, chars[1:], strict=False)}


def text_similarity(a: str, b: str) -> float:
    """Share of character pairs two descriptions have in common (Jaccard); Chinese has no spaces."""
    left, right = _bigrams(a), _bigrams(b)
    return len(left & right) / len(left | right) if left and right else 0.0


def _weigh(view: CaseView, brief: CaseBrief, suggested: str | None, category: str | None,
           grids: list[str]) -> tuple[int, list[str]]:
    """(score, reasons): the same caller, or the same category (a suggested one for a draft
    not yet transcribed) in the same or a neighbouring grid, or with no grid yet and words
    like these. (0, []) when it is not a likely duplicate."""
    caller = bool(view.reporter_phone) and brief.reporter_phone == view.reporter_phone
    same_category = category is not None and brief.category == category
    suggested_only = category is not None and brief.category is None and suggested == category
    same_grid = bool(grids) and brief.grid == grids[0]
    near = brief.grid is not None and brief.grid in grids
    similar = text_similarity(view.description, brief.description) >= 0.3
    by_place = (same_category or suggested_only) and (near or (brief.grid is None and similar))
    if not (caller or by_place):
        return 0, []
    score, why = 0, []
    for hit, points, reason in (
            (caller, 4, "同一来电号码"),
            (by_place and same_category, 2, "同类别"),
            (by_place and suggested_only, 1, "建议类别相同（未转写）"),
            (by_place and same_grid, 2, "同一网格"),
            (by_place and near and not same_grid, 1, "相邻网格"),
            (similar, 1, "描述相近")):
        if hit:
            score += points
            why.append(reason)
    return score, why


@api
async def recording(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = state_of(request)
    view = await state.services.cases.get(request.match_info["number"], with_log=False)
    path = resolve_recording(recordings_root(state), view.recording_ref)
    if path is None:
        if view.recording_ref:
            log.warning("console.recording_missing", case_number=view.number)
        raise fail(404, "recording_missing", "录音缺失")
    log.info("console.recording_played", case_number=view.number, actor=session.account.actor)
    response = web.FileResponse(path, headers={"Content-Type": AUDIO_TYPES[path.suffix.lower()],
                                               "Cache-Control": "private, no-store"})
    return response



def _changed(state: ConsoleState, view: CaseView) -> None:
    state.hub.publish("case_updated", {"number": view.number, "status": view.status})


async def _conflict(state: ConsoleState, number: str, session: ConsoleSession, seen_log: int | None) -> web.Response:
    """409 with what the colleague changed; the browser keeps what this person typed."""
    current = await state.services.cases.get(number)
    visible = sees_numbers(session, state, private=current.anonymous or current.confidential)
    others = [log_json(e, visible) for e in current.log[seen_log:]] if seen_log is not None else []
    return json_response({"error": "conflict", "message": "该案件已被他人修改",
                          "current": await case_payload(state, current, session), "others": others}, status=409)


@api
async def create_draft(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = state_of(request)
    body: DraftIn = await read_input(request, DraftIn)
    phone = body.reporter_phone or None
    channel = Channel.STAFF
    if body.pop:
        phone = await open_pop(state, session, body.pop, "，请手工填写电话号码")
        channel = Channel.PHONE
    if not body.description.strip():
        raise fail(422, "invalid", "请填写问题描述", "description")
    view = await state.services.cases.create_draft(DraftInput(
        channel=channel, description=body.description, reporter_phone=phone, anonymous=body.anonymous,
        confidential=body.confidential, category=body.category or None, grid=body.grid or None,
        address=body.address or None), actor=session.account.actor)
    state.hub.publish("draft_created", {"number": view.number, "channel": view.channel})
    return json_response(await case_payload(state, view, session), status=201)


@api
async def update_case(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = state_of(request)
    number = request.match_info["number"]
    body: TranscriptionIn = await read_input(request, TranscriptionIn)
    changes = body.model_dump(exclude_unset=True, exclude={"version", "seen_log"})
    if {"description", "address"} & changes.keys():
        # A reader who saw the text masked sends it back masked: keep the numbers it hid.
        current = await state.services.cases.get(number, with_log=False)
        if not sees_numbers(session, state, private=current.anonymous or current.confidential):
            for key, stored in (("description", current.description), ("address", current.address)):
                if isinstance(changes.get(key), str) and stored:
                    changes[key] = restore_masked(stored, changes[key])
    try:
        view = await state.services.cases.update_transcription(
            number, changes, actor=session.account.actor, expected_version=body.version)
    except Conflict:
        return await _conflict(state, number, session, body.seen_log)
    _changed(state, view)
    return json_response(await case_payload(state, view, session))


@api
async def submit_case(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = state_of(request)
    number = request.match_info["number"]
    body: SubmitIn = await read_input(request, SubmitIn)
    try:
        view = await state.services.cases.submit(number, actor=session.account.actor, expected_version=body.version)
    except Conflict:
        return await _conflict(state, number, session, body.seen_log)
    _changed(state, view)
    return json_response(await case_payload(state, view, session))


@api
async def reject_case(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = state_of(request)
    body: RejectIn = await read_input(request, RejectIn)
    view = await state.services.cases.reject(request.match_info["number"], body.reason,
                                             actor=session.account.actor, note=body.note or None)
    _changed(state, view)
    return json_response(await case_payload(state, view, session))


@api
async def merge_case(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = state_of(request)
    body: MergeIn = await read_input(request, MergeIn)
    view = await state.services.cases.merge(request.match_info["number"], body.into.strip(),
                                            actor=session.account.actor, note=body.note or None)
    _changed(state, view)
    if view.master_number:
        state.hub.publish("case_updated", {"number": view.master_number, "status": "merged_in"})
    return json_response(await case_payload(state, view, session))


_CALLBACK_REFUSED = {"not_found": (404, "案件不存在"), "no_phone": (422, "该案件没有可回访的电话号码"),
                     "busy": (409, "正在回访中，请稍后再试"), "invalid": (422, "案件编号或电话号码无效")}


@api
async def request_callback(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    """The reporter asked staff for a rating call-back (回访) once the case is closed."""
    from callcenter.voice.callbacks import CallbackRefused, CallbackService

    state = state_of(request)
    settings = state.services.settings
    if not settings.callback.enabled:
        raise fail(409, "callback_disabled", "未开通回访")
    body: CallbackIn = await read_input(request, CallbackIn)
    service = CallbackService(state.services.sessions, settings.callback, ami=None,
                              timezone=settings.cases.timezone, region=settings.cases.default_region)
    try:
        view = await service.request(request.match_info["number"], by=session.account.actor,
                                     phone=body.phone or None)
    except CallbackRefused as exc:
        status, message = _CALLBACK_REFUSED.get(exc.code, _CALLBACK_REFUSED["invalid"])
        raise fail(status, exc.code, message, "phone" if exc.code == "invalid" and body.phone else None) from exc
    return json_response({"case_number": view.case_number, "status": view.status,
                          "phone": phone_out(view.phone, session, state)})


@api
async def call_reporter(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    """回拨市民: ring this staff member's phone, then the reporter (callcenter/voice/staff_dial.py).
    The answer says what happens, never the number, whatever the role."""
    from callcenter.voice.staff_dial import StaffCallRefused

    state = state_of(request)
    dialer = state.services.staff_dialer
    if dialer is None:
        raise fail(503, "ami_down", "呼叫系统暂不可用，请稍后再试")
    try:
        call = await dialer.call_reporter(request.match_info["number"], account_id=session.account.id,
                                          actor=session.account.actor,
                                          role_sees_numbers=may_see_phone(session, state))
    except StaffCallRefused as exc:
        raise fail(exc.status, exc.code, exc.message) from exc
    return json_response({"case_number": call.case_number, "status": "calling",
                          "message": "正在呼叫您的话机…接听后将自动拨打市民电话"}, status=202)
