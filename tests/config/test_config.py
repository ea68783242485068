"""Versioned environment config: validation naming fields, monotonic versions, and the push to agents."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from meterwire.config.v1 import config_service_pb2 as pb
from meterwire.config.v1 import config_service_pb2_grpc as pb_grpc
from meterwire.heartbeat.v1 import heartbeat_service_pb2 as hb_pb
from services.server import ControlPlane
from tests.clients import Tokens, bearer
from tests.heartbeat.helpers import GatewayStream


def priced_config(*aliases: str, interval_s: int = 0) -> pb.EnvironmentConfig:
    config = pb.EnvironmentConfig(
        pricing=pb.PricingTable(
            currency="USD",
            models=[
                pb.ModelPrice(model="gpt-4o", input_micros_per_million=2_500_000, output_micros_per_million=10_000_000)
            ],
        ),
        aliases=[
            pb.ModelAlias(alias=name, targets=[pb.RouteTarget(model="gpt-4o", provider="openai")]) for name in aliases
        ],
    )
    if interval_s:
        config.agent.heartbeat_interval.CopyFrom(Duration(seconds=interval_s))
    return config


async def _put(
    channel: grpc.aio.Channel, secret: str, config: pb.EnvironmentConfig, **fields: object
) -> pb.PutConfigResponse:
    request = pb.PutConfigRequest(environment_id="prod", config=config, **fields)  # type: ignore[arg-type]
    response: pb.PutConfigResponse = await pb_grpc.ConfigServiceStub(channel).PutConfig(
        request, metadata=bearer(secret)
    )
    return response


async def _refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call  # type: ignore[misc]
    return failure.value


async def test_put_stores_monotonic_versions_and_identical_content_creates_none(
    channel: grpc.aio.Channel, tokens: Tokens
) -> None:
    await tokens.environment("prod")

    first = await _put(channel, tokens.admin, priced_config("fast"), description="first")
    again = await _put(channel, tokens.admin, priced_config("fast"), description="same content")
    second = await _put(channel, tokens.admin, priced_config("fast", "smart"))

    assert (first.created, first.config_version.version) == (True, 1)
    assert (again.created, again.config_version.version, again.config_version.description) == (False, 1, "first")
    assert (second.created, second.config_version.version) == (True, 2)
    assert len(first.config_version.content_sha256) == 64
    stub = pb_grpc.ConfigServiceStub(channel)
    current = await stub.GetConfig(pb.GetConfigRequest(environment_id="prod"), metadata=bearer(tokens.admin))
    old = await stub.GetConfig(pb.GetConfigRequest(environment_id="prod", version=1), metadata=bearer(tokens.admin))
    assert [a.alias for a in current.config_version.config.aliases] == ["fast", "smart"]
    assert [a.alias for a in old.config_version.config.aliases] == ["fast"]


# validate_config refuses these before any storage is read: one database engine is enough.
@pytest.mark.parametrize("storage_dialect", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            pb.EnvironmentConfig(
                pricing=priced_config().pricing,
                aliases=[
                    pb.ModelAlias(alias="fast", targets=[pb.RouteTarget(model="gpt-4o")]),
                    pb.ModelAlias(alias="smart", targets=[pb.RouteTarget(model="gpt-x", provider="openai")]),
                ],
            ),
            "config.aliases[1].targets[0].model: 'gpt-x' has no price in config.pricing",
        ),
        (
            pb.EnvironmentConfig(
                pricing=pb.PricingTable(currency="USD", models=[pb.ModelPrice(model="m", input_micros_per_million=-1)])
            ),
            "config.pricing.models[0].input_micros_per_million: must not be negative",
        ),
        (
            pb.EnvironmentConfig(pricing=pb.PricingTable(models=[pb.ModelPrice(model="m")])),
            "config.pricing.currency: is required when there are prices",
        ),
        (priced_config("fast", "fast"), "config.aliases[1].alias: 'fast' is already defined at config.aliases[0]"),
        (
            pb.EnvironmentConfig(agent=pb.AgentSettings(heartbeat_interval=Duration(nanos=5))),
            "config.agent.heartbeat_interval: must be between 1 s and 5 min",
        ),
        (
            pb.EnvironmentConfig(agent=pb.AgentSettings(heartbeat_interval=Duration(seconds=10**15))),
            "config.agent.heartbeat_interval: must be between 1 s and 5 min",
        ),
        (
            pb.EnvironmentConfig(agent=pb.AgentSettings(heartbeat_interval=Duration(seconds=-(10**15)))),
            "config.agent.heartbeat_interval: must be between 1 s and 5 min",
        ),
        (
            pb.EnvironmentConfig(agent=pb.AgentSettings(batch_linger=Duration(seconds=1, nanos=-1))),
            "config.agent.batch_linger: is not a valid Duration",
        ),
        (
            pb.EnvironmentConfig(agent=pb.AgentSettings(batch_linger=Duration(seconds=10**15))),
            "config.agent.batch_linger: must be between 0 s and 10 s",
        ),
        (
            pb.EnvironmentConfig(agent=pb.AgentSettings(max_batch_events=1_000_000)),
            "config.agent.max_batch_events: 1000000 is above the server's limit",
        ),
        (
            pb.EnvironmentConfig(disabled_api_key_ids=["key 1"]),
            "config.disabled_api_key_ids[0]: 'key 1' is not an API key id",
        ),
        (
            pb.EnvironmentConfig(budget_enforcement=pb.BudgetEnforcement(deny_http_status=200)),
            "config.budget_enforcement.deny_http_status: 200 is not an HTTP error status",
        ),
    ],
    ids=[
        "unpriced-model",
        "negative-price",
        "no-currency",
        "duplicate-alias",
        "interval",
        "interval-1e15s",
        "interval-negative-1e15s",
        "linger-malformed",
        "linger-1e15s",
        "batch",
        "key-id",
        "http",
    ],
)
async def test_an_invalid_config_is_refused_naming_the_field(
    channel: grpc.aio.Channel, tokens: Tokens, config: pb.EnvironmentConfig, expected: str
) -> None:
    await tokens.environment("prod")
    error = await _refused(_put(channel, tokens.admin, config))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (error.details() or "")


async def test_every_problem_is_reported_at_once(channel: grpc.aio.Channel, tokens: Tokens) -> None:
    await tokens.environment("prod")
    config = pb.EnvironmentConfig(disabled_api_key_ids=["", "k"], agent=pb.AgentSettings(spool_max_bytes=-1))
    error = await _refused(_put(channel, tokens.admin, config))
    assert (error.details() or "").split("; ") == [
        "config.agent.spool_max_bytes: must be 0 (the default) or positive (got -1)",
        "config.disabled_api_key_ids[0]: is empty",
    ]


async def test_expected_version_guards_against_a_concurrent_change(channel: grpc.aio.Channel, tokens: Tokens) -> None:
    await tokens.environment("prod")
    await _put(channel, tokens.admin, priced_config("fast"), expected_version=0)

    error = await _refused(_put(channel, tokens.admin, priced_config("smart"), expected_version=0))
    stored = await _put(channel, tokens.admin, priced_config("smart"), expected_version=1)

    assert error.code() is grpc.StatusCode.ABORTED
    assert "current version of 'prod' is 1, not 0" in (error.details() or "")
    assert stored.config_version.version == 2


async def test_validate_only_stores_nothing(channel: grpc.aio.Channel, tokens: Tokens) -> None:
    await tokens.environment("prod")
    checked = await _put(channel, tokens.admin, priced_config("fast"), validate_only=True)
    assert (checked.created, checked.config_version.version) == (False, 1)
    error = await _refused(
        pb_grpc.ConfigServiceStub(channel).GetConfig(
            pb.GetConfigRequest(environment_id="prod"), metadata=bearer(tokens.admin)
        )
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND


async def test_concurrent_puts_get_distinct_consecutive_versions(channel: grpc.aio.Channel, tokens: Tokens) -> None:
    await tokens.environment("prod")
    results = await asyncio.gather(*(_put(channel, tokens.admin, priced_config(f"alias-{i}")) for i in range(6)))
    assert sorted(r.config_version.version for r in results) == [1, 2, 3, 4, 5, 6]


async def test_versions_keep_rising_across_a_restart_and_list_newest_first(
    control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens, tmp_path: Path
) -> None:
    await tokens.environment("prod")
    for name in ("a", "b"):
        await _put(channel, tokens.admin, priced_config(name))
    await control_plane.shutdown()

    settings = control_plane.settings.model_copy(update={"data_dir": tmp_path / "second"})
    async with ControlPlane(settings) as second, grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel2:
        third = await _put(channel2, tokens.admin, priced_config("c"))
        stub = pb_grpc.ConfigServiceStub(channel2)
        page1 = await stub.ListConfigVersions(
            pb.ListConfigVersionsRequest(environment_id="prod", page_size=2), metadata=bearer(tokens.admin)
        )
        page2 = await stub.ListConfigVersions(
            pb.ListConfigVersionsRequest(environment_id="prod", page_size=2, page_token=page1.next_page_token),
            metadata=bearer(tokens.admin),
        )

    assert third.config_version.version == 3
    assert [v.version for v in page1.config_versions] == [3, 2]
    assert ([v.version for v in page2.config_versions], page2.next_page_token) == ([1], "")


async def test_a_gateway_token_cannot_read_or_subscribe_to_another_environment(
    channel: grpc.aio.Channel, tokens: Tokens
) -> None:
    for environment in ("prod", "staging"):
        await tokens.environment(environment)
    gateway = await tokens.gateway("staging", "gw-1")
    stub = pb_grpc.ConfigServiceStub(channel)

    read = await _refused(stub.GetConfig(pb.GetConfigRequest(environment_id="prod"), metadata=bearer(gateway)))

    async def subscribe() -> AsyncIterator[pb.WatchConfigRequest]:
        yield pb.WatchConfigRequest(subscribe=pb.ConfigSubscribe(environment_id="prod"))
        await asyncio.Event().wait()  # keep the stream open: the server must end it

    watch = stub.WatchConfig(subscribe(), metadata=bearer(gateway))
    subscribed = await _refused(watch.read())

    assert read.code() is subscribed.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "may not access environment 'prod'" in (subscribed.details() or "")


class _Agent:
    """A WatchConfig client: sends what the test queues, returns what the server pushes."""

    def __init__(self, channel: grpc.aio.Channel, secret: str, known_version: int = 0) -> None:
        self.outbox: asyncio.Queue[pb.WatchConfigRequest] = asyncio.Queue()
        self.outbox.put_nowait(
            pb.WatchConfigRequest(subscribe=pb.ConfigSubscribe(environment_id="prod", known_version=known_version))
        )
        self.call: Any = pb_grpc.ConfigServiceStub(channel).WatchConfig(self._requests(), metadata=bearer(secret))

    async def _requests(self) -> AsyncIterator[pb.WatchConfigRequest]:
        while True:
            yield await self.outbox.get()

    async def pushed(self) -> int:
        response: pb.WatchConfigResponse = await self.call.read()
        return response.config_version.version


async def test_watch_config_sends_the_current_version_then_every_new_one(
    channel: grpc.aio.Channel, tokens: Tokens
) -> None:
    await tokens.environment("prod")
    secret = await tokens.gateway("prod", "gw-1")
    await _put(channel, tokens.admin, priced_config("a"))
    fresh = _Agent(channel, secret)
    up_to_date = _Agent(channel, secret, known_version=1)

    assert await fresh.pushed() == 1
    await _put(channel, tokens.admin, priced_config("b"))
    assert [await fresh.pushed(), await up_to_date.pushed()] == [2, 2]
    fresh.call.cancel()
    up_to_date.call.cancel()


async def test_the_config_heartbeat_interval_is_what_agents_are_told(channel: grpc.aio.Channel, tokens: Tokens) -> None:
    await tokens.environment("prod")
    stream = GatewayStream(channel, await tokens.gateway("prod", "gw-1"))
    assert (await stream.beat()).interval.seconds == 10

    await _put(channel, tokens.admin, priced_config("a", interval_s=30))

    answer = await stream.beat(hb_pb.AgentState())
    assert answer.interval.seconds == 30
    await stream.close()


async def test_versions_stored_through_another_replica_reach_this_replicas_agents(
    control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens, tmp_path: Path
) -> None:
    await tokens.environment("prod")
    secret = await tokens.gateway("prod", "gw-1")
    agent = _Agent(channel, secret)
    settings = control_plane.settings.model_copy(update={"data_dir": tmp_path / "replica"})
    async with ControlPlane(settings) as replica, grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as other:
        await _put(other, tokens.admin, priced_config("a"))
        # The first replica polls the database (config_poll_interval, 2 s by default) and pushes it.
        pushed = await asyncio.wait_for(agent.pushed(), timeout=30)
    assert pushed == 1
    agent.call.cancel()


@pytest.mark.parametrize("answer", ["ack", "nack"])
async def test_a_negative_version_in_an_answer_is_invalid_argument_naming_the_field(
    channel: grpc.aio.Channel, tokens: Tokens, answer: str
) -> None:
    await tokens.environment("prod")
    await _put(channel, tokens.admin, priced_config("a"))
    agent = _Agent(channel, await tokens.gateway("prod", "gw-1"))
    assert await agent.pushed() == 1
    bad = pb.ConfigAck(version=-1) if answer == "ack" else pb.ConfigNack(version=-1, error="no")
    agent.outbox.put_nowait(pb.WatchConfigRequest(**{answer: bad}))  # type: ignore[arg-type]

    refused = await _refused(agent.call.read())

    assert refused.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.details() or "").startswith(f"{answer}.version: ")
