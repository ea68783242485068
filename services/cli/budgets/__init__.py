"""`meterwire budgets …`: spend, token and request budgets, their windows and alerts from the Budget service.

commands.py holds create, list, show, status, update, delete and history; alerts.py the alert listing and watch;
figures.py how limits are typed and how budgets read in a table (also under `usage summary`).
"""

from __future__ import annotations

import typer

from services.cli.budgets import alerts, commands
from services.cli.client import client_command

budgets_app = typer.Typer(
    help="Budgets: create, list, show, status, update, delete, history and alerts.", no_args_is_help=True
)
budgets_app.command("create")(client_command(commands.create))
budgets_app.command("list")(client_command(commands.list_budgets))
budgets_app.command("show")(client_command(commands.show))
budgets_app.command("status")(client_command(commands.status))
budgets_app.command("update")(client_command(commands.update))
budgets_app.command("delete")(client_command(commands.delete))
budgets_app.command("history")(client_command(commands.history))
budgets_app.command("alerts")(client_command(alerts.alerts))

__all__ = ["budgets_app"]
