"""`meterwire usage summary | top | series`: the figures of a time range, rankings and trends."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from rich.table import Table

from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from meterwire.budget.v1 import budget_service_pb2_grpc as budget_grpc
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from services.cli.budgets.figures import budgets_table
from services.cli.charts import bar, sparkline
from services.cli.client import PAGE_SIZE, Connection, JsonOption, call
from services.cli.output import console
from services.cli.usage.currencies import range_currency
from services.cli.usage.filters import (
    EnvOption,
    FromOption,
    GatewayOption,
    GranularityOption,
    KeyOption,
    ModelOption,
    RangeOption,
    TagOption,
    ToOption,
    TzOption,
    UserOption,
    granularity,
    group_by,
    metric,
    usage_filter,
)
from services.usage_terms.figures import (
    MONEY_METRICS,
    TOKEN_METRICS,
    UNKNOWN,
    metric_of,
    metric_text,
    milliseconds,
    no_tokens_reported,
    spend,
    token_total,
)
from services.usage_terms.query import DIMENSION_NAMES, METRIC_NAMES

_BAR_WIDTH = 30


def _json(message: object) -> None:
    typer.echo(json.dumps(MessageToDict(message, preserving_proto_field_name=True), indent=2))  # type: ignore[arg-type]


def summary(
    connection: Connection,
    range_name: RangeOption = "today",
    start: FromOption = None,
    end: ToOption = None,
    tz: TzOption = "UTC",
    env: EnvOption = None,
    gateway: GatewayOption = None,
    model: ModelOption = None,
    key: KeyOption = None,
    user: UserOption = None,
    tag: TagOption = None,
    as_json: JsonOption = False,
) -> None:
    """Requests, errors, tokens, spend, cache savings and latency for a time range."""
    request = pb.GetUsageSummaryRequest(
        filter=usage_filter(
            range_name, start, end, tz, environments=env, gateways=gateway, models=model, keys=key, users=user, tags=tag
        )
    )
    with connection.channel() as channel:
        figures = call(connection, pb_grpc.ReportingServiceStub(channel).GetUsageSummary, request).summary
        if as_json:
            _json(figures)
            return
        budgets = _applying_budgets(connection, channel, env or [])
    table = Table("figure", "value", show_header=False)
    tokens = figures.tokens

    def tokens_pair(first: int, second: int) -> str:
        return f"{token_total(figures, first)} / {token_total(figures, second)}"

    rows = [
        ("requests / attempts", f"{figures.requests:,} / {figures.attempts:,}"),
        ("successes / errors", f"{figures.successes:,} / {figures.errors:,}  ({figures.success_rate:.2%} success)"),
        ("spend", spend(figures, figures.cost_micros)),
        ("cache savings", spend(figures, figures.cache_savings_micros)),
        ("tokens in / out", tokens_pair(tokens.input, tokens.output)),
        ("cache read / write", tokens_pair(tokens.cache_read, tokens.cache_write)),
        ("reasoning / total", tokens_pair(tokens.reasoning, tokens.total)),
        *((f"  {name}", f"{value:,}") for name, value in sorted(tokens.categories.items())),
        (
            "latency avg / p50 / p95 / p99",
            " / ".join(milliseconds(figures.latency, f) for f in ("average", "p50", "p95", "p99")),
        ),
        ("ttft avg / p95", " / ".join(milliseconds(figures.ttft, f) for f in ("average", "p95"))),
        ("avg QPS / tokens per min", f"{figures.average_qps:,.3f} / {figures.tokens_per_minute:,.1f}"),
        ("unknown tokens / unpriced", f"{figures.unknown_tokens_count:,} / {figures.unpriced_count:,}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if budgets:
        console.print(budgets_table(budgets, datetime.now(UTC), title="Budgets"))


def _applying_budgets(
    connection: Connection, channel: grpc.Channel, environments: list[str]
) -> list[budget_pb.BudgetWithStatus]:
    """The budgets that apply to the filtered environments (theirs and organization-wide ones), or all that
    the token may read: one call, its first page.

    Asked unfiltered and chosen here, because the server's environment filter leaves organization budgets out,
    though they count these environments' usage too. The summary stands without them: where the budget service
    is not hosted, or this token may not read it, the figures are printed alone.
    """
    stub = budget_grpc.BudgetServiceStub(channel)

    def list_budgets(request: budget_pb.ListBudgetsRequest, **call_options: Any) -> budget_pb.ListBudgetsResponse:
        try:
            response: budget_pb.ListBudgetsResponse = stub.ListBudgets(request, **call_options)
        except grpc.RpcError as error:
            if error.code() not in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED):
                typer.echo(f"budgets not shown: {error.code().name}: {error.details()}", err=True)
            return budget_pb.ListBudgetsResponse()
        return response

    listed = call(connection, list_budgets, budget_pb.ListBudgetsRequest(page_size=PAGE_SIZE)).budgets
    wanted = {"", *environments}
    return [item for item in listed if not environments or item.budget.scope.environment_id in wanted]


def top(
    connection: Connection,
    by: Annotated[list[str], typer.Option("--by", help=f"Dimension (repeat, up to 3): {DIMENSION_NAMES}.")],
    order: Annotated[str, typer.Option("--metric", help=f"Ranking metric: {METRIC_NAMES}.")] = "cost",
    limit: Annotated[int, typer.Option("--limit", "-n", help="Top N; the rest are summed into (other).")] = 10,
    range_name: RangeOption = "today",
    start: FromOption = None,
    end: ToOption = None,
    tz: TzOption = "UTC",
    env: EnvOption = None,
    gateway: GatewayOption = None,
    model: ModelOption = None,
    tag: TagOption = None,
    as_json: JsonOption = False,
) -> None:
    """Rank groups by a metric, with a bar chart."""
    ranking = metric(order)
    request = pb.GetUsageBreakdownRequest(
        filter=usage_filter(range_name, start, end, tz, environments=env, gateways=gateway, models=model, tags=tag),
        group_by=group_by(by),
        order_by=ranking,
        top_n=limit,
        page_size=limit,
    )
    with connection.channel() as channel:
        response = call(connection, pb_grpc.ReportingServiceStub(channel).GetUsageBreakdown, request)
    if as_json:
        _json(response)
        return
    rows = [*response.rows, *([response.other] if response.HasField("other") else [])]
    values = [metric_of(row.summary, ranking) for row in rows]
    table = Table(*by, order, "", "requests", "spend")
    maximum = max(values, default=0.0)
    for row, value in zip(rows, values, strict=True):
        unknown = (ranking in TOKEN_METRICS and no_tokens_reported(row.summary)) or (
            ranking in MONEY_METRICS and spend(row.summary, 0) == UNKNOWN
        )
        table.add_row(
            *row.keys,
            UNKNOWN if unknown else metric_text(ranking, value, row.summary.currency),
            bar(value, maximum, _BAR_WIDTH),
            f"{row.summary.requests:,}",
            spend(row.summary, row.summary.cost_micros),
        )
    console.print(table)


def series(
    connection: Connection,
    metrics: Annotated[
        list[str] | None, typer.Option("--metric", help=f"Metric (repeat; default requests): {METRIC_NAMES}.")
    ] = None,
    bucket: GranularityOption = "1h",
    split_by: Annotated[
        str | None, typer.Option("--split-by", help=f"One series per value of a dimension: {DIMENSION_NAMES}.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="With --split-by: top N series.")] = 5,
    range_name: RangeOption = "today",
    start: FromOption = None,
    end: ToOption = None,
    tz: TzOption = "UTC",
    env: EnvOption = None,
    model: ModelOption = None,
    tag: TagOption = None,
    as_json: JsonOption = False,
) -> None:
    """Trends per time bucket aligned in --tz, as sparklines."""
    selection = usage_filter(range_name, start, end, tz, environments=env, models=model, tags=tag)
    request = pb.GetUsageTimeSeriesRequest(
        filter=selection,
        granularity=granularity(bucket),
        time_zone=tz,
        metrics=[metric(name) for name in metrics or ["requests"]],
        top_n=limit,
    )
    if split_by:
        request.split_by.CopyFrom(group_by([split_by], "split_by")[0])
    with connection.channel() as channel:
        response = call(connection, pb_grpc.ReportingServiceStub(channel).GetUsageTimeSeries, request)
        wants_money = not as_json and any(one.metric in MONEY_METRICS for one in response.series)
        currency = range_currency(connection, channel, selection) if wants_money else ""
    if as_json:
        _json(response)
        return
    table = Table("metric", "series", "trend", "min", "max", "avg")
    for one in response.series:
        values = [p.value.int_value if p.value.HasField("int_value") else p.value.double_value for p in one.points]
        table.add_row(
            pb.Metric.Name(one.metric).removeprefix("METRIC_").lower().replace("_", "-"),
            one.key or "all",
            sparkline(values),
            *(metric_text(one.metric, value, currency) for value in (min(values, default=0), max(values, default=0))),
            metric_text(one.metric, one.average, currency),
        )
    console.print(table)
