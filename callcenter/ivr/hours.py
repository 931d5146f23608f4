"""Staff hours (人工服务时间): weekly hours, public holidays and make-up working days (调休).

China moves working days around its public holidays every year (a Sunday or Saturday
becomes a working day, 调休上班), so "is it a weekday" is not enough: the calendar is data,
published each November by the State Council and copied into `config/hours.toml`.
Pure: the caller passes `now` (tz-aware), so tests and the `check_hours` action agree.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["DEFAULT_HOURS_FILE", "BusinessHours", "DayKind", "HoursError", "TimeRange"]

DEFAULT_HOURS_FILE = Path(__file__).resolve().parents[2] / "config" / "hours.toml"

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RANGE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])")
_TOP_KEYS = frozenset({"timezone", "years", "weekly", "makeup_day_hours", "holidays"})
_HOLIDAY_KEYS = frozenset({"name", "from", "to", "workdays"})
# Look this far ahead for the next opening (a year covers any holiday run).
_SEARCH_DAYS = 370


class HoursError(ValueError):
    """The hours file is unusable; the message names the file and the key."""


class DayKind(enum.StrEnum):
    WORKDAY = "workday"      # an ordinary day with weekly hours
    HOLIDAY = "holiday"      # 法定节假日 / 调休放假: closed
    MAKEUP = "makeup"        # 调休上班: a weekend day worked instead
    REST = "rest"            # a day the weekly hours leave closed


@dataclass(frozen=True, order=True)
class TimeRange:
    """[start, end) in minutes after local midnight; end may be 24:00 (1440)."""

    start: int
    end: int

    def __contains__(self, minute: object) -> bool:
        return isinstance(minute, int) and self.start <= minute < self.end

    def __str__(self) -> str:
        start, end = divmod(self.start, 60), divmod(self.end, 60)
        return f"{start[0]:02d}:{start[1]:02d}-{end[0]:02d}:{end[1]:02d}"


@dataclass(frozen=True)
class BusinessHours:
    timezone: ZoneInfo
    weekly: tuple[tuple[TimeRange, ...], ...]  # Monday first
    holidays: Mapping[dt.date, str]
    makeup_days: Mapping[dt.date, str]
    makeup_hours: tuple[TimeRange, ...]
    years: frozenset[int] = frozenset()
    source: str = "<memory>"

    @classmethod
    def load(cls, path: Path | str = DEFAULT_HOURS_FILE) -> BusinessHours:
        path = Path(path)
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise HoursError(f"{path}: cannot read the hours file: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise HoursError(f"{path}: not valid TOML: {exc}") from exc
        return cls.from_mapping(data, source=str(path))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "<memory>") -> BusinessHours:
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise HoursError(f"{source}: unknown keys {unknown}; allowed: {sorted(_TOP_KEYS)}")
        zone_name = data.get("timezone", "Asia/Shanghai")
        try:
            zone = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
            raise HoursError(f"{source}: timezone: unknown time zone {zone_name!r}") from exc
        weekly_raw = data.get("weekly")
        if not isinstance(weekly_raw, dict):
            raise HoursError(f"{source}: [weekly] table with mon..sun is missing")
        extra = sorted(set(weekly_raw) - set(_WEEKDAYS))
        if extra:
            raise HoursError(f"{source}: weekly: unknown day(s) {extra}; use {list(_WEEKDAYS)}")
        weekly = tuple(_ranges(weekly_raw.get(day, []), f"{source}: weekly.{day}")
                       for day in _WEEKDAYS)
        like = data.get("makeup_day_hours", "mon")
        if like not in _WEEKDAYS:
            raise HoursError(f"{source}: makeup_day_hours: must be one of {list(_WEEKDAYS)}, "
                             f"got {like!r}")
        years_raw = data.get("years", [])
        if not isinstance(years_raw, list) or not all(isinstance(y, int) and not isinstance(y, bool)
                                                      for y in years_raw):
            raise HoursError(f"{source}: years: must be a list of years, got {years_raw!r}")
        holidays: dict[dt.date, str] = {}
        makeup: dict[dt.date, str] = {}
        rows = data.get("holidays", [])
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise HoursError(f"{source}: holidays: must be an array of tables [[holidays]]")
        for index, row in enumerate(rows, start=1):
            where = f"{source}: [[holidays]] #{index}"
            _holiday(row, where, holidays, makeup)
        clash = sorted(set(holidays) & set(makeup))
        if clash:
            day = clash[0]
            raise HoursError(f"{source}: {day} is both a holiday ({holidays[day]}) and a make-up "
                             f"working day ({makeup[day]})")
        return cls(timezone=zone, weekly=weekly, holidays=MappingProxyType(holidays),
                   makeup_days=MappingProxyType(makeup),
                   makeup_hours=weekly[_WEEKDAYS.index(like)], years=frozenset(years_raw),
                   source=source)

    # ---- questions

    def day_kind(self, day: dt.date) -> DayKind:
        if day in self.holidays:
            return DayKind.HOLIDAY
        if day in self.makeup_days:
            return DayKind.MAKEUP
        return DayKind.WORKDAY if self.weekly[day.weekday()] else DayKind.REST

    def hours_on(self, day: dt.date) -> tuple[TimeRange, ...]:
        kind = self.day_kind(day)
        if kind is DayKind.HOLIDAY:
            return ()
        if kind is DayKind.MAKEUP:
            return self.makeup_hours
        return self.weekly[day.weekday()]

    def is_open(self, now: dt.datetime) -> bool:
        """Are staff on duty at `now` (tz-aware; converted to the calendar's zone)."""
        local = self._local(now)
        minute = local.hour * 60 + local.minute
        return any(minute in span for span in self.hours_on(local.date()))

    def next_opening(self, now: dt.datetime) -> dt.datetime | None:
        """When staff are next on duty (now itself if open); None if never within a year."""
        local = self._local(now)
        if self.is_open(local):
            return local
        minute = local.hour * 60 + local.minute
        for offset in range(_SEARCH_DAYS):
            day = local.date() + dt.timedelta(days=offset)
            for span in self.hours_on(day):
                if offset > 0 or span.start > minute:
                    midnight = dt.datetime.combine(day, dt.time(), tzinfo=self.timezone)
                    return midnight + dt.timedelta(minutes=span.start)
        return None

    def covers(self, day: dt.date) -> bool:
        """Whether the file lists that year's holidays (else only weekly hours apply)."""
        return day.year in self.years

    def _local(self, now: dt.datetime) -> dt.datetime:
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("BusinessHours needs a time-zone-aware datetime")
        return now.astimezone(self.timezone)


def _ranges(raw: Any, where: str) -> tuple[TimeRange, ...]:
    if not isinstance(raw, list):
        raise HoursError(f"{where}: must be a list of \"HH:MM-HH:MM\" ranges, got {raw!r}")
    spans: list[TimeRange] = []
    for text in raw:
        match = _RANGE.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise HoursError(f"{where}: {text!r} is not a \"HH:MM-HH:MM\" range")
        start = int(match[1]) * 60 + int(match[2])
        end = int(match[3]) * 60 + int(match[4])
        if end > 24 * 60 or start >= end:
            raise HoursError(f"{where}: {text!r} must end after it starts, at 24:00 at the latest")
        spans.append(TimeRange(start, end))
    spans.sort()
    for before, after in zip(spans, spans[1:]):
        if after.start < before.end:
            raise HoursError(f"{where}: {before} and {after} overlap")
    return tuple(spans)


def _holiday(row: Mapping[str, Any], where: str, holidays: dict[dt.date, str],
             makeup: dict[dt.date, str]) -> None:
    unknown = sorted(set(row) - _HOLIDAY_KEYS)
    if unknown:
        raise HoursError(f"{where}: unknown keys {unknown}; allowed: {sorted(_HOLIDAY_KEYS)}")
    name = row.get("name")
    if not isinstance(name, str) or not name.strip():
        raise HoursError(f"{where}: name must be a non-empty string")
    first, last = row.get("from"), row.get("to", row.get("from"))
    if not _is_date(first) or not _is_date(last):
        raise HoursError(f"{where} ({name}): from/to must be dates like 2026-10-01 (no quotes)")
    if last < first:
        raise HoursError(f"{where} ({name}): to {last} is before from {first}")
    day = first
    while day <= last:
        if day in holidays:
            raise HoursError(f"{where} ({name}): {day} is already a holiday ({holidays[day]})")
        holidays[day] = name
        day += dt.timedelta(days=1)
    workdays = row.get("workdays", [])
    if not isinstance(workdays, list) or not all(_is_date(d) for d in workdays):
        raise HoursError(f"{where} ({name}): workdays must be a list of dates like 2026-09-20")
    for work in workdays:
        makeup[work] = name


def _is_date(value: Any) -> bool:
    return isinstance(value, dt.date) and not isinstance(value, dt.datetime)
