"""`meterwire usage …`: time-range shortcuts in a time zone, the terminal charts, and the commands against a live
control plane (money in its currency, unknown tokens, the errors a new user meets)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.json_format import ParseDict
from openpyxl import load_workbook

from meterwire.common.v1 import usage_pb2
from meterwire.config.v1 import config_service_pb2 as config_pb
from meterwire.config.v1 import config_service_pb2_grpc as config_grpc
from meterwire.telemetry.v1 import telemetry_service_pb2 as telemetry_pb
from meterwire.telemetry.v1 import telemetry_service_pb2_grpc as telemetry_grpc
from services.cli.charts import bar, sparkline
from services.cli.usage.filters import FLAGS
from services.server import ControlPlane
from services.settings import ServiceName
from services.usage_terms.query import DIMENSION_NAMES, METRIC_NAMES, QueryError, time_range
from services.usage_terms.records import EVENT_COLUMNS, grouped_columns
from tests.clients import Tokens, bearer
from tests.heartbeat.helpers import Cli
from tests.reporting.settings import reporting_settings

NOW = datetime(2026, 11, 23, 3, 30, tzinfo=UTC)


def test_today_starts_at_local_midnight() -> None:
    start, end = time_range("today", None, None, "America/New_York", NOW)
    assert (start, end) == (datetime(2026, 11, 22, 5, 0, tzinfo=UTC), NOW)  # 22 Nov 00:00 EST


def test_shortcuts_count_back_from_the_end() -> None:
    assert time_range("7d", None, None, "UTC", NOW) == (NOW - timedelta(days=7), NOW)
    assert time_range("1h", None, "2026-11-20T12:00", "Asia/Kolkata", NOW) == (
        datetime(2026, 11, 20, 5, 30, tzinfo=UTC),
        datetime(2026, 11, 20, 6, 30, tzinfo=UTC),
    )


def test_custom_range_is_read_in_the_time_zone_unless_it_has_an_offset() -> None:
    start, end = time_range("today", "2026-11-01", "2026-11-02T00:00+00:00", "Asia/Kolkata", NOW)
    assert (start, end) == (datetime(2026, 10, 31, 18, 30, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC))


def test_an_unknown_shortcut_is_an_error_naming_the_range() -> None:
    with pytest.raises(QueryError) as caught:
        time_range("fortnight", None, None, "UTC", NOW)
    assert caught.value.worded(FLAGS) == "--range: 'fortnight' is not one of 1h, today, 3d, 7d, 30d"


def test_charts_scale_to_their_data() -> None:
    assert sparkline([0, 7, 14]) == "▁▅█"
    assert sparkline([5, 5]) == "▁▁"
    assert bar(50, 100, 4) == "██"
    assert bar(0, 100, 4) == ""


PRICED_CONFIG = {
    "pricing": {
        "currency": "EUR",
        "models": [{"model": "gpt-4o", "input_micros_per_million": 2_500_000, "output_micros_per_million": 10_000_000}],
    }
}


def table_rows(output: str) -> list[list[str]]:
    """The cells of a printed table, row by row (header first when it has one)."""
    lines = [line.replace("┃", "│") for line in output.splitlines()]
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines if "│" in line]


def _event(request_id: str, model: str, moment: datetime, **fields: Any) -> usage_pb2.UsageEvent:
    event = usage_pb2.UsageEvent(
        event_id=str(uuid.uuid4()),
        request_id=request_id,
        attempt=1,
        requested_model=model,
        resolved_model=model,
        provider="openai",
        **fields,
    )
    event.event_time.FromDatetime(moment)
    return event


@pytest.fixture
async def priced_plane(migrated_database_url: str, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """Reporting with Config beside it: prod prices in EUR, one priced request and one that reported nothing."""
    settings = reporting_settings(migrated_database_url, tmp_path / "var", services=frozenset(ServiceName))
    async with ControlPlane(settings) as plane:
        admin = plane.settings.admin_token_path.read_text().strip()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
            tokens = Tokens(channel, admin)
            await tokens.environment("prod")
            gateway = await tokens.gateway("prod", "gw-1")
            config = ParseDict(PRICED_CONFIG, config_pb.EnvironmentConfig())
            await config_grpc.ConfigServiceStub(channel).PutConfig(
                config_pb.PutConfigRequest(environment_id="prod", config=config), metadata=bearer(admin)
            )
            now = datetime.now(UTC) - timedelta(minutes=1)
            priced = _event(
                "req-priced",
                "gpt-4o",
                now,
                status_code=200,
                cost_micros=1_234_500,
                tokens=usage_pb2.TokenCounts(input=1000, output=500),
            )
            silent = _event("req-silent", "mystery", now, status_code=500, error_type="upstream_error")
            request = telemetry_pb.ReportUsageRequest(batch_sequence=1, events=[priced, silent])
            response = await telemetry_grpc.TelemetryServiceStub(channel).ReportUsage(request, metadata=bearer(gateway))
            assert response.ack.accepted_count == 2, response.ack
        yield plane


async def test_money_reads_in_its_currency_in_every_usage_table_and_stays_micros_in_json(
    priced_plane: ControlPlane,
) -> None:
    cli = Cli(priced_plane, priced_plane.settings.admin_token_path.read_text().strip())
    summary = await cli("usage", "summary", "--range", "1h", "-e", "prod")
    top = await cli("usage", "top", "--by", "model", "--metric", "cost", "--range", "1h")
    series = await cli("usage", "series", "--metric", "cost", "--granularity", "1h", "--range", "1h")
    listed = await cli("usage", "requests", "--range", "1h")
    one = await cli("usage", "request", "req-priced", "-e", "prod")
    as_json = json.loads((await cli("usage", "requests", "--range", "1h", "--json")).output)

    for result in (summary, top, series, listed, one):
        assert result.exit_code == 0, result.output
        assert "1.2345 EUR" in result.output, result.output
        assert "1,234,500" not in result.output
        assert "1234500" not in result.output
    assert {r["request_id"]: r.get("cost_micros") for r in as_json} == {"req-priced": "1234500", "req-silent": None}


async def test_tokens_nobody_reported_read_as_unknown_not_zero(priced_plane: ControlPlane) -> None:
    cli = Cli(priced_plane, priced_plane.settings.admin_token_path.read_text().strip())
    summary = await cli("usage", "summary", "--range", "1h", "--model", "mystery")
    top = await cli("usage", "top", "--by", "model", "--metric", "input-tokens", "--range", "1h")
    silent = await cli("usage", "request", "req-silent", "-e", "prod")
    priced = await cli("usage", "request", "req-priced", "-e", "prod")

    figures = {row[0]: row[1] for row in table_rows(summary.output)}
    assert (figures["tokens in / out"], figures["reasoning / total"], figures["spend"]) == ("- / -", "- / -", "-")
    ranked = {row[0]: row[1] for row in table_rows(top.output)[1:]}
    assert (ranked["mystery"], ranked["gpt-4o"]) == ("-", "1,000"), top.output
    (silent_attempt,) = table_rows(silent.output)[1:]
    (priced_attempt,) = table_rows(priced.output)[1:]
    assert (silent_attempt[6], silent_attempt[7]) == ("-/-", "-")
    assert (priced_attempt[6], priced_attempt[7]) == ("1,000/500", "1.2345 EUR")


async def test_usage_request_without_its_environment_says_what_is_missing(priced_plane: ControlPlane) -> None:
    cli = Cli(priced_plane, priced_plane.settings.admin_token_path.read_text().strip())
    missing = await cli("usage", "request", "req-priced")
    assert missing.exit_code == 2
    assert "--environment / -e: missing" in missing.output
    assert "meterwire usage request req-priced -e prod" in missing.output


async def test_group_and_metric_names_are_the_same_in_help_and_in_errors(priced_plane: ControlPlane) -> None:
    cli = Cli(priced_plane, priced_plane.settings.admin_token_path.read_text().strip())
    wrong = await cli("usage", "top", "--by", "colour")
    assert wrong.exit_code == 2
    named = wrong.output.split("is not one of ", 1)[1].strip().split(", ")
    assert named == DIMENSION_NAMES.split(", ")
    for command in (["top"], ["series"], ["export"]):
        shown = await cli("usage", *command, "--help")
        words = " ".join(shown.output.replace("│", " ").split())
        assert DIMENSION_NAMES in words, (command, words)
    wrong_metric = await cli("usage", "top", "--by", "model", "--metric", "speed")
    assert wrong_metric.exit_code == 2
    assert wrong_metric.output.split("is not one of ", 1)[1].strip() == METRIC_NAMES
    for command in (["top"], ["series"]):
        shown = await cli("usage", *command, "--help")
        assert METRIC_NAMES in " ".join(shown.output.replace("│", " ").split()), command
    for name in ("model", "key", "env", "api-key", "tag:team"):
        grouped = await cli("usage", "top", "--by", name, "--range", "1h")
        assert grouped.exit_code == 0, grouped.output


async def test_an_export_of_an_empty_range_still_has_its_header(priced_plane: ControlPlane, tmp_path: Path) -> None:
    cli = Cli(priced_plane, priced_plane.settings.admin_token_path.read_text().strip())
    empty = ["--from", "2020-01-01T00:00:00+00:00", "--to", "2020-01-02T00:00:00+00:00"]

    raw_csv, raw_xlsx, raw_jsonl, grouped_csv = (
        tmp_path / name for name in ("raw.csv", "raw.xlsx", "raw.jsonl", "grouped.csv")
    )

    results = [
        await cli("usage", "export", "-o", str(raw_csv), "--format", "csv", *empty),
        await cli("usage", "export", "-o", str(raw_xlsx), "--format", "xlsx", *empty),
        await cli("usage", "export", "-o", str(raw_jsonl), "--format", "jsonl", *empty),
        await cli("usage", "export", "-o", str(grouped_csv), "--by", "model", "--granularity", "1h", *empty),
    ]

    for result in results:
        assert result.exit_code == 0, result.output
        assert "wrote 0 rows" in result.output, result.output
    assert raw_csv.read_text().splitlines() == [",".join(EVENT_COLUMNS)]
    sheet = load_workbook(raw_xlsx, read_only=True)["usage"]
    assert [list(row) for row in sheet.iter_rows(values_only=True)] == [list(EVENT_COLUMNS)]
    assert raw_jsonl.read_text() == ""
    assert grouped_csv.read_text().splitlines() == [",".join(grouped_columns(["model"]))]
