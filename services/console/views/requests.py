"""The Requests page (history with filters, errors only) and one request with its attempts."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from services.console.context import Console, Viewer
from services.console.query import RANGE_CHOICES, ZONES, ViewQuery
from services.console.views.usage import selection_of
from services.reporting.messages import request_message, stored_event_message

REQUESTS_PER_PAGE = 50


async def requests_page(console: Console, request: Request, viewer: Viewer) -> Response:
    query = ViewQuery.from_params(request.query_params)
    selection = selection_of(query, viewer)
    page_token = request.query_params.get("page", "")
    page = await console.history.list_requests(
        selection, errors_only=query.errors_only, size=REQUESTS_PER_PAGE, token=page_token
    )
    return console.render(
        request,
        "requests.html",
        viewer,
        title="Requests",
        query=query,
        zone=query.time_zone(),
        requests=[request_message(outcome) for outcome in page.requests],
        next_url=_next_page(query, page.next_page_token),
        environments=await console.environment_choices(viewer.principal),
        choices={"ranges": RANGE_CHOICES, "zones": ZONES if query.zone in ZONES else (*ZONES, query.zone)},
    )


def _next_page(query: ViewQuery, token: str) -> str:
    if not token:
        return ""
    return f"/requests?{urlencode([*query.params(), ('page', token)])}"


async def request_page(console: Console, request: Request, viewer: Viewer) -> Response:
    environment_id = request.path_params["environment_id"]
    viewer.principal.require_environment(environment_id)
    outcome, attempts = await console.history.get_request(environment_id, request.path_params["request_id"])
    query = ViewQuery.from_params(request.query_params)
    return console.render(
        request,
        "request.html",
        viewer,
        title=f"Request {outcome.request_id}",
        query=query,
        zone=query.time_zone(),
        summary=request_message(outcome),
        attempts=[stored_event_message(stored) for stored in attempts],
    )
