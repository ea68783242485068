"""Request history: a request's outcome folds its attempts; what no attempt reported stays unknown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc

from meterwire.common.v1 import filter_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from tests.clients import Tokens, bearer
from tests.telemetry.events import report, stamp, usage_event


async def test_a_requests_outcome_folds_its_attempts_and_leaves_unreported_figures_unset(
    channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str
) -> None:
    await tokens.environment("prod")
    secret = await tokens.gateway("prod", "gw-1")
    now = datetime.now(UTC) - timedelta(minutes=1)
    failed = usage_event(request_id="r-1", attempt=1, event_time=now, status_code=503, requested_model="gpt-4o")
    retried = usage_event(request_id="r-1", attempt=2, event_time=now, status_code=200, cost_micros=1200)
    retried.tokens.input = 100
    retried.tokens.output = 20
    silent = usage_event(request_id="r-2", attempt=1, event_time=now, status_code=200)
    await report(channel, secret, [failed, retried, silent])
    stub = pb_grpc.ReportingServiceStub(channel)
    window = filter_pb2.UsageFilter(
        start_time=stamp(now - timedelta(minutes=5)), end_time=stamp(now + timedelta(minutes=5))
    )
    listed = await stub.ListRequests(pb.ListRequestsRequest(filter=window), metadata=bearer(admin_secret))
    by_id = {summary.request_id: summary for summary in listed.requests}
    one = by_id["r-1"]
    assert (one.attempt_count, one.status_code, one.cost_micros, one.requested_model) == (2, 200, 1200, "gpt-4o")
    assert (one.tokens.input, one.tokens.output, one.tokens.total) == (100, 20, 120)
    two = by_id["r-2"]
    assert not two.HasField("tokens")
    assert not two.HasField("cost_micros")
    got = await stub.GetRequest(
        pb.GetRequestRequest(environment_id="prod", request_id="r-1"), metadata=bearer(admin_secret)
    )
    assert [attempt.event.attempt for attempt in got.attempts] == [1, 2]
    assert got.attempts[0].gateway_id == "gw-1"
    assert got.request == one
