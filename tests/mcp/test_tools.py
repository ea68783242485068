"""Every tool over stdio answers what the Reporting, Heartbeat and Budget RPCs answer for the same question."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from meterwire.budget.v1 import budget_service_pb2_grpc as budget_grpc
from meterwire.common.v1 import filter_pb2
from meterwire.heartbeat.v1 import heartbeat_service_pb2 as heartbeat_pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2_grpc as heartbeat_grpc
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from services.usage_terms.query import METRICS, RANGE_NAMES
from tests.clients import bearer
from tests.mcp.harness import Seed, stdio_client, structured

pytestmark = pytest.mark.system  # each test starts a real `meterwire mcp` process

TOOLS = {
    "usage_summary",
    "usage_breakdown",
    "usage_time_series",
    "list_requests",
    "get_request",
    "fleet_status",
    "list_budgets",
    "budget_alerts",
    "export_usage",
}


def _micros(money: dict[str, Any] | None) -> int | None:
    return None if money is None else int(money["micros"])


def _rpc_cost(figures: pb.UsageSummary) -> int | None:
    """What a tool shows as cost: unknown (None) when no event in the figures had one."""
    return None if figures.unpriced_count >= figures.attempts else figures.cost_micros


def _status_word(status: heartbeat_pb.GatewayStatus.ValueType) -> str:
    return heartbeat_pb.GatewayStatus.Name(status).removeprefix("GATEWAY_STATUS_").lower()


def _explicit_range() -> tuple[str, str, filter_pb2.UsageFilter]:
    """A fixed [start, end) around the seeded events, so the tool and the RPC ask about the very same range."""
    end = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(hours=2)
    usage_filter = filter_pb2.UsageFilter()
    usage_filter.start_time.FromDatetime(start)
    usage_filter.end_time.FromDatetime(end)
    return start.isoformat(), end.isoformat(), usage_filter


async def test_the_tools_are_listed_with_typed_schemas_and_read_only_hints(seeded: Seed) -> None:
    async with stdio_client(seeded, seeded.admin) as client:
        listed = (await client.list_tools()).tools
    assert {tool.name for tool in listed} == TOOLS
    for tool in listed:
        assert tool.description, tool.name
        assert tool.input_schema["type"] == "object"
        assert tool.annotations is not None
        assert tool.annotations.destructive_hint is False, tool.name
        assert tool.annotations.read_only_hint is (tool.name != "export_usage"), tool.name
    summary = next(tool for tool in listed if tool.name == "usage_summary")
    usage_filter = summary.input_schema["$defs"]["UsageFilterArguments"]["properties"]
    assert usage_filter["range"]["enum"] == list(RANGE_NAMES)
    breakdown = next(tool for tool in listed if tool.name == "usage_breakdown").input_schema["properties"]
    assert breakdown["order_by"]["enum"] == list(METRICS)
    assert breakdown["group_by"]["type"] == "array"
    assert "AND" in usage_filter["tags"]["description"]


async def test_every_tool_answers_as_the_rpcs_do_for_the_same_filter(
    seeded: Seed, channel: grpc.aio.Channel, tmp_path: Path
) -> None:
    admin = bearer(seeded.admin)
    reporting = pb_grpc.ReportingServiceStub(channel)
    start, end, usage_filter = _explicit_range()
    arguments = {"start": start, "end": end, "tags": ["team=search", "project=alpha"]}
    tagged = filter_pb2.UsageFilter()
    tagged.CopyFrom(usage_filter)
    tagged.tags.extend(
        [filter_pb2.TagMatch(key="team", value="search"), filter_pb2.TagMatch(key="project", value="alpha")]
    )

    async with stdio_client(seeded, seeded.admin) as client:
        summary = structured(await client.call_tool("usage_summary", {"filter": arguments}))["summary"]
        expected = (await reporting.GetUsageSummary(pb.GetUsageSummaryRequest(filter=tagged), metadata=admin)).summary
        assert summary["requests"] == expected.requests > 0
        assert summary["attempts"] == expected.attempts
        assert summary["errors"] == expected.errors
        assert summary["cost"]["micros"] == expected.cost_micros
        everything = (
            await reporting.GetUsageSummary(pb.GetUsageSummaryRequest(filter=usage_filter), metadata=admin)
        ).summary
        assert expected.attempts < everything.attempts  # the AND of two tags narrowed it

        breakdown = structured(
            await client.call_tool(
                "usage_breakdown", {"filter": {"start": start, "end": end}, "group_by": ["model"], "top_n": 2}
            )
        )
        rpc_breakdown = await reporting.GetUsageBreakdown(
            pb.GetUsageBreakdownRequest(
                filter=usage_filter,
                group_by=[pb.GroupBy(dimension=pb.DIMENSION_REQUESTED_MODEL)],
                order_by=pb.METRIC_COST,
                top_n=2,
            ),
            metadata=admin,
        )
        assert [(row["keys"]["model"], _micros(row["cost"])) for row in breakdown["rows"]] == [
            (row.keys[0], _rpc_cost(row.summary)) for row in rpc_breakdown.rows
        ]
        assert breakdown["other"]["attempts"] == rpc_breakdown.other.summary.attempts > 0
        assert "top 2" in breakdown["note"]

        series = structured(
            await client.call_tool(
                "usage_time_series",
                {"filter": {"start": start, "end": end}, "metrics": ["requests", "cost"], "granularity": "1h"},
            )
        )["series"]
        rpc_series = await reporting.GetUsageTimeSeries(
            pb.GetUsageTimeSeriesRequest(
                filter=usage_filter,
                granularity=pb.GRANULARITY_HOUR,
                time_zone="UTC",
                metrics=[pb.METRIC_REQUESTS, pb.METRIC_COST],
            ),
            metadata=admin,
        )
        assert [[point["value"] for point in found["points"]] for found in series if found["metric"] == "requests"] == [
            [point.value.int_value for point in found.points]
            for found in rpc_series.series
            if found.metric == pb.METRIC_REQUESTS
        ]
        assert [
            [point["value"]["micros"] for point in found["points"]] for found in series if found["metric"] == "cost"
        ] == [
            [point.value.int_value for point in found.points]
            for found in rpc_series.series
            if found.metric == pb.METRIC_COST
        ]

        page = structured(
            await client.call_tool("list_requests", {"filter": {"start": start, "end": end}, "page_size": 5})
        )
        rpc_page = await reporting.ListRequests(
            pb.ListRequestsRequest(filter=usage_filter, page_size=5), metadata=admin
        )
        assert [found["request_id"] for found in page["requests"]] == [found.request_id for found in rpc_page.requests]
        assert page["next_page_token"] == rpc_page.next_page_token
        assert "next_page_token" in page["note"]

        one = structured(
            await client.call_tool("get_request", {"environment": "prod", "request_id": seeded.prod_request_id})
        )
        rpc_one = await reporting.GetRequest(
            pb.GetRequestRequest(environment_id="prod", request_id=seeded.prod_request_id), metadata=admin
        )
        assert [attempt["attempt"] for attempt in one["attempts"]] == [
            stored.event.attempt for stored in rpc_one.attempts
        ]
        assert one["request"]["attempts"] == rpc_one.request.attempt_count == 2

        fleet = structured(await client.call_tool("fleet_status", {}))
        rpc_fleet = await heartbeat_grpc.HeartbeatServiceStub(channel).ListGateways(
            heartbeat_pb.ListGatewaysRequest(), metadata=admin
        )
        assert sorted(
            (gateway["gateway"], gateway["status"], gateway["why"]) for gateway in fleet["gateways"]
        ) == sorted(
            (gateway.gateway_id, _status_word(gateway.status), list(gateway.status_reasons))
            for gateway in rpc_fleet.gateways
        )
        degraded = structured(await client.call_tool("fleet_status", {"statuses": ["degraded"]}))
        assert [gateway["gateway"] for gateway in degraded["gateways"]] == ["gw-prod"]
        assert any("3 usage events rejected" in reason for reason in degraded["gateways"][0]["why"])
        assert degraded["gateways"][0]["dead_letters"] == 3
        assert fleet["counts"]["degraded"] == degraded["counts"]["degraded"] == 1

        budgets = structured(await client.call_tool("list_budgets", {}))["budgets"]
        rpc_budgets = await budget_grpc.BudgetServiceStub(channel).ListBudgets(
            budget_pb.ListBudgetsRequest(), metadata=admin
        )
        assert [(item["budget_id"], item["current_window"]["used"]["micros"]) for item in budgets] == [
            (item.budget.budget_id, item.status.used) for item in rpc_budgets.budgets
        ]
        assert budgets[0]["scope"] == {"environment": "prod"}

        alerts = structured(await client.call_tool("budget_alerts", {"budget_id": seeded.budget_id}))["alerts"]
        rpc_alerts = await budget_grpc.BudgetServiceStub(channel).ListBudgetAlerts(
            budget_pb.ListBudgetAlertsRequest(budget_id=seeded.budget_id), metadata=admin
        )
        assert [(alert["alert_id"], alert["threshold_percent"]) for alert in alerts] == [
            (alert.alert_id, alert.threshold_percent) for alert in rpc_alerts.alerts
        ]
        assert alerts  # the seeded spend crossed the budget's thresholds
        assert [alert["used"]["micros"] for alert in alerts] == [alert.used for alert in rpc_alerts.alerts]
        assert {alert["metric"] for alert in alerts} == {"spend"}

        raw = tmp_path / "raw.jsonl"
        exported = structured(
            await client.call_tool(
                "export_usage", {"path": str(raw), "format": "jsonl", "filter": {"start": start, "end": end}}
            )
        )
        lines = [json.loads(line) for line in raw.read_text().splitlines()]
        assert exported["rows"] == len(lines) == everything.attempts
        capped = tmp_path / "capped.csv"
        cut = structured(
            await client.call_tool(
                "export_usage",
                {"path": str(capped), "filter": {"start": start, "end": end}, "group_by": ["model"], "max_rows": 2},
            )
        )
        with capped.open(newline="") as file:
            assert len(list(csv.DictReader(file))) == cut["rows"] == 2
        assert "max_rows=2" in cut["note"]
