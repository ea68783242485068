"""Issue 17 class 2: a report's work is bounded before it starts, and a long one never stalls the server.

Before: a grouped export with minute buckets over ten years built ~5 M buckets on the event loop (health
checks, acks and heartbeats waited ~31 s, and it went on after its caller's deadline); a summary from year 1
to 9999 planned every day of the range (3.3 s). Health checks here carry a deadline: a stalled event loop
fails them.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meterwire.common.v1 import filter_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from services.server import ControlPlane
from tests.clients import Tokens, bearer
from tests.telemetry.events import report, stamp, usage_event

HEALTH_DEADLINE_S = 1.0
"""Each health check must answer within this while the big request runs (the issue's stall was 31 s)."""


def _filter(start: datetime, end: datetime) -> filter_pb2.UsageFilter:
    return filter_pb2.UsageFilter(start_time=stamp(start), end_time=stamp(end))


def _export(start: datetime, end: datetime, granularity: pb.Granularity.ValueType) -> pb.ExportUsageRequest:
    return pb.ExportUsageRequest(
        filter=_filter(start, end),
        group_by=[pb.GroupBy(dimension=pb.DIMENSION_GATEWAY)],
        granularity=granularity,
    )


async def _health_while(channel: grpc.aio.Channel, work: asyncio.Task[object]) -> int:
    """Checks health every 20 ms until `work` ends; returns how many checks answered SERVING in time while it
    ran (a check that misses its deadline raises)."""
    stub = health_pb2_grpc.HealthStub(channel)
    answered = 0
    while not work.done():
        answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_DEADLINE_S)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        answered += 0 if work.done() else 1
        await asyncio.sleep(0.02)
    return answered


@pytest.fixture
async def admin(channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str) -> tuple[tuple[str, str], ...]:
    """The admin's metadata, on a control plane holding a few events over the last two days."""
    await tokens.environment("env-a")
    secret = await tokens.gateway("env-a", "gw-1")
    now = datetime.now(UTC)
    events = [usage_event(event_time=now - timedelta(minutes=minutes), cost_micros=7) for minutes in (2, 90, 3000)]
    ack = await report(channel, secret, events)
    assert ack.accepted_count == 3
    return bearer(admin_secret)


async def test_a_grouped_minute_export_over_ten_years_is_refused_before_any_work(
    channel: grpc.aio.Channel, admin: tuple[tuple[str, str], ...], control_plane: ControlPlane
) -> None:
    end = datetime.now(UTC)
    call = pb_grpc.ReportingServiceStub(channel).ExportUsage(
        _export(end - timedelta(days=3653), end, pb.GRANULARITY_MINUTE), metadata=admin, timeout=10
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert details.startswith("granularity:")
    assert f"more than {control_plane.settings.reporting_max_export_buckets} buckets" in details


async def test_health_answers_while_a_long_grouped_export_streams(
    channel: grpc.aio.Channel, admin: tuple[tuple[str, str], ...]
) -> None:
    """200 days of minute buckets (288,000, within the limit; building their grid at once held the event loop
    ~1.5 s) stream a window at a time while health checks keep answering, and every event is in it once."""
    end = datetime.now(UTC)
    stub = pb_grpc.ReportingServiceStub(channel)

    async def export() -> list[pb.ExportRow]:
        call = stub.ExportUsage(_export(end - timedelta(days=200), end, pb.GRANULARITY_MINUTE), metadata=admin)
        return [row async for response in call for row in response.rows]

    work = asyncio.ensure_future(export())
    answered = await _health_while(channel, work)
    rows = await work
    assert answered >= 1
    assert sorted(row.summary.cost_micros for row in rows) == [7, 7, 7]


async def test_a_summary_from_year_1_to_9999_answers_while_health_keeps_answering(
    channel: grpc.aio.Channel, admin: tuple[tuple[str, str], ...]
) -> None:
    stub = pb_grpc.ReportingServiceStub(channel)
    whole = _filter(datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC))
    work = asyncio.ensure_future(
        stub.GetUsageSummary(pb.GetUsageSummaryRequest(filter=whole), metadata=admin, timeout=HEALTH_DEADLINE_S * 5)
    )
    await _health_while(channel, work)
    summary = (await work).summary
    assert (summary.requests, summary.cost_micros) == (3, 21)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetUsageTimeSeries(
            pb.GetUsageTimeSeriesRequest(filter=whole, granularity=pb.GRANULARITY_MINUTE, metrics=[pb.METRIC_COST]),
            metadata=admin,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith("granularity:")


@pytest.mark.parametrize(
    ("top_n", "days", "field"),
    [
        (1_000_000, 1, "top_n"),  # a series for each of a million keys
        (100, 6, "granularity"),  # 101 series x 8,640 minutes: 872,640 points
    ],
)
async def test_a_time_series_too_big_to_answer_is_refused_naming_the_field(
    channel: grpc.aio.Channel, admin: tuple[tuple[str, str], ...], top_n: int, days: int, field: str
) -> None:
    end = datetime.now(UTC)
    request = pb.GetUsageTimeSeriesRequest(
        filter=_filter(end - timedelta(days=days), end),
        granularity=pb.GRANULARITY_MINUTE,
        metrics=[pb.METRIC_COST],
        split_by=pb.GroupBy(dimension=pb.DIMENSION_USER),
        top_n=top_n,
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pb_grpc.ReportingServiceStub(channel).GetUsageTimeSeries(request, metadata=admin)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith(f"{field}:")
