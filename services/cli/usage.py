"""`meterwire usage …`: summaries, rankings, trends, request history and export from the Reporting service."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Final, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table

from meterwire.common.v1 import filter_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from services.cli.charts import bar, sparkline
from services.cli.client import Connection, JsonOption, call, client_command, fail

usage_app = typer.Typer(help="Usage and spend: summary, top, series, requests, request, export.", no_args_is_help=True)
console = Console()

RANGES: Final = {"1h": timedelta(hours=1), "3d": timedelta(days=3), "7d": timedelta(days=7), "30d": timedelta(days=30)}
DIMENSIONS: Final = {
    name.removeprefix("DIMENSION_").lower().replace("_", "-"): value
    for name, value in pb.Dimension.items()
    if value not in (pb.DIMENSION_UNSPECIFIED, pb.DIMENSION_TAG)
}
METRICS: Final = {
    name.removeprefix("METRIC_").lower().replace("_", "-"): value
    for name, value in pb.Metric.items()
    if value != pb.METRIC_UNSPECIFIED
}
GRANULARITIES: Final = {
    "1m": pb.GRANULARITY_MINUTE,
    "5m": pb.GRANULARITY_FIVE_MINUTES,
    "1h": pb.GRANULARITY_HOUR,
    "1d": pb.GRANULARITY_DAY,
}

RangeOption = Annotated[str, typer.Option("--range", "-r", help="1h, today, 3d, 7d or 30d (ignored with --from).")]
FromOption = Annotated[str | None, typer.Option("--from", help="Start, ISO 8601 (in --tz unless it has an offset).")]
ToOption = Annotated[str | None, typer.Option("--to", help="End (exclusive), ISO 8601. Default: now.")]
TzOption = Annotated[str, typer.Option("--tz", help="IANA time zone for 'today', --from/--to and day buckets.")]
EnvOption = Annotated[list[str] | None, typer.Option("--env", "-e", help="Environment (repeat).")]
GatewayOption = Annotated[list[str] | None, typer.Option("--gateway", "-g", help="Gateway id (repeat).")]
ModelOption = Annotated[list[str] | None, typer.Option("--model", "-m", help="Requested model (repeat).")]
KeyOption = Annotated[list[str] | None, typer.Option("--key", help="API key id (repeat).")]
UserOption = Annotated[list[str] | None, typer.Option("--user", "-u", help="User id (repeat).")]
TagOption = Annotated[list[str] | None, typer.Option("--tag", help="KEY=VALUE; all must match (repeat).")]


def time_range(
    range_name: str, start: str | None, end: str | None, zone_name: str, now: datetime
) -> tuple[datetime, datetime]:
    """[start, end) from a shortcut or --from/--to, both aware UTC."""
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        fail(f"--tz: {zone_name!r} is not an IANA time zone such as America/New_York", code=2)

    def parse(text: str, option: str) -> datetime:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            fail(f"{option}: {text!r} is not ISO 8601, e.g. 2026-11-23 or 2026-11-23T14:00", code=2)
        return (moment if moment.tzinfo else moment.replace(tzinfo=zone)).astimezone(UTC)

    finish = parse(end, "--to") if end else now
    if start:
        begin = parse(start, "--from")
    elif range_name == "today":
        local = now.astimezone(zone)
        begin = datetime(local.year, local.month, local.day, tzinfo=zone).astimezone(UTC)
    elif range_name in RANGES:
        begin = finish - RANGES[range_name]
    else:
        fail(f"--range: {range_name!r} is not one of 1h, today, {', '.join(k for k in RANGES if k != '1h')}", code=2)
    if finish <= begin:
        fail("--to must be after the start of the range", code=2)
    return begin, finish


def usage_filter(
    range_name: str,
    start: str | None,
    end: str | None,
    zone_name: str,
    *,
    environments: list[str] | None = None,
    gateways: list[str] | None = None,
    models: list[str] | None = None,
    keys: list[str] | None = None,
    users: list[str] | None = None,
    tags: list[str] | None = None,
) -> filter_pb2.UsageFilter:
    begin, finish = time_range(range_name, start, end, zone_name, datetime.now(UTC))
    matches = []
    for tag in tags or []:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            fail(f"--tag: {tag!r} is not KEY=VALUE", code=2)
        matches.append(filter_pb2.TagMatch(key=key, value=value))
    message = filter_pb2.UsageFilter(
        environment_ids=environments or [],
        gateway_ids=gateways or [],
        requested_models=models or [],
        api_key_ids=keys or [],
        user_ids=users or [],
        tags=matches,
    )
    message.start_time.FromDatetime(begin)
    message.end_time.FromDatetime(finish)
    return message


def group_by(names: list[str], option: str = "--by") -> list[pb.GroupBy]:
    """Dimension names (model, user, tag:team, ...) as GroupBy messages."""
    aliases = {"model": "requested-model", "key": "api-key", "env": "environment"}
    result = []
    for name in names:
        if name.startswith("tag:") and len(name) > 4:
            result.append(pb.GroupBy(dimension=pb.DIMENSION_TAG, tag_key=name[4:]))
            continue
        dimension = DIMENSIONS.get(aliases.get(name, name))
        if dimension is None:
            fail(f"{option}: {name!r} is not one of {', '.join([*DIMENSIONS, 'tag:KEY'])}", code=2)
        result.append(pb.GroupBy(dimension=dimension))
    return result


def metric(name: str, option: str = "--metric") -> pb.Metric.ValueType:
    value = METRICS.get(name)
    if value is None:
        fail(f"{option}: {name!r} is not one of {', '.join(METRICS)}", code=2)
    return value


def money(micros: int, currency: str) -> str:
    return f"{micros / 1_000_000:,.4f} {currency}".strip()


def _ms(stats: pb.LatencyStats, field: str) -> str:
    if not stats.HasField(field):  # type: ignore[arg-type]
        return "-"
    return f"{getattr(stats, field).ToNanoseconds() / 1e6:,.1f} ms"


@usage_app.command("summary")
@client_command
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
        typer.echo(json.dumps(MessageToDict(figures, preserving_proto_field_name=True), indent=2))
        return
    table = Table("figure", "value", show_header=False)
    tokens = figures.tokens
    rows = [
        ("requests / attempts", f"{figures.requests:,} / {figures.attempts:,}"),
        ("successes / errors", f"{figures.successes:,} / {figures.errors:,}  ({figures.success_rate:.2%} success)"),
        ("spend", money(figures.cost_micros, figures.currency)),
        ("cache savings", money(figures.cache_savings_micros, figures.currency)),
        ("tokens in / out", f"{tokens.input:,} / {tokens.output:,}"),
        ("cache read / write", f"{tokens.cache_read:,} / {tokens.cache_write:,}"),
        ("reasoning / total", f"{tokens.reasoning:,} / {tokens.total:,}"),
        *((f"  {name}", f"{value:,}") for name, value in sorted(tokens.categories.items())),
        (
            "latency avg / p50 / p95 / p99",
            " / ".join(_ms(figures.latency, f) for f in ("average", "p50", "p95", "p99")),
        ),
        ("ttft avg / p95", " / ".join(_ms(figures.ttft, f) for f in ("average", "p95"))),
        ("avg QPS / tokens per min", f"{figures.average_qps:,.3f} / {figures.tokens_per_minute:,.1f}"),
        ("unknown tokens / unpriced", f"{figures.unknown_tokens_count:,} / {figures.unpriced_count:,}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


@usage_app.command("top")
@client_command
def top(
    connection: Connection,
    by: Annotated[list[str], typer.Option("--by", help="Dimension(s), up to 3: model, user, key, tag:team, ...")],
    order: Annotated[str, typer.Option("--metric", help="Ranking metric, e.g. cost, requests, latency-p95.")] = "cost",
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
        typer.echo(json.dumps(MessageToDict(response, preserving_proto_field_name=True), indent=2))
        return
    rows = [*response.rows, *([response.other] if response.HasField("other") else [])]
    values = [metric_of(row.summary, ranking) for row in rows]
    table = Table(*by, order, "", "requests", "spend")
    maximum = max(values, default=0.0)
    for row, value in zip(rows, values, strict=True):
        table.add_row(
            *row.keys,
            f"{value:,.4g}" if isinstance(value, float) else f"{value:,}",
            bar(value, maximum, 30),
            f"{row.summary.requests:,}",
            money(row.summary.cost_micros, row.summary.currency),
        )
    console.print(table)


@usage_app.command("series")
@client_command
def series(
    connection: Connection,
    metrics: Annotated[list[str] | None, typer.Option("--metric", help="Metric (repeat). Default: requests.")] = None,
    granularity: Annotated[str, typer.Option("--granularity", help="1m, 5m, 1h or 1d.")] = "1h",
    split_by: Annotated[str | None, typer.Option("--split-by", help="One series per value of a dimension.")] = None,
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
    if granularity not in GRANULARITIES:
        fail(f"--granularity: {granularity!r} is not one of {', '.join(GRANULARITIES)}", code=2)
    request = pb.GetUsageTimeSeriesRequest(
        filter=usage_filter(range_name, start, end, tz, environments=env, models=model, tags=tag),
        granularity=GRANULARITIES[granularity],
        time_zone=tz,
        metrics=[metric(name) for name in metrics or ["requests"]],
        top_n=limit,
    )
    if split_by:
        request.split_by.CopyFrom(group_by([split_by], "--split-by")[0])
    with connection.channel() as channel:
        response = call(connection, pb_grpc.ReportingServiceStub(channel).GetUsageTimeSeries, request)
    if as_json:
        typer.echo(json.dumps(MessageToDict(response, preserving_proto_field_name=True), indent=2))
        return
    table = Table("metric", "series", "trend", "min", "max", "avg")
    for one in response.series:
        values = [p.value.int_value if p.value.HasField("int_value") else p.value.double_value for p in one.points]
        table.add_row(
            pb.Metric.Name(one.metric).removeprefix("METRIC_").lower(),
            one.key or "all",
            sparkline(values),
            f"{min(values, default=0):,.4g}",
            f"{max(values, default=0):,.4g}",
            f"{one.average:,.4g}",
        )
    console.print(table)


@usage_app.command("requests")
@client_command
def requests(
    connection: Connection,
    errors_only: Annotated[
        bool, typer.Option("--errors-only", help="Only requests whose last attempt failed.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Most requests to show.")] = 50,
    range_name: RangeOption = "1h",
    start: FromOption = None,
    end: ToOption = None,
    tz: TzOption = "UTC",
    env: EnvOption = None,
    model: ModelOption = None,
    user: UserOption = None,
    tag: TagOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recent requests, newest first."""
    flt = usage_filter(range_name, start, end, tz, environments=env, models=model, users=user, tags=tag)
    found: list[pb.RequestSummary] = []
    with connection.channel() as channel:
        stub = pb_grpc.ReportingServiceStub(channel)
        token = ""
        while len(found) < limit:
            page_request = pb.ListRequestsRequest(
                filter=flt, errors_only=errors_only, page_size=min(limit - len(found), 1000), page_token=token
            )
            page = call(connection, stub.ListRequests, page_request)
            found.extend(page.requests)
            token = page.next_page_token
            if not token:
                break
    if as_json:
        typer.echo(json.dumps([MessageToDict(r, preserving_proto_field_name=True) for r in found], indent=2))
        return
    zone = ZoneInfo(tz)
    table = Table("start", "environment", "request", "model → served by", "attempts", "status", "tokens", "cost")
    for r in found:
        status = str(r.status_code) if r.HasField("status_code") else "?"
        table.add_row(
            r.start_time.ToDatetime(tzinfo=UTC).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S"),
            r.environment_id,
            r.request_id,
            f"{r.requested_model} → {r.resolved_model}",
            str(r.attempt_count),
            f"{status} {r.error_type}".strip(),
            f"{r.tokens.total:,}",
            f"{r.cost_micros:,}" if r.HasField("cost_micros") else "-",
        )
    console.print(table)


@usage_app.command("request")
@client_command
def request_attempts(
    connection: Connection,
    environment: Annotated[str, typer.Argument(help="The request's environment.")],
    request_id: Annotated[str, typer.Argument(help="The request id.")],
    as_json: JsonOption = False,
) -> None:
    """One request with every attempt."""
    with connection.channel() as channel:
        response = call(
            connection,
            pb_grpc.ReportingServiceStub(channel).GetRequest,
            pb.GetRequestRequest(environment_id=environment, request_id=request_id),
        )
    if as_json:
        typer.echo(json.dumps(MessageToDict(response, preserving_proto_field_name=True), indent=2))
        return
    table = Table(
        "#", "gateway", "model → served by", "provider", "status", "error", "in/out tokens", "ttft", "latency"
    )
    for stored in response.attempts:
        e = stored.event
        table.add_row(
            str(e.attempt),
            stored.gateway_id,
            f"{e.requested_model} → {e.resolved_model}",
            e.provider,
            str(e.status_code) if e.HasField("status_code") else "?",
            f"{e.error_type} {e.error_message}".strip(),
            f"{e.tokens.input:,}/{e.tokens.output:,}",
            f"{e.ttft.ToMilliseconds():,} ms" if e.HasField("ttft") else "-",
            f"{e.latency.ToMilliseconds():,} ms" if e.HasField("latency") else "-",
        )
    console.print(table)


def metric_of(figures: pb.UsageSummary, which: int) -> float:
    """A metric's value from a summary, for the bars of a ranking."""
    tokens = figures.tokens
    stats: dict[int, tuple[pb.LatencyStats, str]] = {
        pb.METRIC_LATENCY_AVG: (figures.latency, "average"),
        pb.METRIC_LATENCY_P50: (figures.latency, "p50"),
        pb.METRIC_LATENCY_P95: (figures.latency, "p95"),
        pb.METRIC_LATENCY_P99: (figures.latency, "p99"),
        pb.METRIC_TTFT_AVG: (figures.ttft, "average"),
        pb.METRIC_TTFT_P95: (figures.ttft, "p95"),
    }
    if which in stats:
        message, field = stats[which]
        return float(getattr(message, field).ToNanoseconds() / 1e6)
    values: dict[int, float] = {
        pb.METRIC_REQUESTS: figures.requests,
        pb.METRIC_ATTEMPTS: figures.attempts,
        pb.METRIC_SUCCESSES: figures.successes,
        pb.METRIC_ERRORS: figures.errors,
        pb.METRIC_SUCCESS_RATE: figures.success_rate,
        pb.METRIC_INPUT_TOKENS: tokens.input,
        pb.METRIC_OUTPUT_TOKENS: tokens.output,
        pb.METRIC_CACHE_READ_TOKENS: tokens.cache_read,
        pb.METRIC_CACHE_WRITE_TOKENS: tokens.cache_write,
        pb.METRIC_REASONING_TOKENS: tokens.reasoning,
        pb.METRIC_TOTAL_TOKENS: tokens.total,
        pb.METRIC_COST: figures.cost_micros,
        pb.METRIC_CACHE_SAVINGS: figures.cache_savings_micros,
    }
    return values[which]


_EXPORT_COLUMNS: Final = (
    "requests",
    "attempts",
    "successes",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_micros",
    "cache_savings_micros",
    "currency",
    "unknown_tokens_count",
    "unpriced_count",
)


def _summary_cells(figures: pb.UsageSummary) -> list[object]:
    t = figures.tokens
    return [
        figures.requests,
        figures.attempts,
        figures.successes,
        figures.errors,
        t.input,
        t.output,
        t.cache_read,
        t.cache_write,
        t.reasoning,
        t.total,
        figures.cost_micros,
        figures.cache_savings_micros,
        figures.currency,
        figures.unknown_tokens_count,
        figures.unpriced_count,
    ]


def _event_record(stored: pb.StoredUsageEvent) -> dict[str, object]:
    record: dict[str, object] = {"environment_id": stored.environment_id, "gateway_id": stored.gateway_id}
    record.update(MessageToDict(stored.event, preserving_proto_field_name=True))
    record["cost_source"] = pb.CostSource.Name(stored.cost_source).removeprefix("COST_SOURCE_").lower()
    return record


class _Sink:
    """Writes export records as CSV, JSONL or XLSX, one at a time (XLSX in openpyxl's streaming mode)."""

    def __init__(self, path: Path, file_format: str) -> None:
        self._format = file_format
        self._columns: list[str] | None = None
        self._file: TextIO | None = None
        self._csv: Any = None
        self._book: Any = None
        if file_format == "xlsx":
            from openpyxl import Workbook

            self._book = Workbook(write_only=True)
            self._sheet = self._book.create_sheet("usage")
            self._path = path
        else:
            self._file = path.open("w", newline="", encoding="utf-8")
            self._csv = csv.writer(self._file) if file_format == "csv" else None

    def write(self, record: dict[str, object]) -> None:
        if self._format == "jsonl":
            assert self._file is not None
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
            return
        if self._columns is None:
            self._columns = list(record)
            self._row(self._columns)
        self._row([_cell(record.get(column)) for column in self._columns])

    def _row(self, cells: Sequence[object]) -> None:
        if self._csv is not None:
            self._csv.writerow(cells)
        else:
            self._sheet.append(cells)

    def close(self) -> None:
        if self._book is not None:
            self._book.save(self._path)
        if self._file is not None:
            self._file.close()


def _cell(value: object) -> object:
    # Nested values (tags, token counts) go into one cell as JSON.
    return json.dumps(value, separators=(",", ":")) if isinstance(value, dict | list) else value


@usage_app.command("export")
@client_command
def export(
    connection: Connection,
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")],
    file_format: Annotated[str, typer.Option("--format", "-f", help="csv, jsonl or xlsx.")] = "csv",
    by: Annotated[
        list[str] | None, typer.Option("--by", help="Group by (repeat); none: one row per raw event.")
    ] = None,
    granularity: Annotated[str | None, typer.Option("--granularity", help="With --by: 1m, 5m, 1h or 1d.")] = None,
    range_name: RangeOption = "today",
    start: FromOption = None,
    end: ToOption = None,
    tz: TzOption = "UTC",
    env: EnvOption = None,
    gateway: GatewayOption = None,
    model: ModelOption = None,
    tag: TagOption = None,
) -> None:
    """Export usage (raw events, or grouped per bucket) to CSV, JSONL or XLSX, streaming."""
    if file_format not in ("csv", "jsonl", "xlsx"):
        fail(f"--format: {file_format!r} is not csv, jsonl or xlsx", code=2)
    if granularity is not None and granularity not in GRANULARITIES:
        fail(f"--granularity: {granularity!r} is not one of {', '.join(GRANULARITIES)}", code=2)
    request = pb.ExportUsageRequest(
        filter=usage_filter(range_name, start, end, tz, environments=env, gateways=gateway, models=model, tags=tag),
        group_by=group_by(by or []),
        granularity=GRANULARITIES[granularity] if granularity else pb.GRANULARITY_UNSPECIFIED,
        time_zone=tz,
    )
    names = by or []
    sink = _Sink(output, file_format)
    written = 0
    try:
        with (
            connection.channel() as channel,
            Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console) as progress,
        ):
            task = progress.add_task("exporting: 0 rows", total=None)
            stream = pb_grpc.ReportingServiceStub(channel).ExportUsage(request, metadata=connection.metadata)
            for response in stream:
                for stored in response.events:
                    sink.write(_event_record(stored))
                for row in response.rows:
                    record: dict[str, object] = {"bucket_start_time": row.bucket_start_time.ToJsonString()}
                    record.update(zip(names, row.keys, strict=True))
                    record.update(zip(_EXPORT_COLUMNS, _summary_cells(row.summary), strict=True))
                    sink.write(record)
                written += len(response.events) + len(response.rows)
                progress.update(task, description=f"exporting: {written:,} rows")
    except grpc.RpcError as error:
        fail(f"{error.code().name}: {error.details()}")
    finally:
        sink.close()
    console.print(f"wrote {written:,} rows to {output}")
