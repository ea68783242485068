"""The `meterwire` command: the control plane (serve, db) and the operators' client commands."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from services.cli.admin import envs_app, tokens_app
from services.cli.agent import agent_app
from services.cli.budgets import budgets_app
from services.cli.client import fail
from services.cli.config import config_app
from services.cli.gateways import gateways_app
from services.cli.mcp import mcp_command
from services.cli.simulate import simulate_command
from services.cli.usage import usage_app
from services.cli.webhooks import webhooks_app
from services.gc_tuning import tune_garbage_collector
from services.logs import configure_logging
from services.settings import ServerSettings, SettingsError

app = typer.Typer(
    name="meterwire",
    help="meterwire: the control plane for a fleet of AI gateways.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema: upgrade and current revision.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(envs_app, name="envs")
app.add_typer(tokens_app, name="tokens")
app.add_typer(gateways_app, name="gateways")
app.add_typer(config_app, name="config")
app.add_typer(agent_app, name="agent")
app.add_typer(usage_app, name="usage")
app.add_typer(budgets_app, name="budgets")
app.add_typer(webhooks_app, name="webhooks")
app.command("simulate")(simulate_command)
app.command("mcp")(mcp_command)


def _settings(**overrides: Any) -> ServerSettings:
    """Flags over MW_* variables over defaults; a bad value ends the command with one line naming it."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return ServerSettings(**given)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            name = ".".join(str(part) for part in item["loc"]) or "settings"
            flag = f"--{name.replace('_', '-')} / MW_{name.upper()}"
            problems.append(f"{flag}: {item['msg'].removeprefix('Value error, ')}")
        fail("; ".join(problems), code=2)


@app.command()
def serve(
    listen: Annotated[str | None, typer.Option(help="gRPC address host:port [MW_LISTEN; 127.0.0.1:50051].")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory [MW_DATA_DIR; ./var].")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="Database URL [MW_DATABASE_URL; SQLite in the data dir].")
    ] = None,
    metrics_listen: Annotated[
        str | None, typer.Option(help="Prometheus /metrics address host:port [MW_METRICS_LISTEN; off].")
    ] = None,
    services: Annotated[
        str | None,
        typer.Option(
            help="Services to host, comma-separated [MW_SERVICES; all]: telemetry,heartbeat,config,"
            "budget,reporting,admin."
        ),
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Server certificate (PEM) [MW_TLS_CERT].")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Server private key (PEM) [MW_TLS_KEY].")] = None,
    tls_client_ca: Annotated[
        Path | None, typer.Option(help="Client CA (PEM): require mutual TLS [MW_TLS_CLIENT_CA].")
    ] = None,
    log_format: Annotated[str | None, typer.Option(help="console or json [MW_LOG_FORMAT].")] = None,
    http_listen: Annotated[
        str | None, typer.Option(help="Web usage console address host:port [MW_HTTP_LISTEN; off].")
    ] = None,
) -> None:
    """Run the control plane. SIGTERM/SIGINT drain it: health NOT_SERVING, a grace period, exit 0."""
    settings = _settings(
        listen=listen,
        data_dir=data_dir,
        database_url=database_url,
        metrics_listen=metrics_listen,
        services=services,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        log_format=log_format,
        http_listen=http_listen,
    )
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    asyncio.run(_serve(settings))


async def _serve(settings: ServerSettings) -> None:
    from services.server import ControlPlane, StartupError
    from services.storage.errors import StorageError

    control_plane = ControlPlane(settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, control_plane.request_shutdown)
    try:
        await control_plane.start()
    except (StartupError, StorageError, SettingsError) as error:
        fail(str(error))
    tune_garbage_collector()
    if control_plane.console_url is not None:
        print(f"usage console: {control_plane.console_url} (sign in with a reporter or admin token)", flush=True)
    await control_plane.run()


@db_app.command("upgrade")
def db_upgrade(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory [MW_DATA_DIR; ./var].")] = None,
    database_url: Annotated[str | None, typer.Option(help="Database URL [MW_DATABASE_URL].")] = None,
) -> None:
    """Migrate the database schema to this version's head."""
    settings = _settings(data_dir=data_dir, database_url=database_url)
    from services.storage.migrate import prepare_schema

    report = asyncio.run(_with_engine(settings, prepare_schema))
    if report.upgraded:
        typer.echo(f"upgraded {report.from_revision or 'empty database'} -> {report.to_revision}")
    else:
        typer.echo(f"already at {report.to_revision}")


@db_app.command("current")
def db_current(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory [MW_DATA_DIR; ./var].")] = None,
    database_url: Annotated[str | None, typer.Option(help="Database URL [MW_DATABASE_URL].")] = None,
) -> None:
    """Print the database's schema revision and this version's head."""
    settings = _settings(data_dir=data_dir, database_url=database_url)
    from services.storage.migrate import HEAD_REVISION, current_revision

    revision = asyncio.run(_with_engine(settings, current_revision))
    typer.echo(f"database: {revision or 'empty (no schema)'}\nhead: {HEAD_REVISION}")


@db_app.command("prune")
def db_prune(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory [MW_DATA_DIR; ./var].")] = None,
    database_url: Annotated[str | None, typer.Option(help="Database URL [MW_DATABASE_URL].")] = None,
) -> None:
    """Compact rollups, then delete raw events and rollups past retention (MW_RAW_EVENT_RETENTION, MW_ROLLUP_*)."""
    settings = _settings(data_dir=data_dir, database_url=database_url)
    from services.reporting.compaction import maintain

    compacted, pruned = asyncio.run(_with_engine(settings, lambda engine: maintain(engine, settings)))
    typer.echo(f"compacted {compacted.hours} hours ({compacted.days} days); deleted {pruned.raw_events} raw events")
    for table, rows in pruned.rollup_rows.items():
        typer.echo(f"deleted {rows} rows from {table}")


async def _with_engine(settings: ServerSettings, action: Any) -> Any:
    from services.storage.engine import check_connection, create_engine
    from services.storage.errors import StorageError

    try:
        engine = create_engine(settings.resolved_database_url)
        try:
            await check_connection(engine)
            return await action(engine)
        finally:
            await engine.dispose()
    except StorageError as error:
        fail(str(error))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
