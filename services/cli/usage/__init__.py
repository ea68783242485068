"""`meterwire usage …`: summaries, rankings, trends, request history and export from the Reporting service.

The commands live by what they do (reports, history, export); filters.py declares the options and turns them into
the filter every Reporting RPC takes (parsing with services.usage_terms, shared with the MCP server and the
console), currencies.py asks which currency figures are in.
"""

from __future__ import annotations

import typer

from services.cli.client import client_command
from services.cli.usage import export, history, reports

usage_app = typer.Typer(help="Usage and spend: summary, top, series, requests, request, export.", no_args_is_help=True)
usage_app.command("summary")(client_command(reports.summary))
usage_app.command("top")(client_command(reports.top))
usage_app.command("series")(client_command(reports.series))
usage_app.command("requests")(client_command(history.requests))
usage_app.command("request")(client_command(history.request_attempts))
usage_app.command("export")(client_command(export.export))

__all__ = ["usage_app"]
