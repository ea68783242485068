"""`meterwire envs …` and `meterwire tokens …`: environments and API tokens."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

from meterwire.admin.v1 import admin_service_pb2 as pb
from meterwire.admin.v1 import admin_service_pb2_grpc as pb_grpc
from services.cli.client import Connection, JsonOption, call, client_command, fail

envs_app = typer.Typer(help="Environments: create and list.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens: create, list and revoke.", no_args_is_help=True)
console = Console()

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
    environments: list[pb.Environment] = []
    with connection.channel() as channel:
        stub = pb_grpc.AdminServiceStub(channel)
        page_token = ""
        while True:
            response = call(connection, stub.ListEnvironments, pb.ListEnvironmentsRequest(page_token=page_token))
            environments.extend(response.environments)
            page_token = response.next_page_token
            if not page_token:
                break
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
    as_json: JsonOption = False,
) -> None:
    """Create a token. Its secret is printed once; store it now."""
    if role not in _ROLES:
        fail(f"role: {role!r} is not one of {', '.join(_ROLES)}", code=2)
    request = pb.CreateTokenRequest(
        role=_ROLES[role],
        environment_id=environment,
        gateway_id=gateway,
        environment_ids=reporter_environments or [],
        description=description,
    )
    with connection.channel() as channel:
        response = call(connection, pb_grpc.AdminServiceStub(channel).CreateToken, request)
    if as_json:
        body = MessageToDict(response.token, preserving_proto_field_name=True)
        typer.echo(json.dumps({"token": body, "secret": response.secret}, indent=2))
        return
    console.print(f"created {role} token [bold]{response.token.token_id}[/bold]; its secret (shown only now):")
    typer.echo(response.secret)


@tokens_app.command("list")
@client_command
def tokens_list(
    connection: Connection,
    show_revoked: Annotated[bool, typer.Option("--all", help="Include revoked tokens.")] = False,
    as_json: JsonOption = False,
) -> None:
    """List tokens (never their secrets)."""
    tokens: list[pb.Token] = []
    with connection.channel() as channel:
        stub = pb_grpc.AdminServiceStub(channel)
        page_token = ""
        while True:
            request = pb.ListTokensRequest(show_revoked=show_revoked, page_token=page_token)
            response = call(connection, stub.ListTokens, request)
            tokens.extend(response.tokens)
            page_token = response.next_page_token
            if not page_token:
                break
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
