"""Issue 17 class 1: no sum of usage can overflow int64 and break ingest or reports (services.accounting.bounds).

Before: 10,000 events of 10^15 micros in one minute passed int64 in the per-minute rollup, SQLite stored the
sum as a float, and every report including it answered INTERNAL (PostgreSQL refused the batch: "bigint out of
range", UNAVAILABLE, resent forever); a price of 2^63-1 was accepted and an event priced with it could never
be stored. Each test runs on SQLite and PostgreSQL through a real control plane.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from meterwire.budget.v1 import budget_service_pb2_grpc as budget_grpc
from meterwire.common.v1 import filter_pb2, usage_pb2
from meterwire.config.v1 import config_service_pb2 as config_pb
from meterwire.config.v1 import config_service_pb2_grpc as config_grpc
from meterwire.reporting.v1 import reporting_service_pb2 as reporting_pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as reporting_grpc
from meterwire.telemetry.v1 import telemetry_service_pb2 as telemetry_pb
from services.accounting.bounds import INT64_MAX, MAX_ABS_MICROS, MAX_PRICE_MICROS_PER_MILLION, MAX_TOKENS
from services.accounting.compaction import compact
from services.accounting.measures import TOKEN_KINDS
from services.server import ControlPlane
from services.storage import tables
from tests.clients import Tokens, bearer
from tests.telemetry.events import report, stamp, usage_event

ENVIRONMENT = "env-a"
MODEL = ("gpt-4o", "openai")


def _minute_ago(minutes: int) -> datetime:
    now = datetime.now(UTC)
    return now.replace(second=0, microsecond=0) - timedelta(minutes=minutes)


def _events(count: int, *, at: datetime, **fields: object) -> list[usage_pb2.UsageEvent]:
    return [
        usage_event(
            request_id=f"req-{at.minute}-{index}",
            event_time=at + timedelta(milliseconds=index % 50_000),
            resolved_model=MODEL[0],
            provider=MODEL[1],
            status_code=200,
            **fields,  # type: ignore[arg-type]
        )
        for index in range(count)
    ]


async def _report_all(channel: grpc.aio.Channel, secret: str, events: list[usage_pb2.UsageEvent]) -> list[int]:
    """Reports in batches of 2,000; returns the accepted count of each ack."""
    accepted = []
    for start in range(0, len(events), 2_000):
        ack = await report(channel, secret, events[start : start + 2_000])
        assert ack.rejected_count == 0, list(ack.rejected)[:3]
        accepted.append(ack.accepted_count)
    return accepted


def _usage_filter(start: datetime, end: datetime) -> filter_pb2.UsageFilter:
    return filter_pb2.UsageFilter(environment_ids=[ENVIRONMENT], start_time=stamp(start), end_time=stamp(end))


async def _every_report(channel: grpc.aio.Channel, admin: str, start: datetime, end: datetime) -> int:
    """Asks a summary, a breakdown, a series and a grouped export over the range; each must answer OK.
    Returns the summary's cost."""
    stub = reporting_grpc.ReportingServiceStub(channel)
    metadata = bearer(admin)
    usage_filter = _usage_filter(start, end)
    summary = await stub.GetUsageSummary(reporting_pb.GetUsageSummaryRequest(filter=usage_filter), metadata=metadata)
    breakdown = await stub.GetUsageBreakdown(
        reporting_pb.GetUsageBreakdownRequest(
            filter=usage_filter, group_by=[reporting_pb.GroupBy(dimension=reporting_pb.DIMENSION_GATEWAY)]
        ),
        metadata=metadata,
    )
    series = await stub.GetUsageTimeSeries(
        reporting_pb.GetUsageTimeSeriesRequest(
            filter=usage_filter,
            granularity=reporting_pb.GRANULARITY_MINUTE,
            metrics=[reporting_pb.METRIC_COST, reporting_pb.METRIC_TOTAL_TOKENS],
        ),
        metadata=metadata,
    )
    export = [
        response
        async for response in stub.ExportUsage(
            reporting_pb.ExportUsageRequest(
                filter=usage_filter,
                group_by=[reporting_pb.GroupBy(dimension=reporting_pb.DIMENSION_RESOLVED_MODEL)],
                granularity=reporting_pb.GRANULARITY_HOUR,
            ),
            metadata=metadata,
        )
    ]
    assert [row.summary.cost_micros for row in breakdown.rows] == [summary.summary.cost_micros]
    assert series.series[0].max.int_value <= summary.summary.cost_micros
    assert sum(len(response.rows) for response in export) >= 1
    return summary.summary.cost_micros


@pytest.fixture
async def gateway_secret(tokens: Tokens) -> str:
    await tokens.environment(ENVIRONMENT)
    return await tokens.gateway(ENVIRONMENT, "gw-1")


async def test_ten_thousand_events_at_the_old_maximum_cost_are_each_rejected_naming_the_field(
    channel: grpc.aio.Channel, gateway_secret: str, admin_secret: str
) -> None:
    minute = _minute_ago(2)
    old_maximum = _events(10_000, at=minute, cost_micros=10**15)
    acks = [
        await report(channel, gateway_secret, old_maximum[start : start + 2_000]) for start in range(0, 10_000, 2_000)
    ]
    rejected = [rejection for ack in acks for rejection in ack.rejected]
    assert len(rejected) == 10_000
    assert {(rejection.field, rejection.reason) for rejection in rejected} == {
        ("cost_micros", telemetry_pb.REJECTION_REASON_INVALID_FIELD)
    }
    at_the_bound = _events(10_000, at=minute, cost_micros=MAX_ABS_MICROS)
    assert sum(await _report_all(channel, gateway_secret, at_the_bound)) == 10_000
    cost = await _every_report(channel, admin_secret, minute, minute + timedelta(minutes=1))
    assert cost == 10_000 * MAX_ABS_MICROS


async def _saturate_cost(engine: AsyncEngine, value: int | float) -> None:
    rollup = tables.usage_rollup_1m
    async with engine.begin() as connection:
        await connection.execute(rollup.update().values(cost_micros=value))


async def test_a_rollup_sum_past_int64_saturates_and_every_report_answers(
    channel: grpc.aio.Channel, gateway_secret: str, admin_secret: str, control_plane: ControlPlane
) -> None:
    """A per-minute row a hair below int64 takes 10,000 more events of the per-event maximum: ingest accepts
    them (nothing is refused UNAVAILABLE), the row holds int64's maximum, and the reports over it and over two
    such rows (whose sum SQLite's SUM cannot take) answer, before and after compaction."""
    engine = control_plane.deps.engine
    first, second = _minute_ago(3), _minute_ago(2)
    await _report_all(channel, gateway_secret, _events(1, at=first, cost_micros=1))
    await _report_all(channel, gateway_secret, _events(1, at=second, cost_micros=1))
    await _saturate_cost(engine, INT64_MAX - MAX_ABS_MICROS)
    more = _events(10_000, at=second, cost_micros=MAX_ABS_MICROS)
    assert sum(await _report_all(channel, gateway_secret, more)) == 10_000
    async with engine.connect() as connection:
        stored = sorted((await connection.execute(sa.select(tables.usage_rollup_1m.c.cost_micros))).scalars())
    assert stored == [INT64_MAX - MAX_ABS_MICROS, INT64_MAX]
    start, end = first, second + timedelta(minutes=1)
    assert await _every_report(channel, admin_secret, start, end) == INT64_MAX
    await compact(engine)
    assert await _every_report(channel, admin_secret, start - timedelta(hours=1), end + timedelta(hours=1)) == (
        INT64_MAX
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_sum_an_older_version_stored_as_a_float_neither_breaks_reports_nor_ingest(
    channel: grpc.aio.Channel, gateway_secret: str, admin_secret: str, control_plane: ControlPlane
) -> None:
    """SQLite only: PostgreSQL never stored an overflowing sum (it refused it). The float reads as the int64
    maximum, and the next event into its row turns it back into an integer."""
    engine = control_plane.deps.engine
    minute = _minute_ago(2)
    await _report_all(channel, gateway_secret, _events(1, at=minute, cost_micros=1))
    await _saturate_cost(engine, 1.0e19)
    async with engine.connect() as connection:
        kind = await connection.scalar(sa.text("SELECT typeof(cost_micros) FROM usage_rollup_1m"))
    assert kind == "real"
    window = (minute, minute + timedelta(minutes=1))
    assert await _every_report(channel, admin_secret, *window) == INT64_MAX
    await _report_all(channel, gateway_secret, _events(1, at=minute, cost_micros=5))
    async with engine.connect() as connection:
        kind, value = (
            await connection.execute(sa.text("SELECT typeof(cost_micros), cost_micros FROM usage_rollup_1m"))
        ).one()
    assert (kind, value) == ("integer", INT64_MAX)
    assert await _every_report(channel, admin_secret, *window) == INT64_MAX


def _pricing(price: int, field: str = "input_micros_per_million") -> config_pb.PutConfigRequest:
    model_price = config_pb.ModelPrice(model=MODEL[0], provider=MODEL[1], output_micros_per_million=1)
    setattr(model_price, field, price)
    return config_pb.PutConfigRequest(
        environment_id=ENVIRONMENT,
        config=config_pb.EnvironmentConfig(pricing=config_pb.PricingTable(currency="USD", models=[model_price])),
    )


@pytest.mark.parametrize(
    "field",
    ["input_micros_per_million", "output_micros_per_million", "cache_read_micros_per_million"],
)
async def test_put_config_refuses_a_price_that_could_overflow_a_priced_event(
    channel: grpc.aio.Channel, gateway_secret: str, admin_secret: str, field: str
) -> None:
    stub = config_grpc.ConfigServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.PutConfig(_pricing(2**63 - 1, field), metadata=bearer(admin_secret))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"config.pricing.models[0].{field}" in (refused.value.details() or "")
    request = _pricing(1)
    request.config.pricing.models[0].category_micros_per_million["audio_input"] = MAX_PRICE_MICROS_PER_MILLION + 1
    with pytest.raises(grpc.aio.AioRpcError) as category:
        await stub.PutConfig(request, metadata=bearer(admin_secret))
    assert category.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "category_micros_per_million['audio_input']" in (category.value.details() or "")


async def test_an_event_priced_beyond_the_per_event_bound_is_rejected_alone(
    channel: grpc.aio.Channel, gateway_secret: str, admin_secret: str
) -> None:
    """At the largest price PutConfig accepts, an event with the most tokens ingest accepts is priced at 10^18
    micros: that event is rejected (field cost_micros), never the batch, so nothing is resent forever."""
    await config_grpc.ConfigServiceStub(channel).PutConfig(
        _pricing(MAX_PRICE_MICROS_PER_MILLION), metadata=bearer(admin_secret)
    )
    minute = _minute_ago(2)
    huge, small = _events(2, at=minute)
    huge.tokens.CopyFrom(usage_pb2.TokenCounts(input=MAX_TOKENS))
    small.tokens.CopyFrom(usage_pb2.TokenCounts(input=1000))
    ack = await report(channel, gateway_secret, [huge, small])
    assert (ack.accepted_count, ack.rejected_count) == (1, 1)
    assert (ack.rejected[0].index, ack.rejected[0].field) == (0, "cost_micros")
    cost = await _every_report(channel, admin_secret, minute, minute + timedelta(minutes=1))
    assert cost == 1000 * MAX_PRICE_MICROS_PER_MILLION // 1_000_000


async def test_a_reservation_id_over_64_bytes_is_rejected_naming_the_field(
    channel: grpc.aio.Channel, gateway_secret: str
) -> None:
    minute = _minute_ago(2)
    long, fine = _events(2, at=minute)
    long.reservation_id = "r" * 65
    fine.reservation_id = "é" * 32  # 64 bytes
    ack = await report(channel, gateway_secret, [long, fine])
    assert (ack.accepted_count, ack.rejected_count) == (1, 1)
    assert (ack.rejected[0].index, ack.rejected[0].field) == (0, "reservation_id")


async def test_a_budget_made_over_token_sums_near_int64_backfills_the_saturated_total(
    channel: grpc.aio.Channel, gateway_secret: str, admin_secret: str, control_plane: ControlPlane
) -> None:
    """A TOKENS budget adds five token kinds. Stored sums near int64 take ~10^8 events at the per-event maximum;
    two events holding 2^62 of each kind stand in for them. Adding the kinds' sums in SQL overflowed
    ("bigint out of range" on PostgreSQL): the backfill now saturates, and the budget is made."""
    await _report_all(channel, gateway_secret, _events(2, at=_minute_ago(2), tokens=usage_pb2.TokenCounts(input=1)))
    async with control_plane.deps.engine.begin() as connection:
        await connection.execute(tables.usage_events.update().values(**dict.fromkeys(TOKEN_KINDS, 2**62)))
    created = await budget_grpc.BudgetServiceStub(channel).CreateBudget(
        budget_pb.CreateBudgetRequest(
            budget=budget_pb.Budget(
                display_name="all tokens",
                scope=budget_pb.Scope(environment_id=ENVIRONMENT),
                metric=budget_pb.METRIC_TOKENS,
                limit=1_000,
                period=budget_pb.PERIOD_TOTAL,
                mode=budget_pb.MODE_WARN_ONLY,
            )
        ),
        metadata=bearer(admin_secret),
    )
    assert (created.status.used, created.status.state) == (INT64_MAX, budget_pb.BUDGET_STATE_EXCEEDED)
