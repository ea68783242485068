"""Shared checks of request fields, each failing with INVALID_ARGUMENT that names the field.

Durations, timestamps and integers from outside are range-checked here before anything converts or stores them:
an unchecked Duration of 10^15 s overflows timedelta (an INTERNAL), a Timestamp past year 9999 fails every
database write it is part of.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from services.errors import InvalidArgumentError

_SLUG = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NANOS_PER_SECOND: Final = 1_000_000_000
_MICROSECOND: Final = timedelta(microseconds=1)

EARLIEST_TIME: Final = _EPOCH
"""The earliest time a request may carry: nothing meterwire records happened before 1970."""
LATEST_TIME: Final = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
"""The latest time a request may carry: the end of the range every database column and datetime holds."""
INT64_MAX: Final = 2**63 - 1


def require_slug(value: str, *, field: str) -> str:
    """Environment and gateway ids: lowercase letters, digits and '-', starting with a letter, 1-63 long."""
    if not value:
        raise InvalidArgumentError(field, "is required")
    if not _SLUG.fullmatch(value):
        raise InvalidArgumentError(
            field, f"{value!r} must be 1-63 lowercase letters, digits or '-', starting with a letter"
        )
    return value


def require_text(value: str, *, field: str, max_bytes: int, required: bool = False) -> str:
    if required and not value:
        raise InvalidArgumentError(field, "is required")
    if len(value.encode()) > max_bytes:
        raise InvalidArgumentError(field, f"is longer than {max_bytes} bytes")
    return value


def require_int(value: int, *, field: str, low: int = 0, high: int = INT64_MAX) -> int:
    """An integer within [low, high] (by default: not negative, fits a 64-bit column)."""
    if value < low:
        raise InvalidArgumentError(field, f"must be at least {low} (got {value})")
    if value > high:
        raise InvalidArgumentError(field, f"must be at most {high} (got {value})")
    return value


def _span(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"


def require_duration(value: Duration, *, field: str, low: timedelta, high: timedelta) -> timedelta:
    """The Duration as a timedelta, if it is a well-formed Duration within [low, high]; checked in integers
    before converting, so no value can overflow."""
    seconds, nanos = value.seconds, value.nanos
    if abs(nanos) >= _NANOS_PER_SECOND or (seconds > 0 > nanos) or (seconds < 0 < nanos):
        raise InvalidArgumentError(field, f"is not a valid Duration (seconds={seconds}, nanos={nanos})")
    total_nanos = seconds * _NANOS_PER_SECOND + nanos
    if not (low // _MICROSECOND) * 1000 <= total_nanos <= (high // _MICROSECOND) * 1000:
        raise InvalidArgumentError(field, f"must be between {_span(low)} and {_span(high)} (got {seconds} s)")
    return timedelta(microseconds=total_nanos // 1000)


def require_timestamp(
    value: Timestamp, *, field: str, earliest: datetime = EARLIEST_TIME, latest: datetime = LATEST_TIME
) -> datetime:
    """The Timestamp as an aware UTC datetime, if it is well formed and within [earliest, latest]."""
    seconds, nanos = value.seconds, value.nanos
    if not 0 <= nanos < _NANOS_PER_SECOND:
        raise InvalidArgumentError(field, f"is not a valid Timestamp (nanos={nanos})")
    low = (earliest - _EPOCH) // timedelta(seconds=1)
    high = (latest - _EPOCH) // timedelta(seconds=1)
    if not low <= seconds <= high:
        raise InvalidArgumentError(
            field, f"must be between {earliest:%Y-%m-%d} and {latest:%Y-%m-%d} (got {seconds} s since 1970)"
        )
    return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)
