"""`meterwire agent …`: run the gateway agent daemon, ask it for its status, and export its dead letters."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from services.cli.client import fail

agent_app = typer.Typer(help="The gateway agent: run the daemon, status, dead letters.", no_args_is_help=True)
dead_letters_app = typer.Typer(help="Events the control plane rejected, kept by the agent.", no_args_is_help=True)
agent_app.add_typer(dead_letters_app, name="dead-letters")

DataDirOption = Annotated[Path, typer.Option("--data-dir", envvar="MW_AGENT_DATA_DIR", help="The agent's data dir.")]


def _read_token(token_file: Path) -> str:
    try:
        token = token_file.read_text().strip()
    except OSError as error:
        fail(f"--token-file: cannot read {token_file}: {error.strerror}", code=2)
    if not token:
        fail(f"--token-file: {token_file} is empty", code=2)
    return token


@agent_app.command("run")
def run(
    control_plane: Annotated[
        str, typer.Option("--control-plane", envvar="MW_CONTROL_PLANE", help="Control-plane address host:port.")
    ],
    token_file: Annotated[
        Path, typer.Option("--token-file", envvar="MW_AGENT_TOKEN_FILE", help="File holding the gateway token.")
    ],
    environment: Annotated[
        str, typer.Option("--environment", "-e", envvar="MW_ENVIRONMENT", help="The token's environment.")
    ],
    data_dir: DataDirOption,
    listen: Annotated[
        str, typer.Option("--listen", help="Local API: unix:///path.sock or 127.0.0.1:PORT.")
    ] = "unix:///tmp/meterwire-agent.sock",
    gateway: Annotated[str, typer.Option("--gateway", "-g", help="The token's gateway id (for logs).")] = "",
    gateway_version: Annotated[str, typer.Option(help="The gateway software beside the agent.")] = "",
    durability: Annotated[str, typer.Option(help="fsync (each group commit) or os_buffered.")] = "fsync",
    spool_max_bytes: Annotated[int, typer.Option(help="Spool size cap in bytes.")] = 1024**3,
    initial_fetch_timeout: Annotated[float, typer.Option(help="Seconds to wait for config at start.")] = 5.0,
    reservation_ttl: Annotated[
        float, typer.Option(help="Seconds an unsettled budget reservation is held before it is released.")
    ] = 600.0,
    tls_ca: Annotated[Path | None, typer.Option(help="CA (PEM) of the control plane: use TLS.")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Client certificate (PEM): mutual TLS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Client key (PEM): mutual TLS.")] = None,
    log_format: Annotated[str, typer.Option(help="console or json.")] = "console",
    metrics_listen: Annotated[
        str | None,
        typer.Option("--metrics-listen", envvar="MW_AGENT_METRICS_LISTEN", help="Prometheus /metrics on HOST:PORT."),
    ] = None,
) -> None:
    """Run the agent daemon. SIGTERM/SIGINT: stop taking events, commit the spool, deliver what it can, exit 0."""
    from gateway_agent import AgentSettings, Durability, GatewayAgent, TlsSettings
    from gateway_agent.daemon import AgentDaemon, MetricsListenError, check_listen
    from services.gc_tuning import tune_garbage_collector
    from services.logs import configure_logging
    from services.settings import SettingsError, parse_listen_address

    configure_logging(log_format="json" if log_format == "json" else "console")
    try:
        check_listen(listen)
        metrics_address = None
        if metrics_listen is not None:
            try:
                metrics_address = parse_listen_address(metrics_listen, setting="--metrics-listen")
            except SettingsError as error:
                raise ValueError(str(error)) from None
        tls = None
        if tls_ca or tls_cert or tls_key:
            tls = TlsSettings(ca_file=tls_ca, cert_file=tls_cert, key_file=tls_key)
        settings = AgentSettings(
            control_plane=control_plane,
            token=_read_token(token_file),
            environment_id=environment,
            data_dir=data_dir,
            gateway_id=gateway,
            gateway_version=gateway_version,
            tls=tls,
            durability=Durability(durability),
            spool_max_bytes=spool_max_bytes,
            initial_fetch_timeout=timedelta(seconds=initial_fetch_timeout),
            reservation_ttl=timedelta(seconds=reservation_ttl),
        )
    except ValueError as error:
        fail(str(error), code=2)

    async def serve() -> None:
        daemon = AgentDaemon(GatewayAgent(settings), listen=listen, metrics_listen=metrics_address)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, daemon.request_shutdown)
        try:
            await daemon.start()
        except MetricsListenError as error:
            await daemon.shutdown()
            fail(f"--metrics-listen: {error}")
        tune_garbage_collector()
        # A readiness line for supervisors and tests.
        print(f"agent ready on {listen}", flush=True)
        await daemon.run()

    asyncio.run(serve())


@agent_app.command("status")
def status(
    agent: Annotated[str, typer.Option("--agent", help="The daemon's --listen address.")] = (
        "unix:///tmp/meterwire-agent.sock"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print a running agent daemon's status: connection, config, spool and delivery counters, and its budgets
    (figures, leases, open reservations, denials and shadow denials)."""
    import grpc
    from google.protobuf.json_format import MessageToDict

    from meterwire.agent.v1 import agent_service_pb2 as agent_pb
    from meterwire.agent.v1 import agent_service_pb2_grpc as agent_grpc

    with grpc.insecure_channel(agent) as channel:
        try:
            response = agent_grpc.AgentServiceStub(channel).GetStatus(agent_pb.GetStatusRequest(), timeout=5)
        except grpc.RpcError as error:
            fail(f"cannot reach the agent at {agent}: {error}")
    body = MessageToDict(response.status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    from services.cli.output import console, fields_table

    budgets = body.pop("budgets", [])
    console.print(fields_table(body, maps=frozenset({"dropped_by_reason"})))
    if budgets:
        console.print(_budgets_table(budgets))


def _budgets_table(budgets: list[dict[str, Any]]) -> Any:
    """The agent's budgets: its figures (server's + own pending + reserved), lease, and what it denied."""
    from rich.table import Table

    table = Table(
        "budget",
        "mode",
        "used",
        "server",
        "pending",
        "reserved",
        "limit",
        "state",
        "lease",
        "denied",
        "shadow denied",
        title="budgets (as this agent enforces them)",
    )
    for local in budgets:
        budget = local["budget"]
        sharing = int(local.get("lease_sharing_gateways", 0))
        lease = f"{local.get('lease_allowance', '0')} (1/{sharing})" if sharing else "-"
        table.add_row(
            f"{budget.get('display_name', '')} ({budget.get('budget_id', '')})",
            str(budget.get("mode", "")).removeprefix("MODE_").lower(),
            str(local.get("used", "0")),
            str(local.get("server_used", "0")),
            str(local.get("pending_used", "0")),
            str(local.get("reserved", "0")),
            str(budget.get("limit", "0")),
            str(local.get("state", "")).removeprefix("BUDGET_STATE_").lower(),
            lease,
            str(local.get("denied_requests", "0")),
            str(local.get("shadow_denied_requests", "0")),
        )
    return table


@dead_letters_app.command("list")
def dead_letters_list(
    data_dir: DataDirOption,
    limit: Annotated[int, typer.Option(help="Show at most this many.")] = 50,
) -> None:
    """List rejected events (newest last) with the reason the control plane gave."""
    from rich.table import Table

    from gateway_agent.spool import iter_dead_letters
    from services.cli.output import console

    table = Table("sequence", "event id", "reason", "field", "message")
    for letter in iter_dead_letters(_spool_path(data_dir), limit=limit):
        table.add_row(str(letter.sequence), letter.event_id, letter.reason, letter.field, letter.message)
    console.print(table)


@dead_letters_app.command("export")
def dead_letters_export(
    data_dir: DataDirOption,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="JSONL file; default: stdout.")] = None,
) -> None:
    """Export every dead letter as JSON lines: the reason and the full event."""
    from google.protobuf.json_format import MessageToDict

    from gateway_agent.spool import iter_dead_letters
    from meterwire.common.v1 import usage_pb2

    out = output.open("w") if output else sys.stdout
    count = 0
    try:
        for letter in iter_dead_letters(_spool_path(data_dir)):
            event = usage_pb2.UsageEvent.FromString(letter.payload)
            line = {
                "sequence": letter.sequence,
                "event_id": letter.event_id,
                "reason": letter.reason,
                "field": letter.field,
                "message": letter.message,
                "dead_time_us": letter.dead_time_us,
                "event": MessageToDict(event, preserving_proto_field_name=True),
            }
            out.write(json.dumps(line) + "\n")
            count += 1
    finally:
        if output:
            out.close()
    typer.echo(f"exported {count} dead letters", err=True)


def _spool_path(data_dir: Path) -> Path:
    from gateway_agent.agent import SPOOL_FILE

    path = data_dir / SPOOL_FILE
    if not path.exists():
        fail(f"--data-dir: no spool at {path}", code=2)
    return path
