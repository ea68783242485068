"""Heartbeat streams, derived status over time, the fleet listing, watching and removing gateways."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf.duration_pb2 import Duration

from meterwire.config.v1 import config_service_pb2 as config_pb
from meterwire.config.v1 import config_service_pb2_grpc as config_grpc
from meterwire.heartbeat.v1 import heartbeat_service_pb2 as pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2_grpc as pb_grpc
from services.heartbeat.fleet import Fleet
from services.server import ControlPlane
from services.storage import tables
from services.storage.engine import create_engine
from tests.clients import Tokens, bearer
from tests.clock import FakeClock
from tests.heartbeat.helpers import GatewayStream, fleet_of, list_gateways

HEALTHY = pb.GATEWAY_STATUS_HEALTHY
_STATE_OF_GW_1 = sa.select(tables.gateways.c.agent_version, tables.gateways.c.spool_depth).where(
    tables.gateways.c.gateway_id == "gw-1", tables.gateways.c.last_seen_time.is_not(None)
)


async def _get(channel: grpc.aio.Channel, secret: str, environment_id: str, gateway_id: str) -> pb.Gateway:
    stub = pb_grpc.HeartbeatServiceStub(channel)
    request = pb.GetGatewayRequest(environment_id=environment_id, gateway_id=gateway_id)
    response = await stub.GetGateway(request, metadata=bearer(secret))
    return response.gateway


async def test_a_heartbeat_registers_the_gateway_and_is_answered_with_time_interval_and_status(
    channel: grpc.aio.Channel, tokens: Tokens, fleet: Fleet, clock: FakeClock
) -> None:
    await tokens.environment("prod")
    stream = GatewayStream(channel, await tokens.gateway("prod", "gw-1"))

    answer = await stream.beat(pb.AgentState(agent_version="0.1.0", gateway_version="acme/2.3", spool_depth=4))

    assert answer.status == HEALTHY
    assert answer.interval.ToTimedelta() == timedelta(seconds=10)
    assert answer.server_time.ToDatetime().replace(tzinfo=clock.now.tzinfo) == clock.now
    gateway = await _get(channel, tokens.admin, "prod", "gw-1")
    assert gateway.status == HEALTHY
    assert gateway.last_seen_time.ToDatetime().replace(tzinfo=clock.now.tzinfo) == clock.now
    assert (gateway.state.agent_version, gateway.state.gateway_version, gateway.state.spool_depth) == (
        "0.1.0",
        "acme/2.3",
        4,
    )
    await stream.close()


async def test_status_moves_healthy_stale_offline_and_back_with_the_clock(
    channel: grpc.aio.Channel, tokens: Tokens, fleet: Fleet, clock: FakeClock
) -> None:
    await tokens.environment("prod")
    stream = GatewayStream(channel, await tokens.gateway("prod", "gw-1"))
    assert (await stream.beat()).status == HEALTHY

    seen = []
    for advance in (timedelta(seconds=19), timedelta(seconds=2), timedelta(seconds=38), timedelta(seconds=2)):
        clock.advance(advance)
        fleet.tick()
        seen.append((await _get(channel, tokens.admin, "prod", "gw-1")).status)
    offline = await _get(channel, tokens.admin, "prod", "gw-1")

    assert seen == [HEALTHY, pb.GATEWAY_STATUS_STALE, pb.GATEWAY_STATUS_STALE, pb.GATEWAY_STATUS_OFFLINE]
    assert "offline after 1m00s" in offline.status_reasons[0]
    assert (await stream.beat()).status == HEALTHY
    await stream.close()


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (pb.AgentState(oldest_unsent_age=Duration(seconds=301), spool_depth=9), "usage backlog"),
        (pb.AgentState(dead_letter_count=3), "3 usage events rejected"),
        (pb.AgentState(dropped_event_count=2), "2 usage events dropped"),
        (pb.AgentState(applied_config_version=1, nacked_config_version=2, config_error="bad alias"), "bad alias"),
    ],
    ids=["backlog", "dead-letters", "dropped", "nacked"],
)
async def test_a_troubled_agent_is_degraded_with_the_reason(
    channel: grpc.aio.Channel, tokens: Tokens, fleet: Fleet, state: pb.AgentState, reason: str
) -> None:
    await tokens.environment("prod")
    stream = GatewayStream(channel, await tokens.gateway("prod", "gw-1"))

    answer = await stream.beat(state)

    gateway = await _get(channel, tokens.admin, "prod", "gw-1")
    assert answer.status == gateway.status == pb.GATEWAY_STATUS_DEGRADED
    assert any(reason in text for text in gateway.status_reasons), gateway.status_reasons
    await stream.close()


async def test_watch_delivers_offline_after_the_threshold_with_no_traffic(
    channel: grpc.aio.Channel, tokens: Tokens, fleet: Fleet, clock: FakeClock
) -> None:
    await tokens.environment("prod")
    stream = GatewayStream(channel, await tokens.gateway("prod", "gw-1"))
    await stream.beat()
    await stream.close()
    watch: Any = pb_grpc.HeartbeatServiceStub(channel).WatchGateways(
        pb.WatchGatewaysRequest(send_initial=True), metadata=bearer(tokens.admin)
    )
    initial = await watch.read()
    assert (initial.gateway.gateway_id, initial.gateway.status, initial.previous_status) == (
        "gw-1",
        HEALTHY,
        pb.GATEWAY_STATUS_UNSPECIFIED,
    )

    clock.advance(timedelta(seconds=21))
    fleet.tick()
    stale = await watch.read()
    clock.advance(timedelta(seconds=40))
    fleet.tick()
    offline = await watch.read()

    assert (stale.previous_status, stale.gateway.status) == (HEALTHY, pb.GATEWAY_STATUS_STALE)
    assert (offline.previous_status, offline.gateway.status) == (pb.GATEWAY_STATUS_STALE, pb.GATEWAY_STATUS_OFFLINE)
    assert offline.change_time.ToDatetime().replace(tzinfo=clock.now.tzinfo) == clock.now
    watch.cancel()


async def test_a_nack_over_watch_config_makes_the_gateway_degraded_with_its_error(
    channel: grpc.aio.Channel, tokens: Tokens, fleet: Fleet
) -> None:
    await tokens.environment("prod")
    secret = await tokens.gateway("prod", "gw-1")
    stream = GatewayStream(channel, secret)
    await stream.beat()
    config = config_pb.EnvironmentConfig(disabled_api_key_ids=["key-1"])
    await config_grpc.ConfigServiceStub(channel).PutConfig(
        config_pb.PutConfigRequest(environment_id="prod", config=config), metadata=bearer(tokens.admin)
    )
    watch_gateways: Any = pb_grpc.HeartbeatServiceStub(channel).WatchGateways(
        pb.WatchGatewaysRequest(environment_ids=["prod"], send_initial=True), metadata=bearer(tokens.admin)
    )
    assert (await watch_gateways.read()).gateway.status == HEALTHY  # the initial listing: the watch is open
    answers: asyncio.Queue[config_pb.WatchConfigRequest] = asyncio.Queue()

    async def requests() -> AsyncIterator[config_pb.WatchConfigRequest]:
        while True:
            yield await answers.get()

    watch_config: Any = config_grpc.ConfigServiceStub(channel).WatchConfig(requests(), metadata=bearer(secret))
    await answers.put(config_pb.WatchConfigRequest(subscribe=config_pb.ConfigSubscribe(environment_id="prod")))
    pushed = await watch_config.read()
    await answers.put(
        config_pb.WatchConfigRequest(nack=config_pb.ConfigNack(version=pushed.config_version.version, error="boom"))
    )
    change = await watch_gateways.read()

    assert change.gateway.status == pb.GATEWAY_STATUS_DEGRADED
    assert change.previous_status == HEALTHY
    assert change.gateway.status_reasons == ["config version 1 rejected: boom"]
    gateway = await _get(channel, tokens.admin, "prod", "gw-1")
    assert (gateway.state.nacked_config_version, gateway.state.config_error, gateway.desired_config_version) == (
        1,
        "boom",
        1,
    )

    await answers.put(config_pb.WatchConfigRequest(ack=config_pb.ConfigAck(version=1)))
    recovered = await watch_gateways.read()
    assert recovered.gateway.status == HEALTHY
    assert recovered.gateway.state.applied_config_version == 1
    watch_config.cancel()
    watch_gateways.cancel()
    await stream.close()


async def test_list_filters_by_environment_and_status_pages_and_shows_never_seen_gateways(
    channel: grpc.aio.Channel, tokens: Tokens, fleet: Fleet, clock: FakeClock
) -> None:
    for environment in ("prod", "staging"):
        await tokens.environment(environment)
    streams = [GatewayStream(channel, await tokens.gateway("prod", f"gw-{i}")) for i in range(5)]
    for stream in streams:
        await stream.beat()
    await tokens.gateway("prod", "gw-silent")
    staging = GatewayStream(channel, await tokens.gateway("staging", "gw-0"))
    await staging.beat(pb.AgentState(dead_letter_count=1))

    everything = await list_gateways(channel, tokens.admin, page_size=2)
    prod_healthy = await list_gateways(channel, tokens.admin, environment_ids=["prod"], statuses=[HEALTHY])
    never_seen = await list_gateways(channel, tokens.admin, statuses=[pb.GATEWAY_STATUS_NEVER_SEEN])
    reporter_view = await list_gateways(channel, await tokens.reporter("staging"))

    assert [(g.environment_id, g.gateway_id) for g in everything] == [
        *(("prod", f"gw-{i}") for i in range(5)),
        ("prod", "gw-silent"),
        ("staging", "gw-0"),
    ]
    assert [g.gateway_id for g in prod_healthy] == [f"gw-{i}" for i in range(5)]
    assert [(g.gateway_id, g.HasField("last_seen_time")) for g in never_seen] == [("gw-silent", False)]
    assert [(g.environment_id, g.status) for g in reporter_view] == [("staging", pb.GATEWAY_STATUS_DEGRADED)]
    for stream in [*streams, staging]:
        await stream.close()


async def test_a_reporter_cannot_list_another_environment(channel: grpc.aio.Channel, tokens: Tokens) -> None:
    for environment in ("prod", "staging"):
        await tokens.environment(environment)
    reporter = await tokens.reporter("staging")
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await list_gateways(channel, reporter, environment_ids=["prod"])
    assert failure.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_a_removed_gateway_leaves_the_list_and_comes_back_when_it_heartbeats_again(
    channel: grpc.aio.Channel, tokens: Tokens, fleet: Fleet
) -> None:
    await tokens.environment("prod")
    stream = GatewayStream(channel, await tokens.gateway("prod", "gw-1"))
    await stream.beat()
    await fleet.flush()
    stub = pb_grpc.HeartbeatServiceStub(channel)
    watch: Any = stub.WatchGateways(pb.WatchGatewaysRequest(send_initial=True), metadata=bearer(tokens.admin))
    assert (await watch.read()).gateway.gateway_id == "gw-1"  # the initial listing: the watch is open

    await stub.DeleteGateway(
        pb.DeleteGatewayRequest(environment_id="prod", gateway_id="gw-1"), metadata=bearer(tokens.admin)
    )

    removal = await watch.read()
    assert (removal.deleted, removal.gateway.gateway_id) == (True, "gw-1")
    assert await list_gateways(channel, tokens.admin) == []
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.DeleteGateway(
            pb.DeleteGatewayRequest(environment_id="prod", gateway_id="gw-1"), metadata=bearer(tokens.admin)
        )
    assert failure.value.code() is grpc.StatusCode.NOT_FOUND

    assert (await stream.beat()).status == HEALTHY
    assert [g.gateway_id for g in await list_gateways(channel, tokens.admin)] == ["gw-1"]
    watch.cancel()
    await stream.close()


async def test_removing_a_never_seen_gateway_says_to_revoke_its_token(
    channel: grpc.aio.Channel, tokens: Tokens
) -> None:
    await tokens.environment("prod")
    await tokens.gateway("prod", "gw-silent")
    stub = pb_grpc.HeartbeatServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.DeleteGateway(
            pb.DeleteGatewayRequest(environment_id="prod", gateway_id="gw-silent"), metadata=bearer(tokens.admin)
        )
    assert failure.value.code() is grpc.StatusCode.NOT_FOUND
    assert "revoke its token" in (failure.value.details() or "")


async def test_a_restarted_control_plane_recovers_last_seen_state(
    control_plane: ControlPlane,
    channel: grpc.aio.Channel,
    tokens: Tokens,
    fleet: Fleet,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    await tokens.environment("prod")
    stream = GatewayStream(channel, await tokens.gateway("prod", "gw-1"))
    await stream.beat(pb.AgentState(agent_version="0.1.0", spool_depth=7, dead_letter_count=2))
    await stream.close()
    await control_plane.shutdown()  # the last flush happens here

    settings = control_plane.settings.model_copy(update={"data_dir": tmp_path / "second"})
    async with ControlPlane(settings) as second, grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel2:
        fleet_of(second).clock = clock
        fleet_of(second).tick()
        gateway = await _get(channel2, tokens.admin, "prod", "gw-1")

    assert gateway.last_seen_time.ToDatetime().replace(tzinfo=clock.now.tzinfo) == clock.now
    assert (gateway.state.agent_version, gateway.state.spool_depth, gateway.state.dead_letter_count) == ("0.1.0", 7, 2)
    assert gateway.status == pb.GATEWAY_STATUS_DEGRADED


async def test_a_flush_writes_every_changed_gateway_in_one_batch(
    control_plane: ControlPlane, tokens: Tokens, tmp_path: Path
) -> None:
    await tokens.environment("prod")
    secrets = [await tokens.gateway("prod", f"gw-{i}") for i in range(20)]
    await control_plane.shutdown()
    # Only the explicit flushes below write, so what one flush covers is exact.
    settings = control_plane.settings.model_copy(
        update={"data_dir": tmp_path / "second", "heartbeat_flush_interval": timedelta(hours=1)}
    )
    async with ControlPlane(settings) as plane, grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        streams = [GatewayStream(channel, secret) for secret in secrets]
        for stream in streams:
            await stream.beat()
        written = [await fleet_of(plane).flush(), await fleet_of(plane).flush()]
        for stream in streams:
            await stream.close()

    assert written == [20, 0]


async def test_draining_the_server_flushes_what_the_flush_job_has_not_written_yet(
    control_plane: ControlPlane, tokens: Tokens, tmp_path: Path
) -> None:
    await tokens.environment("prod")
    secret = await tokens.gateway("prod", "gw-1")
    await control_plane.shutdown()
    settings = control_plane.settings.model_copy(
        update={"data_dir": tmp_path / "second", "heartbeat_flush_interval": timedelta(hours=1)}
    )
    plane = ControlPlane(settings)
    async with plane, grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        stream = GatewayStream(channel, secret)
        await stream.beat(pb.AgentState(agent_version="0.3.0", spool_depth=5))
        await stream.close()
        async with plane.engine.connect() as connection:
            before = (await connection.execute(_STATE_OF_GW_1)).first()
        engine = create_engine(settings.resolved_database_url)
    try:
        async with engine.connect() as connection:
            after = (await connection.execute(_STATE_OF_GW_1)).first()
    finally:
        await engine.dispose()

    assert before is None  # the hourly flush job never ran ...
    assert after is not None  # ... its final step did, on drain
    assert tuple(after) == ("0.3.0", 5)


async def test_a_replica_sharing_the_database_sees_gateways_connected_to_another(
    control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens, fleet: Fleet, tmp_path: Path
) -> None:
    await tokens.environment("prod")
    stream = GatewayStream(channel, await tokens.gateway("prod", "gw-1"))
    settings = control_plane.settings.model_copy(update={"data_dir": tmp_path / "replica"})
    async with ControlPlane(settings) as replica, grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as other:
        await stream.beat(pb.AgentState(agent_version="0.2.0", spool_depth=3))
        await fleet.flush()
        adopted = await fleet_of(replica).refresh_from_peers()
        seen_there = await _get(other, tokens.admin, "prod", "gw-1")
        own_rows = await fleet.refresh_from_peers()

    assert adopted == 1
    assert (seen_there.status, seen_there.state.agent_version, seen_there.state.spool_depth) == (HEALTHY, "0.2.0", 3)
    assert own_rows == 0  # nothing changed on the other replica
    await stream.close()
