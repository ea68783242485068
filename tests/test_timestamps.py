"""Timestamp conversions are exact for every aware datetime, whatever its zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from services.timestamps import from_timestamp, to_timestamp

_ZONES = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))


@given(st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(9999, 12, 30), timezones=_ZONES))
def test_to_timestamp_matches_protobuf_and_round_trips(moment: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(moment.astimezone(UTC))
    stamp = to_timestamp(moment)
    assert (stamp.seconds, stamp.nanos) == (expected.seconds, expected.nanos)
    assert from_timestamp(stamp) == moment


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        to_timestamp(datetime(2026, 1, 1))
