"""Reports show the pricing currency of the environments in scope, from the config versions the server holds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from meterwire.config.v1 import config_service_pb2 as config_pb
from meterwire.config.v1 import config_service_pb2_grpc as config_grpc
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from services.server import ControlPlane
from services.settings import ServiceName
from tests.clients import Tokens, bearer
from tests.reporting.settings import reporting_settings
from tests.reporting.test_oracle import usage_filter
from tests.telemetry.events import report, usage_event


@pytest.fixture
async def control_plane(migrated_database_url: str, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    services = frozenset({ServiceName.TELEMETRY, ServiceName.REPORTING, ServiceName.CONFIG, ServiceName.ADMIN})
    async with ControlPlane(reporting_settings(migrated_database_url, tmp_path / "var", services=services)) as plane:
        yield plane


async def _put_pricing(channel: grpc.aio.Channel, admin: str, environment_id: str, currency: str) -> None:
    price = config_pb.ModelPrice(model="gpt-4o", input_micros_per_million=1, output_micros_per_million=1)
    config = config_pb.EnvironmentConfig(pricing=config_pb.PricingTable(currency=currency, models=[price]))
    await config_grpc.ConfigServiceStub(channel).PutConfig(
        config_pb.PutConfigRequest(environment_id=environment_id, config=config), metadata=bearer(admin)
    )


async def test_summaries_and_breakdowns_show_the_currency_the_environments_share(
    channel: grpc.aio.Channel, tokens: Tokens
) -> None:
    for environment_id in ("alpha", "beta", "gamma"):
        await tokens.environment(environment_id)
    for environment_id in ("alpha", "gamma"):
        await report(channel, await tokens.gateway(environment_id, "gw-1"), [usage_event()])
    await _put_pricing(channel, tokens.admin, "alpha", "EUR")
    await _put_pricing(channel, tokens.admin, "beta", "EUR")
    reporting: pb_grpc.ReportingServiceAsyncStub = pb_grpc.ReportingServiceStub(channel)
    now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
    day_us = int(timedelta(days=1).total_seconds() * 1_000_000)

    async def currency(*environment_ids: str) -> str:
        usage = usage_filter(now_us - day_us, now_us, environment_ids=list(environment_ids))
        summary = await reporting.GetUsageSummary(
            pb.GetUsageSummaryRequest(filter=usage), metadata=bearer(tokens.admin)
        )
        breakdown = await reporting.GetUsageBreakdown(
            pb.GetUsageBreakdownRequest(filter=usage, group_by=[pb.GroupBy(dimension=pb.DIMENSION_ENVIRONMENT)]),
            metadata=bearer(tokens.admin),
        )
        # One event in each environment with usage, one breakdown row each.
        assert summary.summary.attempts == len(breakdown.rows) == len({"alpha", "gamma"} & set(environment_ids))
        assert {row.summary.currency for row in breakdown.rows} <= {summary.summary.currency}
        return summary.summary.currency

    assert await currency("alpha", "beta") == "EUR"
    assert await currency("alpha", "gamma") == "EUR"  # gamma has no prices
    await _put_pricing(channel, tokens.admin, "gamma", "USD")
    assert await currency("alpha", "gamma") == ""  # two currencies: none can be shown
    assert await currency("gamma") == "USD"
