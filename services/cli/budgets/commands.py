"""`meterwire budgets create | list | show | status | update | delete | history`: budgets and their windows."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import grpc
import typer
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.table import Table

from meterwire.budget.v1 import budget_service_pb2 as pb
from meterwire.budget.v1 import budget_service_pb2_grpc as pb_grpc
from services.cli.budgets.figures import (
    METRICS,
    MODES,
    PERIODS,
    amount,
    check_time_zone,
    choice,
    limit_value,
    local_time,
    name_of,
    parse_tags,
    period_text,
    reset_text,
    scope_text,
    state_text,
    usage_bar,
    used_text,
)
from services.cli.client import Connection, JsonOption, YesOption, call, collect_pages, confirm, fail
from services.cli.output import console

BudgetIdArgument = Annotated[str, typer.Argument(help="The budget id (bud_…, from `meterwire budgets list`).")]
AlertAtOption = Annotated[
    list[int] | None,
    typer.Option("--alert-at", help="Alert at this percent of the limit (repeat, ascending). Default: 80 and 100."),
]
RevisionOption = Annotated[
    int, typer.Option("--revision", help="Refuse the change unless the budget is still at this revision.")
]


def _json(message: Message | list[Message]) -> None:
    if isinstance(message, list):
        body: object = [MessageToDict(m, preserving_proto_field_name=True) for m in message]
    else:
        body = MessageToDict(message, preserving_proto_field_name=True)
    typer.echo(json.dumps(body, indent=2))


def _stub(channel: grpc.Channel) -> pb_grpc.BudgetServiceStub:
    return pb_grpc.BudgetServiceStub(channel)


def print_budget(budget: pb.Budget, status: pb.WindowStatus) -> None:
    """A budget's settings and its current window, one figure a row."""
    now = datetime.now(UTC)
    console.print(f"[bold]{budget.display_name}[/bold] ({budget.budget_id}): {usage_bar(status)} {state_text(status)}")
    table = Table("field", "value", show_header=False)
    start = status.window_start_time.ToDatetime(tzinfo=UTC)
    rows = [
        ("scope", scope_text(budget.scope)),
        ("metric", name_of(METRICS, budget.metric)),
        ("limit", amount(budget.limit, budget)),
        ("period", period_text(budget)),
        ("mode", name_of(MODES, budget.mode)),
        ("alert at", ", ".join(f"{p}%" for p in budget.alert_threshold_percents) or "-"),
        ("revision", str(budget.revision)),
        ("created (UTC)", budget.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")),
        ("window", "all time" if budget.period == pb.PERIOD_TOTAL else f"from {local_time(start, budget)}"),
        ("used / limit", used_text(budget, status)),
        ("remaining", amount(status.remaining, budget)),
        ("state", state_text(status)),
        ("resets", reset_text(budget, status, now)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def create(
    connection: Connection,
    name: Annotated[str, typer.Option("--name", help="Display name, e.g. 'prod monthly spend'.")],
    limit: Annotated[
        str, typer.Option("--limit", help="Spend: an amount in the currency (250, 12.50); tokens/requests: a count.")
    ],
    metric: Annotated[str, typer.Option("--metric", help=f"What it limits: {', '.join(METRICS)}.")] = "spend",
    period: Annotated[str, typer.Option("--period", help=f"When it resets: {', '.join(PERIODS)}.")] = "month",
    time_zone: Annotated[str, typer.Option("--time-zone", help="IANA time zone the windows are cut in.")] = "UTC",
    mode: Annotated[str, typer.Option("--mode", help=f"At the limit: {', '.join(MODES)}.")] = "hard-stop",
    alert_at: AlertAtOption = None,
    environment: Annotated[
        str, typer.Option("--environment", "-e", help="Scope: this environment. None: organization-wide.")
    ] = "",
    gateway: Annotated[str, typer.Option("--gateway", help="Scope: this gateway (needs -e).")] = "",
    api_key: Annotated[str, typer.Option("--api-key", help="Scope: this API key id.")] = "",
    user: Annotated[str, typer.Option("--user", help="Scope: this user id.")] = "",
    model: Annotated[str, typer.Option("--model", help="Scope: this requested model or alias.")] = "",
    resolved_model: Annotated[str, typer.Option("--resolved-model", help="Scope: the model that served.")] = "",
    provider: Annotated[str, typer.Option("--provider", help="Scope: this provider.")] = "",
    route: Annotated[str, typer.Option("--route", help="Scope: this gateway route.")] = "",
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Scope: KEY=VALUE; all must match (repeat).")] = None,
    request_id: Annotated[
        str, typer.Option("--request-id", help="Idempotency key: a retry with it returns the budget made first.")
    ] = "",
    as_json: JsonOption = False,
) -> None:
    """Create a budget; prints it with its current window (usage stored before it existed counts)."""
    chosen_metric = choice(METRICS, metric, "--metric")
    budget = pb.Budget(
        display_name=name,
        scope=pb.Scope(
            environment_id=environment,
            gateway_id=gateway,
            api_key_id=api_key,
            user_id=user,
            requested_model=model,
            resolved_model=resolved_model,
            provider=provider,
            route=route,
            tags=parse_tags(tag),
        ),
        metric=chosen_metric,  # type: ignore[arg-type]
        limit=limit_value(limit, chosen_metric),
        period=choice(PERIODS, period, "--period"),  # type: ignore[arg-type]
        time_zone=check_time_zone(time_zone),
        mode=choice(MODES, mode, "--mode"),  # type: ignore[arg-type]
        alert_threshold_percents=alert_at or [],
    )
    if gateway and not environment:
        fail("--gateway: needs --environment (gateway ids are names within an environment)", code=2)
    with connection.channel() as channel:
        response = call(
            connection, _stub(channel).CreateBudget, pb.CreateBudgetRequest(budget=budget, request_id=request_id)
        )
    if as_json:
        _json(response)
        return
    console.print(f"budget [bold]{response.budget.budget_id}[/bold] ready")
    print_budget(response.budget, response.status)


def list_budgets(
    connection: Connection,
    environment: Annotated[
        list[str] | None,
        typer.Option("--environment", "-e", help="Only budgets of this environment (repeat)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Budgets with their current window: used against the limit, state and when it resets."""
    request = pb.ListBudgetsRequest(environment_ids=environment or [])
    with connection.channel() as channel:
        items: list[pb.BudgetWithStatus] = collect_pages(
            connection, _stub(channel).ListBudgets, request, lambda page: page.budgets
        )
    if as_json:
        _json(list(items))
        return
    now = datetime.now(UTC)
    table = Table("name", "id", "scope", "metric", "period", "mode", "used / limit", "", "state", "resets")
    for item in items:
        budget, status = item.budget, item.status
        table.add_row(
            budget.display_name,
            budget.budget_id,
            scope_text(budget.scope),
            name_of(METRICS, budget.metric),
            period_text(budget),
            name_of(MODES, budget.mode),
            used_text(budget, status),
            usage_bar(status),
            state_text(status),
            reset_text(budget, status, now),
        )
    console.print(table)


def show(connection: Connection, budget_id: BudgetIdArgument, as_json: JsonOption = False) -> None:
    """A budget's settings and its current window."""
    with connection.channel() as channel:
        response = call(connection, _stub(channel).GetBudgetStatus, pb.GetBudgetStatusRequest(budget_id=budget_id))
    if as_json:
        _json(response)
        return
    print_budget(response.budget, response.status)


def status(connection: Connection, budget_id: BudgetIdArgument, as_json: JsonOption = False) -> None:
    """The current window of one budget: used, remaining, state and reset, on one line."""
    with connection.channel() as channel:
        response = call(connection, _stub(channel).GetBudgetStatus, pb.GetBudgetStatusRequest(budget_id=budget_id))
    if as_json:
        _json(response.status)
        return
    budget, window = response.budget, response.status
    console.print(
        f"[bold]{budget.display_name}[/bold] ({budget.budget_id}): {usage_bar(window)} "
        f"{used_text(budget, window)}, {amount(window.remaining, budget)} left, {state_text(window)}, "
        f"resets {reset_text(budget, window, datetime.now(UTC))}"
    )


def update(
    connection: Connection,
    budget_id: BudgetIdArgument,
    name: Annotated[str | None, typer.Option("--name", help="New display name.")] = None,
    limit: Annotated[str | None, typer.Option("--limit", help="New limit, in the budget's unit (as create).")] = None,
    mode: Annotated[str | None, typer.Option("--mode", help=f"{', '.join(MODES)}.")] = None,
    alert_at: AlertAtOption = None,
    revision: RevisionOption = 0,
    as_json: JsonOption = False,
) -> None:
    """Change a budget's name, limit, mode or alert thresholds (only what is given; the scope is fixed)."""
    change = pb.Budget(budget_id=budget_id, revision=revision)
    paths = []
    if name is not None:
        change.display_name = name
        paths.append("display_name")
    if mode is not None:
        change.mode = choice(MODES, mode, "--mode")  # type: ignore[assignment]
        paths.append("mode")
    if alert_at:
        change.alert_threshold_percents.extend(alert_at)
        paths.append("alert_threshold_percents")
    if limit is None and not paths:
        fail("nothing to update: give --name, --limit, --mode or --alert-at", code=2)
    with connection.channel() as channel:
        stub = _stub(channel)
        if limit is not None:
            # A limit is typed in the budget's unit, which only the budget knows (spend in currency units).
            current = call(connection, stub.GetBudget, pb.GetBudgetRequest(budget_id=budget_id)).budget
            change.limit = limit_value(limit, current.metric)
            paths.append("limit")
        request = pb.UpdateBudgetRequest(budget=change, update_mask=FieldMask(paths=paths))
        updated = call(connection, stub.UpdateBudget, request).budget
        response = call(connection, stub.GetBudgetStatus, pb.GetBudgetStatusRequest(budget_id=budget_id))
    if as_json:
        _json(updated)
        return
    console.print(f"updated budget [bold]{budget_id}[/bold] to revision {updated.revision}")
    print_budget(updated, response.status)


def delete(
    connection: Connection, budget_id: BudgetIdArgument, revision: RevisionOption = 0, yes: YesOption = False
) -> None:
    """Delete a budget (its alerts stay listed). Asks first unless --yes."""
    with connection.channel() as channel:
        stub = _stub(channel)
        # Look it up first: a typo should say NOT_FOUND, not ask to delete something that is not there.
        found = call(connection, stub.GetBudgetStatus, pb.GetBudgetStatusRequest(budget_id=budget_id))
        if not yes:
            confirm(
                f"delete budget {found.budget.display_name!r} ({budget_id}, {scope_text(found.budget.scope)}, "
                f"{used_text(found.budget, found.status)} used)?",
                declined="nothing deleted",
            )
        call(connection, stub.DeleteBudget, pb.DeleteBudgetRequest(budget_id=budget_id, revision=revision))
    console.print(f"deleted budget [bold]{budget_id}[/bold]")


def history(
    connection: Connection,
    budget_id: BudgetIdArgument,
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="The newest N windows. Default: all.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Past and current windows of a budget, newest first (windows where nothing was counted are left out)."""
    if limit is not None and limit < 1:
        fail("--limit: must be at least 1", code=2)
    with connection.channel() as channel:
        stub = _stub(channel)
        budget = call(connection, stub.GetBudget, pb.GetBudgetRequest(budget_id=budget_id)).budget
        request = pb.ListBudgetWindowsRequest(budget_id=budget_id)
        windows: list[pb.WindowStatus] = collect_pages(
            connection, stub.ListBudgetWindows, request, lambda page: page.windows, limit=limit
        )
    if as_json:
        _json(list(windows))
        return
    console.print(f"[bold]{budget.display_name}[/bold] ({budget_id}): {period_text(budget)}")
    table = Table("window start", "window end", "used / limit", "", "state")
    for window in windows:
        end = window.window_end_time.ToDatetime(tzinfo=UTC) if window.HasField("window_end_time") else None
        table.add_row(
            local_time(window.window_start_time.ToDatetime(tzinfo=UTC), budget)
            if budget.period != pb.PERIOD_TOTAL
            else "all time",
            local_time(end, budget) if end is not None else "-",
            used_text(budget, window),
            usage_bar(window),
            state_text(window),
        )
    console.print(table)
