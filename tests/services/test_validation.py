"""The shared range checks: any Duration or Timestamp a caller can send is converted or refused naming its field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from services.errors import InvalidArgumentError
from services.validation import LATEST_TIME, require_duration, require_int, require_timestamp

_INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
_LOW, _HIGH = timedelta(0), timedelta(days=36525)


@given(seconds=_INT64, nanos=_INT32)
def test_any_duration_is_converted_within_its_range_or_refused_naming_the_field(seconds: int, nanos: int) -> None:
    refused: str | None = None
    try:
        converted = require_duration(Duration(seconds=seconds, nanos=nanos), field="x.age", low=_LOW, high=_HIGH)
    except InvalidArgumentError as error:
        refused = error.field
    if refused is not None:
        assert refused == "x.age"
        return
    assert _LOW <= converted <= _HIGH
    assert converted == timedelta(seconds=seconds, microseconds=nanos // 1000)


@given(seconds=_INT64, nanos=_INT32)
def test_any_timestamp_is_converted_within_its_range_or_refused_naming_the_field(seconds: int, nanos: int) -> None:
    refused: str | None = None
    try:
        converted = require_timestamp(Timestamp(seconds=seconds, nanos=nanos), field="x.since")
    except InvalidArgumentError as error:
        refused = error.field
    if refused is not None:
        assert refused == "x.since"
        return
    assert datetime(1970, 1, 1, tzinfo=UTC) <= converted <= LATEST_TIME
    assert converted.timestamp() == pytest.approx(seconds + nanos / 1e9, abs=1e-3)


def test_the_bounds_are_inclusive_and_the_message_says_them() -> None:
    assert require_duration(Duration(seconds=300), field="f", low=timedelta(seconds=1), high=timedelta(minutes=5))
    with pytest.raises(InvalidArgumentError, match=r"^f: must be between 1 s and 5 min \(got 301 s\)$"):
        require_duration(Duration(seconds=301), field="f", low=timedelta(seconds=1), high=timedelta(minutes=5))
    with pytest.raises(InvalidArgumentError, match=r"^n: must be at most 9223372036854775807"):
        require_int(2**63, field="n")
    with pytest.raises(InvalidArgumentError, match=r"^n: must be at least 0 \(got -1\)$"):
        require_int(-1, field="n")
