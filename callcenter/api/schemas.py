"""Request and response bodies of the JSON API.

The same pydantic models validate requests, serialise responses and produce the schemas
of the OpenAPI document, so the document cannot drift from what the handlers do.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from callcenter.cases.lifecycle import CaseStatus, RejectionReason
from callcenter.cases.model import CaseView, LogEntry
from callcenter.privacy import changes_for, phone_for, text_for

Text = Annotated[StrictStr, Field(max_length=4000)]
ShortText = Annotated[StrictStr, Field(max_length=256)]
Coordinate = StrictFloat | StrictInt


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CaseCreate(_In):
    """A draft filed by staff on a caller's behalf."""

    description: Annotated[StrictStr, Field(min_length=1, max_length=4000)]
    reporter_phone: Annotated[StrictStr, Field(max_length=32)] | None = None
    anonymous: StrictBool = False
    confidential: StrictBool = False
    category: Annotated[StrictStr, Field(max_length=16)] | None = None
    grid: Annotated[StrictStr, Field(max_length=32)] | None = None
    address: ShortText | None = None
    lon: Coordinate | None = None
    lat: Coordinate | None = None
    notify_reporter: StrictBool = True


class CaseUpdate(_In):
    """Transcription changes; `version` guards against two staff members editing at once."""

    version: StrictInt | None = None
    description: Text | None = None
    category: Annotated[StrictStr, Field(max_length=16)] | None = None
    grid: Annotated[StrictStr, Field(max_length=32)] | None = None
    address: ShortText | None = None
    reporter_phone: Annotated[StrictStr, Field(max_length=32)] | None = None
    anonymous: StrictBool | None = None
    confidential: StrictBool | None = None
    lon: Coordinate | None = None
    lat: Coordinate | None = None


class CaseSubmit(_In):
    version: StrictInt | None = None


class CaseReject(_In):
    reason: RejectionReason
    note: ShortText | None = None


class CaseMerge(_In):
    into: Annotated[StrictStr, Field(max_length=32)]
    note: ShortText | None = None


PlatformStatus = Literal[
    "registered", "rejected", "dispatched", "processing", "feedback", "verified", "closed", "reopened"
]


class PlatformEventIn(_In):
    """A status change from the platform (supervision / command centre)."""

    event_id: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    status: PlatformStatus
    platform_number: Annotated[StrictStr, Field(max_length=64)] | None = None
    reason: RejectionReason | None = None
    note: ShortText | None = None


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
    status: Literal["ok"]
    database: Literal["ok"]
