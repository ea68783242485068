"""Keepalive between an agent and a real control plane: the server accepts the pings agents send."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from gateway_agent import GatewayAgent
from tests.gateway_agent.budget_plane import budget_plane, settings_for, spend_event
from tests.gateway_agent.harness import GATEWAY, eventually

# Scaled down from the defaults (the server accepts a ping every 10 s; agents ping every 15 s).
SERVER_MIN_PING_INTERVAL = timedelta(seconds=1)
AGENT_KEEPALIVE = timedelta(seconds=2)
QUIET = timedelta(minutes=5)
"""Heartbeats and snapshots this far apart: the server sends nothing while the test watches."""


async def test_an_idle_agent_pinging_no_faster_than_the_server_allows_keeps_its_connection(
    migrated_database_url: str, tmp_path: Path
) -> None:
    """grpc core counts a ping that comes sooner than the server's minimum after the previous one, with nothing
    sent by the server in between, as a strike, and answers the third with GOAWAY "too_many_pings". The server
    once set its minimum under a key grpc does not know, so grpc's 5 minute default applied and an idle agent was
    sent away after three keepalive pings. Six or more pings pass here with the server silent."""
    async with budget_plane(
        migrated_database_url,
        tmp_path,
        GATEWAY,
        heartbeat_interval=QUIET,
        min_client_ping_interval=SERVER_MIN_PING_INTERVAL,
    ) as plane:
        await plane.put_config(heartbeat_interval=QUIET)
        settings = settings_for(
            plane,
            GATEWAY,
            tmp_path / "agent",
            heartbeat_interval=QUIET,
            keepalive_time=AGENT_KEEPALIVE,
            keepalive_timeout=timedelta(seconds=1),
        )
        async with GatewayAgent(settings) as agent:
            recorded = await agent.record(spend_event("m", 100))
            await eventually(
                lambda: agent.status().last_acked_sequence == recorded.sequence,
                within=30,
                what="the event acknowledged (every stream open)",
            )
            before = agent.status()
            assert before.connected
            assert before.connected_since is not None
            await asyncio.sleep(AGENT_KEEPALIVE.total_seconds() * 6)
            after = agent.status()
        assert (after.stream_failures, after.last_error) == (0, "")
        assert (after.connected, after.connected_since) == (True, before.connected_since)
