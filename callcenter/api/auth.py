"""Bearer-token authorisation for the API's routes (the console has its own sessions)."""

from __future__ import annotations

import structlog
from aiohttp import web

from callcenter.service.tokens import Principal, Role
from callcenter.web.http import ApiError
from callcenter.web.keys import services_key


async def authorize(request: web.Request, *roles: Role) -> Principal:
    """The caller's principal if its bearer token has one of `roles` (admin may do anything)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="callcenter"'}
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "a bearer token is required", headers=challenge)
    principal = await request.app[services_key].tokens.verify(token.strip())
    if principal is None:
        raise ApiError(401, "unauthorized", "the token is not valid", headers=challenge)
    if principal.role is not Role.ADMIN and principal.role not in roles:
        allowed = ", ".join(role.value for role in roles)
        raise ApiError(403, "forbidden", f"this needs a token of role: {allowed}")
    structlog.contextvars.bind_contextvars(actor=principal.actor)
    return principal
