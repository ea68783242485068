"""The console over plain HTTP: sign-in and sessions, CSRF, security headers, scoping and its figures (which are
the Reporting RPC's), on SQLite and PostgreSQL."""

from __future__ import annotations

import html
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import grpc
import httpx

from meterwire.admin.v1 import admin_service_pb2 as admin_pb
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from services.console.sessions import SESSION_COOKIE
from services.server import ControlPlane
from services.usage_terms.figures import money
from tests.clients import Tokens, bearer
from tests.console.harness import csrf_of, kpi_tiles, sign_in
from tests.reporting.dataset import make_dataset
from tests.reporting.test_oracle import dataset_gateways, ingest, usage_filter

PAGES = ("/usage", "/requests", "/fleet", "/budgets")


async def _with_usage(channel: grpc.aio.Channel, tokens: Tokens, now: datetime, count: int = 600) -> None:
    secrets = await dataset_gateways(tokens)
    await ingest(channel, secrets, make_dataset(count, seed=5, now=now))


def _custom(start: datetime, end: datetime, **more: str) -> str:
    fmt = "%Y-%m-%dT%H:%M:%S"
    return urlencode({"range": "custom", "from": start.strftime(fmt), "to": end.strftime(fmt), **more})


async def test_pages_need_a_session_and_send_security_headers(http: httpx.AsyncClient, admin_secret: str) -> None:
    for path in PAGES:
        response = await http.get(path)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login?next=")
    for fragment in ("/fleet/rows", "/exports/some-job/status"):
        assert (await http.get(fragment)).status_code == 401  # the script reloads; no sign-in form in a table
    signed_in = await sign_in(http, admin_secret)
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/usage"
    for path in (*PAGES, "/static/console.js", "/login"):
        response = await http.get(path)
        assert response.status_code in (200, 303), path
        headers = response.headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
    page = await http.get("/usage")
    assert page.headers["cache-control"] == "no-store"
    assert "<script>" not in page.text
    assert " on" + "click=" not in page.text


async def test_the_session_cookie_is_httponly_strict_and_holds_no_token(
    http: httpx.AsyncClient, admin_secret: str
) -> None:
    response = await sign_in(http, admin_secret)
    cookie = next(value for name, value in response.headers.multi_items() if name == "set-cookie")
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/" in cookie
    assert admin_secret not in cookie
    assert admin_secret not in response.headers.get("location", "")
    assert "Secure" not in cookie  # plain HTTP here; Secure is set when served over https


async def test_wrong_tokens_and_gateway_tokens_cannot_sign_in(http: httpx.AsyncClient, tokens: Tokens) -> None:
    await tokens.environment("alpha")
    gateway = await tokens.gateway("alpha", "gw-1")
    for secret, reason in ((gateway, "gateway token cannot sign in"), ("mw_nonsense", "not a meterwire token")):
        response = await sign_in(http, secret)
        assert response.status_code == 401
        assert reason in response.text
        assert SESSION_COOKIE not in http.cookies
        assert secret not in response.text


async def test_forms_without_the_csrf_token_are_refused(http: httpx.AsyncClient, admin_secret: str) -> None:
    form = await http.get("/login")
    refused = await http.post("/login", data={"csrf_token": "forged", "token": admin_secret})
    assert refused.status_code == 403
    assert SESSION_COOKIE not in http.cookies
    assert (await sign_in(http, admin_secret)).status_code == 303
    usage = await http.get("/usage")
    for data in ({}, {"csrf_token": csrf_of(form.text)}, {"csrf_token": "x" * 43}):
        export = await http.post("/exports", data={**data, "format": "csv", "shape": "events", "view": ""})
        assert export.status_code == 403
        assert "csrf_token" in export.text
        assert (await http.post("/logout", data=data)).status_code == 403
    assert (await http.get("/usage")).status_code == 200  # still signed in
    logout = await http.post("/logout", data={"csrf_token": csrf_of(usage.text)})
    assert logout.status_code == 303
    assert (await http.get("/usage")).status_code == 303


async def test_a_revoked_token_ends_its_console_sessions(
    control_plane: ControlPlane, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    await tokens.environment("alpha")
    created = await tokens.create(admin_pb.ROLE_REPORTER, environment_ids=("alpha",))
    assert (await sign_in(http, created.secret)).status_code == 303
    assert (await http.get("/usage")).status_code == 200
    await tokens.stub.RevokeToken(
        admin_pb.RevokeTokenRequest(token_id=created.token.token_id), metadata=bearer(tokens.admin)
    )
    after = await http.get("/usage")
    assert after.status_code == 303
    assert after.headers["location"].startswith("/login")


async def test_kpi_tiles_are_the_reporting_rpc_figures_and_follow_the_filter(
    control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens, http: httpx.AsyncClient
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    await _with_usage(channel, tokens, now)
    await sign_in(http, tokens.admin)
    stub = pb_grpc.ReportingServiceStub(channel)
    start, end = now - timedelta(days=4), now
    for environments in ((), ("beta",)):
        page = await http.get(f"/usage?{_custom(start, end)}" + "".join(f"&env={e}" for e in environments))
        assert page.status_code == 200
        rpc = (
            await stub.GetUsageSummary(
                pb.GetUsageSummaryRequest(
                    filter=usage_filter(
                        int(start.timestamp() * 1e6), int(end.timestamp() * 1e6), environment_ids=environments
                    )
                ),
                metadata=bearer(tokens.admin),
            )
        ).summary
        tiles = kpi_tiles(page.text)
        assert tiles["requests"] == f"{rpc.requests:,}"
        assert tiles["input-tokens"] == f"{rpc.tokens.input:,}"
        assert tiles["output-tokens"] == f"{rpc.tokens.output:,}"
        assert tiles["spend"] == money(rpc.cost_micros, rpc.currency)
        assert tiles["cache-savings"] == money(rpc.cache_savings_micros, rpc.currency)
        assert tiles["success-rate"] == f"{rpc.success_rate:.2%}"
        assert tiles["latency-avg"] == f"{rpc.latency.average.ToNanoseconds() / 1e6:,.1f} ms"
        assert rpc.requests > 0


async def test_a_reporter_cannot_reach_another_environment_by_editing_the_url(
    control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens, http: httpx.AsyncClient
) -> None:
    now = datetime.now(UTC)
    await _with_usage(channel, tokens, now, count=300)
    await sign_in(http, await tokens.reporter("alpha"))
    usage = await http.get("/usage?range=7d&by=environment")
    assert 'data-key="alpha"' in usage.text
    assert 'data-key="beta"' not in usage.text
    assert ">beta<" not in usage.text  # not even offered in the environment picker
    for path in (
        "/usage?env=beta",
        "/usage?env=alpha&env=beta",
        "/requests?env=beta",
        "/fleet?env=beta",
        "/budgets?env=beta",
        "/requests/beta/beta-req-1",
    ):
        refused = await http.get(path)
        assert refused.status_code == 403, path
        assert "may not access environment 'beta'" in html.unescape(refused.text)
    requests = await http.get("/requests?range=7d")
    assert "alpha-req-" in requests.text
    assert "beta-req-" not in requests.text
    csrf = csrf_of(usage.text)
    export = await http.post(
        "/exports", data={"csrf_token": csrf, "format": "csv", "shape": "events", "view": "range=7d&env=beta"}
    )
    assert export.status_code == 403


async def test_bad_url_parameters_are_400_naming_them(http: httpx.AsyncClient, admin_secret: str) -> None:
    await sign_in(http, admin_secret)
    for query, name in (
        ("range=2w", "range"),
        ("tz=Mars/Olympus", "tz"),
        ("metric=nope", "metric"),
        ("granularity=2m", "granularity"),
        ("top=0", "top"),
        ("by=colour", "by"),
        ("tag=novalue", "tag"),
        ("range=custom&from=yesterday", "from"),
    ):
        response = await http.get(f"/usage?{query}")
        assert response.status_code == 400, query
        assert f"{name}: " in response.text
    too_fine = await http.get("/usage?range=30d&granularity=1m")
    assert too_fine.status_code == 200
    assert "The chart cannot be drawn" in too_fine.text
    escaped = await http.get("/usage?" + urlencode({"model": "<script>alert(1)</script>"}))
    assert "<script>alert(1)</script>" not in escaped.text
    assert "&lt;script&gt;" in escaped.text


def test_the_grpc_only_server_does_not_import_the_web_stack() -> None:
    code = (
        "import sys, services.server, services.cli.main; "
        "print(sorted(m for m in ('starlette', 'uvicorn', 'jinja2') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
