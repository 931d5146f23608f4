"""/api/v1/cases: thin handlers that parse, call the case service, and serialise."""

from __future__ import annotations

import re

from aiohttp import web

from callcenter.api.auth import authorize
from callcenter.web.http import (
    ApiError,
    enum_param,
    int_param,
    json_response,
    pattern_param,
    query_value,
    read_json,
    time_param,
)
from callcenter.web.keys import services_key
from callcenter.api.schemas import (
    CaseCreate,
    CaseMerge,
    CaseOut,
    CasePage,
    CaseReject,
    CaseSubmit,
    CaseUpdate,
    INTAKE_NUMBER,
    PHONE,
    PlatformEventIn,
    catalogue_codes,
    grid_codes,
)
from callcenter.cases.numbering import damm_valid
from callcenter.cases.lifecycle import CaseStatus
from callcenter.cases.model import CaseView, Channel
from callcenter.privacy import may_see_number
from callcenter.service.cases import CaseFilter, DraftInput, PlatformEvent
from callcenter.service.tokens import Principal, Role

READERS = (Role.STAFF, Role.PLATFORM)
STAFF = (Role.STAFF,)
NUMBER_ROLES = frozenset({Role.STAFF, Role.PLATFORM, Role.ADMIN})
Q_MAX = 100
OFFSET_MAX = 10_000_000


def _out(view: CaseView, principal: Principal, *, with_log: bool = True) -> CaseOut:
    """Every API role may see numbers, except those of anonymous or confidential reporters
    (docs/privacy.md): those stay masked for staff, the platform and admin alike."""
    visible = may_see_number(principal.role in NUMBER_ROLES, view)
    return CaseOut.from_view(view, show_phone=visible, with_log=with_log)


def case_number(raw: str, field: str = "number") -> str:
    """An intake number as the document declares it; a wrong check digit names no case (404)."""
    if not re.fullmatch(INTAKE_NUMBER, raw):
        raise ApiError(422, "invalid", f"{field}: an intake number is 8 to 12 digits", field=field)
    if not damm_valid(raw):
        raise ApiError(404, "not_found", f"no case with intake number {raw} (its check digit is wrong)",
                       field=field)
    return raw


def check_references(request: web.Request, category: str | None = None, grid: str | None = None) -> None:
    """Category and grid must be ones the document lists (the loaded catalogue and grids)."""
    services = request.app[services_key]
    if category is not None and category not in catalogue_codes(services.catalogue):
        raise ApiError(422, "invalid", f"category: unknown category code {category!r}", field="category")
    if grid is not None and grid not in grid_codes(services.grids):
        raise ApiError(422, "invalid", f"grid: unknown grid code {grid!r}", field="grid")


async def create_case(request: web.Request) -> web.Response:
    principal = await authorize(request, *STAFF)
    body = await read_json(request, CaseCreate)
    check_references(request, body.category, body.grid)
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
    view = await request.app[services_key].cases.get(case_number(request.match_info["number"]))
    return json_response(_out(view, principal))


STATUSES = frozenset(status.value for status in CaseStatus)
CHANNELS = frozenset(channel.value for channel in Channel)


async def list_cases(request: web.Request) -> web.Response:
    principal = await authorize(request, *READERS)
    services = request.app[services_key]
    tz = services.settings.cases.timezone
    text = query_value(request, "q")
    if text is not None and len(text) > Q_MAX:
        raise ApiError(400, "invalid", f"q is at most {Q_MAX} characters", field="q")
    category = enum_param(request, "category", catalogue_codes(services.catalogue))
    grid = enum_param(request, "grid", grid_codes(services.grids))
    filters = CaseFilter(
        status=enum_param(request, "status", STATUSES), channel=enum_param(request, "channel", CHANNELS),
        category=category, grid=grid,
        reporter_phone=pattern_param(request, "reporter_phone", PHONE, "a phone number such as 13812345678"),
        created_from=time_param(request, "from", tz), created_to=time_param(request, "to", tz), text=text,
    )
    limit = int_param(request, "limit", 50, 1, services.settings.http.page_size_max)
    offset = int_param(request, "offset", 0, 0, OFFSET_MAX)
    page = await services.cases.search(filters, offset=offset, limit=limit)
    return json_response(CasePage(
        items=[_out(item, principal, with_log=False) for item in page.items],
        total=page.total, total_is_exact=page.total_is_exact, offset=page.offset, limit=page.limit))


async def update_case(request: web.Request) -> web.Response:
    principal = await authorize(request, *STAFF)
    number = case_number(request.match_info["number"])
    body = await read_json(request, CaseUpdate)
    check_references(request, body.category, body.grid)
    changes = body.model_dump(exclude_unset=True, exclude={"version"})
    view = await request.app[services_key].cases.update_transcription(
        number, changes, actor=principal.actor, expected_version=body.version)
    return json_response(_out(view, principal))


async def submit_case(request: web.Request) -> web.Response:
    principal = await authorize(request, *STAFF)
    number = case_number(request.match_info["number"])
    body = await read_json(request, CaseSubmit) if request.can_read_body else CaseSubmit()
    view = await request.app[services_key].cases.submit(number, actor=principal.actor, expected_version=body.version)
    return json_response(_out(view, principal))


async def reject_case(request: web.Request) -> web.Response:
    principal = await authorize(request, *STAFF)
    number = case_number(request.match_info["number"])
    body = await read_json(request, CaseReject)
    view = await request.app[services_key].cases.reject(number, body.reason, actor=principal.actor, note=body.note)
    return json_response(_out(view, principal))


async def merge_case(request: web.Request) -> web.Response:
    principal = await authorize(request, *STAFF)
    number = case_number(request.match_info["number"])
    body = await read_json(request, CaseMerge)
    into = case_number(body.into, "into")
    if into == number:
        raise ApiError(409, "conflict", "into: a case cannot be merged into itself", field="into")
    view = await request.app[services_key].cases.merge(number, into, actor=principal.actor, note=body.note)
    return json_response(_out(view, principal))


async def platform_event(request: web.Request) -> web.Response:
    principal = await authorize(request, Role.PLATFORM)
    number = case_number(request.match_info["number"])
    body = await read_json(request, PlatformEventIn)
    view = await request.app[services_key].cases.apply_platform_event(
        number,
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
