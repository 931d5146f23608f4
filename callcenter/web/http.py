"""Edge helpers shared by every HTTP front door (API, Open311, console): JSON in, JSON out, errors.

They live outside api/ and console/ so that both import them and neither imports the other."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from callcenter.service.errors import ServiceError

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
