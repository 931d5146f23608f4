"""Live events to the browser (Server-Sent Events): what the hub publishes, filtered and
masked for each console."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from aiohttp import web

from callcenter.cases.phones import InvalidPhoneNumber, normalise_phone
from callcenter.console.auth import ConsoleSession
from callcenter.console.inputs import fail
from callcenter.console.pop_handles import PopSealer
from callcenter.console.screen_pop import pop_case_number
from callcenter.console.serialise import may_see_phone, sees_numbers
from callcenter.console.signin import SESSION_COOKIE
from callcenter.console.state import ConsoleState, state_of
from callcenter.events import HubEvent
from callcenter.privacy import changes_for, mask_number

HEARTBEAT_SECONDS = 15.0


# ---------------------------------------------------------------------------- live events


def _sse(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    lines = [f"id: {event_id}"] if event_id is not None else []
    lines += [f"event: {event}", "data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":"))]
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def _for_subscriber(state: ConsoleState, pops: PopSealer, event: HubEvent,
                    session: ConsoleSession) -> dict[str, Any] | None:
    """What this console may see of an event; None when it is someone else's."""
    data = dict(event.data)
    if event.type == "screen_pop":
        agent = data.get("agent")
        if agent and str(agent).casefold() != session.account.username:
            return None
        case_number = pop_case_number(data.get("case_number"))
        try:
            phone: str | None = normalise_phone(str(data.get("phone") or ""),
                                                state.services.settings.cases.default_region)
        except InvalidPhoneNumber:
            phone = None
        if phone is None:
            if case_number is None:
                return None
            # A withheld number: the pop still shows the draft the caller filed.
            return {"pop": None, "phone": None, "phone_display": None, "call_id": data.get("call_id"),
                    "case_number": case_number}
        visible = may_see_phone(session, state)
        return {"pop": pops.seal(phone), "phone": phone if visible else None,
                "phone_display": phone if visible else mask_number(phone), "call_id": data.get("call_id"),
                "case_number": case_number}
    # Phone fields and numbers in any text, as this role may see them (docs/privacy.md).
    return changes_for(data, sees_numbers(session, state))


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: new drafts, case changes, screen pops, notices.

    Streaming does not count as activity: an unattended console still times out, and the
    stream then says `session_expired` and ends.
    """
    state = state_of(request)
    token = request.cookies.get(SESSION_COOKIE)
    session = await state.staff.resolve(token, touch=False)
    if session is None:
        raise fail(401, "session_expired" if token else "unauthorized", "登录已超时，请重新登录")
    pops = await state.pop_sealer()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    await response.prepare(request)
    await response.write(b"retry: 3000\n\n" + _sse("hello", {"user": session.account.display_name}))
    with contextlib.suppress(ConnectionResetError), state.hub.subscribe(session.account.username) as sub:
        while not sub.closed:
            event = await sub.next(HEARTBEAT_SECONDS)
            if sub.closed:
                break
            if sub.overflowed:
                sub.overflowed = False
                while not sub.queue.empty():
                    sub.queue.get_nowait()
                await response.write(_sse("resync", {}))
                continue
            if event is None:
                if await state.staff.resolve(token, touch=False) is None:
                    await response.write(_sse("session_expired", {"message": "登录已超时，请重新登录"}))
                    break
                await response.write(b": keepalive\n\n")
                continue
            payload = _for_subscriber(state, pops, event, session)
            if payload is not None:
                await response.write(_sse(event.type, payload, event.id))
    return response


