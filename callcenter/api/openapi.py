"""The OpenAPI 3.1 document, built from the same pydantic models the handlers use."""

from __future__ import annotations

import functools
import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from callcenter.api import schemas
from callcenter.api import sms as sms_api
from callcenter.cases.lifecycle import CaseStatus
from callcenter.cases.model import Channel
from callcenter.settings import HttpSettings
from callcenter.web.http import DATETIME_PATTERN
from callcenter.web.keys import services_key

PAGE_SIZE_MAX = HttpSettings.model_fields["page_size_max"].default

_MODELS: list[type[BaseModel]] = [
    schemas.CaseCreate, schemas.CaseUpdate, schemas.CaseSubmit, schemas.CaseReject, schemas.CaseMerge,
    schemas.PlatformEventIn, schemas.CaseOut, schemas.CasePage, schemas.ErrorOut, schemas.HealthOut,
    sms_api.SmsInboundIn, sms_api.JasminInboundForm, sms_api.SmsInboundOut, sms_api.TaskCreate, sms_api.TaskOut, sms_api.TaskList,
    sms_api.MetricsOut,
]


def _components() -> dict[str, Any]:
    components: dict[str, Any] = {}
    for model in _MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            components[name] = definition
        components[model.__name__] = schema
    return components


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


_ERROR_TEXT = {
    400: "a query parameter or the JSON itself is malformed (named in `field` where there is one)",
    401: "no valid bearer token", 403: "the token's role may not do this",
    404: "no such case (also: an intake number whose check digit is wrong)",
    409: "the case's state refuses this: an illegal status change, a stale `version`, a merge into itself, "
         "no category before submit, no supervisor for the grid",
    413: "body larger than http.max_body_bytes", 415: "body is not application/json",
    422: "a body field breaks the schema (named in `field`)",
    503: "not stored; deliver again after Retry-After",
}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _json("ErrorOut", _ERROR_TEXT[code]) for code in codes}


def _body(name: str, *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(name)}}}


NUMBER = {"name": "number", "in": "path", "required": True,
          "schema": {"type": "string", "pattern": schemas.INTAKE_NUMBER},
          "description": "受理编号 intake number"}
AUTH = [{"bearer": []}]
WRITE_ERRORS = (400, 401, 403, 404, 409, 413, 415, 422)
LOCATION = {"Location": {"description": "where the new resource is read", "schema": {"type": "string"}}}


def _query(name: str, schema: dict[str, Any], description: str, *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def _with_enums(components: dict[str, Any], categories: list[str] | None, grids: list[str] | None) -> None:
    """Replace the category and grid patterns by the loaded catalogue's and grid index's codes."""
    for model in ("CaseCreate", "CaseUpdate", "TaskCreate"):
        for name, codes in (("category", categories), ("grid", grids)):
            prop = components.get(model, {}).get("properties", {}).get(name)
            if prop is None or codes is None:
                continue
            for option in prop.get("anyOf", [prop]):
                if option.get("type") == "string":
                    option.pop("pattern", None)
                    option.pop("maxLength", None)
                    option["enum"] = codes


def build_document(categories: list[str] | None = None, grids: list[str] | None = None,
                   page_size_max: int = PAGE_SIZE_MAX) -> dict[str, Any]:
    """The document; with the loaded category and grid codes, those fields list them as enums."""
    query = [
        _query("status", {"type": "string", "enum": sorted(s.value for s in CaseStatus)}, "case status"),
        _query("channel", {"type": "string", "enum": sorted(c.value for c in Channel)}, "intake channel"),
        _query("category", {"type": "string", "enum": categories} if categories is not None
               else {"type": "string", "pattern": schemas.CATEGORY}, "CJ/T 214 code"),
        _query("grid", {"type": "string", "enum": grids} if grids is not None
               else {"type": "string", "pattern": schemas.GRID}, "CJ/T 213 grid code"),
        _query("reporter_phone", {"type": "string", "pattern": schemas.PHONE},
               "the reporter's number; cases of anonymous or confidential reporters are never found by it"),
        _query("from", {"type": "string", "pattern": DATETIME_PATTERN},
               "created at or after: ISO 8601 date or time, 2000-2099; no offset = the service's time zone"),
        _query("to", {"type": "string", "pattern": DATETIME_PATTERN}, "created before (as `from`)"),
        _query("q", {"type": "string", "minLength": 1, "maxLength": 100, "pattern": schemas.NO_NUL},
               "text in description or address; with five digits in a row it skips private reporters' cases"),
        _query("offset", {"type": "integer", "minimum": 0, "maximum": 10_000_000}, "page offset"),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": page_size_max}, "page size"),
    ]

    def action(op_id: str, summary: str, body: str, ok: int = 200, *, body_required: bool = True) -> dict[str, Any]:
        return {"operationId": op_id, "summary": summary, "security": AUTH, "parameters": [NUMBER],
                "requestBody": _body(body, required=body_required),
                "responses": {str(ok): _json("CaseOut", "the case"), **_errors(*WRITE_ERRORS)}}

    components = _components()
    _with_enums(components, categories, grids)
    number_of_new = {"number": "$response.body#/number"}
    links = {op: {"operationId": op, "parameters": number_of_new}
             for op in ("getCase", "updateCase", "submitCase", "rejectCase", "mergeCase", "caseEvent")}
    return {
        "openapi": "3.1.0",
        "info": {"title": "callcenter intake API", "version": "1",
                 "description": "Draft cases (草稿案卷) from the hotline, SMS and staff, and the platform's "
                                "status changes. Reporters' numbers are masked as docs/privacy.md says."},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/healthz": {"get": {"summary": "liveness and database check",
                                 "responses": {"200": _json("HealthOut", "healthy"),
                                               "503": {"description": "database unreachable (ErrorOut), or the "
                                                       "node is draining (HealthOut, status `draining`)",
                                                       "content": {"application/json": {"schema": {"oneOf": [
                                                           _ref("ErrorOut"), _ref("HealthOut")]}}}}}}},
            "/api/v1/cases": {
                "post": {"operationId": "createCase", "summary": "create a draft case (staff)", "security": AUTH,
                         "requestBody": _body("CaseCreate"),
                         "responses": {"201": {**_json("CaseOut", "the new draft"), "headers": LOCATION,
                                               "links": links},
                                       **_errors(400, 401, 403, 413, 415, 422)}},
                "get": {"operationId": "listCases", "summary": "list and search cases", "security": AUTH, "parameters": query,
                        "responses": {"200": _json("CasePage", "a page of cases"), **_errors(400, 401, 403)}},
            },
            "/api/v1/cases/{number}": {
                "get": {"operationId": "getCase", "summary": "a case with its log", "security": AUTH, "parameters": [NUMBER],
                        "responses": {"200": _json("CaseOut", "the case"), **_errors(400, 401, 403, 404, 422)}},
                "patch": action("updateCase", "transcription update (staff)", "CaseUpdate"),
            },
            "/api/v1/cases/{number}/submit": {
                "post": action("submitCase", "submit a draft for registration", "CaseSubmit", body_required=False)},
            "/api/v1/cases/{number}/reject": {"post": action("rejectCase", "reject (不予立案) with a reason", "CaseReject")},
            "/api/v1/cases/{number}/merge": {"post": action("mergeCase", "merge a duplicate into a master case", "CaseMerge")},
            "/api/v1/cases/{number}/events": {
                "post": action("caseEvent", "a status change from the platform (role platform); a repeated event_id "
                               "answers as the first time", "PlatformEventIn")},
            **_sms_paths(),
        },
    }


def _sms_paths() -> dict[str, Any]:
    """SMS gateway delivery, supervisor tasks and metrics (callcenter/api/sms.py)."""
    return {
        "/api/v1/sms/inbound": {"post": {
            "summary": "an inbound SMS from an HTTP gateway (role gateway); Jasmin's form post is also accepted "
                       "and answered ACK/Jasmin",
            "security": AUTH,
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("SmsInboundIn")},
                "application/x-www-form-urlencoded": {"schema": _ref("JasminInboundForm")}}},
            "responses": {"200": {"description": "stored and handled", "content": {
                              "application/json": {"schema": _ref("SmsInboundOut")},
                              "text/plain": {"schema": {"type": "string", "const": "ACK/Jasmin"}}}},
                          **_errors(400, 401, 403, 413, 415, 422, 503)}}},
        "/api/v1/tasks": {
            "post": {"summary": "send a supervisor task (核实/核查) for a case (role platform)", "security": AUTH,
                     "requestBody": _body("TaskCreate"),
                     "responses": {"201": {**_json("TaskOut", "the task; its notice is queued"), "headers": LOCATION},
                                   **_errors(400, 401, 403, 404, 409, 413, 415, 422, 503)}},
            "get": {"summary": "the supervisor tasks of a case", "security": AUTH,
                    "parameters": [_query("case", {"type": "string", "pattern": schemas.INTAKE_NUMBER},
                                          "受理编号 intake number", required=True)],
                    "responses": {"200": _json("TaskList", "tasks, oldest first"),
                                  **_errors(400, 401, 403, 404, 503)}},
        },
        "/api/v1/metrics": {"get": {
            "summary": "in-process metrics: SMS link, intake, outbox (roles staff, admin)", "security": AUTH,
            "responses": {"200": _json("MetricsOut", "counters, gauges and summaries"), **_errors(401, 403)}}},
    }


_DOCUMENT: dict[str, Any] | None = None


def document() -> dict[str, Any]:
    """The document without the loaded code lists (the schemas every deployment shares)."""
    global _DOCUMENT
    if _DOCUMENT is None:
        _DOCUMENT = build_document()
    return _DOCUMENT


@functools.cache
def _served(catalogue: Any, grids: Any, page_size_max: int) -> str:
    return json.dumps(build_document(sorted(schemas.catalogue_codes(catalogue)), sorted(schemas.grid_codes(grids)),
                                     page_size_max), ensure_ascii=False)


async def openapi_view(request: web.Request) -> web.Response:
    """The document this service answers by: its category and grid codes listed."""
    services = request.app[services_key]
    text = _served(services.catalogue, services.grids, services.settings.http.page_size_max)
    return web.Response(text=text, content_type="application/json",
                        charset="utf-8")
