"""/api/v1/cases: thin handlers that parse, call the case service, and serialise."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from callcenter.api.auth import authorize
from callcenter.web.http import ApiError, json_response, read_json
from callcenter.web.keys import services_key
from callcenter.api.schemas import (
    CaseCreate,
    CaseMerge,
    CaseOut,
    CasePage,
    CaseReject,
    CaseSubmit,
    CaseUpdate,
    PlatformEventIn,
)
from callcenter.cases.lifecycle import CaseStatus
from callcenter.cases.model import CaseView, Channel
from callcenter.service.cases import CaseFilter, DraftInput, PlatformEvent
from callcenter.service.tokens import Principal, Role

READERS = (Role.STAFF, Role.PLATFORM)
STAFF = (Role.STAFF,)


def _out(view: CaseView, principal: Principal, *, with_log: bool = True) -> CaseOut:
    """Staff see reporters' numbers; the platform sees them unless the reporter asked otherwise."""
    show_phone = principal.role in (Role.STAFF, Role.ADMIN) or not (view.anonymous or view.confidential)
    return CaseOut.from_view(view, show_phone=show_phone, with_log=with_log)


async def create_case(request: web.Request) -> web.Response:
    principal = await authorize(request, *STAFF)
    body = await read_json(request, CaseCreate)
    view = await request.app[services_key].cases.create_draft(
        DraftInput(
            channel=Channel.STAFF, description=body.description, reporter_phone=body.reporter_phone,
            anonymous=body.anonymous, confidential=body.confidential, category=body.category,
            grid=body.grid, address=body.address,
            lon=float(body.lon) if body.lon is not None else None,
            lat=float(body.lat) if body.lat is not None else None,
            notify_reporter=body.notify_reporter,
        ),
        actor=principal.actor,
    )
    response = json_response(_out(view, principal), status=201)
    response.headers["Location"] = f"/api/v1/cases/{view.number}"
    return response


async def get_case(request: web.Request) -> web.Response:
    principal = await authorize(request, *READERS)
    view = await request.app[services_key].cases.get(request.match_info["number"])
    return json_response(_out(view, principal))


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ApiError(400, "invalid", f"{name} must be a whole number", field=name) from exc
    if not low <= value <= high:
        raise ApiError(400, "invalid", f"{name} must be between {low} and {high}", field=name)
    return value


def _time_param(request: web.Request, name: str) -> dt.datetime | None:
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError as exc:
        raise ApiError(400, "invalid", f"{name} must be an ISO 8601 date or time", field=name) from exc
    if value.tzinfo is None:  # a bare date or time is read in the service's time zone
        from zoneinfo import ZoneInfo

        value = value.replace(tzinfo=ZoneInfo(request.app[services_key].settings.cases.timezone))
    return value


async def list_cases(request: web.Request) -> web.Response:
    principal = await authorize(request, *READERS)
    services = request.app[services_key]
    status = request.query.get("status")
    if status and status not in CaseStatus.__members__.values():
        raise ApiError(400, "invalid", f"unknown status {status!r}", field="status")
    channel = request.query.get("channel")
    if channel and channel not in Channel.__members__.values():
        raise ApiError(400, "invalid", f"unknown channel {channel!r}", field="channel")
    text = request.query.get("q")
    if text is not None and len(text) > 100:
        raise ApiError(400, "invalid", "q is at most 100 characters", field="q")
    filters = CaseFilter(
        status=status, channel=channel, category=request.query.get("category"),
        grid=request.query.get("grid"), reporter_phone=request.query.get("reporter_phone"),
        created_from=_time_param(request, "from"), created_to=_time_param(request, "to"), text=text,
    )
    limit = _int_param(request, "limit", 50, 1, services.settings.http.page_size_max)
    offset = _int_param(request, "offset", 0, 0, 10_000_000)
    page = await services.cases.search(filters, offset=offset, limit=limit)
    return json_response(CasePage(
        items=[_out(item, principal, with_log=False) for item in page.items],
        total=page.total, total_is_exact=page.total_is_exact, offset=page.offset, limit=page.limit))


async def update_case(request: web.Request) -> web.Response:
    principal = await authorize(request, *STAFF)
    body = await read_json(request, CaseUpdate)
    changes = body.model_dump(exclude_unset=True, exclude={"version"})
    view = await request.app[services_key].cases.update_transcription(
        request.match_info["number"], changes, actor=principal.actor, expected_version=body.version)
    return json_response(_out(view, principal))


async def submit_case(request: web.Request) -> web.Response:
    principal = await authorize(request, *STAFF)
    body = await read_json(request, CaseSubmit) if request.can_read_body else CaseSubmit()
    view = await request.app[services_key].cases.submit(
        request.match_info["number"], actor=principal.actor, expected_version=body.version)
    return json_response(_out(view, principal))


async def reject_case(request: web.Request) -> web.Response:
    principal = await authorize(request, *STAFF)
    body = await read_json(request, CaseReject)
    view = await request.app[services_key].cases.reject(
        request.match_info["number"], body.reason, actor=principal.actor, note=body.note)
    return json_response(_out(view, principal))


async def merge_case(request: web.Request) -> web.Response:
    principal = await authorize(request, *STAFF)
    body = await read_json(request, CaseMerge)
    view = await request.app[services_key].cases.merge(
        request.match_info["number"], body.into, actor=principal.actor, note=body.note)
    return json_response(_out(view, principal))


async def platform_event(request: web.Request) -> web.Response:
    principal = await authorize(request, Role.PLATFORM)
    body = await read_json(request, PlatformEventIn)
    if body.status == "rejected" and body.reason is None:
        raise ApiError(422, "invalid", "reason: a rejection needs a reason", field="reason")
    view = await request.app[services_key].cases.apply_platform_event(
        request.match_info["number"],
        PlatformEvent(event_id=body.event_id, status=CaseStatus(body.status),
                      platform_number=body.platform_number, reason=body.reason, note=body.note),
        actor=principal.actor)
    return json_response(_out(view, principal))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/cases", create_case)
    app.router.add_get("/api/v1/cases", list_cases)
    app.router.add_get("/api/v1/cases/{number}", get_case)
    app.router.add_patch("/api/v1/cases/{number}", update_case)
    app.router.add_post("/api/v1/cases/{number}/submit", submit_case)
    app.router.add_post("/api/v1/cases/{number}/reject", reject_case)
    app.router.add_post("/api/v1/cases/{number}/merge", merge_case)
    app.router.add_post("/api/v1/cases/{number}/events", platform_event)
