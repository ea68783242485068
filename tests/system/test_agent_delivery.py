"""The agent against a real control plane: delivery by event id, outages of the control plane, a full spool."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import pytest

from gateway_agent import GatewayAgent
from services.cli.simulate import make_request
from tests.gateway_agent.harness import agent_settings, control_plane, eventually, server_event_ids

pytestmark = pytest.mark.system


async def record_traffic(agent: GatewayAgent, requests: int, *, seed: int) -> list[str]:
    rng = random.Random(seed)
    ids = []
    for _ in range(requests):
        for event in make_request(rng):
            result = await agent.record(event)
            assert result.spooled
            ids.append(result.event_id)
    return ids


async def test_every_recorded_event_is_stored_once_by_event_id(tmp_path: Path) -> None:
    with control_plane(tmp_path / "cp") as cp:
        async with GatewayAgent(agent_settings(cp.address, cp.gateway_token, tmp_path / "agent")) as agent:
            ids = await record_traffic(agent, 1500, seed=1)
            await eventually(lambda: agent.status().spool_depth == 0, within=30, what="the spool to drain")
            status = agent.status()
        stored = server_event_ids(cp.process.data_dir)
    assert Counter(stored) == Counter(ids)
    assert status.events_accepted == len(ids)
    assert status.dead_letter_count == 0
    assert status.last_acked_sequence == status.next_sequence - 1


async def test_control_plane_down_under_load_then_back_delivers_everything_once(tmp_path: Path) -> None:
    port_holder: dict[str, int] = {}
    ids: list[str] = []
    with control_plane(tmp_path / "cp") as cp:
        token = cp.gateway_token
        port_holder["port"] = int(cp.address.rpartition(":")[2])
        agent = GatewayAgent(agent_settings(cp.address, token, tmp_path / "agent"))
        await agent.start()
        ids += await record_traffic(agent, 300, seed=2)
        await eventually(lambda: len(server_event_ids(cp.process.data_dir)) > 0, within=20, what="first deliveries")
    # The control plane is gone (SIGKILL on leaving the block); traffic keeps flowing into the spool.
    ids += await record_traffic(agent, 600, seed=3)
    await asyncio.sleep(1.5)
    down = agent.status()
    assert down.spool_depth > 0
    assert not down.connected
    with control_plane(tmp_path / "cp", port=port_holder["port"], token=token) as cp:
        ids += await record_traffic(agent, 300, seed=4)
        await eventually(lambda: agent.status().spool_depth == 0, within=40, what="the backlog to drain")
        stored = server_event_ids(cp.process.data_dir)
    await agent.shutdown()
    counts = Counter(stored)
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1
    assert len(stored) == len(ids)


async def test_a_full_spool_does_not_block_recording_and_counts_the_loss(tmp_path: Path) -> None:
    # No control plane at all: nothing drains, so the small spool fills up.
    settings = agent_settings("127.0.0.1:9", "gateway-token", tmp_path / "agent", spool_max_bytes=20_000)
    async with GatewayAgent(settings) as agent:
        rng = random.Random(5)
        outcomes: Counter[str] = Counter()
        for _ in range(300):
            for event in make_request(rng):
                outcomes[(await agent.record(event)).dropped_reason or "spooled"] += 1
        status = agent.status()
    assert outcomes["spool_full"] > 0
    assert outcomes["spooled"] > 0
    assert status.dropped_event_count == outcomes["spool_full"]
    assert status.dropped_by_reason["spool_full"] == outcomes["spool_full"]
    assert status.spool_bytes <= 20_000
    assert status.config_source == "none"
    assert "usage is still recorded" in status.config_state_message
    state = agent.agent_state()
    assert state.dropped_event_count == outcomes["spool_full"]
