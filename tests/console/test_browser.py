"""The console in a real browser (Debian's chromium through Playwright), against one control plane with usage in
two environments: sign-in, KPI tiles equal to the Reporting RPC, the chart drawn, filters in the URL, scoping,
the fleet turning a silenced gateway STALE, exports that add up, and no JavaScript error on any page."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import grpc
import pytest
from openpyxl import load_workbook
from playwright.sync_api import Browser, Page, expect, sync_playwright

from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from meterwire.budget.v1 import budget_service_pb2_grpc as budget_grpc
from meterwire.heartbeat.v1 import heartbeat_service_pb2 as heartbeat_pb
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from services.usage_terms.figures import money
from tests.clients import Tokens, bearer
from tests.console.browser import JsErrors, launch, require_chromium, screenshot
from tests.console.harness import ThreadedControlPlane, console_settings, console_url
from tests.heartbeat.helpers import GatewayStream
from tests.reporting.dataset import make_dataset
from tests.reporting.test_oracle import dataset_gateways, ingest, usage_filter

pytestmark = pytest.mark.timeout(180)


@dataclass
class Fixture:
    """The served console and what the tests know about its data."""

    served: ThreadedControlPlane
    url: str
    admin: str
    reporter_alpha: str
    start: datetime
    end: datetime

    def custom_range(self, **more: str) -> str:
        fmt = "%Y-%m-%dT%H:%M:%S"
        return urlencode({"range": "custom", "from": self.start.strftime(fmt), "to": self.end.strftime(fmt), **more})

    def rpc_summary(self, *environments: str) -> pb.UsageSummary:
        with grpc.insecure_channel(f"127.0.0.1:{self.served.plane.port}") as channel:
            request = pb.GetUsageSummaryRequest(
                filter=usage_filter(
                    int(self.start.timestamp() * 1e6), int(self.end.timestamp() * 1e6), environment_ids=environments
                )
            )
            response: pb.GetUsageSummaryResponse = pb_grpc.ReportingServiceStub(channel).GetUsageSummary(
                request, metadata=bearer(self.admin)
            )
        return response.summary


async def _populate(served: ThreadedControlPlane, now: datetime) -> tuple[str, str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{served.plane.port}") as channel:
        admin = served.plane.settings.admin_token_path.read_text().strip()
        tokens = Tokens(channel, admin)
        secrets = await dataset_gateways(tokens)
        await ingest(channel, secrets, make_dataset(1500, seed=19, now=now))
        budget = budget_pb.Budget(
            display_name="alpha monthly spend",
            scope=budget_pb.Scope(environment_id="alpha"),
            metric=budget_pb.METRIC_SPEND,
            limit=500_000_000,
            period=budget_pb.PERIOD_MONTH,
            time_zone="Europe/Berlin",
            mode=budget_pb.MODE_HARD_STOP,
            alert_threshold_percents=[50, 80, 100],
        )
        created = await budget_grpc.BudgetServiceStub(channel).CreateBudget(
            budget_pb.CreateBudgetRequest(budget=budget), metadata=bearer(admin)
        )
        # An agent enforcing it reports its decisions in a heartbeat (AgentState.budget_enforcement).
        stream = GatewayStream(channel, await tokens.gateway("alpha", "gw-enforcing"))
        enforcement = heartbeat_pb.BudgetEnforcement(
            budget_id=created.budget.budget_id, denied_requests=3, shadow_denied_requests=5
        )
        await stream.beat(heartbeat_pb.AgentState(agent_version="0.1.0", budget_enforcement=[enforcement]))
        await stream.close()
        return admin, await tokens.reporter("alpha")


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    require_chromium()
    data_dir = tmp_path_factory.mktemp("console") / "var"
    served = ThreadedControlPlane(console_settings(f"sqlite+aiosqlite:///{data_dir.parent / 'mw.db'}", data_dir))
    served.start()
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        admin, reporter = served.run(_populate(served, now))
        yield Fixture(served, console_url(served.plane), admin, reporter, now - timedelta(days=4), now)
    finally:
        served.stop()


@pytest.fixture(scope="module")
def browser(console: Fixture) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def errors() -> JsErrors:
    return JsErrors()


@pytest.fixture
def page(browser: Browser, console: Fixture, errors: JsErrors) -> Iterator[Page]:
    """A fresh browser context at 1280 px; no page it showed may have logged a JavaScript error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=console.url, accept_downloads=True)
    tab = context.new_page()
    errors.watch(tab)
    try:
        yield tab
    finally:
        context.close()
    assert errors.messages == []


def sign_in(page: Page, secret: str) -> None:
    page.goto("/login")
    page.fill("#token", secret)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_url("**/usage")


def tile(page: Page, kpi: str) -> str:
    return page.locator(f"[data-kpi='{kpi}'] .value").inner_text().strip()


def test_kpi_tiles_equal_the_reporting_rpc_and_the_chart_is_drawn(page: Page, console: Fixture) -> None:
    sign_in(page, console.admin)
    screenshot(page, "usage-today")
    page.goto(f"/usage?{console.custom_range(by='model')}")
    rpc = console.rpc_summary()
    assert tile(page, "requests") == f"{rpc.requests:,}"
    assert tile(page, "input-tokens") == f"{rpc.tokens.input:,}"
    assert tile(page, "output-tokens") == f"{rpc.tokens.output:,}"
    assert tile(page, "cache-read-tokens") == f"{rpc.tokens.cache_read:,}"
    assert tile(page, "spend") == money(rpc.cost_micros, rpc.currency)
    assert tile(page, "cache-savings") == money(rpc.cache_savings_micros, rpc.currency)
    assert tile(page, "success-rate") == f"{rpc.success_rate:.2%}"
    assert tile(page, "latency-avg") == f"{rpc.latency.average.ToNanoseconds() / 1e6:,.1f} ms"
    assert tile(page, "ttft-avg") == f"{rpc.ttft.average.ToNanoseconds() / 1e6:,.1f} ms"
    canvas = page.locator("#trend-chart canvas")
    expect(canvas).to_have_count(1)
    drawn = page.evaluate(
        """() => {
            const canvas = document.querySelector('#trend-chart canvas');
            const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let painted = 0;
            for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) painted++;
            return painted;
        }"""
    )
    assert drawn > 1000  # the series, its fill and the average line: thousands of pixels, not a blank canvas
    assert page.locator("table.rank tbody tr").count() >= 4  # four models in the dataset
    screenshot(page, "usage")


def test_changing_a_filter_changes_the_numbers_and_the_url(page: Page, console: Fixture) -> None:
    sign_in(page, console.admin)
    page.goto(f"/usage?{console.custom_range()}")
    everything = tile(page, "requests")
    page.select_option("form.filters select[name=env]", "beta")  # applies on change
    page.wait_for_url("**env=beta**")
    assert parse_qs(urlparse(page.url).query)["env"] == ["beta"]
    beta = console.rpc_summary("beta")
    assert tile(page, "requests") == f"{beta.requests:,}"
    assert tile(page, "requests") != everything
    page.select_option("section.trend select[name=metric]", "cost")
    page.wait_for_url("**metric=cost**")
    query = parse_qs(urlparse(page.url).query)
    assert (query["metric"], query["env"]) == (["cost"], ["beta"])  # the earlier filter is kept
    # A custom range from the form: typing the dates picks "custom"; Apply sends them (in the chosen zone).
    page.fill("form.filters input[name=from]", "2026-01-01T00:00")
    page.fill("form.filters input[name=to]", "2026-01-02T00:00")
    assert page.locator("form.filters input[name=range][value=custom]").is_checked()
    page.click("form.filters fieldset:nth-of-type(2) button[type=submit]")
    page.wait_for_url(lambda url: "2026-01-01" in url)
    applied = parse_qs(urlparse(page.url).query)
    assert applied["from"] == ["2026-01-01T00:00"]
    assert "model" not in applied  # empty boxes stay out of the URL
    assert tile(page, "requests") == "0"  # long before the dataset
    page.go_back()
    page.click("nav.tabs a:text-is('user')")
    page.wait_for_url("**by=user**")
    assert page.locator("table.rank tbody tr[data-key^='user-']").count() >= 1
    screenshot(page, "usage-filtered")


def test_a_reporter_limited_to_alpha_cannot_see_beta(page: Page, console: Fixture, errors: JsErrors) -> None:
    sign_in(page, console.reporter_alpha)
    page.goto(f"/usage?{console.custom_range(by='environment')}")
    assert page.locator("table.rank tbody tr").evaluate_all("rows => rows.map(r => r.dataset.key)") == ["alpha"]
    assert page.locator("form.filters select[name=env] option").all_inner_texts() == ["all I may see", "alpha"]
    assert tile(page, "requests") == f"{console.rpc_summary('alpha').requests:,}"
    for path in (f"/usage?{console.custom_range(env='beta')}", "/requests?env=beta", "/fleet?env=beta"):
        response = page.goto(path)
        assert response is not None
        assert response.status == 403
        expect(page.locator("p.error")).to_contain_text("may not access environment 'beta'")
    screenshot(page, "refused")
    assert len(errors.expected("status of 403 (Forbidden)")) == 3  # chromium logs each refused page load


def test_requests_history_errors_only_and_one_request_with_its_attempts(page: Page, console: Fixture) -> None:
    sign_in(page, console.admin)
    page.goto("/requests?range=7d")
    rows = page.locator("table.requests tbody tr")
    expect(rows).to_have_count(50)
    screenshot(page, "requests")
    newest = rows.locator("td:nth-child(2)").all_inner_texts()
    page.click("a:text-is('Older requests →')")
    page.wait_for_url("**page=**")
    older = rows.locator("td:nth-child(2)").all_inner_texts()
    assert older
    assert not set(older) & set(newest)
    page.go_back()
    page.click("a:text-is('Errors only')")
    page.wait_for_url("**errors=1**")
    failed = page.locator("table.requests tbody tr.failed")
    assert failed.count() == rows.count() > 0
    multi = page.locator("table.requests tbody tr", has=page.locator("td.num:nth-child(5):not(:text-is('1'))"))
    link = (multi if multi.count() else rows).first.locator("td:nth-child(2) a")
    request_id = link.inner_text()
    link.click()
    page.wait_for_url(f"**/{request_id}?**")
    expect(page.locator("h1")).to_contain_text(request_id)
    attempts = int(page.locator("dl.facts dt:text-is('attempts') + dd").inner_text())
    expect(page.locator("table.attempts tbody tr")).to_have_count(attempts)
    screenshot(page, "request")


def test_the_fleet_turns_a_silenced_gateway_stale(page: Page, console: Fixture) -> None:
    served = console.served

    async def heartbeating() -> tuple[GatewayStream, asyncio.Task[None]]:
        async def beat_forever(stream: GatewayStream) -> None:
            while True:
                await stream.beat()
                await asyncio.sleep(0.25)

        channel = grpc.aio.insecure_channel(f"127.0.0.1:{served.plane.port}")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.plane.port}") as admin_channel:
            secret = await Tokens(admin_channel, console.admin).gateway("alpha", "gw-live")
        stream = GatewayStream(channel, secret)
        await stream.beat()
        return stream, asyncio.create_task(beat_forever(stream))

    stream, beating = served.run(heartbeating())
    sign_in(page, console.admin)
    page.goto("/fleet")
    row = page.locator("tr[data-gateway='alpha/gw-live']")
    expect(row).to_have_attribute("data-status", "healthy")
    screenshot(page, "fleet")

    async def silence() -> None:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)

    served.run(silence())
    # No reload: the page's polling brings the status change in (2 heartbeat intervals of silence).
    expect(row).to_have_attribute("data-status", "stale", timeout=15_000)
    expect(row.locator("td:nth-child(4)")).to_contain_text("no heartbeat")
    screenshot(page, "fleet-stale")
    served.run(stream.close())


def test_budgets_show_spent_against_limit(page: Page, console: Fixture) -> None:
    sign_in(page, console.admin)
    page.goto("/budgets?tz=Europe/Berlin")
    row = page.locator("table.budgets tr", has=page.locator("td:text-is('alpha monthly spend')"))
    expect(row).to_have_count(1)
    expect(row.locator("meter")).to_have_attribute("max", "500000000")
    expect(row).to_contain_text("500.0000")
    expect(row.locator("[data-denials]")).to_have_text("3 · 5 (1 gw)")  # from the enforcing agent's heartbeat
    # Its month to date counted at creation went past 50 %: the alert is listed.
    alert = page.locator("table.alerts tr", has=page.locator("td:text-is('alpha monthly spend')"))
    expect(alert.first).to_contain_text("50 %")
    expect(alert.first).to_contain_text("/ 500.0000")  # in the budget's currency, not micro-units
    screenshot(page, "budgets")


@pytest.mark.parametrize("file_format", ["csv", "xlsx"])
def test_an_export_of_the_view_downloads_and_adds_up(
    page: Page, console: Fixture, file_format: str, tmp_path: Path
) -> None:
    sign_in(page, console.admin)
    page.goto(f"/usage?{console.custom_range(by='model', granularity='1h')}")
    shown = int(tile(page, "requests").replace(",", ""))
    page.select_option("section.export select[name=format]", file_format)
    page.click("section.export button[type=submit]")
    page.wait_for_url("**/exports/**")
    link = page.locator("#export-file")
    expect(link).to_be_visible(timeout=30_000)
    expect(page.locator("#export-progress")).to_have_attribute("value", "1")
    screenshot(page, f"export-{file_format}")
    with page.expect_download() as download_info:
        link.click()
    download = download_info.value
    assert download.suggested_filename == f"usage-model.{file_format}"
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    if file_format == "csv":
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
    else:
        sheet = load_workbook(path, read_only=True)["usage"]
        header, *cells = [list(row) for row in sheet.iter_rows(values_only=True)]
        rows = [dict(zip(header, row, strict=True)) for row in cells]
    assert {row["model"] for row in rows} == {"gpt-4o", "claude-3-5-sonnet", "llama-3-70b", "o3"}
    assert sum(int(row["requests"]) for row in rows) == shown


def test_pages_fit_a_phone(browser: Browser, console: Fixture, errors: JsErrors) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, base_url=console.url, is_mobile=True)
    try:
        phone = context.new_page()
        errors.watch(phone)
        sign_in(phone, console.admin)
        for path in ("/usage?range=7d", "/requests?range=7d", "/fleet", "/budgets"):
            phone.goto(path)
            name = path.strip("/").split("?")[0]
            # Wide tables scroll inside their box; the page itself never scrolls sideways.
            assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), path
            screenshot(phone, f"phone-{name}")
    finally:
        context.close()
    assert errors.messages == []
