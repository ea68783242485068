"""`meterwire envs …` and `meterwire tokens …`: environments and API tokens."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.table import Table

from meterwire.admin.v1 import admin_service_pb2 as pb
from meterwire.admin.v1 import admin_service_pb2_grpc as pb_grpc
from services.cli.client import Connection, JsonOption, call, client_command, collect_pages, fail
from services.cli.output import console

envs_app = typer.Typer(help="Environments: create and list.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens: create, list and revoke.", no_args_is_help=True)

_ROLES = {"admin": pb.ROLE_ADMIN, "reporter": pb.ROLE_REPORTER, "gateway": pb.ROLE_GATEWAY}
_ROLE_NAMES = {value: key for key, value in _ROLES.items()}


def _when(message: Message, field: str) -> str:
    if not message.HasField(field):
        return ""
    return str(getattr(message, field).ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ"))


@envs_app.command("create")
@client_command
def envs_create(
    connection: Connection,
    environment_id: Annotated[str, typer.Argument(help="Id: lowercase letters, digits, '-', e.g. prod-eu.")],
    display_name: Annotated[str, typer.Option(help="Name for people.")] = "",
    description: Annotated[str, typer.Option(help="What the environment is.")] = "",
) -> None:
    """Create an environment (repeating an identical create is fine)."""
    with connection.channel() as channel:
        request = pb.CreateEnvironmentRequest(
            environment=pb.Environment(
                environment_id=environment_id, display_name=display_name, description=description
            )
        )
        response = call(connection, pb_grpc.AdminServiceStub(channel).CreateEnvironment, request)
    verb = "created" if response.created else "already exists:"
    console.print(f"environment {verb} [bold]{response.environment.environment_id}[/bold]")


@envs_app.command("list")
@client_command
def envs_list(
    connection: Connection,
    as_json: JsonOption = False,
) -> None:
    """List environments."""
    with connection.channel() as channel:
        stub = pb_grpc.AdminServiceStub(channel)
        request = pb.ListEnvironmentsRequest()
        environments: list[pb.Environment] = collect_pages(
            connection, stub.ListEnvironments, request, lambda page: page.environments
        )
    if as_json:
        typer.echo(json.dumps([MessageToDict(e, preserving_proto_field_name=True) for e in environments], indent=2))
        return
    table = Table("environment", "display name", "description", "created (UTC)")
    for env in environments:
        table.add_row(env.environment_id, env.display_name, env.description, _when(env, "create_time"))
    console.print(table)


@tokens_app.command("create")
@client_command
def tokens_create(
    connection: Connection,
    role: Annotated[str, typer.Argument(help="admin, reporter or gateway.")],
    environment: Annotated[
        str, typer.Option("--environment", "-e", help="Gateway tokens: the environment it acts in.")
    ] = "",
    gateway: Annotated[str, typer.Option("--gateway", "-g", help="Gateway tokens: the gateway id it acts as.")] = "",
    reporter_environments: Annotated[
        list[str] | None,
        typer.Option("--limit-to", help="Reporter tokens: an environment it may read (repeat). Default: all."),
    ] = None,
    description: Annotated[str, typer.Option(help="Who or what the token is for.")] = "",
    secret_file: Annotated[
        Path | None,
        typer.Option(
            "--secret-file",
            help="Write the secret to this new file (mode 0600) instead of printing it; "
            "give it to --token-file (agent run, client commands).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a token. Its secret is shown once: save it with --secret-file (or `> FILE`: only it goes to stdout)."""
    if role not in _ROLES:
        fail(f"role: {role!r} is not one of {', '.join(_ROLES)}", code=2)
    request = pb.CreateTokenRequest(
        role=_ROLES[role],
        environment_id=environment,
        gateway_id=gateway,
        environment_ids=reporter_environments or [],
        description=description,
    )
    if secret_file is not None and secret_file.exists():
        fail(f"--secret-file: {secret_file} exists; a new secret never overwrites a file", code=2)
    with connection.channel() as channel:
        response = call(connection, pb_grpc.AdminServiceStub(channel).CreateToken, request)
    token_id = response.token.token_id
    if secret_file is not None:
        write_secret(secret_file, response.secret, token_id)
    if as_json:
        body = MessageToDict(response.token, preserving_proto_field_name=True)
        secret = {"secret_file": str(secret_file)} if secret_file else {"secret": response.secret}
        typer.echo(json.dumps({"token": body, **secret}, indent=2))
    elif secret_file is not None:
        console.print(f"created {role} token [bold]{token_id}[/bold]; its secret is in {secret_file} (mode 0600)")
    else:
        # The note goes to stderr so `tokens create … > gw.token` saves the secret alone.
        typer.echo(f"created {role} token {token_id}; its secret (shown only now):", err=True)
        typer.echo(response.secret)


def write_secret(path: Path, secret: str, token_id: str) -> None:
    """Creates `path` readable by its owner only, holding the secret and a newline."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        fail(f"--secret-file: cannot create {path}: {error.strerror}; revoke the unsaved token {token_id}")
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")


@tokens_app.command("list")
@client_command
def tokens_list(
    connection: Connection,
    show_revoked: Annotated[bool, typer.Option("--all", help="Include revoked tokens.")] = False,
    as_json: JsonOption = False,
) -> None:
    """List tokens (never their secrets)."""
    with connection.channel() as channel:
        stub = pb_grpc.AdminServiceStub(channel)
        request = pb.ListTokensRequest(show_revoked=show_revoked)
        tokens: list[pb.Token] = collect_pages(connection, stub.ListTokens, request, lambda page: page.tokens)
    if as_json:
        typer.echo(json.dumps([MessageToDict(t, preserving_proto_field_name=True) for t in tokens], indent=2))
        return
    table = Table("token", "role", "bound to / limited to", "description", "created (UTC)", "revoked (UTC)")
    for t in tokens:
        scope = f"{t.environment_id}/{t.gateway_id}" if t.gateway_id else ", ".join(t.environment_ids) or "all"
        table.add_row(
            t.token_id,
            _ROLE_NAMES.get(t.role, "?"),
            scope,
            t.description,
            _when(t, "create_time"),
            _when(t, "revoke_time"),
        )
    console.print(table)


@tokens_app.command("revoke")
@client_command
def tokens_revoke(
    connection: Connection,
    token_id: Annotated[str, typer.Argument(help="The token id (tok_…), not the secret.")],
) -> None:
    """Revoke a token; it stops working at once."""
    with connection.channel() as channel:
        response = call(
            connection,
            pb_grpc.AdminServiceStub(channel).RevokeToken,
            pb.RevokeTokenRequest(token_id=token_id),
        )
    console.print(f"revoked [bold]{response.token.token_id}[/bold] at {_when(response.token, 'revoke_time')}")
