"""`meterwire budgets alerts`: threshold crossings newest first, or followed live with --watch."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from rich.markup import escape
from rich.table import Table

from meterwire.budget.v1 import budget_service_pb2 as pb
from meterwire.budget.v1 import budget_service_pb2_grpc as pb_grpc
from services.cli.budgets.figures import MODES, amount, local_time, name_of
from services.cli.client import Connection, JsonOption, call, collect_pages, fail, rpc_failed
from services.cli.output import console, on_terminal


def _used(alert: pb.Alert, budgets: dict[str, pb.Budget]) -> str:
    """Used / limit in the budget's unit; bare numbers for a budget that is gone (alerts outlive budgets)."""
    budget = budgets.get(alert.budget_id)
    if budget is None:
        return f"{alert.used:,} / {alert.limit:,}"
    return f"{amount(alert.used, budget)} / {amount(alert.limit, budget)}"


def alert_line(alert: pb.Alert, budgets: dict[str, pb.Budget]) -> str:
    """One alert as a line of text (what --watch prints per alert when piped)."""
    created = alert.create_time.ToDatetime(tzinfo=UTC)
    where = alert.environment_id or "organization"
    return (
        f"{created:%Y-%m-%dT%H:%M:%SZ} {alert.budget_id} {alert.display_name!r} ({where}) crossed "
        f"{alert.threshold_percent}%: {_used(alert, budgets)} ({name_of(MODES, alert.mode)}) {alert.alert_id}"
    )


def _budgets(connection: Connection, channel: grpc.Channel, environments: list[str]) -> dict[str, pb.Budget]:
    """The budgets alerts may belong to, for their unit and currency (an alert carries the bare numbers)."""
    request = pb.ListBudgetsRequest(environment_ids=environments)
    items = collect_pages(connection, pb_grpc.BudgetServiceStub(channel).ListBudgets, request, lambda p: p.budgets)
    return {item.budget.budget_id: item.budget for item in items}


def alerts(
    connection: Connection,
    budget_id: Annotated[str, typer.Option("--budget", help="Only this budget's alerts.")] = "",
    environment: Annotated[
        list[str] | None,
        typer.Option("--environment", "-e", help="Only alerts of this environment's budgets (repeat)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="The newest N alerts.")] = 100,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Then keep printing new alerts as they are raised (Ctrl-C to stop).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Alerts raised when a budget's window crossed a threshold, newest first; --watch follows new ones."""
    if limit < 1:
        fail("--limit: must be at least 1", code=2)
    if watch and as_json:
        fail("--watch and --json: pick one (--watch prints one line per alert)", code=2)
    request = pb.ListBudgetAlertsRequest(budget_id=budget_id, environment_ids=environment or [])
    with connection.channel() as channel:
        stub = pb_grpc.BudgetServiceStub(channel)
        # The newest alert of all is asked first, so --watch resumes after it: an alert raised while the listing
        # is read is then listed, streamed, or both (printed once), never missed.
        newest = _newest_alert_id(connection, stub, environment or []) if watch else ""
        listed: list[pb.Alert] = collect_pages(
            connection, stub.ListBudgetAlerts, request, lambda p: p.alerts, limit=limit
        )
        if as_json:
            typer.echo(json.dumps([MessageToDict(a, preserving_proto_field_name=True) for a in listed], indent=2))
            return
        budgets = _budgets(connection, channel, environment or [])
        if watch:
            _watch(connection, channel, newest, listed, budgets, budget_id, environment or [])
            return
    table = Table("raised (UTC)", "budget", "id", "environment", "threshold", "used / limit", "mode", "window start")
    for alert in listed:
        budget = budgets.get(alert.budget_id)
        start = alert.window_start_time.ToDatetime(tzinfo=UTC)
        table.add_row(
            alert.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
            alert.display_name,
            alert.budget_id,
            alert.environment_id or "(organization)",
            f"{alert.threshold_percent}%",
            _used(alert, budgets),
            name_of(MODES, alert.mode),
            _window_text(start, budget),
        )
    console.print(table)


def _window_text(start: datetime, budget: pb.Budget | None) -> str:
    if budget is None:
        return f"{start:%Y-%m-%d %H:%M} UTC"
    return "all time" if budget.period == pb.PERIOD_TOTAL else local_time(start, budget)


def _newest_alert_id(connection: Connection, stub: pb_grpc.BudgetServiceStub, environments: list[str]) -> str:
    request = pb.ListBudgetAlertsRequest(environment_ids=environments, page_size=1)
    newest = call(connection, stub.ListBudgetAlerts, request).alerts
    return newest[0].alert_id if newest else ""


def _watch(
    connection: Connection,
    channel: grpc.Channel,
    after_alert_id: str,
    listed: list[pb.Alert],
    budgets: dict[str, pb.Budget],
    budget_id: str,
    environments: list[str],
) -> None:
    """The listed alerts oldest first, then every alert raised after `after_alert_id`, one line each."""
    printed: set[str] = set()
    for alert in reversed(listed):
        printed.add(alert.alert_id)
        _print_alert(alert, budgets)
    stub = pb_grpc.BudgetServiceStub(channel)
    request = pb.WatchBudgetAlertsRequest(environment_ids=environments, after_alert_id=after_alert_id)
    stream = stub.WatchBudgetAlerts(request, metadata=connection.metadata)
    typer.echo("watching for new alerts (Ctrl-C to stop)", err=True)
    try:
        for response in stream:
            alert = response.alert
            # The stream takes no budget filter: --budget is applied here.
            if (budget_id and alert.budget_id != budget_id) or alert.alert_id in printed:
                continue
            if alert.budget_id not in budgets:  # made after the watch started
                budgets.update(_budgets(connection, channel, environments))
            _print_alert(alert, budgets)
    except KeyboardInterrupt:
        stream.cancel()  # type: ignore[no-untyped-call]
    except grpc.RpcError as error:
        rpc_failed(connection, error)


def _print_alert(alert: pb.Alert, budgets: dict[str, pb.Budget]) -> None:
    line = alert_line(alert, budgets)
    if on_terminal():
        console.print(f"[yellow]{escape(line)}[/]")
    else:
        typer.echo(line)  # echo flushes: a reader of the pipe sees the alert now
