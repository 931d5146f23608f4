"""Open311 GeoReport v2 at /open311/v2/: the standard intake and status feed for outside apps.

Mounted as a sub-application under /open311 so that its own middleware can turn every error on
those paths into the spec's error list (XML or JSON, by the path's suffix) instead of the
/api/v1 `{"error": ...}` shape; the main app's error middleware still wraps it.

Decisions, so that clients such as FixMyStreet know what to expect:

- Reads (discovery, services, requests) are public, as in the spec; no api_key is asked for.
- POST requests needs `api_key`: a token of role gateway, staff or admin. Missing, unknown or
  revoked keys and keys of other roles get 403.
- `jurisdiction_id` is accepted and ignored: this server serves exactly one jurisdiction.
- Every service has `metadata=true` and the attributes a hotline asks for (see ATTRIBUTES):
  where exactly, the number on the component's plate (部件 only), and whether it endangers
  people (required). POST validates them; attributes of other names (FixMyStreet sends its
  own, such as `fixmystreet_id`) are ignored. The answers are appended to the description,
  and "endangers people" also flags the draft for the console.
- POST ignores `email`, `first_name`, `last_name`, `device_id`, `account_id` and `address_id`:
  we keep no names or e-mail addresses (data minimisation); the phone number is kept so the
  reporter gets the receipt SMS, and it never appears in any Open311 output.
- `media_url` (http/https only) is appended to the description, since a case has no media
  column yet; GET output therefore leaves `media_url` empty.
- POST answers 200 (FixMyStreet and other clients accept any 2xx; some insist on 200). An
  unknown service_code answers 404, as the spec says.
- A retried POST returns the first request. The spec has no idempotency key, so a retry is
  recognised two ways, both stored as the case's `source_ref` (unique per channel, so two
  concurrent copies still make one case): an `Idempotency-Key` header, forever; and without
  one, the same api_key posting the same fields within `open311.retry_window_minutes`.
- A POST without a description uses the service name: the spec makes description optional,
  our case service does not.
- Status: closed = closed, rejected, merged; every other status is open. status_notes carries
  the Chinese status label, the rejection reason, or the master case of a merged duplicate.
- Reads list cases from every channel, not only Open311 ones, but only once they have a
  category: a draft still waiting for staff to classify it has no service_code and is
  neither listed nor found by id until it has one. Phone numbers are never output:
  the reporter's number is not a field here, mobile or landline numbers that citizens typed
  into a description or address are masked in every spelling (callcenter/privacy.py), and
  the description of an anonymous or confidential case is
  withheld altogether.
- Dates: start_date/end_date filter on requested_datetime; end_date is inclusive (a bare date
  covers its whole day); a value without an offset is read in the service's time zone; one
  query spans at most 90 days, and without dates the last 90 days are listed, newest first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from aiohttp import web

from callcenter.web.http import ApiError, Handler, reject_nul_in_url
from callcenter.web.keys import services_key
from callcenter.app import Services
from callcenter.cases.catalogue import CaseKind, Catalogue, Category, InvalidCategoryCode
from callcenter.cases.lifecycle import OPEN_STATES, CaseStatus, RejectionReason
from callcenter.cases.model import CaseFlag, CaseView, Channel
from callcenter.privacy import mask_numbers_in_text
from callcenter.service.cases import CaseFilter, DraftInput
from callcenter.service.errors import CaseNotFound, InvalidInput, ServiceError
from callcenter.service.tokens import Principal, Role

log = structlog.get_logger(__name__)

PREFIX = "/open311"
BASE = "/v2"
SPECIFICATION = "http://wiki.open311.org/GeoReport_v2"
CHANGESET = "2026-01-01T00:00:00+08:00"  # bump when the shape of this API changes
AGENCY = "城市管理监督指挥中心"
FORMATS = {"xml": "text/xml", "json": "application/json"}
POST_ROLES = (Role.GATEWAY, Role.STAFF, Role.ADMIN)
CLOSED_STATES = frozenset({CaseStatus.CLOSED, CaseStatus.REJECTED, CaseStatus.MERGED})
WINDOW = dt.timedelta(days=90)  # spec: default range and the widest range one query may span
MAX_RESULTS = 1000  # spec: at most 1000 requests per response
MAX_LIST_ITEMS = 50  # comma-separated service_code values per query
MAX_MEDIA_URL = 1024
MIN_YEAR, MAX_YEAR = 2000, 2099  # dates outside this century name no request (intake numbers are YYMMDD)
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 128

# Characters XML 1.0 cannot carry at all; ElementTree would write them and produce broken XML.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
Value = str | int | float | bool | None
Record = list[tuple[str, Value]]


class Open311Error(Exception):
    """An error the client sees as the spec's error list with this HTTP status."""

    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


# ---- rendering ---------------------------------------------------------------------------


def _fmt_of(request: web.Request) -> str:
    """The format a response (or error) must use: the path's suffix, XML when unknown."""
    return "json" if request.path.endswith(".json") else "xml"


def _format(request: web.Request) -> str:
    fmt = request.match_info.get("fmt", "")
    if fmt not in FORMATS:
        raise Open311Error(404, f"unknown format {fmt[:16]!r}; use .xml or .json")
    return fmt


def _xml_text(value: Value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return _XML_INVALID.sub("\ufffd", value)


def _xml_response(root: ET.Element, status: int = 200) -> web.Response:
    body = '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")
    return web.Response(text=body, status=status, content_type="text/xml", charset="utf-8")


def _json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, ensure_ascii=False), status=status,
                        content_type="application/json", charset="utf-8")


def _render_list(fmt: str, root: str, item: str, records: Sequence[Record],
                 status: int = 200) -> web.Response:
    """The spec's list shape: <root><item>fields</item>...</root>, or a JSON array of objects."""
    if fmt == "json":
        return _json_response([dict(record) for record in records], status)
    element = ET.Element(root)
    for record in records:
        child = ET.SubElement(element, item)
        for key, value in record:
            ET.SubElement(child, key).text = _xml_text(value)
    return _xml_response(element, status)


def error_response(fmt: str, status: int, description: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    # The spec's JSON example gives the code as a number; XML text is text either way.
    error: Record = [("code", status), ("description", description)]
    response = _render_list(fmt, "errors", "error", [error], status)
    response.headers.update(headers or {})
    return response


_OPEN311_FIELD = {"reporter_phone": "phone", "category": "service_code", "lon": "long",
                  "address": "address_string", "number": "service_request_id"}


@web.middleware
async def open311_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error under /open311 leaves in the spec's format; no stack trace reaches the client."""
    fmt = _fmt_of(request)
    try:
        try:
            reject_nul_in_url(request)
        except ApiError as exc:
            raise Open311Error(400, exc.message) from exc
        return await handler(request)
    except Open311Error as exc:
        return error_response(fmt, exc.status, exc.description)
    except CaseNotFound as exc:
        return error_response(fmt, 404, exc.message)
    except ServiceError as exc:
        field = _OPEN311_FIELD.get(exc.field or "", exc.field)
        status = 400 if exc.status in (400, 422) else exc.status
        return error_response(fmt, status, f"{field}: {exc.message}" if field else exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(fmt, exc.status, exc.reason, allow)
    except Exception:
        log.exception("open311.unhandled")
        return error_response(fmt, 500, "internal error; it has been logged")


# ---- services ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Attribute:
    """One question a service asks (the spec's service definition attribute)."""

    code: str
    datatype: str  # the spec's: string, number, datetime, text, singlevaluelist, multivaluelist
    required: bool
    description: str  # the question, as the client shows it
    datatype_description: str | None
    label: str  # how the answer reads in the case's description
    values: tuple[tuple[str, str], ...] = ()  # (key, name) for the list types
    kinds: frozenset[CaseKind] = frozenset(CaseKind)  # the services (部件/事件) that ask it
    max_length: int = 100
    pattern: re.Pattern[str] | None = None


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(
        code="location_detail", datatype="string", required=False,
        description="具体位置（门牌号、路口方位或附近标志物）",
        datatype_description="不超过 100 个字，如：清林路与龙城大道路口东北角公交站旁",
        label="具体位置"),
    Attribute(
        code="component_plate", datatype="string", required=False,
        description="部件标识牌上的编号（如有）",
        datatype_description="部件上标识牌的编号，字母、数字或连字符，不超过 32 位（如 16 位部件标识码）",
        label="部件编号", kinds=frozenset({CaseKind.COMPONENT}), max_length=32,
        pattern=re.compile(r"[A-Za-z0-9][A-Za-z0-9 /-]{0,31}")),
    Attribute(
        code="endangers_people", datatype="singlevaluelist", required=True,
        description="是否危及行人或车辆安全？",
        datatype_description=None, label="危及人身安全",
        values=(("yes", "是，危及人身安全"), ("no", "否"))),
)


def attributes_of(category: Category) -> list[Attribute]:
    return [a for a in ATTRIBUTES if category.code.kind in a.kinds]


def _service_record(category: Category) -> Record:
    keywords = ",".join(dict.fromkeys([*category.keywords, *category.aliases]))
    kind = category.code.kind.label_zh
    return [
        ("service_code", str(category.code)),
        ("service_name", category.name),
        ("description",
         f"{kind}·{category.major_name}·{category.name}（{category.edition} {category.code}）"),
        ("metadata", bool(attributes_of(category))),
        ("type", "realtime"),
        ("keywords", keywords),
        ("group", f"{kind}·{category.major_name}"),
    ]


def _attribute_json(attribute: Attribute, order: int) -> dict[str, Any]:
    """The spec's attribute; `values` only for the list types (an empty list would make
    clients such as FixMyStreet draw an empty drop-down)."""
    data: dict[str, Any] = {
        "variable": True, "code": attribute.code, "datatype": attribute.datatype,
        "required": attribute.required, "datatype_description": attribute.datatype_description,
        "order": order, "description": attribute.description,
    }
    if attribute.values:
        data["values"] = [{"key": key, "name": name} for key, name in attribute.values]
    return data


def _lookup(catalogue: Catalogue, code: str) -> Category | None:
    try:
        return catalogue.get(code)
    except InvalidCategoryCode:
        return None


async def discovery(request: web.Request) -> web.Response:
    fmt = _format(request)
    url = f"{request.url.origin()}{PREFIX}{BASE}/"
    formats = list(FORMATS.values())
    contact = f"{AGENCY}；api_key 由本中心签发"
    if fmt == "json":
        return _json_response({
            "changeset": CHANGESET, "contact": contact, "key_service": contact,
            "endpoints": [{"specification": SPECIFICATION, "url": url, "changeset": CHANGESET,
                           "type": "production", "formats": formats}],
        })
    root = ET.Element("discovery")
    for key, value in (("changeset", CHANGESET), ("contact", contact), ("key_service", contact)):
        ET.SubElement(root, key).text = value
    endpoint = ET.SubElement(ET.SubElement(root, "endpoints"), "endpoint")
    for key, value in (("specification", SPECIFICATION), ("url", url), ("changeset", CHANGESET),
                       ("type", "production")):
        ET.SubElement(endpoint, key).text = value
    formats_element = ET.SubElement(endpoint, "formats")
    for media_type in formats:
        ET.SubElement(formats_element, "format").text = media_type
    return _xml_response(root)


async def list_services(request: web.Request) -> web.Response:
    fmt = _format(request)
    catalogue = request.config_dict[services_key].catalogue
    return _render_list(fmt, "services", "service", [_service_record(c) for c in catalogue.all()])


async def service_definition(request: web.Request) -> web.Response:
    fmt = _format(request)
    code = request.match_info["code"]
    category = _lookup(request.config_dict[services_key].catalogue, code)
    if category is None:
        raise Open311Error(404, f"service_code {code[:16]!r} was not found")
    attributes = [_attribute_json(a, order) for order, a in enumerate(attributes_of(category), 1)]
    if fmt == "json":
        return _json_response({"service_code": str(category.code), "attributes": attributes})
    root = ET.Element("service_definition")
    ET.SubElement(root, "service_code").text = str(category.code)
    container = ET.SubElement(root, "attributes")
    for attribute in attributes:
        element = ET.SubElement(container, "attribute")
        for key, value in attribute.items():
            if key == "values":
                values = ET.SubElement(element, "values")
                for item in value:
                    entry = ET.SubElement(values, "value")
                    ET.SubElement(entry, "key").text = _xml_text(item["key"])
                    ET.SubElement(entry, "name").text = _xml_text(item["name"])
            else:
                ET.SubElement(element, key).text = _xml_text(value)
    return _xml_response(root)


# ---- POST requests -----------------------------------------------------------------------


async def _form(request: web.Request) -> dict[str, str]:
    """The POSTed fields, first value of each; the spec's form encoding, or multipart."""
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise Open311Error(400, "send the request as application/x-www-form-urlencoded")
    try:
        form = await request.post()
    except (UnicodeDecodeError, ValueError, LookupError) as exc:  # LookupError: charset=bogus
        raise Open311Error(400, "the form could not be read; send UTF-8 form data") from exc
    fields: dict[str, str] = {}
    for key, value in form.items():
        if not isinstance(value, str):
            raise Open311Error(400, f"{key}: file uploads are not accepted; send media_url instead")
        if "\x00" in key or "\x00" in value:
            name = key.replace("\x00", "\\0")[:32]
            raise Open311Error(400, f"{name}: may not contain a NUL character")
        fields.setdefault(key, value)
    return fields


async def _principal(services: Services, form: dict[str, str]) -> Principal:
    key = form.get("api_key", "").strip()
    if not key:
        raise Open311Error(403, "api_key was not provided")
    principal = await services.tokens.verify(key)
    if principal is None:
        raise Open311Error(403, "api_key is invalid")
    if principal.role not in POST_ROLES:
        raise Open311Error(403, "this api_key may not create service requests")
    structlog.contextvars.bind_contextvars(actor=f"open311:{principal.name}")
    return principal


def _coordinate(form: dict[str, str], name: str) -> float | None:
    raw = form.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError as exc:
        raise Open311Error(400, f"{name}: not a number") from exc
    if not math.isfinite(value):
        raise Open311Error(400, f"{name}: not a number")
    return value


def _media_url(form: dict[str, str]) -> str | None:
    raw = form.get("media_url", "").strip()
    if not raw:
        return None
    if len(raw) > MAX_MEDIA_URL or not re.fullmatch(r"https?://[^\s<>\"]+", raw, re.ASCII):
        raise Open311Error(
            400, f"media_url: must be an http or https URL of at most {MAX_MEDIA_URL} characters")
    return raw


def _answers(form: dict[str, str], category: Category) -> list[tuple[Attribute, str]]:
    """The service's attributes as posted (`attribute[code]`), checked against its definition."""
    answers = []
    for attribute in attributes_of(category):
        name = f"attribute[{attribute.code}]"
        raw = unicodedata.normalize("NFKC", form.get(name, "")).strip()
        if not raw:
            if attribute.required:
                raise Open311Error(400, f"{name}: required for service {category.code}")
            continue
        if attribute.values:
            if raw not in dict(attribute.values):
                keys = ", ".join(key for key, _ in attribute.values)
                raise Open311Error(400, f"{name}: must be one of {keys}")
        elif len(raw) > attribute.max_length or _XML_INVALID.search(raw) or any(
                unicodedata.category(ch) == "Cc" for ch in raw):
            raise Open311Error(400, f"{name}: at most {attribute.max_length} characters of text")
        elif attribute.pattern is not None and not attribute.pattern.fullmatch(raw):
            raise Open311Error(400, f"{name}: {attribute.datatype_description}")
        answers.append((attribute, raw))
    return answers


def _answer_text(attribute: Attribute, value: str) -> str:
    return f"{attribute.label}：{dict(attribute.values).get(value, value) if attribute.values else value}"


def _source_refs(request: web.Request, principal: Principal, form: dict[str, str],
                 now: dt.datetime, window: dt.timedelta) -> tuple[str | None, str | None]:
    """(the source_ref to file under, an earlier one that also counts as the same POST).

    With an Idempotency-Key header the key is the reference. Without one, the POSTed fields
    (all but api_key) and the poster make a fingerprint, filed under the current window
    bucket; the previous bucket is checked too, so a retry that crosses a bucket boundary
    is still found. Both references are hashes: they carry no reporter data.
    """
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None:
        key = key.strip()
        if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isascii() or not key.isprintable():
            raise Open311Error(400, f"{IDEMPOTENCY_HEADER}: 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters")
        digest = hashlib.sha256(f"{principal.name}\n{key}".encode()).hexdigest()[:48]
        return f"key:{digest}", None
    if window <= dt.timedelta(0):
        return None, None
    fields = sorted((k, v) for k, v in form.items() if k != "api_key")
    digest = hashlib.sha256(json.dumps([principal.name, fields], ensure_ascii=False).encode()).hexdigest()[:48]
    bucket = int(now.timestamp() // window.total_seconds())
    return f"form:{digest}:{bucket}", f"form:{digest}:{bucket - 1}"


def _receipt(fmt: str, view: CaseView) -> web.Response:
    notice = f"您反映的问题已受理，受理编号{view.number}，可凭此编号查询办理进度。"
    if view.reporter_phone:
        notice += "受理回执将以短信发送。"
    return _render_list(fmt, "service_requests", "request",
                        [[("service_request_id", view.number), ("service_notice", notice),
                          ("account_id", None)]])


async def create_request(request: web.Request) -> web.Response:
    fmt = _format(request)
    services = request.config_dict[services_key]
    form = await _form(request)
    principal = await _principal(services, form)

    code = form.get("service_code", "").strip()
    if not code:
        raise Open311Error(400, "service_code: required")
    category = _lookup(services.catalogue, code)
    if category is None:
        raise Open311Error(404, f"service_code: {code[:16]!r} was not found")
    lat, lon = _coordinate(form, "lat"), _coordinate(form, "long")
    if (lat is None) != (lon is None):
        raise Open311Error(400, f"{'long' if lon is None else 'lat'}: give lat and long together")
    address = form.get("address_string", "").strip() or None
    if lat is None and address is None:
        raise Open311Error(400, "lat: a location is required: lat and long, or address_string")
    answers = _answers(form, category)
    description = form.get("description", "").strip() or category.name
    extra = [_answer_text(attribute, value) for attribute, value in answers]
    media = _media_url(form)
    if media:
        extra.append(f"图片：{media}")
    if extra:
        description = "\n".join([description, *extra])
    flags = [CaseFlag.ENDANGERS_PEOPLE.value for attribute, value in answers
             if attribute.code == "endangers_people" and value == "yes"]

    now = services.cases.now()
    window = dt.timedelta(minutes=services.settings.open311.retry_window_minutes)
    source_ref, earlier_ref = _source_refs(request, principal, form, now, window)
    if earlier_ref is not None:
        earlier = await services.cases.find_by_source(Channel.OPEN311, earlier_ref)
        if earlier is not None and now - earlier.created_at <= window:
            log.info("open311.retry_answered", case_number=earlier.number)
            return _receipt(fmt, earlier)
    view = await services.cases.create_draft(
        DraftInput(channel=Channel.OPEN311, description=description,
                   reporter_phone=form.get("phone", "").strip() or None, category=str(category.code),
                   address=address, lon=lon, lat=lat, flags=flags, source_ref=source_ref),
        actor=f"open311:{principal.name}",
    )
    return _receipt(fmt, view)


# ---- GET requests ------------------------------------------------------------------------


def _rejection_note(view: CaseView) -> str | None:
    for entry in reversed(view.log):
        if entry.to_status == CaseStatus.REJECTED:
            try:
                return RejectionReason(str(entry.changes.get("reason"))).label_zh
            except ValueError:
                return None
    return None


def _status_notes(view: CaseView) -> str:
    status = CaseStatus(view.status)
    if status is CaseStatus.REJECTED:
        reason = _rejection_note(view)
        return f"{status.label_zh}：{reason}" if reason else status.label_zh
    if status is CaseStatus.MERGED and view.master_number:
        return f"{status.label_zh}：与受理编号{view.master_number}为同一问题，请以该编号查询进度"
    return status.label_zh


def _datetime(value: dt.datetime, tz: ZoneInfo) -> str:
    return value.astimezone(tz).isoformat(timespec="seconds")


def _public_description(view: CaseView) -> str | None:
    """Free text as the public may see it: withheld when the reporter asked for privacy."""
    if view.anonymous or view.confidential:
        return None  # the text may name or locate the reporter
    return mask_numbers_in_text(view.description, whole=True)


def _request_record(view: CaseView, catalogue: Catalogue, tz: ZoneInfo) -> Record:
    """One case as the spec's request; the reporter's phone is deliberately not a field."""
    category = _lookup(catalogue, view.category) if view.category else None
    closed = CaseStatus(view.status) in CLOSED_STATES
    return [
        ("service_request_id", view.number),
        ("status", "closed" if closed else "open"),
        ("status_notes", _status_notes(view)),
        ("service_name", category.name if category else None),
        ("service_code", view.category),
        ("description", _public_description(view)),
        ("agency_responsible", AGENCY),
        ("service_notice", f"可凭受理编号{view.number}查询办理进度。"),
        ("requested_datetime", _datetime(view.created_at, tz)),
        ("updated_datetime", _datetime(view.updated_at, tz)),
        ("expected_datetime", None),
        ("address", mask_numbers_in_text(view.address, whole=True) if view.address else None),
        ("address_id", None),
        ("zipcode", None),
        ("lat", view.lat),
        ("long", view.lon),
        ("media_url", None),
    ]


async def _with_reasons(services: Services, views: Iterable[CaseView]) -> list[CaseView]:
    """Rejected cases need their log for the public reason; searches return views without it."""
    out = []
    for view in views:
        if view.status == CaseStatus.REJECTED and not view.log:
            view = await services.cases.get(view.number)
        out.append(view)
    return out


def _time_param(request: web.Request, name: str, tz: ZoneInfo) -> tuple[dt.datetime, bool] | None:
    """A W3C/ISO 8601 date or time; a value without an offset is read in the service's zone.

    Returns the moment and whether it was a bare date (so an end date can include its whole day).
    """
    raw = request.query.get(name, "").strip()
    if not raw:
        return None
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError as exc:
        raise Open311Error(
            400, f"{name}: must be a W3C/ISO 8601 date or time, e.g. 2026-01-31T08:00:00+08:00") from exc
    if not MIN_YEAR <= value.year <= MAX_YEAR:  # also keeps the 90-day arithmetic in range
        raise Open311Error(400, f"{name}: must fall between {MIN_YEAR} and {MAX_YEAR}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value, "T" not in raw.upper() and " " not in raw


def _window(request: web.Request, now: dt.datetime, tz: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    """[from, to) for requested_datetime: the spec's 90-day default and 90-day widest range."""
    start = _time_param(request, "start_date", tz)
    end = _time_param(request, "end_date", tz)
    # end_date is inclusive: a bare date takes its whole day, a moment that very moment.
    end_at = None
    if end is not None:
        end_at = end[0] + (dt.timedelta(days=1) if end[1] else dt.timedelta(microseconds=1))
    if start is None and end_at is None:
        return now - WINDOW, now + dt.timedelta(seconds=1)
    if start is None:
        assert end_at is not None
        return end_at - WINDOW, end_at
    if end_at is None:
        return start[0], start[0] + WINDOW
    if end_at <= start[0]:
        raise Open311Error(400, "end_date: must not be before start_date")
    if end_at - start[0] > WINDOW + dt.timedelta(days=1):
        raise Open311Error(400, "end_date: a query may span at most 90 days")
    return start[0], end_at


def _list_param(request: web.Request, name: str) -> list[str]:
    values = [part.strip() for raw in request.query.getall(name, []) for part in raw.split(",")]
    return list(dict.fromkeys(v for v in values if v))


async def _by_ids(services: Services, ids: list[str]) -> list[CaseView]:
    if len(ids) > MAX_RESULTS:
        raise Open311Error(400, f"service_request_id: at most {MAX_RESULTS} ids per query")
    found = []
    for number in ids:
        try:
            view = await services.cases.get(number)
        except (CaseNotFound, InvalidInput):
            continue  # an id that names no request simply has no entry in the list
        if view.category:  # not public until it has a service_code
            found.append(view)
    return found


async def _search(services: Services, request: web.Request) -> list[CaseView]:
    tz = ZoneInfo(services.settings.cases.timezone)
    wanted = _list_param(request, "status")
    for value in wanted:
        if value.lower() not in ("open", "closed"):
            raise Open311Error(400, f"status: {value[:16]!r} is not open or closed")
    wanted_lower = {v.lower() for v in wanted}
    statuses: tuple[str, ...] = ()  # both, or no filter
    if wanted_lower == {"open"}:
        statuses = tuple(sorted(OPEN_STATES))
    elif wanted_lower == {"closed"}:
        statuses = tuple(sorted(CLOSED_STATES))
    given = _list_param(request, "service_code")
    if len(given) > MAX_LIST_ITEMS:
        raise Open311Error(400, f"service_code: at most {MAX_LIST_ITEMS} codes per query")
    codes: list[str] = []
    for value in given:
        category = _lookup(services.catalogue, value)
        if category is None:
            raise Open311Error(400, f"service_code: {value[:16]!r} is not a known service")
        codes.append(str(category.code))
    created_from, created_to = _window(request, services.cases.now(), tz)
    page = await services.cases.search(
        CaseFilter(statuses=statuses, categories=tuple(codes), created_from=created_from,
                   created_to=created_to, categorised=True),
        offset=0, limit=MAX_RESULTS)
    return page.items



async def list_requests(request: web.Request) -> web.Response:
    fmt = _format(request)
    services = request.config_dict[services_key]
    ids = _list_param(request, "service_request_id")
    views = await _by_ids(services, ids) if ids else await _search(services, request)
    views = await _with_reasons(services, views)
    tz = ZoneInfo(services.settings.cases.timezone)
    records = [_request_record(view, services.catalogue, tz) for view in views]
    return _render_list(fmt, "service_requests", "request", records)


async def get_request(request: web.Request) -> web.Response:
    fmt = _format(request)
    services = request.config_dict[services_key]
    number = request.match_info["id"]
    try:
        view = await services.cases.get(number)
    except InvalidInput as exc:  # a malformed id names no request: that is a 404, not a 400
        raise Open311Error(404, f"service_request_id {number[:16]!r} was not found") from exc
    if not view.category:  # a draft staff have not classified yet is not a public request
        raise Open311Error(404, f"service_request_id {number[:16]!r} was not found")
    tz = ZoneInfo(services.settings.cases.timezone)
    record = _request_record(view, services.catalogue, tz)
    return _render_list(fmt, "service_requests", "request", [record])


# ---- wiring ------------------------------------------------------------------------------


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/discovery.{fmt}", discovery),
    ("GET", "/services.{fmt}", list_services),
    ("GET", "/services/{code:[^/.]+}.{fmt}", service_definition),
    ("GET", "/requests.{fmt}", list_requests),
    ("POST", "/requests.{fmt}", create_request),
    ("GET", "/requests/{id:[^/.]+}.{fmt}", get_request),
)


def add_routes(app: web.Application) -> None:
    """Mount /open311 as a sub-app with its own error middleware inside the main one."""
    sub = web.Application(middlewares=[open311_errors])
    for method, path, handler in ROUTES:
        sub.router.add_route(method, BASE + path, handler)
    app.add_subapp(PREFIX, sub)
