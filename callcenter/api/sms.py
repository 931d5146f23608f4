"""/api/v1/sms/inbound (gateways), /api/v1/tasks (supervisor tasks), /api/v1/metrics.

Inbound texts from HTTP gateways (Kannel, Jasmin) go through the same intake pipeline as
SMPP deliveries, with the same parsing and de-duplication: a JSON body in our own shape,
or Jasmin's form post (`id`, `from`, `to`, `coding`, `content`/`binary`), answered with
`ACK/Jasmin` as Jasmin expects. The intake answers stored / try again later / refused, and
this route maps that itself: 200, 503 (the gateway retries), 422 (it must not).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from aiohttp import web
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from callcenter.api import schemas
from callcenter.api.auth import authorize
from callcenter.api.cases import case_number, check_references
from callcenter.web.http import ApiError, json_response, query_value, read_json, validation_error
from callcenter.web.keys import services_key
from callcenter.app import Services
from callcenter.service.errors import InvalidInput
from callcenter.service import sms_texts
from callcenter.service.sms_channel import SmsServices
from callcenter.service.sms_intake import IntakeResult
from callcenter.service.tasks import TaskView, parse_kind
from callcenter.service.tokens import Role
from sms.concat import ESM_UDHI
from sms.gateway import InboundMessage, MoVerdict

_MAX_HEX = 2 * 65535


NO_NUL = schemas.NO_NUL
_SENDER = Field(alias="from", min_length=1, max_length=32, pattern=schemas.NOT_BLANK,
                description="the citizen's number (or a short code): not blank")


class SmsInboundIn(BaseModel):
    """One inbound text from an HTTP gateway: decoded `text`, or the raw `hex` with `coding`."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["text"], "properties": {"text": {"type": "string"}}},
                  {"required": ["hex"], "properties": {"hex": {"type": "string"}}}],
        "description": "exactly one of `text` and `hex` is a string"})

    sender: StrictStr = _SENDER
    to: StrictStr = Field(default="", max_length=32, pattern=NO_NUL, description="our service number it was sent to")
    text: StrictStr | None = Field(default=None, max_length=70_000, pattern=NO_NUL, description="decoded text")
    hex: StrictStr | None = Field(default=None, max_length=_MAX_HEX, pattern="^([0-9a-fA-F]{2})*$",
                                  description="raw short_message, UDH included when udhi is true")
    coding: StrictInt = Field(default=0, ge=0, le=255, description="SMPP data_coding of hex")
    udhi: StrictBool = Field(default=False, description="hex starts with a user data header")
    sar_ref: StrictInt | None = Field(default=None, ge=0, le=65535)
    sar_total: StrictInt | None = Field(default=None, ge=1, le=255)
    sar_seq: StrictInt | None = Field(default=None, ge=1, le=255)
    id: StrictStr | None = Field(default=None, min_length=1, max_length=128, pattern=NO_NUL,
                                 description="the gateway's message id; makes de-duplication exact")
    gateway: StrictStr = Field(default="http", min_length=1, max_length=24, pattern="^[a-z0-9_-]+$",
                               description="names the id space of `id` (kannel, jasmin...)")

    @model_validator(mode="after")
    def _one_body(self) -> SmsInboundIn:
        if (self.text is None) == (self.hex is None):
            raise PydanticCustomError("one_body", "give exactly one of text and hex",
                                      {"field": "text" if self.text is None else "hex"})
        return self


class JasminInboundForm(BaseModel):
    """Jasmin's HTTP MO post (application/x-www-form-urlencoded): `binary` hex for binary parts."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    sender: StrictStr = _SENDER
    to: StrictStr = Field(default="", max_length=32, pattern=NO_NUL)
    coding: StrictStr = Field(default="0", pattern="^(?:[0-9]{1,2}|1[0-9]{2}|2[0-4][0-9]|25[0-5])$",
                              description="SMPP data_coding, 0-255")
    content: StrictStr = Field(default="", max_length=70_000, pattern=NO_NUL)
    binary: StrictStr = Field(default="", max_length=_MAX_HEX, pattern="^([0-9a-fA-F]{2})*$")
    id: StrictStr = Field(default="", max_length=128, pattern=NO_NUL)


class SmsInboundOut(BaseModel):
    status: Literal["accepted"]
    outcome: str = Field(description="draft, command, folded, blocked, loop, empty, part, rate_limited, error")
    case: str | None = Field(description="intake number of the draft or the case a command was about")
    duplicate: bool = Field(description="a redelivery of a message already handled")
    message_key: str | None


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    case: StrictStr = Field(pattern=schemas.INTAKE_NUMBER, description="受理编号 intake number")
    kind: Literal["verify", "check"] = Field(description="verify 核实 a report, or check 核查 a closure")
    grid: StrictStr | None = Field(default=None, pattern=schemas.GRID,
                                   description="CJ/T 213 grid; default: the case's grid")
    note: StrictStr | None = Field(default=None, max_length=500, pattern=NO_NUL)
    request_id: StrictStr | None = Field(default=None, min_length=1, max_length=128, pattern=NO_NUL,
                                         description="idempotency key: a retry returns the first task")


class TaskOut(BaseModel):
    code: str = Field(description="task code, T + digits; the supervisor may quote it in the answer")
    case: str
    kind: Literal["verify", "check"]
    kind_label: str
    grid: str
    supervisor_name: str
    supervisor_phone: str
    status: Literal["sent", "answered", "escalated"]
    answer: Literal["confirmed", "not_confirmed"] | None
    answer_label: str | None
    answer_text: str | None
    note: str | None
    created_by: str
    created_at: dt.datetime
    answered_at: dt.datetime | None
    escalated_at: dt.datetime | None

    @classmethod
    def from_view(cls, view: TaskView) -> TaskOut:
        return cls(
            code=view.code, case=view.case_number, kind=view.kind,  # type: ignore[arg-type]
            kind_label=sms_texts.TASK_KINDS_ZH.get(view.kind, view.kind), grid=view.grid,
            supervisor_name=view.supervisor_name, supervisor_phone=view.supervisor_phone,
            status=view.status, answer=view.answer,  # type: ignore[arg-type]
            answer_label=sms_texts.ANSWERS_ZH.get(view.answer) if view.answer else None,
            answer_text=view.answer_text, note=view.note, created_by=view.created_by,
            created_at=view.created_at, answered_at=view.answered_at, escalated_at=view.escalated_at)


class TaskList(BaseModel):
    items: list[TaskOut]


class MetricOut(BaseModel):
    name: str
    type: Literal["counter", "gauge", "summary"]
    help: str
    samples: list[dict[str, Any]]


class MetricsOut(BaseModel):
    metrics: list[MetricOut]


def _sms(request: web.Request) -> SmsServices:
    services: Services = request.app[services_key]
    if services.sms is None:
        raise ApiError(503, "unavailable", "the SMS channel is not configured")
    return services.sms


def _inbound_from_json(body: SmsInboundIn) -> InboundMessage:
    raw = bytes.fromhex(body.hex) if body.hex is not None else b""
    return InboundMessage(
        sender=body.sender, destination=body.to, short_message=raw, data_coding=body.coding,
        esm_class=ESM_UDHI if body.udhi else 0, sar_msg_ref_num=body.sar_ref, sar_total_segments=body.sar_total,
        sar_segment_seqnum=body.sar_seq, text=body.text if body.hex is None else None, message_id=body.id,
        source=body.gateway if body.gateway == "http" else f"http:{body.gateway}"[:16])


async def _inbound_from_form(request: web.Request) -> InboundMessage:
    """Jasmin's HTTP MO post: id, from, to, coding, content and (for binary) hex `binary`."""
    try:
        form = await request.post()
    except (UnicodeDecodeError, ValueError, LookupError) as exc:
        raise ApiError(400, "bad_form", "the form could not be read; send UTF-8 form data") from exc
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    try:
        body = JasminInboundForm.model_validate(fields)
    except ValidationError as exc:
        raise validation_error(exc) from exc
    coding = int(body.coding)
    if body.binary:
        return InboundMessage(sender=body.sender, destination=body.to, short_message=bytes.fromhex(body.binary),
                              data_coding=coding, message_id=body.id or None, source="http:jasmin")
    return InboundMessage(sender=body.sender, destination=body.to, text=body.content,
                          message_id=body.id or None, source="http:jasmin")


async def sms_inbound(request: web.Request) -> web.StreamResponse:
    await authorize(request, Role.GATEWAY)
    sms = _sms(request)
    form = request.content_type == "application/x-www-form-urlencoded"
    if form:
        message = await _inbound_from_form(request)
    else:
        message = _inbound_from_json(await read_json(request, SmsInboundIn))
    result: IntakeResult = await sms.intake.receive(message)
    if result.verdict is MoVerdict.RETRY_LATER:
        raise ApiError(503, "unavailable", "the message could not be stored; deliver it again",
                       headers={"Retry-After": "5"})
    if result.verdict is MoVerdict.REFUSED:
        raise ApiError(422, "invalid", "the message cannot be stored (no sender address); do not deliver it again",
                       field="from")
    if form:
        return web.Response(text="ACK/Jasmin", content_type="text/plain")
    return json_response(SmsInboundOut(status="accepted", outcome=result.outcome, case=result.case_number,
                                       duplicate=result.duplicate, message_key=result.message_key))


async def create_task(request: web.Request) -> web.Response:
    principal = await authorize(request, Role.PLATFORM)
    body = await read_json(request, TaskCreate)
    number = case_number(body.case, "case")
    check_references(request, grid=body.grid)
    try:
        view = await _sms(request).tasks.create(case_number=number, kind=parse_kind(body.kind), actor=principal.actor,
                                                grid=body.grid, note=body.note, request_id=body.request_id)
    except InvalidInput as exc:
        if exc.field != "grid":
            raise
        # A listed grid with nobody on the roster, or a case without a grid: the state refuses it.
        raise ApiError(409, "conflict", f"grid: {exc.message}", field="grid") from exc
    response = json_response(TaskOut.from_view(view), status=201)
    response.headers["Location"] = f"/api/v1/tasks?case={view.case_number}"
    return response


async def list_tasks(request: web.Request) -> web.Response:
    await authorize(request, Role.STAFF, Role.PLATFORM)
    raw = query_value(request, "case")
    if raw is None:
        raise ApiError(400, "invalid", "give the case: ?case=<intake number>", field="case")
    if not re.fullmatch(schemas.INTAKE_NUMBER, raw):
        raise ApiError(400, "invalid", "case: an intake number is 8 to 12 digits", field="case")
    views = await _sms(request).tasks.list_for_case(case_number(raw, "case"))
    return json_response(TaskList(items=[TaskOut.from_view(v) for v in views]))


async def metrics(request: web.Request) -> web.Response:
    await authorize(request, Role.STAFF)
    return json_response(await request.app[services_key].metrics.snapshot())


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/sms/inbound", sms_inbound)
    app.router.add_post("/api/v1/tasks", create_task)
    app.router.add_get("/api/v1/tasks", list_tasks)
    app.router.add_get("/api/v1/metrics", metrics)
