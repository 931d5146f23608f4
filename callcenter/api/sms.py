"""/api/v1/sms/inbound (gateways), /api/v1/tasks (supervisor tasks), /api/v1/metrics.

Inbound texts from HTTP gateways (Kannel, Jasmin) go through the same intake pipeline as
SMPP deliveries, with the same parsing and de-duplication: a JSON body in our own shape,
or Jasmin's form post (`id`, `from`, `to`, `coding`, `content`/`binary`), answered with
`ACK/Jasmin` as Jasmin expects. A store failure answers 503 so the gateway retries.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from callcenter.api.auth import authorize
from callcenter.web.http import ApiError, json_response, read_json
from callcenter.web.keys import services_key
from callcenter.app import Services
from callcenter.cases.numbering import CaseNumber, InvalidCaseNumber
from callcenter.service import sms_texts
from callcenter.service.sms_channel import SmsServices
from callcenter.service.sms_intake import IntakeResult
from callcenter.service.tasks import TaskView, parse_kind
from callcenter.service.tokens import Role
from sms.concat import ESM_UDHI
from sms.gateway import InboundMessage
from sms.smpp.session import Status

_MAX_HEX = 2 * 65535


class SmsInboundIn(BaseModel):
    """One inbound text from an HTTP gateway: decoded `text`, or the raw `hex` with `coding`."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    sender: str = Field(alias="from", min_length=1, max_length=32, description="the citizen's number")
    to: str = Field(default="", max_length=32, description="our service number it was sent to")
    text: str | None = Field(default=None, max_length=70_000, description="decoded text")
    hex: str | None = Field(default=None, max_length=_MAX_HEX, pattern="^([0-9a-fA-F]{2})*$",
                            description="raw short_message, UDH included when udhi is true")
    coding: int = Field(default=0, ge=0, le=255, description="SMPP data_coding of hex")
    udhi: bool = Field(default=False, description="hex starts with a user data header")
    sar_ref: int | None = Field(default=None, ge=0, le=65535)
    sar_total: int | None = Field(default=None, ge=1, le=255)
    sar_seq: int | None = Field(default=None, ge=1, le=255)
    id: str | None = Field(default=None, min_length=1, max_length=128,
                           description="the gateway's message id; makes de-duplication exact")
    gateway: str = Field(default="http", min_length=1, max_length=24, pattern="^[a-z0-9_-]+$",
                         description="names the id space of `id` (kannel, jasmin...)")

    @model_validator(mode="after")
    def _one_body(self) -> SmsInboundIn:
        if (self.text is None) == (self.hex is None):
            raise ValueError("give exactly one of text and hex")
        return self


class SmsInboundOut(BaseModel):
    status: Literal["accepted"]
    outcome: str = Field(description="draft, command, folded, blocked, loop, empty, part, rate_limited, error")
    case: str | None = Field(description="intake number of the draft or the case a command was about")
    duplicate: bool = Field(description="a redelivery of a message already handled")
    message_key: str | None


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    case: str = Field(min_length=1, max_length=20, description="受理编号 intake number")
    kind: Literal["verify", "check"] = Field(description="verify 核实 a report, or check 核查 a closure")
    grid: str | None = Field(default=None, max_length=20, description="CJ/T 213 grid; default: the case's grid")
    note: str | None = Field(default=None, max_length=500)
    request_id: str | None = Field(default=None, min_length=1, max_length=128,
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
    form = await request.post()

    def field(name: str, limit: int) -> str:
        value = form.get(name)
        text = value if isinstance(value, str) else ""
        if len(text) > limit:
            raise ApiError(422, "invalid", f"{name} is too long", field=name)
        return text

    sender = field("from", 32)
    if not sender:
        raise ApiError(422, "invalid", "from is required", field="from")
    try:
        coding = int(field("coding", 3) or "0")
    except ValueError as exc:
        raise ApiError(422, "invalid", "coding must be a number", field="coding") from exc
    binary = field("binary", _MAX_HEX)
    message_id = field("id", 128) or None
    if binary:
        try:
            raw = bytes.fromhex(binary)
        except ValueError as exc:
            raise ApiError(422, "invalid", "binary must be hex", field="binary") from exc
        return InboundMessage(sender=sender, destination=field("to", 32), short_message=raw, data_coding=coding,
                              message_id=message_id, source="http:jasmin")
    return InboundMessage(sender=sender, destination=field("to", 32), text=field("content", 70_000),
                          message_id=message_id, source="http:jasmin")


async def sms_inbound(request: web.Request) -> web.StreamResponse:
    await authorize(request, Role.GATEWAY)
    sms = _sms(request)
    form = request.content_type == "application/x-www-form-urlencoded"
    if form:
        message = await _inbound_from_form(request)
    else:
        message = _inbound_from_json(await read_json(request, SmsInboundIn))
    result: IntakeResult = await sms.intake.receive(message)
    if result.status != Status.ROK:
        raise ApiError(503, "unavailable", "the message could not be stored; deliver it again",
                       headers={"Retry-After": "5"})
    if form:
        return web.Response(text="ACK/Jasmin", content_type="text/plain")
    return json_response(SmsInboundOut(status="accepted", outcome=result.outcome, case=result.case_number,
                                       duplicate=result.duplicate, message_key=result.message_key))


async def create_task(request: web.Request) -> web.Response:
    principal = await authorize(request, Role.PLATFORM)
    body = await read_json(request, TaskCreate)
    try:
        number = CaseNumber.parse(body.case).value
    except InvalidCaseNumber as exc:
        raise ApiError(422, "invalid", str(exc), field="case") from exc
    view = await _sms(request).tasks.create(case_number=number, kind=parse_kind(body.kind), actor=principal.actor,
                                            grid=body.grid, note=body.note, request_id=body.request_id)
    response = json_response(TaskOut.from_view(view), status=201)
    response.headers["Location"] = f"/api/v1/tasks?case={view.case_number}"
    return response


async def list_tasks(request: web.Request) -> web.Response:
    await authorize(request, Role.STAFF, Role.PLATFORM)
    raw = request.query.get("case")
    if not raw:
        raise ApiError(400, "invalid", "give the case: ?case=<intake number>", field="case")
    try:
        number = CaseNumber.parse(raw).value
    except InvalidCaseNumber as exc:
        raise ApiError(400, "invalid", str(exc), field="case") from exc
    views = await _sms(request).tasks.list_for_case(number)
    return json_response(TaskList(items=[TaskOut.from_view(v) for v in views]))


async def metrics(request: web.Request) -> web.Response:
    await authorize(request, Role.STAFF)
    return json_response(await request.app[services_key].metrics.snapshot())


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/sms/inbound", sms_inbound)
    app.router.add_post("/api/v1/tasks", create_task)
    app.router.add_get("/api/v1/tasks", list_tasks)
    app.router.add_get("/api/v1/metrics", metrics)
