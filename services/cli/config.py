"""`meterwire config …`: apply, show, history, diff and roll back an environment's versioned config."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
import yaml
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError
from rich.table import Table

from meterwire.config.v1 import config_service_pb2 as pb
from meterwire.config.v1 import config_service_pb2_grpc as pb_grpc
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
from services.cli.output import console

config_app = typer.Typer(help="Environment config: apply, show, history, diff and rollback.", no_args_is_help=True)

EnvironmentOption = Annotated[str, typer.Option("--environment", "-e", help="The environment.")]


def load_config_file(path: Path) -> pb.EnvironmentConfig:
    """A YAML or JSON file (JSON is YAML) in the proto's JSON form, e.g. `aliases: [{alias: fast, ...}]`."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        fail(f"-f: cannot read {path}: {error.strerror}", code=2)
    except yaml.YAMLError as error:
        fail(f"-f: {path} is not valid YAML or JSON: {error}", code=2)
    if document is None:
        document = {}
    if not isinstance(document, dict):
        fail(f"-f: {path} must hold a mapping (aliases, pricing, agent, ...), not a {type(document).__name__}", code=2)
    try:
        return ParseDict(document, pb.EnvironmentConfig())
    except ParseError as error:
        fail(f"-f: {path}: {error}", code=2)


def config_text(config: pb.EnvironmentConfig) -> str:
    body = MessageToDict(config, preserving_proto_field_name=True)
    return yaml.safe_dump(body, sort_keys=False, allow_unicode=True) if body else "{}\n"


def _current(connection: Connection, stub: pb_grpc.ConfigServiceStub, environment: str) -> pb.ConfigVersion | None:
    try:
        response = stub.GetConfig(
            pb.GetConfigRequest(environment_id=environment), metadata=connection.metadata, timeout=30
        )
    except grpc.RpcError as error:
        if error.code() is grpc.StatusCode.NOT_FOUND:
            return None
        rpc_failed(connection, error)
    return response.config_version


def _diff(old: str, new: str, old_name: str, new_name: str) -> str:
    lines = difflib.unified_diff(old.splitlines(True), new.splitlines(True), fromfile=old_name, tofile=new_name)
    return "".join(lines)


def _print_diff(text: str) -> None:
    for line in text.splitlines():
        style = (
            "green"
            if line.startswith("+")
            else "red"
            if line.startswith("-")
            else "cyan"
            if line.startswith("@")
            else ""
        )
        console.print(line, style=style or None, markup=False, highlight=False)


def _store(
    connection: Connection,
    stub: pb_grpc.ConfigServiceStub,
    environment: str,
    config: pb.EnvironmentConfig,
    *,
    description: str,
    yes: bool,
    dry_run: bool,
) -> None:
    """Validates on the server, shows the diff against the current version, confirms, then stores."""
    current = _current(connection, stub, environment)
    base = current.version if current else 0
    check = call(
        connection,
        stub.PutConfig,
        pb.PutConfigRequest(environment_id=environment, config=config, description=description, validate_only=True),
    )
    if current is not None and check.config_version.version == current.version:
        console.print(f"no change: identical to version {current.version} of {environment}")
        return
    diff = _diff(config_text(current.config) if current else "", config_text(config), f"version {base}", "new")
    _print_diff(diff)
    if dry_run:
        console.print(f"valid; would store version {check.config_version.version} (dry run: nothing stored)")
        return
    if not yes:
        confirm(f"store this as version {check.config_version.version} of {environment}?", declined="nothing stored")
    # expected_version: if someone stored a version after the diff was shown, refuse instead of overwriting.
    request = pb.PutConfigRequest(
        environment_id=environment, config=config, description=description, expected_version=base
    )
    response = call(connection, stub.PutConfig, request)
    console.print(f"stored version [bold]{response.config_version.version}[/bold] of {environment}")


@config_app.command("apply")
@client_command
def config_apply(
    connection: Connection,
    environment: EnvironmentOption,
    file: Annotated[Path, typer.Option("--file", "-f", help="The config, YAML or JSON.")],
    description: Annotated[str, typer.Option("--description", "-m", help="What changed and why.")] = "",
    yes: YesOption = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and show the diff; store nothing.")] = False,
) -> None:
    """Validate a config file, show its diff against the current version, and store it as the next version."""
    config = load_config_file(file)
    with connection.channel() as channel:
        stub = pb_grpc.ConfigServiceStub(channel)
        _store(connection, stub, environment, config, description=description, yes=yes, dry_run=dry_run)


@config_app.command("show")
@client_command
def config_show(
    connection: Connection,
    environment: EnvironmentOption,
    version: Annotated[int, typer.Option("--version", "-v", help="A version; default: the current one.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Print a config version (YAML by default)."""
    with connection.channel() as channel:
        request = pb.GetConfigRequest(environment_id=environment, version=version)
        stored = call(connection, pb_grpc.ConfigServiceStub(channel).GetConfig, request).config_version
    if as_json:
        typer.echo(json.dumps(MessageToDict(stored, preserving_proto_field_name=True), indent=2))
        return
    typer.echo(f"# {stored.environment_id} version {stored.version} sha256 {stored.content_sha256}")
    typer.echo(config_text(stored.config), nl=False)


@config_app.command("history")
@client_command
def config_history(connection: Connection, environment: EnvironmentOption, as_json: JsonOption = False) -> None:
    """List an environment's config versions, newest first."""
    with connection.channel() as channel:
        stub = pb_grpc.ConfigServiceStub(channel)
        request = pb.ListConfigVersionsRequest(environment_id=environment)
        versions: list[pb.ConfigVersion] = collect_pages(
            connection, stub.ListConfigVersions, request, lambda page: page.config_versions
        )
    if as_json:
        rows: list[dict[str, Any]] = [MessageToDict(v, preserving_proto_field_name=True) for v in versions]
        for row in rows:
            row.pop("config", None)
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("version", "created (UTC)", "by", "sha256", "description")
    for v in versions:
        created = v.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")
        table.add_row(str(v.version), created, v.created_by, v.content_sha256[:12], v.description)
    console.print(table)


@config_app.command("diff")
@client_command
def config_diff(
    connection: Connection,
    environment: EnvironmentOption,
    old: Annotated[int, typer.Argument(help="The older version.")],
    new: Annotated[int, typer.Argument(help="The newer version; 0: the current one.")] = 0,
) -> None:
    """Show what changed between two versions."""
    with connection.channel() as channel:
        stub = pb_grpc.ConfigServiceStub(channel)
        texts = []
        for version in (old, new):
            request = pb.GetConfigRequest(environment_id=environment, version=version)
            stored = call(connection, stub.GetConfig, request).config_version
            texts.append((f"version {stored.version}", config_text(stored.config)))
    diff = _diff(texts[0][1], texts[1][1], texts[0][0], texts[1][0])
    if diff:
        _print_diff(diff)
    else:
        console.print("no differences")


@config_app.command("rollback")
@client_command
def config_rollback(
    connection: Connection,
    environment: EnvironmentOption,
    to: Annotated[int, typer.Option("--to", help="The version whose content becomes current again.")],
    yes: YesOption = False,
) -> None:
    """Make an old version's content current again, as a NEW version (versions only move forward)."""
    with connection.channel() as channel:
        stub = pb_grpc.ConfigServiceStub(channel)
        old = call(connection, stub.GetConfig, pb.GetConfigRequest(environment_id=environment, version=to))
        _store(
            connection,
            stub,
            environment,
            old.config_version.config,
            description=f"rollback to version {to}",
            yes=yes,
            dry_run=False,
        )
