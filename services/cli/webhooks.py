"""`meterwire webhooks …`: URLs that receive budget alerts as signed JSON POSTs — create, list and delete."""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path
from typing import Annotated

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.table import Table

from meterwire.budget.v1 import budget_service_pb2 as pb
from meterwire.budget.v1 import budget_service_pb2_grpc as pb_grpc
from services.cli.admin import write_secret
from services.cli.client import Connection, JsonOption, YesOption, call, client_command, collect_pages, confirm, fail
from services.cli.output import console

webhooks_app = typer.Typer(help="Webhooks that receive budget alerts: create, list and delete.", no_args_is_help=True)


def _when(message: Message, field: str) -> str:
    if not message.HasField(field):
        return "-"
    return str(getattr(message, field).ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ"))


def _stub(channel: grpc.Channel) -> pb_grpc.BudgetServiceStub:
    return pb_grpc.BudgetServiceStub(channel)


@webhooks_app.command("create")
@client_command
def webhooks_create(
    connection: Connection,
    url: Annotated[str, typer.Option("--url", help="Where alerts are POSTed: https:// (http:// only to loopback).")],
    environment: Annotated[
        str, typer.Option("--environment", "-e", help="Alerts of this environment's budgets. Default: every one.")
    ] = "",
    budget: Annotated[str, typer.Option("--budget", help="Only this budget's alerts.")] = "",
    request_id: Annotated[
        str, typer.Option("--request-id", help="Idempotency key: a retry with it returns the webhook made first.")
    ] = "",
    secret_file: Annotated[
        Path | None,
        typer.Option(
            "--secret-file",
            help="Write the signing secret to this new file (mode 0600) instead of printing it.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a webhook. Its signing secret is shown once: keep it where the receiver checks signatures."""
    if secret_file is not None and secret_file.exists():
        fail(f"--secret-file: {secret_file} exists; a new secret never overwrites a file", code=2)
    request = pb.CreateWebhookRequest(
        webhook=pb.Webhook(url=url, environment_id=environment, budget_id=budget), request_id=request_id
    )
    with connection.channel() as channel:
        response = call(connection, _stub(channel).CreateWebhook, request)
    webhook_id = response.webhook.webhook_id
    if not response.secret:
        # A repeated --request-id returns the webhook made the first time; its secret was shown then only.
        typer.echo(f"webhook {webhook_id} already exists (same --request-id): its secret was shown when it was made")
        return
    if secret_file is not None:
        write_secret(secret_file, response.secret, webhook_id)
    if as_json:
        body = MessageToDict(response.webhook, preserving_proto_field_name=True)
        secret = {"secret_file": str(secret_file)} if secret_file else {"secret": response.secret}
        typer.echo(json.dumps({"webhook": body, **secret}, indent=2))
    elif secret_file is not None:
        console.print(f"created webhook [bold]{webhook_id}[/bold]; its signing secret is in {secret_file} (mode 0600)")
    else:
        # The note goes to stderr so `webhooks create … > FILE` saves the secret alone.
        typer.echo(
            f"created webhook {webhook_id}; its signing secret (shown only now: store it where the receiver "
            "verifies X-Meterwire-Signature):",
            err=True,
        )
        typer.echo(response.secret)


def _webhooks(connection: Connection, channel: grpc.Channel, environments: list[str]) -> list[pb.Webhook]:
    request = pb.ListWebhooksRequest(environment_ids=environments)
    found: list[pb.Webhook] = collect_pages(connection, _stub(channel).ListWebhooks, request, lambda p: p.webhooks)
    return found


@webhooks_app.command("list")
@client_command
def webhooks_list(
    connection: Connection,
    environment: Annotated[
        list[str] | None, typer.Option("--environment", "-e", help="Webhooks of this environment (repeat).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Webhooks with their delivery state: pending alerts, the last error, the last attempt and success."""
    with connection.channel() as channel:
        hooks = _webhooks(connection, channel, environment or [])
    if as_json:
        typer.echo(json.dumps([MessageToDict(h, preserving_proto_field_name=True) for h in hooks], indent=2))
        return
    table = Table(
        "webhook", "url", "environment", "budget", "delivery", "pending", "last error", "last attempt", "last success"
    )
    for hook in hooks:
        failing = hook.delivery_state == pb.WEBHOOK_DELIVERY_STATE_FAILING
        table.add_row(
            hook.webhook_id,
            hook.url,
            hook.environment_id or "(all)",
            hook.budget_id or "(all)",
            "[red]failing[/]" if failing else "[green]ok[/]",
            str(hook.pending_deliveries),
            hook.last_error or "-",
            _when(hook, "last_attempt_time"),
            _when(hook, "last_success_time"),
        )
    console.print(table)


@webhooks_app.command("delete")
@client_command
def webhooks_delete(
    connection: Connection,
    webhook_id: Annotated[str, typer.Argument(help="The webhook id (whk_…, from `meterwire webhooks list`).")],
    yes: YesOption = False,
) -> None:
    """Delete a webhook: nothing more is sent to it (undelivered alerts are dropped). Asks first unless --yes."""
    with connection.channel() as channel:
        if not yes:
            # Looked up first (there is no single-webhook read): a typo says so instead of asking.
            found = next((h for h in _webhooks(connection, channel, []) if h.webhook_id == webhook_id), None)
            if found is None:
                fail(f"NOT_FOUND: webhook_id: no webhook {webhook_id!r}")
            pending = f", {found.pending_deliveries} alerts not delivered yet" if found.pending_deliveries else ""
            confirm(f"delete webhook {webhook_id} ({found.url}{pending})?", declined="nothing deleted")
        call(connection, _stub(channel).DeleteWebhook, pb.DeleteWebhookRequest(webhook_id=webhook_id))
    console.print(f"deleted webhook [bold]{webhook_id}[/bold]")
