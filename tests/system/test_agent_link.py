"""The agent over a link that dies silently (a black-hole proxy): how soon it notices, what it reports meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from gateway_agent import GatewayAgent
from meterwire.common.v1 import usage_pb2
from tests.gateway_agent.harness import (
    BlackHoleProxy,
    agent_settings,
    create_gateway_token,
    eventually,
    server_event_ids,
)
from tests.system.serve import serve

pytestmark = pytest.mark.system

# Scheduling on a loaded test machine, on top of the bound the settings promise.
SLACK_S = 5.0


async def record(agent: GatewayAgent, count: int) -> list[str]:
    ids = []
    for attempt in range(count):
        result = await agent.record(usage_pb2.UsageEvent(request_id=f"r-{time.time_ns()}", attempt=attempt + 1))
        assert result.spooled
        ids.append(result.event_id)
    return ids


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
async def test_a_dead_link_fails_the_streams_within_keepalive_time_plus_timeout(tmp_path: Path, busy: bool) -> None:
    # The server answers heartbeats every second, so the agent's frequent pings are never "without data" to it.
    with serve(tmp_path / "cp", env={"MW_HEARTBEAT_INTERVAL": "1s"}) as process:
        token = create_gateway_token(process)
        async with BlackHoleProxy(process.address) as proxy:
            keepalive_time, keepalive_timeout = timedelta(seconds=2), timedelta(seconds=1)
            settings = agent_settings(
                proxy.address,
                token,
                tmp_path / "agent",
                keepalive_time=keepalive_time,
                keepalive_timeout=keepalive_timeout,
            )
            bound_s = (keepalive_time + keepalive_timeout).total_seconds()
            async with GatewayAgent(settings) as agent:
                ids = await record(agent, 5)
                await eventually(
                    lambda: agent.status().connected and agent.status().spool_depth == 0,
                    within=30,
                    what="the first events delivered",
                )
                proxy.swallow()
                feeding = asyncio.ensure_future(_keep_recording(agent, ids)) if busy else None
                try:
                    # Failed streams, not only a suspicion: the heartbeat's own answer deadline is 20 s and the
                    # ack deadline 60 s, so only keepalive can end them this soon.
                    await eventually(
                        lambda: agent.status().stream_failures > 0 and not agent.status().connected,
                        within=bound_s + SLACK_S,
                        what=f"the dead link noticed (keepalive bound {bound_s:g} s)",
                    )
                    noticed = agent.status()
                finally:
                    if feeding is not None:
                        feeding.cancel()
                        await asyncio.gather(feeding, return_exceptions=True)
                ids += await record(agent, 5)
                assert agent.status().spool_depth >= 5
                proxy.forward()
                await eventually(lambda: agent.status().spool_depth == 0, within=30, what="delivery after the link")
                back = agent.status()
        stored = server_event_ids(process.data_dir)
    assert not noticed.connected
    assert noticed.connected_since is None
    assert "ping timeout" in noticed.last_error
    assert back.connected
    assert Counter(stored) == Counter(ids)


async def _keep_recording(agent: GatewayAgent, ids: list[str]) -> None:
    while True:
        ids += await record(agent, 10)
        await asyncio.sleep(0.05)


SERVICES_WITHOUT_BUDGETS = '["telemetry", "heartbeat", "config", "reporting", "admin"]'
"""Budget snapshots arrive every heartbeat interval; what a link receives makes grpc probe it with pings (BDP), and
an unanswered probe also ends the streams after keepalive_timeout. Without them, only the heartbeat is watched."""


async def test_an_unanswered_heartbeat_marks_the_agent_not_connected_before_any_stream_fails(tmp_path: Path) -> None:
    # Keepalive is slow here (60 s): the heartbeat the server leaves unanswered for keepalive_timeout is what
    # shows the link is suspect.
    with serve(
        tmp_path / "cp", env={"MW_HEARTBEAT_INTERVAL": "1s", "MW_SERVICES": SERVICES_WITHOUT_BUDGETS}
    ) as process:
        token = create_gateway_token(process)
        async with BlackHoleProxy(process.address) as proxy:
            settings = agent_settings(
                proxy.address,
                token,
                tmp_path / "agent",
                keepalive_time=timedelta(seconds=60),
                keepalive_timeout=timedelta(seconds=1),
                shutdown_flush_timeout=timedelta(seconds=1),
            )
            async with GatewayAgent(settings) as agent:
                await eventually(lambda: agent.status().connected, within=30, what="the first heartbeat answer")
                proxy.swallow()
                # Within one heartbeat interval a heartbeat goes out, and keepalive_timeout later it is overdue.
                await eventually(lambda: not agent.status().connected, within=2 + SLACK_S, what="the link suspected")
                suspected = agent.status()
    assert suspected.connected_since is None
    assert "no heartbeat answer in 1s: the link looks dead" in suspected.last_error


async def test_events_sent_into_a_dead_link_after_an_ack_emptied_the_window_show_their_age(tmp_path: Path) -> None:
    # The agent's window was emptied by an ack before the next events were committed; those are then sent into
    # a link that never answers (the stream stays open until keepalive ends it). The heartbeat must carry
    # their age all along, or the control plane can never call the backlog DEGRADED.
    with serve(tmp_path / "cp") as process:
        token = create_gateway_token(process)
        async with (
            BlackHoleProxy(process.address) as proxy,
            GatewayAgent(agent_settings(proxy.address, token, tmp_path / "agent")) as agent,
        ):
            await record(agent, 3)
            await eventually(lambda: agent.status().spool_depth == 0, within=30, what="the first events acked")
            assert agent.status().oldest_unsent_age is None
            proxy.swallow()
            before_us = time.time_ns() // 1000
            await record(agent, 3)
            await agent.flush()
            await eventually(lambda: agent.status().unacked_batches == 1, within=10, what="a batch sent, unacked")
            status = agent.status()
            state = agent.agent_state()
            age_limit = timedelta(microseconds=time.time_ns() // 1000 - before_us)
    assert status.spool_depth == 3
    assert status.stream_failures == 0
    assert status.oldest_unsent_age is not None
    assert status.oldest_unsent_age <= age_limit  # the oldest of the new events, not of the acked ones
    assert state.HasField("oldest_unsent_age")
