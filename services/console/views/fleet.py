"""The Fleet page: every gateway the token may see, its status and why, refreshed live by polling its rows."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from services.console.context import Console, Viewer
from services.console.query import ViewQuery
from services.heartbeat.records import GatewayView

FLEET_REFRESH_SECONDS = 2
"""How often the page asks for fresh rows (and, without JavaScript, reloads itself)."""


async def _gateways(console: Console, query: ViewQuery, viewer: Viewer) -> list[GatewayView]:
    environments = viewer.principal.visible_environments(query.env, field="env")
    fleet = console.fleet
    return [fleet.view(record) for record in await fleet.gateways(environments)]


async def fleet_page(console: Console, request: Request, viewer: Viewer) -> Response:
    query = ViewQuery.from_params(request.query_params)
    gateways = await _gateways(console, query, viewer)
    return console.render(
        request,
        "fleet.html",
        viewer,
        title="Fleet",
        query=query,
        zone=query.time_zone(),
        gateways=gateways,
        now=datetime.now(UTC),
        rows_url=query.url("/fleet/rows"),
        refresh_seconds=FLEET_REFRESH_SECONDS,
        environments=await console.environment_choices(viewer.principal),
    )


async def fleet_rows(console: Console, request: Request, viewer: Viewer) -> Response:
    """The table body alone, which the page's script swaps in every FLEET_REFRESH_SECONDS."""
    query = ViewQuery.from_params(request.query_params)
    return console.render(
        request,
        "fleet_rows.html",
        viewer,
        gateways=await _gateways(console, query, viewer),
        zone=query.time_zone(),
        now=datetime.now(UTC),
    )
