"""What each MCP tool asks the control plane, and the capped, model-sized record it answers with.

Every tool here only reads: Reporting, Heartbeat's gateway listing and Budget's listings. Each result is capped
(the caps below) and says so in a `note` when it was cut, with how to get the rest.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import grpc

from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from meterwire.budget.v1 import budget_service_pb2_grpc as budget_grpc
from meterwire.common.v1 import filter_pb2
from meterwire.heartbeat.v1 import heartbeat_service_pb2 as heartbeat_pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2_grpc as heartbeat_grpc
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from services.mcp import arguments, results
from services.mcp.arguments import ArgumentError, UsageFilterArguments
from services.mcp.control_plane import Caller
from services.mcp.results import Record
from services.usage_terms.records import (
    EVENT_COLUMNS,
    ExportWriter,
    event_record,
    grouped_columns,
    grouped_record,
    open_writer,
)

MAX_BREAKDOWN_ROWS: Final = 50
"""Most groups one breakdown returns (the rest are summed into `other`)."""
MAX_SERIES_POINTS: Final = 500
"""Most points one time-series answer carries over all its series; beyond it, a coarser granularity is asked for."""
MAX_REQUESTS_PAGE: Final = 50
"""Most requests one page of request history holds; `next_page_token` continues."""
MAX_LISTED: Final = 100
"""Most gateways, budgets or alerts one answer lists."""
MAX_EXPORT_ROWS: Final = 1_000_000
"""Most rows one export writes to its file."""
EXPORT_FORMATS: Final = ("csv", "jsonl")


async def _currency(caller: Caller, usage_filter: filter_pb2.UsageFilter) -> str:
    """The currency of the environments a filter covers ("" when they differ); time series carry none."""
    stub = pb_grpc.ReportingServiceStub(caller.channel)
    response = await caller.call(stub.GetUsageSummary, pb.GetUsageSummaryRequest(filter=usage_filter))
    return response.summary.currency


def _range_record(usage_filter: filter_pb2.UsageFilter) -> Record:
    return {"start": results.moment(usage_filter.start_time), "end": results.moment(usage_filter.end_time)}


async def usage_summary(caller: Caller, query: UsageFilterArguments | None) -> Record:
    usage_filter = arguments.usage_filter(query)
    stub = pb_grpc.ReportingServiceStub(caller.channel)
    response = await caller.call(stub.GetUsageSummary, pb.GetUsageSummaryRequest(filter=usage_filter))
    return {"range": _range_record(usage_filter), "summary": results.summary_record(response.summary)}


async def usage_breakdown(
    caller: Caller,
    query: UsageFilterArguments | None,
    *,
    group_by: list[str],
    order_by: str,
    ascending: bool,
    top_n: int,
) -> Record:
    request = pb.GetUsageBreakdownRequest(
        filter=arguments.usage_filter(query),
        group_by=arguments.group_by(group_by, "group_by"),
        order_by=arguments.metric(order_by, "order_by"),
        ascending=ascending,
        top_n=arguments.bounded(top_n, argument="top_n", maximum=MAX_BREAKDOWN_ROWS),
    )
    stub = pb_grpc.ReportingServiceStub(caller.channel)
    response = await caller.call(stub.GetUsageBreakdown, request)
    answer: Record = {
        "range": _range_record(request.filter),
        "group_by": group_by,
        "order_by": order_by,
        "rows": [
            {"keys": dict(zip(group_by, row.keys, strict=False)), **results.summary_record(row.summary)}
            for row in response.rows
        ],
    }
    if response.HasField("other") and response.other.summary.attempts:
        answer["other"] = results.summary_record(response.other.summary)
        answer["note"] = f"only the top {top_n} groups are listed; `other` sums the rest"
    return answer


_BUCKET_WIDTH: Final = {
    pb.GRANULARITY_MINUTE: timedelta(minutes=1),
    pb.GRANULARITY_FIVE_MINUTES: timedelta(minutes=5),
    pb.GRANULARITY_HOUR: timedelta(hours=1),
    pb.GRANULARITY_DAY: timedelta(days=1),
}


async def usage_time_series(
    caller: Caller,
    query: UsageFilterArguments | None,
    *,
    metrics: list[str],
    granularity: str,
    split_by: str | None,
    top_n: int,
) -> Record:
    if not metrics:
        raise ArgumentError(f"metrics: give at least one metric. {arguments.METRIC_HELP}")
    usage_filter = arguments.usage_filter(query)
    bucket = arguments.granularity(granularity)
    series_count = len(metrics) * (top_n if split_by else 1)
    span = usage_filter.end_time.ToDatetime() - usage_filter.start_time.ToDatetime()
    points = series_count * (span // _BUCKET_WIDTH[bucket] + 1)
    # Bounded before it starts: a minute series over 30 days would not fit a model's context.
    if points > MAX_SERIES_POINTS:
        raise ArgumentError(
            f"granularity: {granularity!r} over this range gives about {points} points (at most "
            f"{MAX_SERIES_POINTS}); choose a coarser granularity (1m, 5m, 1h, 1d), a shorter range or fewer metrics"
        )
    request = pb.GetUsageTimeSeriesRequest(
        filter=usage_filter,
        granularity=bucket,
        time_zone=query.time_zone if query else "UTC",
        metrics=[arguments.metric(name, "metrics") for name in metrics],
        top_n=arguments.bounded(top_n, argument="top_n", maximum=MAX_BREAKDOWN_ROWS) if split_by else 0,
    )
    if split_by:
        request.split_by.CopyFrom(arguments.group_by([split_by], "split_by")[0])
    stub = pb_grpc.ReportingServiceStub(caller.channel)
    response = await caller.call(stub.GetUsageTimeSeries, request)
    currency = await _currency(caller, usage_filter)
    series = []
    for found in response.series:
        which = found.metric
        series.append(
            {
                "metric": results.metric_name(which),
                "key": found.key or None,
                "points": [
                    {
                        "bucket_start": results.moment(point.bucket_start_time),
                        "value": results.metric_value(which, point.value, currency),
                    }
                    for point in found.points
                ],
                "min": results.metric_value(which, found.min, currency),
                "max": results.metric_value(which, found.max, currency),
            }
        )
    return {"range": _range_record(usage_filter), "granularity": granularity, "series": series}


async def _environment_currency(caller: Caller, environment_id: str) -> str:
    """An environment's pricing currency, asked over its last second (requests carry none of their own)."""
    now = datetime.now(UTC)
    asked = filter_pb2.UsageFilter(environment_ids=[environment_id])
    asked.start_time.FromDatetime(now - timedelta(seconds=1))
    asked.end_time.FromDatetime(now)
    return await _currency(caller, asked)


async def list_requests(
    caller: Caller, query: UsageFilterArguments | None, *, errors_only: bool, page_size: int, page_token: str
) -> Record:
    request = pb.ListRequestsRequest(
        filter=arguments.usage_filter(query),
        errors_only=errors_only,
        page_size=arguments.bounded(page_size, argument="page_size", maximum=MAX_REQUESTS_PAGE),
        page_token=page_token,
    )
    stub = pb_grpc.ReportingServiceStub(caller.channel)
    response = await caller.call(stub.ListRequests, request)
    currencies: dict[str, str] = {}
    for found in response.requests:
        if found.environment_id not in currencies:
            currencies[found.environment_id] = await _environment_currency(caller, found.environment_id)
    answer: Record = {
        "range": _range_record(request.filter),
        "requests": [results.request_record(found, currencies[found.environment_id]) for found in response.requests],
        "next_page_token": response.next_page_token or None,
    }
    if response.next_page_token:
        answer["note"] = "more requests match: call again with this next_page_token"
    return answer


async def get_request(caller: Caller, *, environment: str, request_id: str) -> Record:
    if not environment:
        raise ArgumentError("environment: give the environment id the request was served in")
    if not request_id:
        raise ArgumentError("request_id: give the request id (list_requests shows them)")
    stub = pb_grpc.ReportingServiceStub(caller.channel)
    response = await caller.call(
        stub.GetRequest, pb.GetRequestRequest(environment_id=environment, request_id=request_id)
    )
    currency = await _environment_currency(caller, environment)
    return {
        "request": results.request_record(response.request, currency),
        "attempts": [results.attempt_record(stored, currency) for stored in response.attempts],
    }


STATUSES: Final = {
    results.enum_word(heartbeat_pb.GatewayStatus, value, "GATEWAY_STATUS_"): value
    for value in heartbeat_pb.GatewayStatus.values()
    if value != heartbeat_pb.GATEWAY_STATUS_UNSPECIFIED
}
STATUS_NAMES: Final = ", ".join(STATUSES)


async def fleet_status(caller: Caller, *, environments: list[str], statuses: list[str]) -> Record:
    unknown = [name for name in statuses if name not in STATUSES]
    if unknown:
        raise ArgumentError(f"statuses: {unknown[0]!r} is not one of {STATUS_NAMES}")
    request = heartbeat_pb.ListGatewaysRequest(
        environment_ids=environments, statuses=[STATUSES[name] for name in statuses], page_size=MAX_LISTED
    )
    stub = heartbeat_grpc.HeartbeatServiceStub(caller.channel)
    response = await caller.call(stub.ListGateways, request)
    gateways = [results.gateway_record(gateway) for gateway in response.gateways]
    counts: dict[str, int] = {}
    for gateway in gateways:
        counts[gateway["status"]] = counts.get(gateway["status"], 0) + 1
    answer: Record = {"counts": counts, "gateways": gateways}
    if response.next_page_token:
        answer["note"] = f"only the first {MAX_LISTED} gateways are listed: narrow by environments or statuses"
    return answer


async def list_budgets(caller: Caller, *, environments: list[str]) -> Record:
    stub = budget_grpc.BudgetServiceStub(caller.channel)
    response = await caller.call(
        stub.ListBudgets, budget_pb.ListBudgetsRequest(environment_ids=environments, page_size=MAX_LISTED)
    )
    answer: Record = {"budgets": [results.budget_record(item.budget, item.status) for item in response.budgets]}
    if response.next_page_token:
        answer["note"] = f"only the first {MAX_LISTED} budgets are listed: narrow by environments"
    return answer


async def budget_alerts(
    caller: Caller, *, budget_id: str, environments: list[str], page_size: int, page_token: str
) -> Record:
    request = budget_pb.ListBudgetAlertsRequest(
        budget_id=budget_id,
        environment_ids=environments,
        page_size=arguments.bounded(page_size, argument="page_size", maximum=MAX_LISTED),
        page_token=page_token,
    )
    stub = budget_grpc.BudgetServiceStub(caller.channel)
    response = await caller.call(stub.ListBudgetAlerts, request)
    # An alert carries amounts but not their unit: its budget says whether they are money, and in what currency.
    budgets: dict[str, budget_pb.Budget] = {}
    for alert in response.alerts:
        if alert.budget_id not in budgets:
            found = await caller.call(stub.GetBudget, budget_pb.GetBudgetRequest(budget_id=alert.budget_id))
            budgets[alert.budget_id] = found.budget
    answer: Record = {
        "alerts": [results.alert_record(alert, budgets[alert.budget_id]) for alert in response.alerts],
        "next_page_token": response.next_page_token or None,
    }
    if response.next_page_token:
        answer["note"] = "more alerts: call again with this next_page_token"
    return answer


def _new_export_file(path: str) -> Path:
    """The file an export may write: absolute, not there yet (never overwrite), in a folder that exists."""
    output = Path(path).expanduser()
    if not output.is_absolute():
        raise ArgumentError(f"path: {path!r} is relative; give an absolute path to the file to write")
    if output.exists():
        raise ArgumentError(f"path: {str(output)!r} exists; give a new file (an export never overwrites)")
    if not output.parent.is_dir():
        raise ArgumentError(f"path: the folder {str(output.parent)!r} does not exist")
    return output


def _discard(writer: ExportWriter, output: Path) -> None:
    """A failed export leaves no half-written file that could pass for a complete one."""
    writer.close()
    output.unlink(missing_ok=True)


async def export_usage(
    caller: Caller,
    query: UsageFilterArguments | None,
    *,
    path: str,
    file_format: str,
    group_by: list[str],
    granularity: str | None,
    max_rows: int,
) -> Record:
    if file_format not in EXPORT_FORMATS:
        raise ArgumentError(f"format: {file_format!r} is not one of {', '.join(EXPORT_FORMATS)}")
    output = _new_export_file(path)
    limit = arguments.bounded(max_rows, argument="max_rows", maximum=MAX_EXPORT_ROWS)
    request = pb.ExportUsageRequest(
        filter=arguments.usage_filter(query),
        group_by=arguments.group_by(group_by, "group_by") if group_by else [],
        granularity=arguments.granularity(granularity) if granularity else pb.GRANULARITY_UNSPECIFIED,
        time_zone=query.time_zone if query else "UTC",
    )
    stub = pb_grpc.ReportingServiceStub(caller.channel)
    written = 0
    cut = False
    writer = open_writer(output, file_format, grouped_columns(group_by) if group_by else EVENT_COLUMNS)
    stream = caller.stream(stub.ExportUsage, request)
    try:
        async for response in stream:
            records = [event_record(stored) for stored in response.events]
            records += [grouped_record(row, group_by) for row in response.rows]
            for record in records:
                if written == limit:
                    cut = True
                    break
                writer.write(record)
                written += 1
            if cut:
                break
    except grpc.aio.AioRpcError as error:
        _discard(writer, output)
        raise caller.refused(error) from None
    except BaseException:
        _discard(writer, output)
        raise
    finally:
        stream.cancel()  # type: ignore[attr-defined]
    writer.close()
    answer: Record = {"path": str(output), "format": file_format, "rows": written}
    if cut:
        answer["note"] = f"stopped at max_rows={limit}; narrow the range or filters, or raise max_rows"
    return answer
