"""Edge helpers shared by every HTTP handler: JSON in, JSON out, errors, auth."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from callcenter.api.keys import services_key
from callcenter.service.errors import ServiceError
from callcenter.service.tokens import Principal, Role

log = structlog.get_logger(__name__)
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}


def json_response(data: Any, status: int = 200) -> web.Response:
    if isinstance(data, BaseModel):
        text = data.model_dump_json()
    else:
        text = json.dumps(data, ensure_ascii=False, default=str)
    return web.Response(text=text, status=status, content_type="application/json", charset="utf-8")


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": code, "message": message}
    if field:
        body["field"] = field
    response = json_response(body, status)
    response.headers.update(headers or {})
    return response


def _field_of(error: dict[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ()) if not str(part).startswith(("function-", "constrained-"))]
    # Drop pydantic's union/type tags ("str", "float") so the name is the JSON field.
    names = [part for part in loc if part not in {"str", "int", "float", "bool", "list", "dict"}]
    return ".".join(names) or "body"


async def read_json(request: web.Request, model: type[M]) -> M:
    """Parse and validate a JSON body; every failure names what is wrong."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, "too_large", "request body is too large") from exc
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_json", "body is not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _field_of(first)  # type: ignore[arg-type]
        raise ApiError(422, "invalid", f"{field}: {first['msg']}", field=field) from exc


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


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON; no stack trace reaches the client."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(method=request.method, path=request.path)
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)
    except ServiceError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.field)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http_error")
        return error_response(exc.status, code, exc.reason, headers={
            k: v for k, v in exc.headers.items() if k.lower() == "allow"})
    except Exception:
        log.exception("http.unhandled")
        return error_response(500, "internal", "internal error; it has been logged")
