"""`meterwire usage requests | request`: request history, and one request with every attempt."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from google.protobuf.json_format import MessageToDict
from rich.table import Table

from meterwire.reporting.v1 import reporting_service_pb2 as pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from services.cli.client import Connection, JsonOption, call, collect_pages, fail
from services.cli.output import console
from services.cli.usage.currencies import EnvironmentCurrencies
from services.cli.usage.filters import (
    EnvOption,
    FromOption,
    ModelOption,
    RangeOption,
    TagOption,
    ToOption,
    TzOption,
    UserOption,
    usage_filter,
)
from services.usage_terms.figures import UNKNOWN, money, reported_tokens


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
    """Recent requests, newest first (`usage request REQUEST_ID -e ENV` shows one with its attempts)."""
    selection = usage_filter(range_name, start, end, tz, environments=env, models=model, users=user, tags=tag)
    request = pb.ListRequestsRequest(filter=selection, errors_only=errors_only)
    with connection.channel() as channel:
        stub = pb_grpc.ReportingServiceStub(channel)
        found: list[pb.RequestSummary] = collect_pages(
            connection, stub.ListRequests, request, lambda page: page.requests, limit=limit
        )
        currencies = EnvironmentCurrencies(connection, channel)
        cost_currency = {r.environment_id: currencies(r.environment_id) for r in found if not as_json}
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
            f"{r.tokens.total:,}" if r.HasField("tokens") else UNKNOWN,
            money(r.cost_micros, cost_currency[r.environment_id]) if r.HasField("cost_micros") else UNKNOWN,
        )
    console.print(table)


def request_attempts(
    connection: Connection,
    request_id: Annotated[str, typer.Argument(help="The request id (from `usage requests`).")],
    environment: Annotated[
        str | None,
        typer.Option("--environment", "-e", help="The request's environment (request ids are unique per environment)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """One request with every attempt: `meterwire usage request REQUEST_ID -e ENVIRONMENT`."""
    if not environment:
        fail(
            f"--environment / -e: missing; a request id is looked up in one environment, "
            f"e.g. meterwire usage request {request_id} -e prod (`usage requests` lists both)",
            code=2,
        )
    with connection.channel() as channel:
        response = call(
            connection,
            pb_grpc.ReportingServiceStub(channel).GetRequest,
            pb.GetRequestRequest(environment_id=environment, request_id=request_id),
        )
        currency = "" if as_json else EnvironmentCurrencies(connection, channel)(environment)
    if as_json:
        typer.echo(json.dumps(MessageToDict(response, preserving_proto_field_name=True), indent=2))
        return
    table = Table(
        "#", "gateway", "model → served by", "provider", "status", "error", "in/out tokens", "cost", "ttft", "latency"
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
            f"{reported_tokens(e.tokens, 'input')}/{reported_tokens(e.tokens, 'output')}",
            money(e.cost_micros, currency) if e.HasField("cost_micros") else UNKNOWN,
            f"{e.ttft.ToMilliseconds():,} ms" if e.HasField("ttft") else UNKNOWN,
            f"{e.latency.ToMilliseconds():,} ms" if e.HasField("latency") else UNKNOWN,
        )
    console.print(table)
