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
from callcenter.cases.model import CaseView, Channel
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
from callcenter.console.serialise import (
    AUDIO_TYPES,
    FLAG_LABELS,
    brief_json,
    case_json,
    category_json,
    channel_label,
    local_iso,
    log_json,
    phone_out,
    recordings_root,
    resolve_recording,
)
from callcenter.console.signin import api
from callcenter.console.state import ConsoleState, state_of
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
    for row in rows:
        suggested = category_json(state, row.suggested_category)
        items.append({
            "number": row.number, "channel": row.channel,
            "channel_label": channel_label(row.channel, row.flags, row.recording),
            "flag_labels": [FLAG_LABELS.get(f, f) for f in row.flags],  # type: ignore[call-overload]
            "created_at": local_iso(row.created_at),
            "waiting_seconds": max(0, int((now - row.created_at).total_seconds())), "target_seconds": target,
            "suggested_category": suggested, "category": category_json(state, row.category),
            "excerpt": row.description[:80],
            "reporter_phone": phone_out(row.reporter_phone, session, state,
                                         private=row.anonymous or row.confidential)})
    return json_response({"now": now.isoformat(), "total": total, "items": items})


async def case_payload(state: ConsoleState, view: CaseView, session: ConsoleSession) -> dict[str, Any]:
    return case_json(state, view, session, await state.queries.outbox_for(view.id))


@api
async def get_case(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = state_of(request)
    view = await state.services.cases.get(request.match_info["number"])
    return json_response(await case_payload(state, view, session))


@api
async def duplicates(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    """Candidates for the draft being edited: the form's category and grid, not the saved ones."""
    state = state_of(request)
    view = await state.services.cases.get(request.match_info["number"], with_log=False)
    category_raw = request.query.get("category") or view.category or view.suggested_category
    grid_raw = request.query.get("grid") or view.grid
    if not category_raw or not grid_raw:
        return json_response({"items": [], "needs": "category_and_grid"})
    try:
        category = str(CategoryCode.parse(category_raw))
        grid = state.services.grids.get(grid_raw)
    except (InvalidCategoryCode, InvalidGridCode) as exc:
        raise fail(422, "invalid", "类别或网格代码无效") from exc
    if grid is None:
        return json_response({"items": [], "needs": "category_and_grid"})
    grids = [grid.code.value, *(g.code.value for g in state.services.grids.neighbours(grid.code))]
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=state.settings.duplicate_window_days)
    found = await state.queries.duplicates(view.number, category, grids, since)
    return json_response({"items": [brief_json(state, b, session) for b in found],
                          "category": category_json(state, category), "grids": grids,
                          "window_days": state.settings.duplicate_window_days})


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
    others = [log_json(e) for e in current.log[seen_log:]] if seen_log is not None else []
    return json_response({"error": "conflict", "message": "该案件已被他人修改",
                          "current": await case_payload(state, current, session), "others": others}, status=409)


@api
async def create_draft(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = state_of(request)
    body: DraftIn = await read_input(request, DraftIn)
    phone = body.reporter_phone or None
    channel = Channel.STAFF
    if body.pop:
        phone = state.pop_phone(body.pop)
        if phone is None:
            raise fail(404, "pop_expired", "来电信息已过期，请手工填写电话号码", "pop")
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
