"""Cost and cache-savings derivation, by hand-computed values, in the pricing function and through ingest."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from meterwire.config.v1 import config_service_pb2 as config_pb
from meterwire.config.v1 import config_service_pb2_grpc as config_grpc
from services.config.hub import ConfigHub
from services.config.store import StoredConfig
from services.pricing import EventCost, PriceBook, PriceBooks, price_tokens
from services.server import ControlPlane
from services.settings import ServerSettings, ServiceName
from services.storage import tables
from tests.clients import Tokens, bearer

from .events import report, rollup_sums, usage_event


@pytest.fixture
async def control_plane(migrated_database_url: str, tmp_path: Path, ingest_workers: int) -> AsyncIterator[ControlPlane]:
    # Config too: a pricing table put through it prices the very next batch (one config hub per process).
    settings = ServerSettings(
        ingest_workers=ingest_workers,
        listen="127.0.0.1:0",
        data_dir=tmp_path / "var",
        database_url=migrated_database_url,
        services=frozenset({ServiceName.TELEMETRY, ServiceName.CONFIG, ServiceName.ADMIN}),
        drain_delay=timedelta(0),
        shutdown_grace=timedelta(seconds=1),
    )
    async with ControlPlane(settings) as plane:
        yield plane


GPT = config_pb.ModelPrice(
    model="gpt-4o",
    input_micros_per_million=2_500_000,  # 2.50 per million
    output_micros_per_million=10_000_000,
    cache_read_micros_per_million=1_250_000,
    category_micros_per_million={"audio_input": 40_000_000, "mystery": 1},
)


def _price(price: config_pb.ModelPrice, *, categories: dict[str, int] | None = None, **counts: int) -> EventCost | None:
    return price_tokens(
        input_tokens=counts.get("input"),
        output_tokens=counts.get("output"),
        cache_read_tokens=counts.get("cache_read"),
        cache_write_tokens=counts.get("cache_write"),
        reasoning_tokens=counts.get("reasoning"),
        categories=categories or {},
        price=price,
    )


def test_cost_and_cache_savings_match_hand_computed_values() -> None:
    # 1000 x 2.50 + 500 x 10.00 + 2000 x 1.25 (per million) = 2500 + 5000 + 2500 micros.
    assert _price(GPT, input=1_000, output=500, cache_read=2_000) == EventCost(10_000, 2_500)


def test_unset_cache_and_reasoning_prices_fall_back_to_input_and_output() -> None:
    plain = config_pb.ModelPrice(model="m", input_micros_per_million=1_000_000, output_micros_per_million=4_000_000)
    # cache read and write at the input price (no savings), reasoning at the output price.
    cost = _price(plain, input=10, output=20, cache_read=30, cache_write=40, reasoning=50)
    assert cost == EventCost(10 + 80 + 30 + 40 + 200, 0)


@pytest.mark.parametrize(
    ("input_price", "output_price", "tokens", "cost_micros"),
    [
        (3, 0, {"input": 166_666}, 0),  # 0.499998 rounds down
        (3, 0, {"input": 166_667}, 1),  # 0.500001 rounds up
        (1, 0, {"input": 500_000}, 1),  # exactly half rounds up
        (1, 0, {"input": 1_500_000}, 2),  # 1.5 rounds up
        # Rounded once over the sum: 0.4 + 0.4 = 0.8 -> 1, where rounding per kind would give 0.
        (400_000, 400_000, {"input": 1, "output": 1}, 1),
    ],
)
def test_micros_are_rounded_half_up_once_per_event(
    input_price: int, output_price: int, tokens: dict[str, int], cost_micros: int
) -> None:
    price = config_pb.ModelPrice(input_micros_per_million=input_price, output_micros_per_million=output_price)
    derived = _price(price, input=tokens.get("input", 0), output=tokens.get("output", 0))
    assert derived is not None
    assert derived.cost_micros == cost_micros


def test_category_tokens_are_priced_at_their_category_price_within_their_kind() -> None:
    # 200 of the 1000 input tokens are audio: 800 x 2.50 + 200 x 40.00 = 2000 + 8000.
    assert _price(GPT, input=1_000, categories={"audio_input": 200}) == EventCost(10_000, 0)
    # An unpriced category stays at its kind's price.
    assert _price(GPT, input=1_000, categories={"image_input": 200}) == EventCost(2_500, 0)


def test_tokens_that_cannot_be_priced_exactly_leave_the_cost_unknown() -> None:
    assert _price(GPT) is None  # nothing reported
    assert _price(GPT, input=10, categories={"mystery": 5}) is None  # priced, but in which kind?
    assert _price(GPT, input=10, categories={"audio_input": 11}) is None  # more audio than input


def test_prices_are_looked_up_by_provider_then_for_any_provider() -> None:
    specific = config_pb.ModelPrice(model="llama", provider="bedrock", input_micros_per_million=2)
    anywhere = config_pb.ModelPrice(model="llama", input_micros_per_million=1)
    book = PriceBook(config_pb.PricingTable(currency="USD", models=[anywhere, specific]))
    assert book.lookup("llama", "bedrock") == specific
    assert book.lookup("llama", "together") == anywhere
    assert book.lookup("unknown", "bedrock") is None
    assert book.lookup("", "") is None
    assert book.currency == "USD"


async def test_ingest_derives_missing_costs_keeps_reported_ones_and_leaves_unpriced_models_unknown(
    channel: grpc.aio.Channel, control_plane: ControlPlane, tokens: Tokens
) -> None:
    await tokens.environment("prod")
    secret = await tokens.gateway("prod", "gw-1")
    bedrock = config_pb.ModelPrice(
        model="gpt-4o", provider="bedrock", input_micros_per_million=3_000_000, output_micros_per_million=0
    )
    pricing = config_pb.PricingTable(currency="USD", models=[GPT, bedrock])
    await config_grpc.ConfigServiceStub(channel).PutConfig(
        config_pb.PutConfigRequest(environment_id="prod", config=config_pb.EnvironmentConfig(pricing=pricing)),
        metadata=bearer(tokens.admin),
    )
    derived = usage_event(resolved_model="gpt-4o", provider="openai")
    derived.tokens.input, derived.tokens.output, derived.tokens.cache_read = 1_000, 500, 2_000
    reported = usage_event(resolved_model="gpt-4o", provider="openai", cost_micros=123)
    reported.tokens.input = 1_000
    at_bedrock = usage_event(resolved_model="gpt-4o", provider="bedrock")
    at_bedrock.tokens.input = 1_001  # 3003 micros at bedrock's own price
    unknown = usage_event(resolved_model="no-such-model", provider="openai")
    unknown.tokens.input = 1_000

    ack = await report(channel, secret, [derived, reported, at_bedrock, unknown])

    assert ack.accepted_count == 4
    events = tables.usage_events
    async with control_plane.engine.connect() as connection:
        rows = await connection.execute(
            select(events.c.event_id, events.c.cost_micros, events.c.cache_savings_micros, events.c.cost_source)
        )
        stored = {row.event_id: (row.cost_micros, row.cache_savings_micros, row.cost_source) for row in rows}
    assert stored == {
        derived.event_id: (10_000, 2_500, 2),  # derived
        reported.event_id: (123, 0, 1),  # reported cost kept; savings derived (no cache reads)
        at_bedrock.event_id: (3_003, 0, 2),
        unknown.event_id: (None, None, 0),  # unknown, never 0
    }
    sums = await rollup_sums(control_plane.engine)
    assert (sums["cost_micros"], sums["cache_savings_micros"]) == (10_000 + 123 + 3_003, 2_500)
    assert (sums["cost_derived_count"], sums["cost_unknown_count"]) == (2, 1)


def _stored(environment_id: str, version: int, currency: str = "", *models: config_pb.ModelPrice) -> StoredConfig:
    config = config_pb.EnvironmentConfig()
    if currency or models:
        config.pricing.CopyFrom(config_pb.PricingTable(currency=currency, models=models))
    return StoredConfig(environment_id, version, config, "", "", "test", datetime.now(UTC))


async def test_price_books_follow_the_config_hubs_latest_version_and_parse_each_once(engine: AsyncEngine) -> None:
    hub = ConfigHub(engine, ServerSettings())  # published to directly, as the Config service does
    prices = PriceBooks(hub)
    assert prices.get("prod").book.lookup("gpt-4o", "openai") is None
    assert prices.get("prod").serialized == b""

    hub.publish(_stored("prod", 1, "USD", GPT))
    first = prices.get("prod")
    assert first.book.lookup("gpt-4o", "openai") == GPT
    assert config_pb.PricingTable.FromString(first.serialized).models[0] == GPT
    assert prices.get("prod") is first  # parsed once per version

    hub.publish(_stored("prod", 2))  # a version without pricing unprices the environment
    assert prices.get("prod").book.lookup("gpt-4o", "openai") is None


async def test_the_currency_is_the_one_the_environments_share(engine: AsyncEngine) -> None:
    hub = ConfigHub(engine, ServerSettings())
    prices = PriceBooks(hub)
    hub.publish(_stored("a", 1, "USD", GPT))
    hub.publish(_stored("b", 1, "USD", GPT))
    hub.publish(_stored("c", 1, "EUR", GPT))
    assert prices.currency(["a", "b", "unconfigured"]) == "USD"
    assert prices.currency(["a", "c"]) == ""
    assert prices.currency(["unconfigured"]) == ""
