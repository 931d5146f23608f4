"""Staff hours: weekly hours, the 2026 public holidays and make-up working days (调休)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from callcenter.ivr.hours import DEFAULT_HOURS_FILE, BusinessHours, DayKind, HoursError

SHANGHAI = ZoneInfo("Asia/Shanghai")
HOURS = BusinessHours.load(DEFAULT_HOURS_FILE)


def at(day: str, time: str) -> dt.datetime:
    return dt.datetime.fromisoformat(f"{day}T{time}").replace(tzinfo=SHANGHAI)


@pytest.mark.parametrize(("day", "time", "open_"), [
    ("2026-03-02", "08:29", False),   # Monday, before opening
    ("2026-03-02", "08:30", True),
    ("2026-03-02", "17:29", True),
    ("2026-03-02", "17:30", False),   # end is exclusive
    ("2026-03-07", "10:00", False),   # Saturday
    ("2026-03-08", "10:00", False),   # Sunday
    ("2026-10-01", "10:00", False),   # 国庆节, a Thursday
    ("2026-10-07", "10:00", False),   # last day of 国庆节, a Wednesday
    ("2026-10-08", "10:00", True),
    ("2026-10-10", "10:00", True),    # Saturday worked instead (调休上班)
    ("2026-09-20", "10:00", True),    # Sunday worked instead
    ("2026-01-04", "10:00", True),    # Sunday after 元旦, worked
    ("2026-02-14", "09:00", True),    # Saturday before 春节, worked
    ("2026-02-16", "10:00", False),   # 除夕, a Monday
    ("2026-02-23", "10:00", False),   # 正月初七, a Monday, still off
    ("2026-02-28", "17:29", True),    # Saturday worked, weekday hours
    ("2026-02-28", "18:00", False),
    ("2026-05-05", "10:00", False),   # 劳动节 Tuesday
    ("2026-05-09", "10:00", True),
])
def test_is_open(day: str, time: str, open_: bool) -> None:
    assert HOURS.is_open(at(day, time)) is open_


def test_time_zones_are_converted() -> None:
    """02:00 UTC is 10:00 in Shanghai."""
    assert HOURS.is_open(dt.datetime(2026, 3, 2, 2, 0, tzinfo=dt.UTC))
    assert not HOURS.is_open(dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC))  # 18:00 local


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="time-zone-aware"):
        HOURS.is_open(dt.datetime(2026, 3, 2, 10, 0))


def test_the_sample_calendar_is_the_2026_notice() -> None:
    """国务院办公厅 2025-11-04: 33 days off in seven holidays, six weekend days worked."""
    off: dict[str, int] = {}
    for name in HOURS.holidays.values():
        off[name] = off.get(name, 0) + 1
    assert off == {"元旦": 3, "春节": 9, "清明节": 3, "劳动节": 5, "端午节": 3, "中秋节": 3,
                   "国庆节": 7}
    assert sorted(HOURS.makeup_days) == [dt.date(2026, 1, 4), dt.date(2026, 2, 14),
                                         dt.date(2026, 2, 28), dt.date(2026, 5, 9),
                                         dt.date(2026, 9, 20), dt.date(2026, 10, 10)]
    assert all(day.weekday() >= 5 for day in HOURS.makeup_days)  # always a weekend day
    assert HOURS.covers(dt.date(2026, 6, 1)) and not HOURS.covers(dt.date(2027, 1, 1))


def test_day_kinds() -> None:
    assert HOURS.day_kind(dt.date(2026, 2, 17)) is DayKind.HOLIDAY
    assert HOURS.day_kind(dt.date(2026, 2, 14)) is DayKind.MAKEUP
    assert HOURS.day_kind(dt.date(2026, 3, 7)) is DayKind.REST
    assert HOURS.day_kind(dt.date(2026, 3, 9)) is DayKind.WORKDAY


def test_next_opening() -> None:
    assert HOURS.next_opening(at("2026-02-15", "10:00")) == at("2026-02-24", "08:30")
    assert HOURS.next_opening(at("2026-03-02", "07:00")) == at("2026-03-02", "08:30")
    assert HOURS.next_opening(at("2026-03-06", "18:00")) == at("2026-03-09", "08:30")
    assert HOURS.next_opening(at("2026-03-02", "09:00")) == at("2026-03-02", "09:00")
    assert HOURS.next_opening(at("2026-09-30", "18:00")) == at("2026-10-08", "08:30")


# --------------------------------------------------------------------- the file format

BASE: dict[str, Any] = {"weekly": {"mon": ["08:30-12:00", "13:30-17:30"]}}
OCT_1, OCT_7 = dt.date(2026, 10, 1), dt.date(2026, 10, 7)


def test_lunch_break_and_24_00() -> None:
    hours = BusinessHours.from_mapping({"weekly": {"mon": ["08:30-12:00", "13:30-24:00"]}})
    assert not hours.is_open(at("2026-03-02", "12:30"))
    assert hours.is_open(at("2026-03-02", "23:59"))
    assert not hours.is_open(at("2026-03-03", "10:00"))


@pytest.mark.parametrize(("data", "message"), [
    ({"weekly": {"mon": ["08:30-12:00", "11:00-17:30"]}}, "overlap"),
    ({"weekly": {"mon": ["8:30-12:00"]}}, "is not a \"HH:MM-HH:MM\" range"),
    ({"weekly": {"mon": ["12:00-08:00"]}}, "must end after it starts"),
    ({"weekly": {"mon": ["08:00-24:30"]}}, "at 24:00 at the latest"),
    ({"weekly": {"monday": []}}, "unknown day(s) ['monday']"),
    ({}, "[weekly] table"),
    ({**BASE, "timezone": "Mars/Olympus"}, "unknown time zone"),
    ({**BASE, "hollidays": []}, "unknown keys ['hollidays']"),
    ({**BASE, "makeup_day_hours": "monday"}, "makeup_day_hours"),
    ({**BASE, "holidays": [{"name": "x", "from": "2026-10-01"}]}, "from/to must be dates"),
    ({**BASE, "holidays": [{"name": "x", "from": OCT_7, "to": OCT_1}]}, "is before from"),
    ({**BASE, "holidays": [{"name": "a", "from": OCT_1, "workdays": [OCT_1]}]},
     "is both a holiday (a) and a make-up working day (a)"),
    ({**BASE, "holidays": [{"name": "a", "from": OCT_1}, {"name": "b", "from": OCT_1}]},
     "already a holiday (a)"),
])
def test_bad_files_are_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(HoursError) as caught:
        BusinessHours.from_mapping(data, source="hours.toml")
    assert message in str(caught.value) and "hours.toml" in str(caught.value)


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "hours.toml"
    path.write_text("[weekly]\nmon = [\"08:30-17:30\"\n", encoding="utf-8")
    with pytest.raises(HoursError, match="not valid TOML"):
        BusinessHours.load(path)
    with pytest.raises(HoursError, match="cannot read"):
        BusinessHours.load(tmp_path / "missing.toml")
