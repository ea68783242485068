"""A thousand gateways heartbeating at once: every one is registered and listed with the state it sent."""

from __future__ import annotations

import asyncio

import grpc
import sqlalchemy as sa

from meterwire.admin.v1 import admin_service_pb2 as admin_pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2 as pb
from services.heartbeat.fleet import Fleet
from services.server import ControlPlane
from services.storage import tables
from tests.clients import Tokens
from tests.heartbeat.helpers import GatewayStream, list_gateways

GATEWAYS = 1000
CHANNELS = 8


def _state(index: int) -> pb.AgentState:
    return pb.AgentState(agent_version=f"0.1.{index}", spool_depth=index, applied_config_version=index % 7)


async def test_a_thousand_concurrent_heartbeat_streams_are_all_recorded(
    control_plane: ControlPlane, tokens: Tokens, fleet: Fleet
) -> None:
    await tokens.environment("fleet")
    secrets: list[str] = []
    for start in range(0, GATEWAYS, 100):
        created = await asyncio.gather(
            *(
                tokens.create(admin_pb.ROLE_GATEWAY, environment_id="fleet", gateway_id=f"gw-{i:04d}")
                for i in range(start, start + 100)
            )
        )
        secrets.extend(response.secret for response in created)
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{control_plane.port}") for _ in range(CHANNELS)]
    try:
        streams = [GatewayStream(channels[i % CHANNELS], secret) for i, secret in enumerate(secrets)]
        answers = await asyncio.gather(*(stream.beat(_state(i)) for i, stream in enumerate(streams)))
        assert {answer.status for answer in answers} == {pb.GATEWAY_STATUS_HEALTHY}

        listed = await list_gateways(channels[0], tokens.admin, page_size=300)
        await fleet.flush()
        await asyncio.gather(*(stream.close() for stream in streams))
    finally:
        await asyncio.gather(*(channel.close(None) for channel in channels))

    assert [g.gateway_id for g in listed] == [f"gw-{i:04d}" for i in range(GATEWAYS)]
    assert [g.state for g in listed] == [_state(i) for i in range(GATEWAYS)]
    async with control_plane.engine.connect() as connection:
        gateways = tables.gateways
        rows = await connection.execute(
            sa.select(gateways.c.gateway_id, gateways.c.spool_depth, gateways.c.agent_version)
            .where(gateways.c.last_seen_time.is_not(None))
            .order_by(gateways.c.gateway_id)
        )
        assert [tuple(row) for row in rows] == [(f"gw-{i:04d}", i, f"0.1.{i}") for i in range(GATEWAYS)]
