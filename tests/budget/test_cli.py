"""`meterwire budgets …`, `meterwire webhooks …` and the budgets under `usage summary`, against a live control
plane: limits typed in currency and stored exactly, readable tables that keep their headers in a pipe, --json that
parses, and errors that name the option or the budget with the right exit code."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import typer
from google.protobuf.json_format import ParseDict

from meterwire.budget.v1 import budget_service_pb2 as pb
from meterwire.config.v1 import config_service_pb2 as config_pb
from meterwire.config.v1 import config_service_pb2_grpc as config_grpc
from services.cli.budgets.figures import limit_value, time_left
from services.server import ControlPlane
from tests.budget.test_webhooks import Receiver
from tests.clients import Tokens, bearer
from tests.heartbeat.helpers import Cli
from tests.reporting.test_cli import table_rows
from tests.system.serve import MW_COMMAND
from tests.telemetry.events import report, usage_event, wait_until

EUR_PRICING = {"pricing": {"currency": "EUR", "models": []}}


@pytest.mark.parametrize(
    ("typed", "micros"),
    [("250", 250_000_000), ("12.50", 12_500_000), ("12.345678", 12_345_678), ("0.000001", 1), ("7.1200000", 7_120_000)],
)
def test_a_spend_limit_in_currency_units_is_exact_micros(typed: str, micros: int) -> None:
    assert limit_value(typed, pb.METRIC_SPEND) == micros


@pytest.mark.parametrize("typed", ["12.3456789", "0.0000001", "abc", "-5", "0", "nan", "inf", ""])
def test_a_spend_limit_that_is_not_an_exact_positive_amount_is_a_usage_error(typed: str) -> None:
    with pytest.raises(typer.Exit) as caught:
        limit_value(typed, pb.METRIC_SPEND)
    assert caught.value.exit_code == 2


def test_token_and_request_limits_are_whole_counts() -> None:
    assert limit_value("1,000,000", pb.METRIC_TOKENS) == 1_000_000
    assert limit_value("500", pb.METRIC_REQUESTS) == 500
    for typed in ("1.5", "1e6", "-3"):
        with pytest.raises(typer.Exit) as caught:
            limit_value(typed, pb.METRIC_TOKENS)
        assert caught.value.exit_code == 2


def test_time_left_reads_in_days_hours_and_minutes() -> None:
    now = datetime(2026, 11, 28, 20, 0, tzinfo=UTC)
    assert time_left(datetime(2026, 12, 2, 0, 30, tzinfo=UTC), now) == "in 3d 4h"
    assert time_left(datetime(2026, 11, 28, 22, 5, tzinfo=UTC), now) == "in 2h 5m"
    assert time_left(datetime(2026, 11, 28, 20, 0, 20, tzinfo=UTC), now) == "in 1m"
    assert time_left(now, now) == "now"


@pytest.fixture
async def plane(control_plane: ControlPlane) -> ControlPlane:
    """prod prices in EUR, dev exists too; prod's gateway gw-1 has reported 0.60 EUR of spend this month."""
    admin = control_plane.settings.admin_token_path.read_text().strip()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{control_plane.port}") as channel:
        tokens = Tokens(channel, admin)
        await tokens.environment("prod")
        await tokens.environment("dev")
        config = ParseDict(EUR_PRICING, config_pb.EnvironmentConfig())
        await config_grpc.ConfigServiceStub(channel).PutConfig(
            config_pb.PutConfigRequest(environment_id="prod", config=config), metadata=bearer(admin)
        )
        gateway = await tokens.gateway("prod", "gw-1")
        ack = await report(channel, gateway, [usage_event(cost_micros=600_000, sequence=1)])
        assert ack.accepted_count == 1
    return control_plane


@pytest.fixture
def cli(plane: ControlPlane) -> Cli:
    return Cli(plane, plane.settings.admin_token_path.read_text().strip())


async def _create(cli: Cli, *args: str) -> dict[str, dict[str, object]]:
    result = await cli("budgets", "create", *args, "--json")
    assert result.exit_code == 0, result.output
    created: dict[str, dict[str, object]] = json.loads(result.stdout)
    return created


async def test_create_stores_the_limit_exactly_and_counts_usage_stored_before_the_budget(cli: Cli) -> None:
    created = await _create(
        cli, "--name", "prod spend", "-e", "prod", "--limit", "12.345678", "--alert-at", "1", "--request-id", "r-1"
    )
    budget, status = created["budget"], created["status"]
    assert (budget["limit"], budget["currency"], budget["metric"]) == ("12345678", "EUR", "METRIC_SPEND")
    assert (budget["period"], budget["time_zone"], budget["mode"]) == ("PERIOD_MONTH", "UTC", "MODE_HARD_STOP")
    assert budget["alert_threshold_percents"] == [1]
    assert status["used"] == "600000"
    again = await _create(cli, "--name", "prod spend", "-e", "prod", "--limit", "12.345678", "--request-id", "r-1")
    assert again["budget"]["budget_id"] == budget["budget_id"]

    table = await cli(
        "budgets",
        "create",
        "--name",
        "tokens",
        "--metric",
        "tokens",
        "--limit",
        "1000",
        "--mode",
        "warn-only",
        "--period",
        "week",
        "--time-zone",
        "Europe/Berlin",
        "--tag",
        "team=search",
    )
    assert table.exit_code == 0, table.output
    rows = {row[0]: row[1] for row in table_rows(table.stdout)}
    assert rows["scope"] == "organization, tag team=search"
    assert (rows["metric"], rows["limit"], rows["mode"]) == ("tokens", "1,000 tokens", "warn-only")
    assert rows["period"] == "week (Europe/Berlin)"
    # A calendar week in Berlin: Monday local midnight (CET in winter, CEST in summer) to the next one.
    assert re.fullmatch(r"from \d{4}-\d{2}-\d{2} 00:00 CES?T", rows["window"]), rows["window"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2} 00:00 CES?T \(in \d+d \d+h\)", rows["resets"]), rows["resets"]


async def test_list_shows_bar_money_state_and_reset_and_keeps_its_header_when_piped(cli: Cli) -> None:
    prod = await _create(cli, "--name", "prod spend", "-e", "prod", "--limit", "1", "--alert-at", "50")
    await _create(cli, "--name", "dev requests", "-e", "dev", "--metric", "requests", "--limit", "10")
    listed = await cli("budgets", "list")
    assert listed.exit_code == 0, listed.output
    header, *rows = table_rows(listed.stdout)
    assert header == ["name", "id", "scope", "metric", "period", "mode", "used / limit", "", "state", "resets"]
    by_name = {row[0]: row for row in rows}
    spend = by_name["prod spend"]
    assert spend[1] == prod["budget"]["budget_id"]
    assert spend[2:6] == ["environment prod", "spend", "month (UTC)", "hard-stop"]
    assert spend[6] == "0.60 EUR / 1.00 EUR"
    assert spend[7] == "██████░░░░ 60%"
    assert spend[8] == "warning (50%)"
    assert re.fullmatch(r"\d{4}-\d{2}-01 00:00 UTC \(in (\d+d \d+h|\d+h \d+m|\d+m)\)", spend[9]), spend[9]
    assert by_name["dev requests"][6:9] == ["0 requests / 10 requests", "░░░░░░░░░░ 0%", "ok"]

    only_dev = await cli("budgets", "list", "-e", "dev", "--json")
    assert [item["budget"]["display_name"] for item in json.loads(only_dev.stdout)] == ["dev requests"]


# The command line refuses these before it calls the server: one database engine is enough.
@pytest.mark.parametrize("storage_dialect", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "12.3456789"], "--limit: '12.3456789' has more than 6 decimals"),
        (["--limit", "ten"], "--limit: 'ten' is not an amount"),
        (["--limit", "5", "--tag", "team"], "--tag: 'team' is not KEY=VALUE"),
        (["--limit", "5", "--tag", "=x"], "--tag: '=x' is not KEY=VALUE"),
        (["--limit", "5", "--metric", "dollars"], "--metric: 'dollars' is not one of spend, tokens, requests"),
        (["--limit", "5", "--period", "year"], "--period: 'year' is not one of day, week, month, total"),
        (["--limit", "5", "--mode", "stop"], "--mode: 'stop' is not one of hard-stop, warn-only"),
        (["--limit", "5", "--time-zone", "Mars/Base"], "--time-zone: 'Mars/Base' is not an IANA time zone"),
        (["--limit", "5", "--gateway", "gw-1"], "--gateway: needs --environment"),
    ],
)
async def test_a_bad_create_option_is_a_usage_error_naming_it_and_nothing_is_made(
    cli: Cli, args: list[str], message: str
) -> None:
    result = await cli("budgets", "create", "--name", "x", *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {message}"), result.stderr
    assert json.loads((await cli("budgets", "list", "--json")).stdout) == []


async def test_the_server_refusing_a_budget_is_a_failed_call_with_its_reason(cli: Cli) -> None:
    result = await cli("budgets", "create", "--name", "x", "--limit", "5", "-e", "nowhere")
    assert result.exit_code == 1
    assert "error: NOT_FOUND: budget.scope.environment_id: no environment 'nowhere'" in result.stderr


@pytest.mark.parametrize("command", ["show", "status", "history", "update", "delete"])
async def test_an_unknown_budget_is_not_found_with_exit_1(cli: Cli, command: str) -> None:
    extra = ["--name", "y"] if command == "update" else []
    result = await cli("budgets", command, "bud_nope", *extra)
    assert result.exit_code == 1, result.output
    assert "error: NOT_FOUND: " in result.stderr
    assert "no budget 'bud_nope'" in result.stderr
    assert "?" not in result.stdout  # delete says so before asking anything


async def test_show_and_status_read_the_current_window(cli: Cli) -> None:
    budget_id = (await _create(cli, "--name", "prod spend", "-e", "prod", "--limit", "2"))["budget"]["budget_id"]
    shown = await cli("budgets", "show", str(budget_id))
    assert shown.exit_code == 0, shown.output
    rows = {row[0]: row[1] for row in table_rows(shown.stdout)}
    assert (rows["used / limit"], rows["remaining"], rows["state"]) == ("0.60 EUR / 2.00 EUR", "1.40 EUR", "ok")
    assert rows["alert at"] == "80%, 100%"
    status = await cli("budgets", "status", str(budget_id))
    assert "███░░░░░░░ 30% 0.60 EUR / 2.00 EUR, 1.40 EUR left, ok, resets " in status.stdout
    as_json = json.loads((await cli("budgets", "status", str(budget_id), "--json")).stdout)
    assert (as_json["used"], as_json["remaining"], as_json["state"]) == ("600000", "1400000", "BUDGET_STATE_OK")


async def test_update_changes_only_what_is_given_and_is_guarded_by_the_revision(cli: Cli) -> None:
    budget_id = str((await _create(cli, "--name", "prod spend", "-e", "prod", "--limit", "2"))["budget"]["budget_id"])
    updated = await cli("budgets", "update", budget_id, "--limit", "0.5", "--revision", "1", "--json")
    assert updated.exit_code == 0, updated.output
    body = json.loads(updated.stdout)
    assert (body["limit"], body["revision"], body["display_name"], body["mode"]) == (
        "500000",
        "2",
        "prod spend",
        "MODE_HARD_STOP",
    )
    stale = await cli("budgets", "update", budget_id, "--mode", "warn-only", "--revision", "1")
    assert stale.exit_code == 1
    assert "error: ABORTED: budget.revision: " in stale.stderr
    assert "is at revision 2, not 1" in stale.stderr
    renamed = await cli("budgets", "update", budget_id, "--name", "prod cap", "--alert-at", "50", "--alert-at", "90")
    assert renamed.exit_code == 0, renamed.output
    assert "updated budget" in renamed.stdout
    assert "to revision 3" in renamed.stdout
    rows = {row[0]: row[1] for row in table_rows(renamed.stdout)}
    assert (rows["limit"], rows["alert at"], rows["state"]) == ("0.50 EUR", "50%, 90%", "exceeded")
    nothing = await cli("budgets", "update", budget_id)
    assert nothing.exit_code == 2
    assert "nothing to update" in nothing.stderr
    bad = await cli("budgets", "update", budget_id, "--limit", "0.0000001")
    assert bad.exit_code == 2
    assert "--limit: '0.0000001' has more than 6 decimals" in bad.stderr


async def test_delete_asks_after_finding_the_budget_and_yes_skips_the_question(cli: Cli) -> None:
    budget_id = str((await _create(cli, "--name", "prod spend", "-e", "prod", "--limit", "2"))["budget"]["budget_id"])
    declined = await cli("budgets", "delete", budget_id, stdin="n\n")
    assert declined.exit_code == 1
    assert f"delete budget 'prod spend' ({budget_id}, environment prod, 0.60 EUR / 2.00 EUR used)?" in declined.output
    assert "not confirmed: nothing deleted" in declined.stderr
    assert (await cli("budgets", "show", budget_id)).exit_code == 0
    deleted = await cli("budgets", "delete", budget_id, "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert f"deleted budget {budget_id}" in deleted.stdout
    assert (await cli("budgets", "show", budget_id)).exit_code == 1


async def test_history_lists_windows_newest_first_in_the_budgets_zone(cli: Cli) -> None:
    created = await _create(
        cli, "--name", "prod daily", "-e", "prod", "--limit", "1", "--period", "day", "--time-zone", "Asia/Tokyo"
    )
    budget_id = str(created["budget"]["budget_id"])
    listed = await cli("budgets", "history", budget_id)
    assert listed.exit_code == 0, listed.output
    header, *rows = table_rows(listed.stdout)
    assert header == ["window start", "window end", "used / limit", "", "state"]
    (window,) = rows
    assert window[0].endswith("00:00 JST")
    assert window[1].endswith("00:00 JST")
    assert window[2:] == ["0.60 EUR / 1.00 EUR", "██████░░░░ 60%", "ok"]
    as_json = json.loads((await cli("budgets", "history", budget_id, "--json")).stdout)
    assert [w["used"] for w in as_json] == ["600000"]


async def test_alerts_list_newest_first_in_the_budgets_unit(cli: Cli) -> None:
    first = await _create(
        cli, "--name", "prod spend", "-e", "prod", "--limit", "1", "--alert-at", "25", "--alert-at", "50"
    )
    await _create(cli, "--name", "dev spend", "-e", "dev", "--limit", "1")
    listed = await cli("budgets", "alerts")
    assert listed.exit_code == 0, listed.output
    header, *rows = table_rows(listed.stdout)
    assert header[:7] == ["raised (UTC)", "budget", "id", "environment", "threshold", "used / limit", "mode"]
    assert [(row[1], row[4], row[5]) for row in rows] == [
        ("prod spend", "50%", "0.60 EUR / 1.00 EUR"),
        ("prod spend", "25%", "0.60 EUR / 1.00 EUR"),
    ]
    assert re.fullmatch(r"\d{4}-\d{2}-01 00:00 UTC", rows[0][7]), rows[0][7]  # the month it was raised in
    as_json = json.loads(
        (await cli("budgets", "alerts", "--budget", str(first["budget"]["budget_id"]), "--json")).stdout
    )
    assert [alert["threshold_percent"] for alert in as_json] == [50, 25]
    assert json.loads((await cli("budgets", "alerts", "-e", "dev", "--json")).stdout) == []


@pytest.mark.system  # a real `meterwire` process, stopped with SIGINT as Ctrl-C would
async def test_alerts_watch_prints_one_line_per_new_alert_when_piped(plane: ControlPlane, cli: Cli) -> None:
    await _create(cli, "--name", "old", "-e", "prod", "--limit", "1", "--alert-at", "50")
    admin = plane.settings.admin_token_path.read_text().strip()
    watch = await asyncio.create_subprocess_exec(
        *MW_COMMAND,
        "budgets",
        "alerts",
        "--watch",
        "--address",
        f"127.0.0.1:{plane.port}",
        "--token",
        admin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "80"},
    )
    try:
        assert watch.stdout is not None
        assert watch.stderr is not None
        old = (await asyncio.wait_for(watch.stdout.readline(), 30)).decode()
        assert "'old' (prod) crossed 50%: 0.60 EUR / 1.00 EUR (hard-stop)" in old
        ready = (await asyncio.wait_for(watch.stderr.readline(), 30)).decode()
        assert ready.startswith("watching for new alerts")
        await _create(cli, "--name", "new", "-e", "prod", "--limit", "1", "--alert-at", "40", "--mode", "warn-only")
        new = (await asyncio.wait_for(watch.stdout.readline(), 30)).decode()
        assert "'new' (prod) crossed 40%: 0.60 EUR / 1.00 EUR (warn-only)" in new
    finally:
        watch.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(watch.wait(), 30)
    assert code == 0


async def test_webhooks_create_shows_the_secret_once_list_shows_delivery_and_delete_asks(
    cli: Cli, tmp_path: Path
) -> None:
    receiver = Receiver()
    try:
        receiver.status = 503
        created = await cli("webhooks", "create", "--url", receiver.url, "-e", "prod", "--request-id", "hook-1")
        assert created.exit_code == 0, created.output
        assert created.stdout.strip().startswith("mwhsec_")
        assert len(created.stdout.splitlines()) == 1
        assert "signing secret (shown only now" in created.stderr
        webhook_id = created.stderr.split("created webhook ", 1)[1].split(";", 1)[0]
        again = await cli("webhooks", "create", "--url", receiver.url, "-e", "prod", "--request-id", "hook-1")
        assert again.exit_code == 0
        assert f"webhook {webhook_id} already exists" in again.stdout
        assert "mwhsec_" not in again.output
        secret_file = tmp_path / "hook.secret"
        saved = await cli("webhooks", "create", "--url", receiver.url, "--secret-file", str(secret_file))
        assert saved.exit_code == 0, saved.output
        assert "mwhsec_" not in saved.output
        assert secret_file.read_text().startswith("mwhsec_")
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        refused = await cli("webhooks", "create", "--url", receiver.url, "--secret-file", str(secret_file))
        assert refused.exit_code == 2
        assert "exists" in refused.stderr
        bad_url = await cli("webhooks", "create", "--url", "http://example.com/hook")
        assert bad_url.exit_code == 1
        assert "INVALID_ARGUMENT: webhook.url" in bad_url.stderr

        await _create(cli, "--name", "prod spend", "-e", "prod", "--limit", "1", "--alert-at", "50")

        async def failing() -> bool:
            hooks = json.loads((await cli("webhooks", "list", "-e", "prod", "--json")).stdout)
            mine = [hook for hook in hooks if hook["webhook_id"] == webhook_id]
            return bool(mine) and mine[0].get("last_error") == "HTTP 503"

        await asyncio.wait_for(wait_until(failing), 30)
        listed = await cli("webhooks", "list", "-e", "prod")
        header, *rows = table_rows(listed.stdout)
        assert header == [
            "webhook",
            "url",
            "environment",
            "budget",
            "delivery",
            "pending",
            "last error",
            "last attempt",
            "last success",
        ]
        # The organization-wide webhook (made with --secret-file) gets prod's alerts too, so it is listed for prod.
        assert len(rows) == 2
        (mine,) = [row for row in rows if row[0] == webhook_id]
        assert mine[:7] == [webhook_id, receiver.url, "prod", "(all)", "failing", "1", "HTTP 503"]
        assert mine[7].endswith("Z")
        assert mine[8] == "-"

        unknown = await cli("webhooks", "delete", "whk_nope")
        assert unknown.exit_code == 1
        assert "NOT_FOUND: webhook_id: no webhook 'whk_nope'" in unknown.stderr
        declined = await cli("webhooks", "delete", webhook_id, stdin="n\n")
        assert declined.exit_code == 1
        assert f"delete webhook {webhook_id} ({receiver.url}, 1 alerts not delivered yet)?" in declined.output
        deleted = await cli("webhooks", "delete", webhook_id, "--yes")
        assert deleted.exit_code == 0
        assert f"deleted webhook {webhook_id}" in deleted.stdout
        remaining = json.loads((await cli("webhooks", "list", "--json")).stdout)
        assert webhook_id not in [hook["webhook_id"] for hook in remaining]
    finally:
        receiver.close()


async def test_usage_summary_shows_the_budgets_that_apply_to_its_filter(cli: Cli) -> None:
    await _create(cli, "--name", "prod spend", "-e", "prod", "--limit", "1")
    await _create(cli, "--name", "org requests", "--metric", "requests", "--limit", "100")
    await _create(cli, "--name", "dev spend", "-e", "dev", "--limit", "1")
    prod = await cli("usage", "summary", "--range", "1h", "-e", "prod")
    assert prod.exit_code == 0, prod.output
    assert "Budgets" in prod.stdout
    budgets = {row[0]: row for row in table_rows(prod.stdout.split("Budgets", 1)[1])[1:]}
    assert set(budgets) == {"prod spend", "org requests"}
    assert budgets["prod spend"][2:5] == ["0.60 EUR / 1.00 EUR", "██████░░░░ 60%", "ok"]
    assert budgets["org requests"][2] == "1 requests / 100 requests"
    everything = await cli("usage", "summary", "--range", "1h")
    names = {row[0] for row in table_rows(everything.stdout.split("Budgets", 1)[1])[1:]}
    assert names == {"prod spend", "org requests", "dev spend"}
    as_json = json.loads((await cli("usage", "summary", "--range", "1h", "-e", "prod", "--json")).stdout)
    assert as_json["cost_micros"] == "600000"
