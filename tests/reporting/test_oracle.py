"""Every report over 50,000 events ingested through the real Telemetry service equals a plain-Python oracle."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import grpc
import pytest

from meterwire.common.v1 import filter_pb2, usage_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from meterwire.telemetry.v1 import telemetry_service_pb2 as telemetry_pb
from meterwire.telemetry.v1 import telemetry_service_pb2_grpc as telemetry_grpc
from services.reporting.compaction import compact, dirty_hour_starts
from services.server import ControlPlane
from tests.clients import Tokens, bearer
from tests.reporting.dataset import (
    ENVIRONMENTS,
    GATEWAYS,
    Event,
    Figures,
    exact_quantile_ms,
    grouped,
    local_day_start_us,
    make_dataset,
    within_bucket_error,
)

EVENTS = 50_000
DUPLICATES = 2_000
BATCH = 2_000


async def ingest(channel: grpc.aio.Channel, secrets: dict[tuple[str, str], str], events: Sequence[Event]) -> int:
    """Sends events through ReportUsage with their gateway's token; returns the accepted count."""
    stub = telemetry_grpc.TelemetryServiceStub(channel)
    accepted = 0
    for gateway, batch_events in grouped(events, lambda e: (e.environment_id, e.gateway_id)).items():
        for start in range(0, len(batch_events), BATCH):
            request = telemetry_pb.ReportUsageRequest(
                batch_sequence=start // BATCH + 1, events=[e.message for e in batch_events[start : start + BATCH]]
            )
            response = await stub.ReportUsage(request, metadata=bearer(secrets[gateway]))  # type: ignore[index]
            assert response.ack.rejected_count == 0, response.ack.rejected[:3]
            accepted += response.ack.accepted_count
    return accepted


async def dataset_gateways(tokens: Tokens) -> dict[tuple[str, str], str]:
    """Creates the dataset's environments; a token for each of its gateways (what `ingest` sends with)."""
    for environment_id in ENVIRONMENTS:
        await tokens.environment(environment_id)
    return {gateway: await tokens.gateway(*gateway) for gateway in GATEWAYS}


def usage_filter(start_us: int, end_us: int, **fields: object) -> filter_pb2.UsageFilter:
    message = filter_pb2.UsageFilter(**fields)  # type: ignore[arg-type]
    message.start_time.FromMicroseconds(start_us)
    message.end_time.FromMicroseconds(end_us)
    return message


def assert_summary(summary: pb.UsageSummary, expected: Figures, *, seconds: float) -> None:
    assert (summary.requests, summary.attempts, summary.successes, summary.errors) == (
        expected.requests,
        expected.attempts,
        expected.successes,
        expected.errors,
    )
    tokens = summary.tokens
    assert (tokens.input, tokens.output, tokens.cache_read, tokens.cache_write, tokens.reasoning) == tuple(
        expected.tokens.values()
    )
    assert tokens.total == expected.total_tokens
    assert dict(tokens.categories) == expected.categories
    assert summary.cost_micros == expected.cost
    assert summary.cache_savings_micros == expected.savings
    assert summary.unknown_tokens_count == expected.unknown_tokens
    assert summary.unpriced_count == expected.unpriced
    assert summary.derived_cost_count == 0
    assert summary.success_rate == pytest.approx(expected.successes / (expected.successes + expected.errors))
    assert summary.average_qps == pytest.approx(expected.attempts / seconds)
    assert summary.tokens_per_minute == pytest.approx(expected.total_tokens / (seconds / 60))
    assert summary.latency.count == len(expected.latencies)
    average_us = summary.latency.average.ToNanoseconds() / 1000
    assert average_us == pytest.approx(sum(expected.latencies) / len(expected.latencies), abs=1)
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        estimate = getattr(summary.latency, name).ToNanoseconds() / 1e6
        assert within_bucket_error(estimate, exact_quantile_ms(expected.latencies, q) or 0), name
    assert summary.ttft.count == len(expected.ttfts)
    ttft_p95 = summary.ttft.p95.ToNanoseconds() / 1e6
    assert within_bucket_error(ttft_p95, exact_quantile_ms(expected.ttfts, 0.95) or 0)


def in_range(events: Sequence[Event], start_us: int, end_us: int) -> list[Event]:
    return [e for e in events if start_us <= e.time_us < end_us]


async def test_reports_match_the_oracle(control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens) -> None:
    secrets = await dataset_gateways(tokens)
    now = datetime.now(UTC).replace(microsecond=0)
    events = make_dataset(EVENTS, seed=20_261_123, now=now)
    rng = random.Random(5)
    shuffled = list(events)
    rng.shuffle(shuffled)
    # 90% first, then compaction, then the rest: late events land in hours compaction already folded.
    first, late = shuffled[: EVENTS * 9 // 10], shuffled[EVENTS * 9 // 10 :]
    assert await ingest(channel, secrets, first) == len(first)
    assert (await compact(control_plane.engine)).hours > 0
    assert await ingest(channel, secrets, late) == len(late)
    assert await ingest(channel, secrets, rng.sample(events, DUPLICATES)) == 0  # resends count once
    assert len(await dirty_hour_starts(control_plane.engine)) > 1  # late rows: coarse rollups not yet exact

    stub: pb_grpc.ReportingServiceAsyncStub = pb_grpc.ReportingServiceStub(channel)
    admin = bearer(tokens.admin)
    # Not aligned to anything: raw edges, minutes, hours and whole days all take part.
    start_us = int((now - timedelta(days=2, hours=20, minutes=37, seconds=13)).timestamp() * 1e6) + 123
    end_us = int((now - timedelta(minutes=41, seconds=7)).timestamp() * 1e6)
    selected = in_range(events, start_us, end_us)
    seconds = (end_us - start_us) / 1e6

    response = await stub.GetUsageSummary(
        pb.GetUsageSummaryRequest(filter=usage_filter(start_us, end_us)), metadata=admin
    )
    assert_summary(response.summary, Figures(selected), seconds=seconds)
    await compact(control_plane.engine)
    again = await stub.GetUsageSummary(pb.GetUsageSummaryRequest(filter=usage_filter(start_us, end_us)), metadata=admin)
    assert again.summary == response.summary  # compaction changes where figures come from, never the figures

    # Filters, including tags (raw events) and status classes.
    narrow = usage_filter(
        start_us,
        end_us,
        requested_models=["gpt-4o", "o3"],
        status_classes=[filter_pb2.STATUS_CLASS_CLIENT_ERROR, filter_pb2.STATUS_CLASS_SERVER_ERROR],
        tags=[filter_pb2.TagMatch(key="team", value="red")],
    )
    expected = [
        e
        for e in selected
        if e.message.requested_model in ("gpt-4o", "o3")
        and e.message.HasField("status_code")
        and e.message.status_code >= 400
        and e.message.tags.get("team") == "red"
    ]
    response = await stub.GetUsageSummary(pb.GetUsageSummaryRequest(filter=narrow), metadata=admin)
    assert_summary(response.summary, Figures(expected), seconds=seconds)
    gateway_filter = usage_filter(start_us, end_us, gateway_ids=["gw-1"], user_ids=["user-3"])
    response = await stub.GetUsageSummary(pb.GetUsageSummaryRequest(filter=gateway_filter), metadata=admin)
    expected = [e for e in selected if e.gateway_id == "gw-1" and e.message.user_id == "user-3"]
    assert_summary(response.summary, Figures(expected), seconds=seconds)

    await check_breakdowns(stub, admin, selected, start_us, end_us, seconds)
    await check_time_series(stub, admin, selected, start_us, end_us)
    await check_requests(stub, admin, events, start_us, end_us)
    await check_export(stub, admin, events, selected, start_us, end_us)


async def check_breakdowns(
    stub: pb_grpc.ReportingServiceAsyncStub,
    admin: tuple[tuple[str, str], ...],
    selected: list[Event],
    start_us: int,
    end_us: int,
    seconds: float,
) -> None:
    by_model_user = grouped(selected, lambda e: (e.message.resolved_model, e.message.user_id))
    ranked = sorted(by_model_user.items(), key=lambda item: (-Figures(item[1]).cost, item[0]))
    request = pb.GetUsageBreakdownRequest(
        filter=usage_filter(start_us, end_us),
        group_by=[pb.GroupBy(dimension=pb.DIMENSION_RESOLVED_MODEL), pb.GroupBy(dimension=pb.DIMENSION_USER)],
        top_n=5,
    )
    response = await stub.GetUsageBreakdown(request, metadata=admin)
    assert [tuple(row.keys) for row in response.rows] == [key for key, _ in ranked[:5]]
    for row, (_, group) in zip(response.rows, ranked[:5], strict=True):
        assert_summary(row.summary, Figures(group), seconds=seconds)
    rest = [e for _, group in ranked[5:] for e in group]
    assert_summary(response.other.summary, Figures(rest), seconds=seconds)

    # By API key and request type (an enum read back to its stored value), fewest requests first: the groups
    # are ranked from the requests alone, then summed in full for the top 3 only; (other) is the rest.
    request_types = {usage_pb2.REQUEST_TYPE_CHAT: "chat", usage_pb2.REQUEST_TYPE_EMBEDDING: "embedding"}
    by_key_type = grouped(selected, lambda e: (e.message.api_key_id, request_types[e.message.request_type]))
    ranked = sorted(by_key_type.items(), key=lambda item: (Figures(item[1]).requests, item[0]))
    response = await stub.GetUsageBreakdown(
        pb.GetUsageBreakdownRequest(
            filter=usage_filter(start_us, end_us),
            group_by=[pb.GroupBy(dimension=pb.DIMENSION_API_KEY), pb.GroupBy(dimension=pb.DIMENSION_REQUEST_TYPE)],
            order_by=pb.METRIC_REQUESTS,
            ascending=True,
            top_n=3,
        ),
        metadata=admin,
    )
    assert [tuple(row.keys) for row in response.rows] == [key for key, _ in ranked[:3]]
    for row, (_, group) in zip(response.rows, ranked[:3], strict=True):
        assert_summary(row.summary, Figures(group), seconds=seconds)
    assert_summary(response.other.summary, Figures([e for _, group in ranked[3:] for e in group]), seconds=seconds)

    # Every user, page by page (no top_n: each page's users are summed in full, nothing folds).
    by_user = grouped(selected, lambda e: (e.message.user_id,))
    user_order = sorted(by_user, key=lambda key: (-Figures(by_user[key]).cost, key))
    user_rows = await every_page(
        stub,
        admin,
        pb.GetUsageBreakdownRequest(
            filter=usage_filter(start_us, end_us), group_by=[pb.GroupBy(dimension=pb.DIMENSION_USER)], page_size=3
        ),
    )
    assert [tuple(row.keys) for row in user_rows] == user_order
    for row in user_rows:
        assert_summary(row.summary, Figures(by_user[tuple(row.keys)]), seconds=seconds)

    # A tag grouping (raw events) ordered by requests, read page by page.
    by_team = grouped(selected, lambda e: (e.message.tags.get("team", ""),))
    expected_order = sorted(by_team, key=lambda key: (-Figures(by_team[key]).requests, key))
    rows = await every_page(
        stub,
        admin,
        pb.GetUsageBreakdownRequest(
            filter=usage_filter(start_us, end_us),
            group_by=[pb.GroupBy(dimension=pb.DIMENSION_TAG, tag_key="team")],
            order_by=pb.METRIC_REQUESTS,
            page_size=2,
        ),
    )
    assert [tuple(row.keys) for row in rows] == expected_order
    for row in rows:
        assert row.summary.cost_micros == Figures(by_team[tuple(row.keys)]).cost


async def every_page(
    stub: pb_grpc.ReportingServiceAsyncStub, admin: tuple[tuple[str, str], ...], request: pb.GetUsageBreakdownRequest
) -> list[pb.BreakdownRow]:
    """The rows of a breakdown without top_n, read page by page (no page has an "(other)" row)."""
    rows: list[pb.BreakdownRow] = []
    while True:
        page = await stub.GetUsageBreakdown(request, metadata=admin)
        assert not page.HasField("other")
        rows.extend(page.rows)
        if not page.next_page_token:
            return rows
        request.page_token = page.next_page_token


async def check_time_series(
    stub: pb_grpc.ReportingServiceAsyncStub,
    admin: tuple[tuple[str, str], ...],
    selected: list[Event],
    start_us: int,
    end_us: int,
) -> None:
    for zone_name, granularity, bucket_of in (
        ("Asia/Kolkata", pb.GRANULARITY_DAY, lambda e: local_day_start_us(e.time_us, ZoneInfo("Asia/Kolkata"))),
        ("America/New_York", pb.GRANULARITY_DAY, lambda e: local_day_start_us(e.time_us, ZoneInfo("America/New_York"))),
        # +05:30: hours start at half past UTC hours.
        (
            "Asia/Kolkata",
            pb.GRANULARITY_HOUR,
            lambda e: (e.time_us - 1_800_000_000) // 3_600_000_000 * 3_600_000_000 + 1_800_000_000,
        ),
    ):
        request = pb.GetUsageTimeSeriesRequest(
            filter=usage_filter(start_us, end_us),
            granularity=granularity,
            time_zone=zone_name,
            metrics=[pb.METRIC_COST, pb.METRIC_REQUESTS, pb.METRIC_LATENCY_P95],
            split_by=pb.GroupBy(dimension=pb.DIMENSION_RESOLVED_MODEL),
            top_n=2,
        )
        response = await stub.GetUsageTimeSeries(request, metadata=admin)
        by_model = grouped(selected, lambda e: e.message.resolved_model)
        top = sorted(by_model, key=lambda model: (-Figures(by_model[model]).cost, model))[:2]
        series = {(s.metric, s.key): s for s in response.series}
        assert {key for _, key in series} == {*top, "(other)"}
        figures_by_key = {
            key: {
                bucket: Figures(group)
                for bucket, group in grouped(
                    [
                        e
                        for e in selected
                        if e.message.resolved_model == key or (key == "(other)" and e.message.resolved_model not in top)
                    ],
                    bucket_of,
                ).items()
            }
            for key in {key for _, key in series}
        }
        empty = Figures([])
        for (metric, key), one in series.items():
            buckets = figures_by_key[key]
            labels = [point.bucket_start_time.ToMicroseconds() for point in one.points]
            assert labels == sorted(labels)
            assert set(buckets) <= set(labels)
            name = pb.Metric.Name(metric).removeprefix("METRIC_")
            values = []
            for point in one.points:
                figures = buckets.get(point.bucket_start_time.ToMicroseconds(), empty)
                if metric == pb.METRIC_LATENCY_P95:
                    value = point.value.double_value
                    exact = exact_quantile_ms(figures.latencies, 0.95)
                    assert (value == 0.0) if exact is None else within_bucket_error(value, exact)
                else:
                    value = point.value.int_value
                    assert value == figures.metric(name), (zone_name, key, name, point.bucket_start_time)
                values.append(value)
            assert one.average == pytest.approx(sum(values) / len(values))


async def check_requests(
    stub: pb_grpc.ReportingServiceAsyncStub,
    admin: tuple[tuple[str, str], ...],
    events: list[Event],
    start_us: int,
    end_us: int,
) -> None:
    attempts = grouped(events, lambda e: (e.environment_id, e.message.request_id))
    window_end = start_us + 3 * 3_600_000_000
    firsts = [e for e in in_range(events, start_us, window_end) if e.message.attempt == 1]
    for errors_only in (False, True):
        expected = [
            e
            for e in sorted(firsts, key=lambda e: e.time_us, reverse=True)
            if not errors_only or _last(attempts[(e.environment_id, e.message.request_id)]).status_code >= 400
        ]
        listed: list[pb.RequestSummary] = []
        token = ""
        while True:
            page = await stub.ListRequests(
                pb.ListRequestsRequest(
                    filter=usage_filter(start_us, window_end), errors_only=errors_only, page_size=37, page_token=token
                ),
                metadata=admin,
            )
            listed.extend(page.requests)
            token = page.next_page_token
            if not token:
                break
        assert [(r.environment_id, r.request_id) for r in listed] == [
            (e.environment_id, e.message.request_id) for e in expected
        ]
        for summary in listed[:50]:
            group = attempts[(summary.environment_id, summary.request_id)]
            assert summary.attempt_count == len(group)
            assert summary.tokens.total == Figures(group).total_tokens
    multi = next(group for group in attempts.values() if len(group) == 3)
    response = await stub.GetRequest(
        pb.GetRequestRequest(environment_id=multi[0].environment_id, request_id=multi[0].message.request_id),
        metadata=admin,
    )
    assert [stored.event for stored in response.attempts] == [e.message for e in multi]
    assert response.request.resolved_model == multi[-1].message.resolved_model


def _last(group: list[Event]) -> usage_pb2.UsageEvent:
    message = max(group, key=lambda e: e.message.attempt).message
    return message if message.HasField("status_code") else usage_pb2.UsageEvent(status_code=0)


async def check_export(
    stub: pb_grpc.ReportingServiceAsyncStub,
    admin: tuple[tuple[str, str], ...],
    events: list[Event],
    selected: list[Event],
    start_us: int,
    end_us: int,
) -> None:
    everything = usage_filter(min(e.time_us for e in events), max(e.time_us for e in events) + 1)
    exported: list[pb.StoredUsageEvent] = []
    async for response in stub.ExportUsage(pb.ExportUsageRequest(filter=everything), metadata=admin):
        assert len(response.events) <= 500
        exported.extend(response.events)
    assert len(exported) == len(events)
    assert {(s.environment_id, s.gateway_id, s.event.event_id) for s in exported} == {
        (e.environment_id, e.gateway_id, e.message.event_id) for e in events
    }
    by_id = {e.message.event_id: e.message for e in events}
    assert all(s.event == by_id[s.event.event_id] for s in exported)

    zone = ZoneInfo("America/New_York")
    request = pb.ExportUsageRequest(
        filter=usage_filter(start_us, end_us),
        group_by=[pb.GroupBy(dimension=pb.DIMENSION_ENVIRONMENT), pb.GroupBy(dimension=pb.DIMENSION_PROVIDER)],
        granularity=pb.GRANULARITY_DAY,
        time_zone="America/New_York",
    )
    rows = [row async for response in stub.ExportUsage(request, metadata=admin) for row in response.rows]
    expected = grouped(selected, lambda e: (local_day_start_us(e.time_us, zone), e.environment_id, e.message.provider))
    got = {(row.bucket_start_time.ToMicroseconds(), *row.keys): row.summary for row in rows}
    assert set(got) == set(expected)
    for key, summary in got.items():
        figures = Figures(expected[key])
        assert (summary.attempts, summary.cost_micros, summary.tokens.total) == (
            figures.attempts,
            figures.cost,
            figures.total_tokens,
        )
