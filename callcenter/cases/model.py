"""Plain values the service hands out; no ORM objects leave the service layer."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any


class Channel(enum.StrEnum):
    PHONE = "phone"
    SMS = "sms"
    STAFF = "staff"
    OPEN311 = "open311"


class CaseFlag(enum.StrEnum):
    NEEDS_TRANSCRIPTION = "needs_transcription"   # voicemail / recording to transcribe
    PARTIAL_MESSAGE = "partial_message"           # long SMS with parts missing after timeout
    LOSSY_TEXT = "lossy_text"                     # undecodable bytes replaced
    RECORDING_MISSING = "recording_missing"
    RECORDING_EMPTY = "recording_empty"
    AFTER_HOURS = "after_hours"
    FLOOD_FOLDED = "flood_folded"                 # several texts from one number folded in
    ENDANGERS_PEOPLE = "endangers_people"         # the reporter says it endangers people (Open311)
    VOICEMAIL = "voicemail"                       # a voicemail, not a report through the IVR menu


@dataclass(frozen=True)
class LogEntry:
    at: dt.datetime
    actor: str
    action: str
    from_status: str | None
    to_status: str | None
    changes: dict[str, Any]
    reason: str | None
    event_id: str | None


@dataclass(frozen=True)
class CaseView:
    id: int
    number: str
    status: str
    channel: str
    reporter_phone: str | None
    anonymous: bool
    confidential: bool
    description: str
    recording_ref: str | None
    kind: str | None
    category: str | None
    category_edition: str | None
    suggested_category: str | None
    suggested_confidence: float | None
    grid: str | None
    address: str | None
    lon: float | None
    lat: float | None
    platform_number: str | None
    rating: int | None
    master_number: str | None
    flags: tuple[str, ...]
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    source_ref: str | None = None
    category_major: str | None = None
    log: tuple[LogEntry, ...] = field(default_factory=tuple)
