"""The MCP tools and their transports: stdio for a local assistant, streamable HTTP for shared use.

Who is asking decides what can be read, and the control plane decides it, not this server: on stdio every call
carries the token the server was started with; over HTTP every request must carry its caller's own meterwire
token (`Authorization: Bearer …`), which is passed through unchanged, and the server's own token is never used.
Nothing here changes state in the control plane.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field
from starlette.types import ASGIApp, Receive, Scope, Send

from services.mcp import queries
from services.mcp.arguments import (
    DIMENSION_HELP,
    GRANULARITY_ENUM,
    METRIC_ENUM,
    METRIC_HELP,
    METRICS_ENUM,
    ArgumentError,
    UsageFilterArguments,
    each_one_of,
    one_of,
)
from services.mcp.control_plane import Caller, ControlPlaneAddress, ControlPlaneRefused, caller
from services.mcp.results import Record

T = TypeVar("T")

INSTRUCTIONS: Final = (
    "Usage, spend, request history, gateway health and budgets of AI gateways managed by meterwire. "
    "Every tool only reads. Money comes as {amount, micros, currency}: `amount` is readable, `micros` is exact "
    "(1 unit = 1,000,000 micros). null means not reported (unknown), which differs from 0. Time ranges: "
    "`range` (1h, today, 3d, 7d, 30d) or `start`/`end` in ISO 8601, in `time_zone`. Start from usage_summary or "
    "usage_breakdown; to explain a jump, compare usage_time_series split by a dimension, then list_requests."
)

_READ_ONLY: Final = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True)
_WRITES_A_NEW_FILE: Final = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False)

FilterArgument = Annotated[
    UsageFilterArguments | None, Field(description="Time range and filters; omitted: the last 7 days, everything.")
]
Environments = Annotated[list[str], Field(description="Environment ids; empty: every one the token may read.")]


def _bearer(headers: Any) -> str | None:
    value = headers.get("authorization", "") if headers is not None else ""
    scheme, _, token = str(value).partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def build_server(where: ControlPlaneAddress, *, stdio_token: str | None) -> MCPServer:
    """The meterwire tools; `stdio_token` acts for calls that carry no HTTP headers (stdio only)."""
    server: MCPServer = MCPServer("meterwire", instructions=INSTRUCTIONS)

    async def answer(context: Context, ask: Callable[[Caller], Awaitable[T]]) -> T:
        token = _bearer(context.headers) if context.headers is not None else stdio_token
        if not token:
            raise ToolError("no meterwire token: send `Authorization: Bearer <token>` with the request")
        try:
            async with caller(where, token) as session:
                return await ask(session)
        except (ArgumentError, ControlPlaneRefused) as error:
            raise ToolError(str(error)) from error

    @server.tool(annotations=_READ_ONLY)
    async def usage_summary(ctx: Context, filter: FilterArgument = None) -> Record:
        """Totals over a time range: requests, errors, success rate, tokens by kind, cost, cache savings, latency
        and time-to-first-token (average and percentiles)."""
        return await answer(ctx, lambda session: queries.usage_summary(session, filter))

    @server.tool(annotations=_READ_ONLY)
    async def usage_breakdown(
        ctx: Context,
        group_by: Annotated[list[str], Field(description=f"Dimensions to group by, in order. {DIMENSION_HELP}")],
        filter: FilterArgument = None,
        order_by: Annotated[
            str, Field(description=f"Metric to rank groups by. {METRIC_HELP}", json_schema_extra=METRIC_ENUM)
        ] = "cost",
        ascending: Annotated[bool, Field(description="Smallest first instead of largest first.")] = False,
        top_n: Annotated[
            int, Field(description=f"Groups to list, 1 to {queries.MAX_BREAKDOWN_ROWS}; the rest sum into `other`.")
        ] = 10,
    ) -> Record:
        """Top groups by a metric (e.g. spend by model, errors by gateway, cost by tag:team), each with its totals."""
        return await answer(
            ctx,
            lambda session: queries.usage_breakdown(
                session, filter, group_by=group_by, order_by=order_by, ascending=ascending, top_n=top_n
            ),
        )

    @server.tool(annotations=_READ_ONLY)
    async def usage_time_series(
        ctx: Context,
        filter: FilterArgument = None,
        metrics: Annotated[
            list[str], Field(description=f"Metrics to chart. Each: {METRIC_HELP}", json_schema_extra=METRICS_ENUM)
        ] = ["cost"],  # noqa: B006
        granularity: Annotated[
            str,
            Field(
                description="Bucket width: 1m, 5m, 1h or 1d (days in filter.time_zone).",
                json_schema_extra=GRANULARITY_ENUM,
            ),
        ] = "1d",
        split_by: Annotated[
            str | None, Field(description=f"One series per group of this dimension. {DIMENSION_HELP}")
        ] = None,
        top_n: Annotated[int, Field(description="With split_by: how many groups get their own series.")] = 5,
    ) -> Record:
        """Metrics per time bucket, to see when usage or spend moved (and, with split_by, which group moved it).
        At most 500 points in all: pick a coarser granularity for long ranges."""
        return await answer(
            ctx,
            lambda session: queries.usage_time_series(
                session, filter, metrics=metrics, granularity=granularity, split_by=split_by, top_n=top_n
            ),
        )

    @server.tool(annotations=_READ_ONLY)
    async def list_requests(
        ctx: Context,
        filter: FilterArgument = None,
        errors_only: Annotated[bool, Field(description="Only requests whose final attempt failed.")] = False,
        page_size: Annotated[int, Field(description=f"Requests per page, 1 to {queries.MAX_REQUESTS_PAGE}.")] = 20,
        page_token: Annotated[str, Field(description="next_page_token of the previous page; empty: first.")] = "",
    ) -> Record:
        """Request history, newest first: model, provider, status, tokens, cost and latency of each request."""
        return await answer(
            ctx,
            lambda session: queries.list_requests(
                session, filter, errors_only=errors_only, page_size=page_size, page_token=page_token
            ),
        )

    @server.tool(annotations=_READ_ONLY)
    async def get_request(
        ctx: Context,
        environment: Annotated[str, Field(description="Environment id the request was served in.")],
        request_id: Annotated[str, Field(description="The request id (list_requests shows it).")],
    ) -> Record:
        """One request with every attempt (fallbacks, retries): status, error, tokens, cost, latency, tags."""
        return await answer(
            ctx, lambda session: queries.get_request(session, environment=environment, request_id=request_id)
        )

    @server.tool(annotations=_READ_ONLY)
    async def fleet_status(
        ctx: Context,
        environments: Environments = [],  # noqa: B006
        statuses: Annotated[
            list[str],
            Field(
                description=f"Only gateways in these statuses: {queries.STATUS_NAMES}.",
                json_schema_extra=each_one_of(queries.STATUSES),
            ),
        ] = [],  # noqa: B006
    ) -> Record:
        """Gateways and their health (healthy, stale, offline, degraded, never-seen) with the reasons (`why`)
        a gateway is degraded: backlog, dead letters, a rejected config; and counts per status."""
        return await answer(
            ctx, lambda session: queries.fleet_status(session, environments=environments, statuses=statuses)
        )

    @server.tool(annotations=_READ_ONLY)
    async def list_budgets(ctx: Context, environments: Environments = []) -> Record:  # noqa: B006
        """Budgets with their scope, limit, period and mode, and the current window: used, limit, remaining,
        state (ok, warning, exceeded) and the last alert threshold crossed."""
        return await answer(ctx, lambda session: queries.list_budgets(session, environments=environments))

    @server.tool(annotations=_READ_ONLY)
    async def budget_alerts(
        ctx: Context,
        budget_id: Annotated[str, Field(description="Only this budget's alerts; empty: every budget's.")] = "",
        environments: Environments = [],  # noqa: B006
        page_size: Annotated[int, Field(description=f"Alerts per page, 1 to {queries.MAX_LISTED}.")] = 20,
        page_token: Annotated[str, Field(description="next_page_token of the previous page; empty: first.")] = "",
    ) -> Record:
        """Budget alerts raised (a threshold crossed in a window), newest first, with what was used of the limit
        when it was raised (money for spend budgets, counts for token and request budgets)."""
        return await answer(
            ctx,
            lambda session: queries.budget_alerts(
                session, budget_id=budget_id, environments=environments, page_size=page_size, page_token=page_token
            ),
        )

    @server.tool(annotations=_WRITES_A_NEW_FILE)
    async def export_usage(
        ctx: Context,
        path: Annotated[str, Field(description="Absolute path of a NEW file to write (never overwritten).")],
        format: Annotated[
            str, Field(description="csv or jsonl.", json_schema_extra=one_of(queries.EXPORT_FORMATS))
        ] = "csv",
        filter: FilterArgument = None,
        group_by: Annotated[
            list[str], Field(description=f"Empty: one row per raw event. Else one row per group. {DIMENSION_HELP}")
        ] = [],  # noqa: B006
        granularity: Annotated[
            str | None,
            Field(
                description="With group_by: 1m, 5m, 1h or 1d buckets; none: the whole range.",
                json_schema_extra={"enum": [*GRANULARITY_ENUM["enum"], None]},
            ),
        ] = None,
        max_rows: Annotated[int, Field(description=f"Most rows to write, 1 to {queries.MAX_EXPORT_ROWS}.")] = 100_000,
    ) -> Record:
        """Write usage to a CSV or JSONL file on the machine running this server, for a spreadsheet or script;
        answers with the path and row count (the rows themselves stay out of the conversation)."""
        return await answer(
            ctx,
            lambda session: queries.export_usage(
                session,
                filter,
                path=path,
                file_format=format,
                group_by=group_by,
                granularity=granularity,
                max_rows=max_rows,
            ),
        )

    return server


class BearerRequired:
    """ASGI wrapper: an HTTP request without `Authorization: Bearer <token>` gets 401 before MCP sees it.

    The token itself is checked by the control plane on each tool call (it alone knows tokens and their scope).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
            if _bearer(headers) is None:
                body = b'{"error": "send Authorization: Bearer <meterwire token>"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b'Bearer realm="meterwire"'),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def run_stdio(where: ControlPlaneAddress, token: str) -> None:
    build_server(where, stdio_token=token).run("stdio")


async def serve_http(where: ControlPlaneAddress, host: str, port: int) -> None:
    import uvicorn

    app = build_server(where, stdio_token=None).streamable_http_app(host=host)
    # The session manager runs in the Starlette app's lifespan; the wrapper passes lifespan events through.
    config = uvicorn.Config(BearerRequired(app), host=host, port=port, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve()
