"""A reporter sees only its environments; bad questions get INVALID_ARGUMENT naming the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from meterwire.common.v1 import filter_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from services.server import ControlPlane
from tests.clients import Tokens, bearer
from tests.reporting.dataset import Figures, make_dataset
from tests.reporting.test_oracle import dataset_gateways, ingest, usage_filter


async def test_a_reporter_for_alpha_sees_nothing_of_beta(
    control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens
) -> None:
    secrets = await dataset_gateways(tokens)
    now = datetime.now(UTC)
    events = make_dataset(3_000, seed=11, now=now)
    await ingest(channel, secrets, events)
    reporter = bearer(await tokens.reporter("alpha"))
    stub: pb_grpc.ReportingServiceAsyncStub = pb_grpc.ReportingServiceStub(channel)
    start, end = int((now - timedelta(days=4)).timestamp() * 1e6), int(now.timestamp() * 1e6)
    everything = usage_filter(start, end)

    summary = (await stub.GetUsageSummary(pb.GetUsageSummaryRequest(filter=everything), metadata=reporter)).summary
    alpha = [e for e in events if e.environment_id == "alpha"]
    assert (summary.attempts, summary.cost_micros) == (len(alpha), Figures(alpha).cost)
    breakdown = await stub.GetUsageBreakdown(
        pb.GetUsageBreakdownRequest(filter=everything, group_by=[pb.GroupBy(dimension=pb.DIMENSION_ENVIRONMENT)]),
        metadata=reporter,
    )
    assert [tuple(row.keys) for row in breakdown.rows] == [("alpha",)]
    listed = await stub.ListRequests(pb.ListRequestsRequest(filter=everything, page_size=1000), metadata=reporter)
    assert {r.environment_id for r in listed.requests} == {"alpha"}
    exported = [
        s async for r in stub.ExportUsage(pb.ExportUsageRequest(filter=everything), metadata=reporter) for s in r.events
    ]
    assert len(exported) == len(alpha)

    beta_only = usage_filter(start, end, environment_ids=["beta"])
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.GetUsageSummary(pb.GetUsageSummaryRequest(filter=beta_only), metadata=reporter)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    beta_request = next(e for e in events if e.environment_id == "beta").message.request_id
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.GetRequest(pb.GetRequestRequest(environment_id="beta", request_id=beta_request), metadata=reporter)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


# The request checks refuse these before any query runs: one database engine is enough.
@pytest.mark.parametrize("storage_dialect", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("request_message", "field"),
    [
        (pb.GetUsageSummaryRequest(filter=filter_pb2.UsageFilter()), "filter.start_time"),
        (pb.GetUsageSummaryRequest(filter=usage_filter(10, 10)), "filter.end_time"),
        (pb.GetUsageTimeSeriesRequest(filter=usage_filter(0, 10**12), granularity=pb.GRANULARITY_HOUR), "metrics"),
        (
            pb.GetUsageTimeSeriesRequest(
                filter=usage_filter(0, 10**12),
                granularity=pb.GRANULARITY_HOUR,
                metrics=[99],  # type: ignore[list-item]
            ),
            "metrics[0]",
        ),
        (
            pb.GetUsageTimeSeriesRequest(
                filter=usage_filter(0, 10**12),
                granularity=pb.GRANULARITY_HOUR,
                metrics=[pb.METRIC_COST],
                time_zone="Mars/Olympus",
            ),
            "time_zone",
        ),
        (
            pb.GetUsageTimeSeriesRequest(
                filter=usage_filter(0, 10**14), granularity=pb.GRANULARITY_MINUTE, metrics=[pb.METRIC_COST]
            ),
            "granularity",
        ),
        (pb.GetUsageBreakdownRequest(filter=usage_filter(0, 10**12)), "group_by"),
        (
            pb.GetUsageBreakdownRequest(
                filter=usage_filter(0, 10**12), group_by=[pb.GroupBy(dimension=pb.DIMENSION_TAG)]
            ),
            "group_by[0].tag_key",
        ),
    ],
)
async def test_bad_questions_name_the_field(
    channel: grpc.aio.Channel, tokens: Tokens, request_message: object, field: str
) -> None:
    stub: pb_grpc.ReportingServiceAsyncStub = pb_grpc.ReportingServiceStub(channel)
    method: Any = {
        pb.GetUsageSummaryRequest: stub.GetUsageSummary,
        pb.GetUsageTimeSeriesRequest: stub.GetUsageTimeSeries,
        pb.GetUsageBreakdownRequest: stub.GetUsageBreakdown,
    }[type(request_message)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await method(request_message, metadata=bearer(tokens.admin))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(f"{field}:")
