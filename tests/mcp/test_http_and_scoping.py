"""Over streamable HTTP: each caller's own token decides what it reads (a reporter for one environment reads no
other through any tool), a request without a token is refused, and bad arguments come back as tool errors that
name the argument and what to give instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import httpx2
import pytest

from meterwire.common.v1 import filter_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from tests.clients import bearer
from tests.mcp.harness import HttpServer, Seed, error_text, stdio_client, structured, wait_for_http

pytestmark = pytest.mark.system

DEV_ONLY: dict[str, Any] = {"range": "1h", "environments": ["dev"]}


async def test_an_http_request_without_a_bearer_token_is_refused(http_server: HttpServer) -> None:
    await wait_for_http(http_server)
    async with httpx2.AsyncClient() as http:
        response = await http.post(
            http_server.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers={}
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_an_unknown_token_is_refused_by_the_control_plane(http_server: HttpServer) -> None:
    await wait_for_http(http_server)
    async with http_server.client("mw_not_a_token") as client:
        result = await client.call_tool("usage_summary", {})
    assert "UNAUTHENTICATED" in error_text(result)


async def test_a_reporter_for_one_environment_reads_no_other_through_any_tool(
    seeded: Seed, http_server: HttpServer, channel: grpc.aio.Channel, tmp_path: Path
) -> None:
    await wait_for_http(http_server)
    async with http_server.client(seeded.prod_reporter) as client:
        summary = structured(await client.call_tool("usage_summary", {"filter": {"range": "1h"}}))["summary"]
        by_environment = structured(
            await client.call_tool("usage_breakdown", {"filter": {"range": "1h"}, "group_by": ["environment"]})
        )
        requests = structured(await client.call_tool("list_requests", {"filter": {"range": "1h"}, "page_size": 50}))
        fleet = structured(await client.call_tool("fleet_status", {}))
        budgets = structured(await client.call_tool("list_budgets", {}))
        alerts = structured(await client.call_tool("budget_alerts", {}))
        series = structured(
            await client.call_tool(
                "usage_time_series", {"filter": {"range": "1h"}, "split_by": "environment", "granularity": "1h"}
            )
        )
        exported = structured(
            await client.call_tool("export_usage", {"path": str(tmp_path / "mine.jsonl"), "format": "jsonl"})
        )
        denied = {
            "usage_summary": await client.call_tool("usage_summary", {"filter": DEV_ONLY}),
            "usage_breakdown": await client.call_tool("usage_breakdown", {"filter": DEV_ONLY, "group_by": ["model"]}),
            "usage_time_series": await client.call_tool("usage_time_series", {"filter": DEV_ONLY}),
            "list_requests": await client.call_tool("list_requests", {"filter": DEV_ONLY}),
            "get_request": await client.call_tool(
                "get_request", {"environment": "dev", "request_id": seeded.dev_request_id}
            ),
            "export_usage": await client.call_tool(
                "export_usage", {"path": str(tmp_path / "theirs.csv"), "filter": DEV_ONLY}
            ),
            "fleet_status": await client.call_tool("fleet_status", {"environments": ["dev"]}),
            "list_budgets": await client.call_tool("list_budgets", {"environments": ["dev"]}),
            "budget_alerts": await client.call_tool("budget_alerts", {"environments": ["dev"]}),
        }
    prod_attempts = 60
    assert summary["attempts"] == prod_attempts
    assert [row["keys"] for row in by_environment["rows"]] == [{"environment": "prod"}]
    assert {found["environment"] for found in requests["requests"]} == {"prod"}
    assert {gateway["environment"] for gateway in fleet["gateways"]} <= {"prod"}
    assert [budget["budget_id"] for budget in budgets["budgets"]] == [seeded.budget_id]
    assert {alert["environment"] for alert in alerts["alerts"]} <= {"prod"}
    assert {found["key"] for found in series["series"]} == {"prod"}
    assert exported["rows"] == prod_attempts
    for tool, result in denied.items():
        assert "PERMISSION_DENIED" in error_text(result), tool
    assert not (tmp_path / "theirs.csv").exists()  # a refused export leaves no file behind

    # One server, two callers: each request acts with its own token, so the admin (on a session opened meanwhile)
    # reads both environments while the reporter still reads one.
    async with http_server.client(seeded.admin) as admin, http_server.client(seeded.prod_reporter) as reporter:
        admin_view = structured(await admin.call_tool("usage_summary", {"filter": {"range": "1h"}}))
        reporter_view = structured(await reporter.call_tool("usage_summary", {"filter": {"range": "1h"}}))
    assert (admin_view["summary"]["attempts"], reporter_view["summary"]["attempts"]) == (80, prod_attempts)

    # The same reporter's view through the RPC itself, for the same filter, to make sure the tool adds nothing.
    admin_summary = await pb_grpc.ReportingServiceStub(channel).GetUsageSummary(
        pb.GetUsageSummaryRequest(filter=_last_hours(["prod"])), metadata=bearer(seeded.admin)
    )
    assert admin_summary.summary.attempts == prod_attempts


def _last_hours(environments: list[str]) -> filter_pb2.UsageFilter:
    usage_filter = filter_pb2.UsageFilter(environment_ids=environments)
    usage_filter.end_time.GetCurrentTime()
    usage_filter.start_time.FromSeconds(usage_filter.end_time.seconds - 3 * 3600)
    return usage_filter


BAD_ARGUMENTS: list[tuple[str, dict[str, Any], str]] = [
    ("usage_summary", {"filter": {"range": "2w"}}, "range"),
    ("usage_summary", {"filter": {"time_zone": "Mars/Olympus"}}, "filter.time_zone"),
    ("usage_summary", {"filter": {"start": "last tuesday"}}, "filter.start"),
    ("usage_summary", {"filter": {"start": "2026-11-23", "end": "2026-11-01"}}, "filter.end"),
    ("usage_summary", {"filter": {"tags": ["team"]}}, "filter.tags"),
    ("usage_summary", {"filter": {"colour": "blue"}}, "colour"),
    ("usage_breakdown", {"group_by": ["colour"]}, "group_by"),
    ("usage_breakdown", {"group_by": []}, "group_by"),
    ("usage_breakdown", {"group_by": ["model"], "order_by": "vibes"}, "order_by"),
    ("usage_breakdown", {"group_by": ["model"], "top_n": 0}, "top_n"),
    ("usage_time_series", {"metrics": ["cost"], "granularity": "2h"}, "granularity"),
    ("usage_time_series", {"filter": {"range": "30d"}, "granularity": "1m"}, "granularity"),
    ("usage_time_series", {"metrics": []}, "metrics"),
    ("list_requests", {"page_size": 5000}, "page_size"),
    ("get_request", {"environment": "", "request_id": "r"}, "environment"),
    ("fleet_status", {"statuses": ["on fire"]}, "statuses"),
    ("budget_alerts", {"page_size": -1}, "page_size"),
    ("export_usage", {"path": "relative.csv"}, "path"),
    ("export_usage", {"path": "/no/such/folder/x.csv"}, "path"),
    ("export_usage", {"path": "/tmp/x.xlsx", "format": "xlsx"}, "format"),
]


async def test_bad_arguments_give_a_tool_error_naming_the_argument(seeded: Seed) -> None:
    async with stdio_client(seeded, seeded.admin) as client:
        for tool, given, argument in BAD_ARGUMENTS:
            message = error_text(await client.call_tool(tool, given))
            assert argument in message, (tool, given, message)
        # The server is still there and answering after every refusal.
        assert structured(await client.call_tool("usage_summary", {}))["summary"]["attempts"] == 80
