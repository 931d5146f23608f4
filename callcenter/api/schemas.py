"""Request and response bodies of the JSON API.

The same pydantic models validate requests, serialise responses and produce the schemas
of the OpenAPI document, so the document cannot drift from what the handlers do.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator
from phonenumbers import PhoneMetadata
from pydantic_core import PydanticCustomError

from callcenter.cases.lifecycle import CaseStatus, RejectionReason
from callcenter.cases.model import CaseView, LogEntry
from callcenter.cases.numbering import MAX_LENGTH
from callcenter.privacy import changes_for, phone_for, text_for

# Every constraint below is both enforced (pydantic) and declared (the OpenAPI document).
# No text may hold a NUL character: PostgreSQL cannot store one.
NO_NUL = r"^[^\x00]*$"
# What str.strip() removes; a description must have something else.
_SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = rf"^[^\x00]*[^\x00{_SPACE}][^\x00]*$"
# 受理编号: 8 to 12 digits (the last a Damm check digit; a wrong one names no case: 404).
INTAKE_NUMBER = rf"^[0-9]{{8,{MAX_LENGTH}}}$"


def _phone_pattern() -> str:
    """A mainland reporter's number as the API takes it, from libphonenumber's own number plan
    (so the document and `normalise_phone` agree): a mobile, bare or after +86, or a fixed line
    after its trunk 0 or after +86. Spaces and dashes belong to people, not to API clients."""
    plan = PhoneMetadata.metadata_for_region("CN")
    mobile = plan.mobile.national_number_pattern.replace("\\d", "[0-9]")
    fixed = plan.fixed_line.national_number_pattern.replace("\\d", "[0-9]")
    return rf"^(?:(?:\+86)?(?:{mobile})|(?:\+86|0)(?:{fixed}))$"


PHONE = _phone_pattern()
CATEGORY = r"^[CE][0-9]{4}$"  # the document lists the loaded catalogue's codes as an enum
GRID = r"^[0-9]{14,15}$"  # the document lists the loaded grids as an enum

Text = Annotated[StrictStr, Field(max_length=4000, pattern=NO_NUL)]
ShortText = Annotated[StrictStr, Field(max_length=256, pattern=NO_NUL)]
Phone = Annotated[StrictStr, Field(pattern=PHONE, description="E.164 or national digits, e.g. 13812345678")]
CategoryCode = Annotated[StrictStr, Field(pattern=CATEGORY, description="CJ/T 214 code of the catalogue")]
GridCodeText = Annotated[StrictStr, Field(pattern=GRID, description="CJ/T 213 unit grid code")]
IntakeNumber = Annotated[StrictStr, Field(pattern=INTAKE_NUMBER, description="受理编号 intake number")]
Longitude = Annotated[float, Field(ge=-180, le=180, strict=True)]
Latitude = Annotated[float, Field(ge=-90, le=90, strict=True)]


def _both_or_neither(*, together: bool) -> dict[str, Any]:
    """JSON Schema for "lon and lat: both numbers or neither" (and, for a PATCH, both keys or none)."""
    rules: list[dict[str, Any]] = [
        {"if": {"required": [a], "properties": {a: {"type": "number"}}},
         "then": {"required": [b], "properties": {b: {"type": "number"}}}}
        for a, b in (("lon", "lat"), ("lat", "lon"))
    ]
    if together:
        rules += [{"if": {"required": [a]}, "then": {"required": [b]}} for a, b in (("lon", "lat"), ("lat", "lon"))]
    return {"allOf": rules}


@functools.cache
def _codes(catalogue: Any) -> frozenset[str]:
    return frozenset(str(category.code) for category in catalogue.all())


def catalogue_codes(catalogue: Any) -> frozenset[str]:
    """The category codes a request may name: the loaded catalogue's (the document's enum)."""
    return _codes(catalogue)


@functools.cache
def _grids(grids: Any) -> frozenset[str]:
    return frozenset(grid.code.value for grid in grids)


def grid_codes(grids: Any) -> frozenset[str]:
    """The grid codes a request may name: the loaded grid index's (the document's enum)."""
    return _grids(grids)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CaseCreate(_In):
    """A draft filed by staff on a caller's behalf."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_both_or_neither(together=False))

    description: Annotated[StrictStr, Field(max_length=4000, pattern=NOT_BLANK)]
    reporter_phone: Phone | None = None
    anonymous: StrictBool = False
    confidential: StrictBool = False
    category: CategoryCode | None = None
    grid: GridCodeText | None = None
    address: ShortText | None = None
    lon: Longitude | None = None
    lat: Latitude | None = None
    notify_reporter: StrictBool = True

    @model_validator(mode="after")
    def _coordinates(self) -> CaseCreate:
        if (self.lon is None) != (self.lat is None):
            raise PydanticCustomError("coordinates", "give both lon and lat, or neither",
                                      {"field": "lon" if self.lon is None else "lat"})
        return self


class CaseUpdate(_In):
    """Transcription changes; `version` guards against two staff members editing at once."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_both_or_neither(together=True))

    version: StrictInt | None = None
    description: Text | None = None
    category: CategoryCode | None = None
    grid: GridCodeText | None = None
    address: ShortText | None = None
    reporter_phone: Phone | None = None
    anonymous: StrictBool | None = None
    confidential: StrictBool | None = None
    lon: Longitude | None = None
    lat: Latitude | None = None

    @model_validator(mode="after")
    def _coordinates(self) -> CaseUpdate:
        given = self.model_fields_set & {"lon", "lat"}
        if not given or (given == {"lon", "lat"} and (self.lon is None) == (self.lat is None)):
            return self
        missing = ({"lon", "lat"} - given or {"lon" if self.lon is None else "lat"}).pop()
        raise PydanticCustomError("coordinates", "give both lon and lat (both numbers or both null)",
                                  {"field": missing})


class CaseSubmit(_In):
    version: StrictInt | None = None


class CaseReject(_In):
    reason: RejectionReason
    note: ShortText | None = None


class CaseMerge(_In):
    into: IntakeNumber
    note: ShortText | None = None


PlatformStatus = Literal[
    "registered", "rejected", "dispatched", "processing", "feedback", "verified", "closed", "reopened"
]


class PlatformEventIn(_In):
    """A status change from the platform (supervision / command centre); `rejected` needs a `reason`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "if": {"properties": {"status": {"const": "rejected"}}},
        "then": {"required": ["reason"],
                 "properties": {"reason": {"type": "string", "enum": [r.value for r in RejectionReason]}}},
    })

    event_id: Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=NO_NUL)]
    status: PlatformStatus
    platform_number: Annotated[StrictStr, Field(max_length=64, pattern=NO_NUL)] | None = None
    reason: RejectionReason | None = None
    note: ShortText | None = None

    @model_validator(mode="after")
    def _reason(self) -> PlatformEventIn:
        if self.status == "rejected" and self.reason is None:
            raise PydanticCustomError("reason", "a rejection needs a reason", {"field": "reason"})
        return self


class LogEntryOut(BaseModel):
    at: dt.datetime
    actor: str
    action: str
    from_status: str | None
    to_status: str | None
    changes: dict[str, Any]
    reason: str | None
    event_id: str | None

    @classmethod
    def from_entry(cls, entry: LogEntry, show_phone: bool) -> LogEntryOut:
        return cls(at=entry.at, actor=entry.actor, action=entry.action, from_status=entry.from_status,
                   to_status=entry.to_status, changes=changes_for(entry.changes, show_phone),
                   reason=text_for(entry.reason, show_phone), event_id=entry.event_id)


class CaseOut(BaseModel):
    number: str = Field(description="受理编号 intake number: YYMMDD + serial + Damm check digit")
    status: CaseStatus
    status_label: str = Field(description="status in Chinese")
    channel: Literal["phone", "sms", "staff", "open311"]
    reporter_phone: str | None = Field(description="E.164; masked for roles that may not see it")
    anonymous: bool
    confidential: bool
    description: str
    recording_ref: str | None
    kind: Literal["component", "event"] | None
    category: str | None = Field(description="CJ/T 214 code, C (部件) or E (事件) + 4 digits")
    category_edition: str | None
    category_major: str | None = Field(description="大类 (2 digits) of `kind`, known before the minor")
    suggested_category: str | None
    suggested_confidence: float | None
    grid: str | None = Field(description="CJ/T 213 unit grid code, 14 or 15 digits")
    address: str | None
    lon: float | None
    lat: float | None
    platform_number: str | None = Field(description="案卷号 given by the platform on registration")
    rating: int | None
    master_number: str | None
    flags: list[str]
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    log: list[LogEntryOut] | None = None

    @classmethod
    def from_view(cls, view: CaseView, *, show_phone: bool, with_log: bool) -> CaseOut:
        """The case as a reader sees it: with `show_phone` false its numbers are masked
        everywhere, the reporter's field, the description and the log."""
        return cls(
            number=view.number, status=CaseStatus(view.status), status_label=CaseStatus(view.status).label_zh,
            channel=view.channel, reporter_phone=phone_for(view.reporter_phone, show_phone),  # type: ignore[arg-type]
            anonymous=view.anonymous, confidential=view.confidential,
            description=text_for(view.description, show_phone) or "", recording_ref=view.recording_ref,
            kind=view.kind, category=view.category, category_edition=view.category_edition,  # type: ignore[arg-type]
            category_major=view.category_major,
            suggested_category=view.suggested_category, suggested_confidence=view.suggested_confidence,
            grid=view.grid, address=text_for(view.address, show_phone), lon=view.lon, lat=view.lat,
            platform_number=view.platform_number, rating=view.rating, master_number=view.master_number,
            flags=list(view.flags), version=view.version, created_at=view.created_at,
            updated_at=view.updated_at,
            log=[LogEntryOut.from_entry(entry, show_phone) for entry in view.log] if with_log else None,
        )


class CasePage(BaseModel):
    items: list[CaseOut]
    total: int = Field(description="matches, counted up to 10000")
    total_is_exact: bool = Field(description="false when there are more matches than `total`")
    offset: int
    limit: int


class ErrorOut(BaseModel):
    error: str = Field(description="machine-readable code")
    message: str
    field: str | None = None


class HealthOut(BaseModel):
    status: Literal["ok", "draining"] = Field(
        description="`draining` (with HTTP 503): shutting down, finishing its calls; send nothing new")
    database: Literal["ok"]
    node: str = Field(description="this node's id ([node] id, or host name:port)")
    nodes: list[str] = Field(description="live nodes on the same store, by heartbeat, oldest first")
