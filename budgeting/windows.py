"""Calendar windows of a budget: which window an instant falls in, cut at midnight in the budget's time zone.

A day, week (Monday) or month starts at local midnight of its first day and ends where the next one starts, so a
day across a DST change lasts 23 or 25 hours. Where midnight does not exist (a spring-forward gap at 00:00, as in
America/Santiago) the window starts at the first instant after the gap; where it occurs twice, at the first one
(PEP 495's fold=0 gives both). A TOTAL window spans all time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import IntEnum
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

US_PER_S: Final = 1_000_000


class Period(IntEnum):
    """meterwire.budget.v1.Period (same numbers)."""

    DAY = 1
    WEEK = 2
    MONTH = 3
    TOTAL = 4


@dataclass(frozen=True, slots=True)
class Window:
    """[start_s, end_s) in Unix seconds; end_s None: never ends (TOTAL)."""

    start_s: int
    end_s: int | None

    def contains(self, moment_s: float) -> bool:
        return self.start_s <= moment_s and (self.end_s is None or moment_s < self.end_s)


TOTAL_WINDOW: Final = Window(0, None)


class UnknownTimeZoneError(ValueError):
    """A time zone name that is not in the IANA database."""


@lru_cache(maxsize=256)
def time_zone(name: str) -> ZoneInfo:
    """The IANA zone `name` ("" is UTC); UnknownTimeZoneError names what was wrong."""
    if not name:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UnknownTimeZoneError(f"{name!r} is not an IANA time zone (e.g. 'Europe/Berlin', 'UTC')") from None


def _midnight_s(day: date, zone: ZoneInfo) -> int:
    """The first instant of `day` in `zone`, in Unix seconds."""
    local = datetime(day.year, day.month, day.day, tzinfo=zone)  # fold=0: see the module docstring
    return int(local.astimezone(UTC).timestamp())


def _first_day(period: Period, day: date) -> date:
    if period is Period.DAY:
        return day
    if period is Period.WEEK:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _next_first_day(period: Period, first: date) -> date:
    if period is Period.DAY:
        return first + timedelta(days=1)
    if period is Period.WEEK:
        return first + timedelta(days=7)
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def window_at(period: Period, zone: ZoneInfo, moment_s: float) -> Window:
    """The window of `period` in `zone` that holds the instant `moment_s`."""
    if period is Period.TOTAL:
        return TOTAL_WINDOW
    day = datetime.fromtimestamp(moment_s, tz=zone).date()
    first = _first_day(period, day)
    start = _midnight_s(first, zone)
    if start > moment_s:
        # Only where a gap swallowed midnight and `moment_s` is in the gap's shadow: cannot happen for the
        # instant's own local date, but guard against zone data that moves midnight by more than a day.
        first = _first_day(period, first - timedelta(days=1))
        start = _midnight_s(first, zone)
    return Window(start, _midnight_s(_next_first_day(period, first), zone))


def window_after(period: Period, zone: ZoneInfo, window: Window) -> Window | None:
    """The window that follows `window` (None after TOTAL's)."""
    if window.end_s is None:
        return None
    return window_at(period, zone, window.end_s)


def window_before(period: Period, zone: ZoneInfo, window: Window) -> Window | None:
    """The window that precedes `window` (None before TOTAL's)."""
    if window.end_s is None:
        return None
    return window_at(period, zone, window.start_s - 1)
