"""`meterwire gateways …`: the fleet's status — list, live watch, show and remove gateways."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Annotated

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from rich.live import Live
from rich.table import Table

from meterwire.heartbeat.v1 import heartbeat_service_pb2 as pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2_grpc as pb_grpc
from services.cli.client import (
    Connection,
    JsonOption,
    YesOption,
    call,
    client_command,
    collect_pages,
    confirm,
    fail,
    rpc_failed,
)
from services.cli.output import console, fields_table, on_terminal

gateways_app = typer.Typer(help="Gateways: status of the fleet, live watch, details and removal.", no_args_is_help=True)

STATUS_NAMES = {
    pb.GatewayStatus.Name(value).removeprefix("GATEWAY_STATUS_").lower(): value
    for value in pb.GatewayStatus.values()
    if value != pb.GATEWAY_STATUS_UNSPECIFIED
}
_STATUS_STYLES = {
    pb.GATEWAY_STATUS_HEALTHY: "green",
    pb.GATEWAY_STATUS_STALE: "yellow",
    pb.GATEWAY_STATUS_OFFLINE: "red",
    pb.GATEWAY_STATUS_DEGRADED: "magenta",
    pb.GATEWAY_STATUS_NEVER_SEEN: "dim",
}

EnvironmentsOption = Annotated[
    list[str] | None, typer.Option("--environment", "-e", help="Limit to this environment (repeat). Default: all.")
]
EnvironmentOption = Annotated[str, typer.Option("--environment", "-e", help="The gateway's environment.")]


def status_name(status: int) -> str:
    return pb.GatewayStatus.Name(status).removeprefix("GATEWAY_STATUS_").lower()  # type: ignore[arg-type]


def ago(gateway: pb.Gateway, now: datetime) -> str:
    if not gateway.HasField("last_seen_time"):
        return "never"
    return _span_since(gateway.last_seen_time.ToDatetime(tzinfo=UTC), now) + " ago"


def budget_state_age(state: pb.AgentState, now: datetime) -> str:
    """How old the budget snapshot the agent enforces from is ("none": it has had none)."""
    if not state.HasField("budget_snapshot_time"):
        return "none"
    return _span_since(state.budget_snapshot_time.ToDatetime(tzinfo=UTC), now) + " old"


def denials(state: pb.AgentState) -> str:
    """The agent's budget denials summed over its budgets: "3 denied, 5 shadow" ("-": none)."""
    denied = sum(e.denied_requests for e in state.budget_enforcement)
    shadow = sum(e.shadow_denied_requests for e in state.budget_enforcement)
    return f"{denied} denied, {shadow} shadow" if denied or shadow else "-"


def _span_since(moment: datetime, now: datetime) -> str:
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h" if seconds < 172_800 else f"{seconds // 86_400}d"


def _backlog(state: pb.AgentState) -> str:
    if not state.spool_depth:
        return "0"
    age = (
        f" ({int(state.oldest_unsent_age.ToTimedelta().total_seconds())}s old)"
        if state.HasField("oldest_unsent_age")
        else ""
    )
    return f"{state.spool_depth}{age}"


def gateway_table(gateways: list[pb.Gateway], now: datetime) -> Table:
    table = Table(
        "gateway",
        "environment",
        "status",
        "last seen",
        "agent",
        "gateway version",
        "config applied/desired",
        "backlog",
        "dead letters",
        "budget state",
        "budget denials",
        "reasons",
    )
    for g in gateways:
        status = f"[{_STATUS_STYLES.get(g.status, '')}]{status_name(g.status)}[/]"
        applied = str(g.state.applied_config_version or "-")
        config = f"{applied}/{g.desired_config_version or '-'}"
        if g.state.applied_config_version != g.desired_config_version:
            config = f"[yellow]{config}[/]"
        table.add_row(
            g.gateway_id,
            g.environment_id,
            status,
            ago(g, now),
            g.state.agent_version,
            g.state.gateway_version,
            config,
            _backlog(g.state),
            str(g.state.dead_letter_count),
            budget_state_age(g.state, now),
            denials(g.state),
            "; ".join(g.status_reasons) if g.status != pb.GATEWAY_STATUS_NEVER_SEEN else "",
        )
    return table


def _statuses(names: list[str] | None) -> list[pb.GatewayStatus.ValueType]:
    chosen = []
    for name in names or []:
        if name.lower() not in STATUS_NAMES:
            fail(f"--status: {name!r} is not one of {', '.join(STATUS_NAMES)}", code=2)
        chosen.append(STATUS_NAMES[name.lower()])
    return chosen


@gateways_app.command("list")
@client_command
def gateways_list(
    connection: Connection,
    environment: EnvironmentsOption = None,
    status: Annotated[
        list[str] | None, typer.Option("--status", "-s", help=f"Only this status (repeat): {', '.join(STATUS_NAMES)}.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List gateways with their status, last contact, versions, config and backlog."""
    request = pb.ListGatewaysRequest(environment_ids=environment or [], statuses=_statuses(status))
    with connection.channel() as channel:
        stub = pb_grpc.HeartbeatServiceStub(channel)
        gateways: list[pb.Gateway] = collect_pages(connection, stub.ListGateways, request, lambda page: page.gateways)
    if as_json:
        typer.echo(json.dumps([MessageToDict(g, preserving_proto_field_name=True) for g in gateways], indent=2))
        return
    console.print(gateway_table(gateways, datetime.now(UTC)))


class _LiveFleet:
    """Rendered on every refresh, so "last seen" keeps counting between changes."""

    def __init__(self) -> None:
        self.gateways: dict[tuple[str, str], pb.Gateway] = {}
        self.lock = threading.Lock()

    def __rich__(self) -> Table:
        with self.lock:
            rows = [self.gateways[name] for name in sorted(self.gateways)]
        return gateway_table(rows, datetime.now(UTC))


def change_line(change: pb.WatchGatewaysResponse, now: datetime) -> str:
    """One status change as a line of text, for a watch whose output is piped or logged."""
    g = change.gateway
    name = f"{g.environment_id}/{g.gateway_id}"
    if change.deleted:
        return f"{now:%Y-%m-%dT%H:%M:%SZ} {name} removed"
    reasons = "; ".join(g.status_reasons) if g.status != pb.GATEWAY_STATUS_NEVER_SEEN else ""
    return f"{now:%Y-%m-%dT%H:%M:%SZ} {name} {status_name(g.status)} (last seen {ago(g, now)}) {reasons}".rstrip()


@gateways_app.command("watch")
@client_command
def gateways_watch(connection: Connection, environment: EnvironmentsOption = None) -> None:
    """A live view of the fleet, updated as statuses change (Ctrl-C to stop).

    On a terminal: a table redrawn in place. Piped or redirected: one line per change, written as it happens.
    """
    fleet = _LiveFleet()
    request = pb.WatchGatewaysRequest(environment_ids=environment or [], send_initial=True)
    with connection.channel() as channel:
        stream = pb_grpc.HeartbeatServiceStub(channel).WatchGateways(request, metadata=connection.metadata)
        try:
            if not on_terminal():
                for change in stream:
                    # echo flushes each line: a reader of the pipe sees a change now, not when a buffer fills.
                    typer.echo(change_line(change, datetime.now(UTC)))
                return
            with Live(fleet, console=console, refresh_per_second=2):
                for change in stream:
                    with fleet.lock:
                        name = (change.gateway.environment_id, change.gateway.gateway_id)
                        if change.deleted:
                            fleet.gateways.pop(name, None)
                        else:
                            fleet.gateways[name] = change.gateway
        except KeyboardInterrupt:
            stream.cancel()  # type: ignore[no-untyped-call]
        except grpc.RpcError as error:
            rpc_failed(connection, error)


@gateways_app.command("show")
@client_command
def gateways_show(
    connection: Connection,
    gateway_id: Annotated[str, typer.Argument(help="The gateway id.")],
    environment: EnvironmentOption,
    as_json: JsonOption = False,
) -> None:
    """Everything known about one gateway."""
    with connection.channel() as channel:
        request = pb.GetGatewayRequest(environment_id=environment, gateway_id=gateway_id)
        gateway = call(connection, pb_grpc.HeartbeatServiceStub(channel).GetGateway, request).gateway
    body = MessageToDict(gateway, preserving_proto_field_name=True)
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    console.print(
        f"[bold]{gateway.environment_id}/{gateway.gateway_id}[/bold]: {status_name(gateway.status)}, "
        f"last seen {ago(gateway, datetime.now(UTC))}"
    )
    for reason in gateway.status_reasons:
        console.print(f"  - {reason}")
    state = gateway.state
    console.print(f"budget state: {budget_state_age(state, datetime.now(UTC))}")
    if state.budget_enforcement:
        table = Table("budget", "denied", "shadow denied (warn-only)")
        for entry in state.budget_enforcement:
            table.add_row(entry.budget_id, str(entry.denied_requests), str(entry.shadow_denied_requests))
        console.print(table)
    shown = {"environment_id", "gateway_id", "status", "status_reasons"}
    fields = {key: value for key, value in body.items() if key not in shown}
    fields["state"] = {key: value for key, value in fields.get("state", {}).items() if key != "budget_enforcement"}
    console.print(fields_table(fields))


@gateways_app.command("remove")
@client_command
def gateways_remove(
    connection: Connection,
    gateway_id: Annotated[str, typer.Argument(help="The gateway id.")],
    environment: EnvironmentOption,
    yes: YesOption = False,
) -> None:
    """Remove a decommissioned gateway and its state (its usage history stays). Asks first unless --yes."""
    with connection.channel() as channel:
        stub = pb_grpc.HeartbeatServiceStub(channel)
        # Look it up first: a typo should say NOT_FOUND, not ask to remove something that is not there.
        found = call(
            connection, stub.GetGateway, pb.GetGatewayRequest(environment_id=environment, gateway_id=gateway_id)
        )
        if not yes:
            confirm(
                f"remove gateway {environment}/{gateway_id} ({status_name(found.gateway.status)})?",
                declined="nothing removed",
            )
        request = pb.DeleteGatewayRequest(environment_id=environment, gateway_id=gateway_id)
        call(connection, stub.DeleteGateway, request)
    console.print(f"removed gateway [bold]{environment}/{gateway_id}[/bold]")
