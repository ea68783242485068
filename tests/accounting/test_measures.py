"""The rollup measures: ingest's generated Python and reporting's SQL count every event alike, on both engines."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from meterwire.common.v1 import filter_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as reporting_pb
from services.accounting.measures import (
    MEASURES,
    SUM_COLUMNS,
    TOKEN_KINDS,
    BudgetMeasures,
    CostSource,
    MeasureKind,
    StatusClass,
    budget_measures,
    contribution,
    status_class_of,
)
from services.accounting.rollup import (
    ROLLUP_BUCKET_SECONDS,
    RollupKey,
    RollupRow,
    add_to_rollup,
    budget_measures_of_rollup,
)
from services.accounting.sql import RAW_SUMS
from services.histogram import BUCKET_COUNT, bucket_bounds_us, bucket_index
from services.storage import tables
from tests.storage.rows import EVENT_TIME_US, add_gateway

_EDGES = [bound for index in range(BUCKET_COUNT) for bound in bucket_bounds_us(index) if bound is not None]
_DURATION = (
    st.none()
    | st.integers(0, 3_600_000_000)
    | st.sampled_from(_EDGES).flatmap(lambda edge: st.sampled_from([edge - 1, edge, edge + 1]))
)
_COUNT = st.none() | st.integers(0, 10**12)
_MONEY = st.none() | st.integers(-(10**15), 10**15)


@st.composite
def stored_events(draw: st.DrawFn, gateway_key: int = 1) -> dict[str, Any]:
    """A usage_events row as ingest stores it: few distinct dimension values, so rollup keys collide."""
    status_code = draw(st.none() | st.sampled_from([100, 200, 302, 399, 400, 404, 499, 500, 503, 599]))
    cost = draw(st.none() | st.integers(0, 10**15))
    return {
        "environment_id": "prod",
        "gateway_key": gateway_key,
        "request_id": draw(st.sampled_from(["r1", "r2"])),
        "attempt": draw(st.integers(1, 3)),
        "event_time_us": EVENT_TIME_US + draw(st.integers(0, 3 * ROLLUP_BUCKET_SECONDS * 1_000_000)),
        "ingest_time_us": EVENT_TIME_US,
        "api_key_id": draw(st.sampled_from(["", "key-1"])),
        "user_id": draw(st.sampled_from(["", "ada"])),
        "route": "",
        "request_type": draw(st.sampled_from([1, 2])),
        "requested_model": draw(st.sampled_from(["", "gpt-4o"])),
        "resolved_model": "gpt-4o",
        "provider": draw(st.sampled_from(["openai", "azure"])),
        "credential_type": 1,
        "streaming": draw(st.booleans()),
        "status_code": status_code,
        "status_class": status_class_of(status_code),
        "latency_us": draw(_DURATION),
        "gateway_latency_us": draw(_DURATION),
        "ttft_us": draw(_DURATION),
        **{kind: draw(_COUNT) for kind in TOKEN_KINDS},
        "cost_micros": cost,
        "cache_savings_micros": draw(_MONEY),
        "cost_source": int(
            CostSource.UNKNOWN if cost is None else draw(st.sampled_from([CostSource.REPORTED, CostSource.DERIVED]))
        ),
    }


def _python_rollups(rows: list[dict[str, Any]]) -> dict[RollupKey, list[int]]:
    rollups: dict[RollupKey, RollupRow] = {}
    for row in rows:
        add_to_rollup(rollups, row)
    width = len(tables.ROLLUP_DIMENSIONS)
    return {key: [int(value) for value in row[width:]] for key, row in rollups.items()}


async def _sql_rollups(engine: AsyncEngine, rows: list[dict[str, Any]]) -> dict[RollupKey, list[int]]:
    """Stores the rows and sums them with reporting's raw-event SQL grouped by the rollup key; rolled back."""
    events = tables.usage_events
    key = [
        events.c.event_time_us // (ROLLUP_BUCKET_SECONDS * 1_000_000) * ROLLUP_BUCKET_SECONDS
        if dimension == "bucket_start"
        else events.c[dimension]
        for dimension in tables.ROLLUP_DIMENSIONS
    ]
    query = sa.select(*key, *(RAW_SUMS[column] for column in SUM_COLUMNS)).group_by(*key)
    async with engine.connect() as connection:
        transaction = await connection.begin()
        try:
            gateway_key = await add_gateway(connection)
            stored = [{**row, "gateway_key": gateway_key, "event_id": f"e-{n}"} for n, row in enumerate(rows)]
            await connection.execute(events.insert(), stored)
            result = await connection.execute(query)
            width = len(tables.ROLLUP_DIMENSIONS)
            return {
                (int(row[0]), *row[1:2], 1, *row[3:width]): [int(value or 0) for value in row[width:]] for row in result
            }
        finally:
            await transaction.rollback()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(stored_events(), min_size=1, max_size=30))
async def test_ingest_and_report_sql_count_every_event_alike(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    assert await _sql_rollups(engine, rows) == _python_rollups(rows)


@given(row=stored_events())
def test_the_generated_accumulator_adds_what_each_measure_says(row: dict[str, Any]) -> None:
    (metrics,) = _python_rollups([row]).values()
    expected: list[int] = []
    for measure in MEASURES:
        if measure.kind is MeasureKind.HISTOGRAM:
            assert measure.source is not None
            value = row[measure.source]
            expected += [int(value is not None and bucket_index(value) == i) for i in range(BUCKET_COUNT)]
        else:
            expected.append(contribution(measure, row))
    assert metrics == expected


def test_the_measures_describe_the_stored_rollup_columns_in_order() -> None:
    assert SUM_COLUMNS == tables.ROLLUP_SUM_COLUMNS
    assert set(RAW_SUMS) == set(SUM_COLUMNS)


def test_status_classes_follow_http_and_map_to_the_proto_by_name() -> None:
    assert [status_class_of(code) for code in (None, 100, 399, 400, 499, 500, 599)] == [0, 1, 1, 2, 2, 3, 3]
    for status in StatusClass:
        assert filter_pb2.StatusClass.Name(status.to_proto()) == f"STATUS_CLASS_{status.name}"
        assert StatusClass.from_proto(status.to_proto()) is status
    assert StatusClass.from_proto(filter_pb2.STATUS_CLASS_UNSPECIFIED) is None
    assert StatusClass.from_proto(99) is None


def test_cost_sources_map_to_the_proto_by_name() -> None:
    for source in CostSource:
        assert reporting_pb.CostSource.Name(source.to_proto()) == f"COST_SOURCE_{source.name}"
        assert CostSource.proto_of_stored(int(source)) == source.to_proto()
    assert CostSource.proto_of_stored(7) == reporting_pb.COST_SOURCE_UNSPECIFIED


@given(row=stored_events())
def test_budget_measures_are_what_the_event_adds_to_the_rollup_columns_reports_show(row: dict[str, Any]) -> None:
    (metrics,) = _python_rollups([row]).values()
    figure = dict(zip(SUM_COLUMNS, metrics, strict=True))
    assert budget_measures(row) == BudgetMeasures(
        spend_micros=figure["cost_micros"],
        total_tokens=sum(figure[kind] for kind in TOKEN_KINDS),
        requests=figure["request_count"],
    )


def test_budget_measures_of_a_retried_priced_attempt() -> None:
    row = {
        "attempt": 2,
        "cost_micros": 1_500,
        "input_tokens": 10,
        "output_tokens": None,
        "cache_read_tokens": 3,
        "cache_write_tokens": None,
        "reasoning_tokens": 0,
    }
    assert budget_measures(row) == BudgetMeasures(spend_micros=1_500, total_tokens=13, requests=0)
    unknown = {**row, "attempt": 1, "cost_micros": None, "input_tokens": None, "cache_read_tokens": None}
    assert budget_measures(unknown) == BudgetMeasures(spend_micros=0, total_tokens=0, requests=1)


@given(rows=st.lists(stored_events(), min_size=1, max_size=30))
def test_a_rollup_row_adds_to_budgets_what_its_events_add(rows: list[dict[str, Any]]) -> None:
    rollups: dict[RollupKey, RollupRow] = {}
    for row in rows:
        add_to_rollup(rollups, row)
    measures = [budget_measures(row) for row in rows]
    totals = [budget_measures_of_rollup(rollup) for rollup in rollups.values()]
    for metric in ("spend_micros", "total_tokens", "requests"):
        assert sum(getattr(m, metric) for m in totals) == sum(getattr(m, metric) for m in measures)
