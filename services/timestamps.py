"""Aware UTC datetimes: the clock services read, and conversions to and from google.protobuf.Timestamp."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

Clock = Callable[[], datetime]
"""What a service reads the time from: utc_now, or a test's clock."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_timestamp(moment: datetime) -> Timestamp:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: meterwire keeps every time zone-aware")
    # Integer arithmetic on the aware datetime: exact, and several times cheaper than FromDatetime (hot in
    # every heartbeat answer).
    seconds, micros = divmod((moment - _EPOCH) // _MICROSECOND, 1_000_000)
    return Timestamp(seconds=seconds, nanos=micros * 1000)


def from_timestamp(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)
