"""Rows built from protobuf on the ingest hot path: tags read once, their JSON and limits exactly as before."""

from __future__ import annotations

import json
import time
from typing import Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterwire.common.v1 import usage_pb2
from meterwire.telemetry.v1 import telemetry_service_pb2 as pb
from services.accounting.rollup import RollupKey, RollupRow, add_to_rollup, merge_rollups
from services.telemetry.rows import (
    EVENT_COLUMNS,
    event_values,
    json_object,
    tag_items,
    usage_event_row,
    usage_event_tag_rows,
)
from services.telemetry.validation import (
    MAX_TAG_KEY_BYTES,
    MAX_TAG_VALUE_BYTES,
    MAX_TAGS,
    BatchLimits,
    rejection_of,
)
from tests.telemetry.events import usage_event, varied_events

_LIMITS = BatchLimits(max_events=2000, max_bytes=4 << 20, max_clock_skew_us=300_000_000, dedupe_horizon_us=10**14)

AWKWARD_TEXT = [
    "plain",
    "",
    'quote " and backslash \\',
    "tab\tnewline\ncontrol\x01",
    "naïve café",
    "emoji 🚀 beyond the BMP",
    "日本語",
    "</script>",
]


def _row_and_rejection(event: usage_pb2.UsageEvent) -> tuple[dict[str, object], pb.RejectedEvent | None]:
    tags = tag_items(event)
    row = usage_event_row(event, environment_id="env", gateway_key=7, tags=tags)
    return row, rejection_of(event, row, tags, 0, time.time_ns() // 1000, _LIMITS)


def test_the_tags_column_is_the_sorted_json_object_it_always_was() -> None:
    tags = {f"k{i}-{text}" if text else f"k{i}": text for i, text in enumerate(AWKWARD_TEXT)}
    event = usage_event(tags=tags)

    row, rejection = _row_and_rejection(event)

    assert rejection is None
    assert row["tags"] == json.dumps(tags, sort_keys=True)
    assert json.loads(str(row["tags"])) == tags


def test_token_categories_are_the_sorted_json_object_they_always_were() -> None:
    categories = {"image": 12, "audio": 0, "cached_audio": 10**10}
    event = usage_event(tokens=usage_pb2.TokenCounts(input=5, categories=categories))

    row, rejection = _row_and_rejection(event)

    assert rejection is None
    assert row["token_categories"] == json.dumps(categories, sort_keys=True)


@pytest.mark.parametrize("items", [[], [("a", "b")], [("a", 1), ("b", "x")], [(text, text) for text in AWKWARD_TEXT]])
def test_json_object_equals_json_dumps_with_sorted_keys(items: list[tuple[str, str | int]]) -> None:
    ordered = sorted(items)
    assert json_object(ordered) == json.dumps(dict(ordered), sort_keys=True)


_INT64: Final = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@given(st.lists(st.tuples(st.text(), st.text() | _INT64), unique_by=lambda item: item[0]))
def test_json_object_of_any_map_equals_json_dumps_with_sorted_keys(items: list[tuple[str, str | int]]) -> None:
    assert json_object(items) == json.dumps(dict(items), sort_keys=True)


def test_a_row_lists_its_columns_in_the_order_the_insert_takes_them() -> None:
    row, _ = _row_and_rejection(usage_event(tags={"team": "search"}))

    assert tuple(row) == EVENT_COLUMNS
    assert event_values(row) == tuple(row[column] for column in EVENT_COLUMNS)


def test_merged_rollups_equal_the_rollups_of_all_the_rows_and_leave_their_parts_alone() -> None:
    # The writer merges the rollups each batch made of its own rows when every event of a transaction is new.
    rows = [usage_event_row(event, environment_id="env", gateway_key=1) for event in varied_events(300)]
    whole: dict[RollupKey, RollupRow] = {}
    parts: list[dict[RollupKey, RollupRow]] = [{}, {}, {}]
    for n, row in enumerate(rows):
        add_to_rollup(whole, row)
        add_to_rollup(parts[n * 3 // len(rows)], row)
    copies = [{key: list(row) for key, row in part.items()} for part in parts]
    merged: dict[RollupKey, RollupRow] = {}
    for part in parts:
        merge_rollups(merged, part)
    assert merged == whole
    assert len(whole) < sum(len(part) for part in parts)  # keys shared between the parts were added up
    assert parts == copies


def test_an_event_without_tags_has_no_tags_column_and_no_tag_rows() -> None:
    event = usage_event()

    row, rejection = _row_and_rejection(event)

    assert rejection is None
    assert row["tags"] is None
    assert tag_items(event) == []


def test_tag_rows_are_one_per_tag_keyed_like_the_event_row() -> None:
    event = usage_event(tags={"team": "search", "feature": "rag"})
    tags = tag_items(event)
    row = usage_event_row(event, environment_id="env", gateway_key=7, tags=tags)

    assert usage_event_tag_rows(tags, row) == [
        (7, event.event_id, "feature", "rag", "env", row["event_time_us"]),
        (7, event.event_id, "team", "search", "env", row["event_time_us"]),
    ]


@pytest.mark.parametrize(
    ("tags", "field"),
    [
        pytest.param({"k" * MAX_TAG_KEY_BYTES: "v" * MAX_TAG_VALUE_BYTES}, None, id="at-the-limits"),
        pytest.param(
            {"é" * (MAX_TAG_KEY_BYTES // 2): "é" * (MAX_TAG_VALUE_BYTES // 2)}, None, id="at-the-limits-2-byte"
        ),
        pytest.param({f"k{i}": "v" for i in range(MAX_TAGS)}, None, id="most-tags"),
        pytest.param({f"k{i}": "v" for i in range(MAX_TAGS + 1)}, "tags", id="too-many-tags"),
        pytest.param({"": "v"}, "tags", id="empty-key"),
        pytest.param({"k" * (MAX_TAG_KEY_BYTES + 1): "v"}, "tags", id="long-key"),
        # Limits are in UTF-8 bytes: 17 four-byte characters are 68 bytes.
        pytest.param({"🚀" * 17: "v"}, "tags", id="long-key-in-bytes"),
        pytest.param({"k": "v" * (MAX_TAG_VALUE_BYTES + 1)}, "tags.k", id="long-value"),
        pytest.param({"k": "é" * (MAX_TAG_VALUE_BYTES // 2 + 1)}, "tags.k", id="long-value-in-bytes"),
    ],
)
def test_tag_limits_count_utf8_bytes(tags: dict[str, str], field: str | None) -> None:
    _, rejection = _row_and_rejection(usage_event(tags=tags))

    assert (rejection.field if rejection is not None else None) == field
