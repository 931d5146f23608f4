"""Screen pop (来电弹屏): the caller's open cases and history, and the draft the IVR filed
during the call. The number reaches consoles that may not see it only as an opaque handle
(`pop`, console/pop_handles.py) that any node opens."""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from callcenter.cases.numbering import CaseNumber, InvalidCaseNumber
from callcenter.cases.phones import InvalidPhoneNumber, normalise_phone
from callcenter.console.auth import ConsoleSession
from callcenter.console.inputs import fail
from callcenter.console.pages import index
from callcenter.console.pop_handles import PopExpired, PopRefused
from callcenter.console.serialise import brief_json, may_see_phone
from callcenter.console.signin import api
from callcenter.console.state import ConsoleState, state_of
from callcenter.web.http import json_response
from callcenter.privacy import mask_number

log = structlog.get_logger(__name__)


async def open_pop(state: ConsoleState, session: ConsoleSession, handle: str, hint: str = "") -> str:
    """The number a handle holds; a clear 4xx (logged) for an expired, altered or forged one.

    `hint` ends the message, e.g. what the person can do instead."""
    try:
        return (await state.pop_sealer()).open(handle)
    except PopRefused as exc:
        log.warning("console.pop_refused", actor=session.account.actor, reason=exc.code, detail=str(exc))
        if isinstance(exc, PopExpired):
            raise fail(404, exc.code, "来电信息已过期" + hint, "pop") from exc
        raise fail(400, exc.code, "来电信息无效" + hint, "pop") from exc


async def _screen_pop_phone(state: ConsoleState, session: ConsoleSession, request: web.Request) -> str:
    pop = request.query.get("pop")
    if pop:
        return await open_pop(state, session, pop)
    raw = request.query.get("phone", "")
    try:
        return normalise_phone(raw, state.services.settings.cases.default_region)
    except InvalidPhoneNumber as exc:
        raise fail(422, "invalid", "电话号码无效", "phone") from exc


async def screen_pop(request: web.Request) -> web.StreamResponse:
    """The caller's open cases and history; a browser asking for HTML gets the console page."""
    if "application/json" not in request.headers.get("Accept", ""):
        return await index(request)
    return await _screen_pop_json(request)


def pop_case_number(raw: object) -> str | None:
    """The intake number an IVR transfer carries (the draft the caller just filed), if valid."""
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return CaseNumber.parse(raw[:32]).value
    except InvalidCaseNumber:
        log.warning("console.screen_pop_bad_case_number", length=len(raw))
        return None


@api
async def _screen_pop_json(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    """The caller (`phone` or a `pop` handle) with open cases and history, and with `case` the
    draft the IVR filed during this call. A caller who withheld the number may come with
    `case` alone."""
    state = state_of(request)
    call_case: dict[str, Any] | None = None
    if request.query.get("case"):
        number = pop_case_number(request.query["case"])
        if number is None:
            raise fail(400, "invalid", "受理编号无效", "case")
        brief = await state.queries.brief(number)
        call_case = brief_json(state, brief, session) if brief is not None else None
        if not request.query.get("pop") and not request.query.get("phone"):
            log.info("console.screen_pop", actor=session.account.actor, case_number=number)
            return json_response({"phone_display": None, "phone": None, "pop": None, "open_cases": [],
                                  "history": [], "case": call_case})
    phone = await _screen_pop_phone(state, session, request)
    open_cases, history = await state.queries.by_phone(phone)
    visible = may_see_phone(session, state)
    log.info("console.screen_pop", actor=session.account.actor, caller=mask_number(phone))
    return json_response({
        "phone_display": phone if visible else mask_number(phone), "phone": phone if visible else None,
        "pop": (await state.pop_sealer()).seal(phone),
        "open_cases": [brief_json(state, b, session) for b in open_cases],
        "history": [brief_json(state, b, session) for b in history], "case": call_case})


