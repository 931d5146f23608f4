"""Edge helpers shared by every HTTP front door (API, Open311, console): JSON in, JSON out, errors.

They live outside api/ and console/ so that both import them and neither imports the other."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

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
    named = (error.get("ctx") or {}).get("field")
    if isinstance(named, str):  # a rule across fields names the one to fix
        return named
    loc = [str(part) for part in error.get("loc", ()) if not str(part).startswith(("function-", "constrained-"))]
    # Drop pydantic's union/type tags ("str", "float") so the name is the JSON field.
    names = [part for part in loc if part not in {"str", "int", "float", "bool", "list", "dict"}]
    return ".".join(names) or "body"


# Longer integer literals are refused before Python's int() (4,300 digits) fails on them.
MAX_INT_DIGITS = 40
MAX_DEPTH = 32  # no body of ours nests deeper than a few levels


class _Refused(ValueError):
    pass


def _parse_int(text: str) -> int | float:
    # Too long to be any of our numbers: an infinite float, which every field's validation
    # refuses (not an int, not a string, out of any range) and so names the field.
    if len(text) <= MAX_INT_DIGITS:
        return int(text)
    return float("-inf") if text.startswith("-") else float("inf")


def _parse_float(text: str) -> int | float:
    # JSON Schema counts 3.0 as an integer, so the API does too (a client's serialiser may write it).
    value = float(text)
    return int(value) if value.is_integer() else value


def _parse_constant(name: str) -> float:
    raise _Refused(f"{name} is not a JSON number")


def _deep_key(text: str) -> str | None:
    """The top-level key whose value nests too deep (for the error's `field`), if one does."""
    depth, key, in_string, escape, start, last = 0, "body", False, False, 0, ""
    for index, ch in enumerate(text):
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
                last = text[start:index]
            continue
        if ch == '"':
            in_string, start = True, index + 1
        elif ch == ":" and depth == 1:
            key = last
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return key
        elif ch in "]}":
            depth -= 1
    return None


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL, and lone surrogates JSON escapes can make


def _nul_field(data: Any, path: str = "") -> str | None:
    """The first field whose text (or key) holds a NUL character or a lone surrogate: no store
    can keep either, so the request is refused rather than failing at the database."""
    if isinstance(data, str):
        return path or "body" if _UNSTORABLE.search(data) else None
    if isinstance(data, dict):
        for key, value in data.items():
            name = f"{path}.{key}" if path else str(key)
            if _UNSTORABLE.search(str(key)):
                return _UNSTORABLE.sub("?", name)
            found = _nul_field(value, name)
            if found:
                return found
    if isinstance(data, list):
        for index, value in enumerate(data):
            found = _nul_field(value, f"{path}.{index}" if path else str(index))
            if found:
                return found
    return None


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """Bytes to a JSON object, or ApiError naming what is wrong: never a 500, whatever comes."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_json", "body is not UTF-8") from exc
    try:
        data = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    except _Refused as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        field = _deep_key(text) or "body"
        raise ApiError(400, "bad_json", f"{field}: nested deeper than {MAX_DEPTH} levels", field=field) from exc
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "body must be a JSON object")
    if _depth_exceeded(data):
        field = _deep_key(text) or "body"
        raise ApiError(400, "bad_json", f"{field}: nested deeper than {MAX_DEPTH} levels", field=field)
    nul = _nul_field(data)
    if nul:
        raise ApiError(422, "invalid", f"{nul}: text may not contain NUL characters or lone surrogates",
                       field=nul)
    return data


def _depth_exceeded(data: Any, depth: int = 0) -> bool:
    if depth > MAX_DEPTH:
        return True
    if isinstance(data, dict):
        return any(_depth_exceeded(v, depth + 1) for v in data.values())
    if isinstance(data, list):
        return any(_depth_exceeded(v, depth + 1) for v in data)
    return False


def validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors()[0]
    field = _field_of(first)  # type: ignore[arg-type]
    return ApiError(422, "invalid", f"{field}: {first['msg']}", field=field)


async def read_json(request: web.Request, model: type[M]) -> M:
    """Parse and validate a JSON body; every failure names what is wrong."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, "too_large", "request body is too large") from exc
    data = parse_json_body(raw)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from exc


def reject_nul_in_url(request: web.Request) -> None:
    """A NUL in a query or path value is refused at the edge (PostgreSQL cannot compare it)."""
    for name, value in [*request.query.items(), *request.match_info.items()]:
        if "\x00" in name or "\x00" in value:
            field = name.replace("\x00", "\\0")
            raise ApiError(400, "invalid", f"{field}: may not contain a NUL character", field=field)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON; no stack trace reaches the client."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(method=request.method, path=request.path)
    try:
        if not request.path.startswith("/open311/"):  # Open311 answers in its own format
            reject_nul_in_url(request)
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


# ---- query parameters: each checked exactly as the OpenAPI document declares it ---------------

_MONTH_DAY = ("(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)"
              "|(?:0[13578]|1[02])-31)")
_DATE = f"(?:20[0-9]{{2}}-{_MONTH_DAY}|20(?:[02468][048]|[13579][26])-02-29)"
_TIME = ("(?:[T ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\\.[0-9]{1,6})?)?"
         "(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?)?")
# Dates and times of this century (intake numbers are YYMMDD): ISO 8601, offset optional.
DATETIME_PATTERN = f"^{_DATE}{_TIME}$"
INTEGER_PATTERN = "^-?[0-9]{1,18}$"
_DATETIME_RE = re.compile(DATETIME_PATTERN)
_INTEGER_RE = re.compile(INTEGER_PATTERN)


def query_value(request: web.Request, name: str) -> str | None:
    """A query parameter given once; given twice or empty is an error naming it."""
    values = request.query.getall(name, [])
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, "invalid", f"{name} may be given once", field=name)
    if values[0] == "":
        raise ApiError(400, "invalid", f"{name} is empty; leave it out instead", field=name)
    return values[0]


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = query_value(request, name)
    if raw is None:
        return default
    if not _INTEGER_RE.fullmatch(raw):
        raise ApiError(400, "invalid", f"{name} must be a whole number", field=name)
    value = int(raw)
    if not low <= value <= high:
        raise ApiError(400, "invalid", f"{name} must be between {low} and {high}", field=name)
    return value


def time_param(request: web.Request, name: str, timezone: str) -> dt.datetime | None:
    """An ISO 8601 date or time from 2000 to 2099; without an offset it is read in `timezone`."""
    raw = query_value(request, name)
    if raw is None:
        return None
    if not _DATETIME_RE.fullmatch(raw):
        raise ApiError(400, "invalid", f"{name} must be an ISO 8601 date or time between 2000 and 2099",
                       field=name)
    value = dt.datetime.fromisoformat(raw)
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(timezone))
    return value


def enum_param(request: web.Request, name: str, allowed: frozenset[str] | set[str]) -> str | None:
    raw = query_value(request, name)
    if raw is not None and raw not in allowed:
        raise ApiError(400, "invalid", f"{name}: unknown value {raw[:32]!r}", field=name)
    return raw


def pattern_param(request: web.Request, name: str, pattern: str, what: str) -> str | None:
    raw = query_value(request, name)
    if raw is not None and not re.fullmatch(pattern, raw):
        raise ApiError(400, "invalid", f"{name} must be {what}", field=name)
    return raw
