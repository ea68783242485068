"""Replicas sharing one database: a config answer given through one replica reaches the others at their next
peer refresh, without waiting for the gateway's next heartbeat."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc

from meterwire.config.v1 import config_service_pb2 as config_pb
from meterwire.config.v1 import config_service_pb2_grpc as config_grpc
from meterwire.heartbeat.v1 import heartbeat_service_pb2 as pb
from services.heartbeat.fleet import Fleet
from services.heartbeat.records import GatewayStatus
from services.server import ControlPlane
from tests.clients import Tokens, bearer
from tests.clock import FakeClock
from tests.heartbeat.helpers import GatewayStream, fleet_of

_NAME = ("prod", "gw-1")


async def _nack_through(channel: grpc.aio.Channel, secret: str, fleet: Fleet) -> None:
    """Opens WatchConfig on `channel`, NACKs version 3 and waits until that replica's fleet recorded it."""

    async def requests() -> AsyncIterator[config_pb.WatchConfigRequest]:
        yield config_pb.WatchConfigRequest(subscribe=config_pb.ConfigSubscribe(environment_id="prod"))
        yield config_pb.WatchConfigRequest(nack=config_pb.ConfigNack(version=3, error="unknown model 'x'"))
        await asyncio.Event().wait()

    call = config_grpc.ConfigServiceStub(channel).WatchConfig(requests(), metadata=bearer(secret))
    for _ in range(500):
        record = fleet.current(_NAME)
        if record is not None and record.state.nacked_config_version == 3:
            break
        await asyncio.sleep(0.01)
    call.cancel()


async def test_a_nack_through_another_replica_reaches_the_others_before_the_next_heartbeat(
    control_plane: ControlPlane,
    channel: grpc.aio.Channel,
    tokens: Tokens,
    fleet: Fleet,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    await tokens.environment("prod")
    secret = await tokens.gateway("prod", "gw-1")
    stream = GatewayStream(channel, secret)  # heartbeats to this replica
    await stream.beat()
    await fleet.flush()
    replica_b = control_plane.settings.model_copy(update={"data_dir": tmp_path / "b"})
    replica_c = control_plane.settings.model_copy(update={"data_dir": tmp_path / "c"})
    async with (
        ControlPlane(replica_b) as b,
        ControlPlane(replica_c) as c,
        grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as channel_b,
    ):
        fleet_of(b).clock = fleet_of(c).clock = clock
        # Later than the peer refresh's look-back (two flushes and one refresh: 7 s), sooner than STALE (20 s).
        clock.advance(timedelta(seconds=15))
        await _nack_through(channel_b, secret, fleet_of(b))
        await fleet_of(b).flush()

        await fleet_of(c).refresh_from_peers()
        await fleet.refresh_from_peers()
        seen_by_c = fleet_of(c).current(_NAME)
        seen_here = fleet.current(_NAME)

    assert seen_by_c is not None
    assert seen_here is not None
    for record in (seen_by_c, seen_here):
        assert record.status == GatewayStatus.DEGRADED
        assert (record.state.nacked_config_version, record.state.config_error) == (3, "unknown model 'x'")
    assert (await stream.beat(pb.AgentState(agent_version="0.1.0"))).status == pb.GATEWAY_STATUS_HEALTHY
    await stream.close()
