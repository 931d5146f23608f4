"""The OpenAPI 3.1 document, built from the same pydantic models the handlers use."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel

from callcenter.api import schemas
from callcenter.api import sms as sms_api
from callcenter.web.http import json_response

_MODELS: list[type[BaseModel]] = [
    schemas.CaseCreate, schemas.CaseUpdate, schemas.CaseSubmit, schemas.CaseReject, schemas.CaseMerge,
    schemas.PlatformEventIn, schemas.CaseOut, schemas.CasePage, schemas.ErrorOut, schemas.HealthOut,
    sms_api.SmsInboundIn, sms_api.SmsInboundOut, sms_api.TaskCreate, sms_api.TaskOut, sms_api.TaskList,
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


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "bad request", 401: "no valid token", 403: "role may not do this", 404: "no such case",
            409: "conflict or illegal status change", 413: "body too large", 415: "not JSON",
            422: "a field is invalid (named in `field`)"}
    return {str(code): _json("ErrorOut", text[code]) for code in codes}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


NUMBER = {"name": "number", "in": "path", "required": True, "schema": {"type": "string"},
          "description": "受理编号 intake number"}
AUTH = [{"bearer": []}]
WRITE_ERRORS = (400, 401, 403, 404, 409, 413, 415, 422)


def build_document() -> dict[str, Any]:
    query = [
        {"name": name, "in": "query", "required": False, "schema": {"type": kind}, "description": text}
        for name, kind, text in [
            ("status", "string", "case status"), ("channel", "string", "phone, sms, staff, open311"),
            ("category", "string", "CJ/T 214 code"), ("grid", "string", "CJ/T 213 grid code"),
            ("reporter_phone", "string", "reporter's number, any usual form"),
            ("from", "string", "created at or after (ISO 8601)"), ("to", "string", "created before (ISO 8601)"),
            ("q", "string", "text in description or address"), ("offset", "integer", "page offset"),
            ("limit", "integer", "page size"),
        ]
    ]

    def action(summary: str, body: str | None, ok: int = 200) -> dict[str, Any]:
        op: dict[str, Any] = {"summary": summary, "security": AUTH, "parameters": [NUMBER],
                              "responses": {str(ok): _json("CaseOut", "the case"), **_errors(*WRITE_ERRORS)}}
        if body:
            op["requestBody"] = _body(body)
        return op

    return {
        "openapi": "3.1.0",
        "info": {"title": "callcenter intake API", "version": "1",
                 "description": "Draft cases (草稿案卷) from the hotline, SMS and staff, and the platform's "
                                "status changes."},
        "components": {
            "schemas": _components(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/healthz": {"get": {"summary": "liveness and database check",
                                 "responses": {"200": _json("HealthOut", "healthy"),
                                               "503": _json("ErrorOut", "database unreachable")}}},
            "/api/v1/cases": {
                "post": {"summary": "create a draft case (staff)", "security": AUTH,
                         "requestBody": _body("CaseCreate"),
                         "responses": {"201": _json("CaseOut", "the new draft"),
                                       **_errors(400, 401, 403, 413, 415, 422)}},
                "get": {"summary": "list and search cases", "security": AUTH, "parameters": query,
                        "responses": {"200": _json("CasePage", "a page of cases"), **_errors(400, 401, 403)}},
            },
            "/api/v1/cases/{number}": {
                "get": {"summary": "a case with its log", "security": AUTH, "parameters": [NUMBER],
                        "responses": {"200": _json("CaseOut", "the case"), **_errors(401, 403, 404, 422)}},
                "patch": action("transcription update (staff)", "CaseUpdate"),
            },
            "/api/v1/cases/{number}/submit": {"post": action("submit a draft for registration", "CaseSubmit")},
            "/api/v1/cases/{number}/reject": {"post": action("reject (不予立案) with a reason", "CaseReject")},
            "/api/v1/cases/{number}/merge": {"post": action("merge a duplicate into a master case", "CaseMerge")},
            "/api/v1/cases/{number}/events": {
                "post": action("a status change from the platform (role platform)", "PlatformEventIn")},
            **_sms_paths(),
        },
    }


def _sms_paths() -> dict[str, Any]:
    """SMS gateway delivery, supervisor tasks and metrics (callcenter/api/sms.py)."""
    unavailable = {"503": {**_json("ErrorOut", "not stored; deliver again (Retry-After)")}}
    return {
        "/api/v1/sms/inbound": {"post": {
            "summary": "an inbound SMS from an HTTP gateway (role gateway); Jasmin's form post is also accepted "
                       "and answered ACK/Jasmin",
            "security": AUTH, "requestBody": _body("SmsInboundIn"),
            "responses": {"200": _json("SmsInboundOut", "stored and handled"),
                          **_errors(400, 401, 403, 413, 415, 422), **unavailable}}},
        "/api/v1/tasks": {
            "post": {"summary": "send a supervisor task (核实/核查) for a case (role platform)", "security": AUTH,
                     "requestBody": _body("TaskCreate"),
                     "responses": {"201": _json("TaskOut", "the task; its notice is queued"),
                                   **_errors(400, 401, 403, 404, 413, 415, 422)}},
            "get": {"summary": "the supervisor tasks of a case", "security": AUTH,
                    "parameters": [{"name": "case", "in": "query", "required": True, "schema": {"type": "string"},
                                    "description": "受理编号 intake number"}],
                    "responses": {"200": _json("TaskList", "tasks, oldest first"), **_errors(400, 401, 403)}},
        },
        "/api/v1/metrics": {"get": {
            "summary": "in-process metrics: SMS link, intake, outbox (roles staff, admin)", "security": AUTH,
            "responses": {"200": _json("MetricsOut", "counters, gauges and summaries"), **_errors(401, 403)}}},
    }


_DOCUMENT: dict[str, Any] | None = None


def document() -> dict[str, Any]:
    global _DOCUMENT
    if _DOCUMENT is None:
        _DOCUMENT = build_document()
    return _DOCUMENT


async def openapi_view(request: web.Request) -> web.Response:
    return json_response(document())
