"""The agent against a real control plane: delivery by event id, outages of the control plane, a full spool."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gateway_agent import GatewayAgent
from gateway_agent.spool import iter_dead_letters
from services.cli.simulate import make_request
from services.storage.engine import SQLITE_FILE_NAME
from tests.gateway_agent.harness import (
    ENVIRONMENT,
    GATEWAY,
    agent_settings,
    control_plane,
    create_gateway_token,
    eventually,
    server_event_ids,
)
from tests.system.serve import ServeProcess, serve

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


def _shown_gateway(process: ServeProcess) -> dict[str, Any]:
    shown = process.cli("gateways", "show", GATEWAY, "-e", ENVIRONMENT, "--json")
    assert shown.returncode == 0, shown.stderr
    gateway: dict[str, Any] = json.loads(shown.stdout)
    return gateway


async def _gateway_reaching(process: ServeProcess, status: str, *, what: str) -> dict[str, Any]:
    """Polls the gateway until it shows `status` and returns that very reading: with 1 s heartbeats a busy machine
    may show it STALE for a moment, so a second reading could tell another story."""
    readings: list[dict[str, Any]] = []

    def reached() -> bool:
        readings.append(_shown_gateway(process))
        return bool(readings[-1]["status"] == status)

    await eventually(reached, within=30, what=what)
    return readings[-1]


async def test_an_event_the_control_plane_rejects_is_dead_lettered_and_reported_by_the_heartbeat(
    tmp_path: Path,
) -> None:
    # The agent spools what the gateway records and the control plane's validation decides. A rejection must
    # reach the agent's dead letters (naming the field), its status and, through its heartbeat, the fleet's
    # view of the gateway, while the events around it are stored.
    with serve(tmp_path / "cp", env={"MW_HEARTBEAT_INTERVAL": "1s"}) as process:
        token = create_gateway_token(process)
        async with GatewayAgent(agent_settings(process.address, token, tmp_path / "agent")) as agent:
            good = await record_traffic(agent, 20, seed=6)
            refused = make_request(random.Random(7))[0]
            refused.status_code = 99
            rejected = await agent.record(refused)
            good += await record_traffic(agent, 20, seed=8)
            await eventually(lambda: agent.status().spool_depth == 0, within=30, what="the spool to drain")
            status = agent.status()
            gateway = await _gateway_reaching(
                process, "GATEWAY_STATUS_DEGRADED", what="the heartbeat to report the dead letter"
            )
        stored = server_event_ids(process.data_dir)
    dead = list(iter_dead_letters(tmp_path / "agent" / "spool.db"))
    assert [(letter.event_id, letter.field) for letter in dead] == [(rejected.event_id, "status_code")]
    assert "99 is not an HTTP status" in dead[0].message
    assert (status.dead_letter_count, status.events_accepted) == (1, len(good))
    assert Counter(stored) == Counter(good)
    assert "1 usage events rejected by the control plane (dead letters)" in gateway["status_reasons"]


async def test_batches_the_control_plane_cannot_store_are_resent_until_stored_once(tmp_path: Path) -> None:
    # The control plane is up but every usage transaction fails (a trigger in its database): each batch is
    # answered UNAVAILABLE, nothing is kept, and the agent must keep its events and resend them, not drop
    # or dead-letter them, until the database takes them.
    with control_plane(tmp_path / "cp") as cp:
        database = sqlite3.connect(cp.process.data_dir / SQLITE_FILE_NAME, timeout=30)
        database.execute(
            "CREATE TRIGGER refuse_usage BEFORE INSERT ON usage_events BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        async with GatewayAgent(agent_settings(cp.address, cp.gateway_token, tmp_path / "agent")) as agent:
            ids = await record_traffic(agent, 200, seed=9)
            await eventually(lambda: agent.status().stream_failures >= 3, within=30, what="failed deliveries")
            failing = agent.status()
            stored_while_failing = server_event_ids(cp.process.data_dir)
            database.execute("DROP TRIGGER refuse_usage")
            database.close()
            await eventually(lambda: agent.status().spool_depth == 0, within=30, what="the spool to drain")
            status = agent.status()
        stored = server_event_ids(cp.process.data_dir)
        failures = [line for line in cp.process.log().splitlines() if "usage batch not stored" in line]
    assert stored_while_failing == []
    # Each failure is logged with the database's own words, not the statement and its parameters (the usage
    # data of the whole batch).
    assert len(failures) >= 3
    assert all("IntegrityError: refused" in line and len(line) < 1_000 for line in failures), failures[0][:2_000]
    assert (failing.spool_depth, failing.events_accepted, failing.dead_letter_count) == (len(ids), 0, 0)
    assert Counter(stored) == Counter(ids)
    assert (status.events_accepted, status.dead_letter_count, status.dropped_event_count) == (len(ids), 0, 0)


async def test_a_backlog_behind_a_failing_stream_makes_the_gateway_degraded(tmp_path: Path) -> None:
    # The window was emptied by an ack before the next events were committed; every later batch is refused
    # (a trigger in the control plane's database) and the stream fails and retries. The heartbeat must carry
    # the age of the oldest waiting event, so the backlog makes the gateway DEGRADED, and HEALTHY once delivered.
    env = {"MW_HEARTBEAT_INTERVAL": "1s", "MW_HEARTBEAT_DEGRADED_BACKLOG": "1s"}
    with serve(tmp_path / "cp", env=env) as process:
        token = create_gateway_token(process)
        async with GatewayAgent(agent_settings(process.address, token, tmp_path / "agent")) as agent:
            ids = await record_traffic(agent, 5, seed=13)
            await eventually(lambda: agent.status().spool_depth == 0, within=30, what="the first events acked")
            database = sqlite3.connect(process.data_dir / SQLITE_FILE_NAME, timeout=30)
            database.execute(
                "CREATE TRIGGER refuse_usage BEFORE INSERT ON usage_events BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
            try:
                ids += await record_traffic(agent, 5, seed=14)
                await eventually(lambda: agent.status().stream_failures >= 2, within=30, what="failed deliveries")
                degraded = await _gateway_reaching(
                    process, "GATEWAY_STATUS_DEGRADED", what="the backlog reported by the heartbeat"
                )
                waiting = agent.status()
            finally:
                database.execute("DROP TRIGGER refuse_usage")
                database.close()
            await eventually(lambda: agent.status().spool_depth == 0, within=30, what="the backlog delivered")
            await _gateway_reaching(process, "GATEWAY_STATUS_HEALTHY", what="the gateway healthy again")
            drained = agent.status()
        stored = server_event_ids(process.data_dir)
    reasons = degraded["status_reasons"]
    assert any(reason.startswith("usage backlog: oldest unsent event is") for reason in reasons), reasons
    assert waiting.oldest_unsent_age is not None
    assert waiting.spool_depth > 0
    assert drained.oldest_unsent_age is None
    assert Counter(stored) == Counter(ids)


async def test_an_agent_whose_batches_are_too_big_for_the_server_sends_smaller_ones(tmp_path: Path) -> None:
    # The server refuses a batch over its byte limit whole (INVALID_ARGUMENT, ending the stream). The agent's
    # batches are far bigger, so it must halve them until they pass, and deliver everything once.
    with serve(tmp_path / "cp", env={"MW_INGEST_MAX_BATCH_BYTES": "16384"}) as process:
        token = create_gateway_token(process)
        async with GatewayAgent(agent_settings(process.address, token, tmp_path / "agent")) as agent:
            ids = await record_traffic(agent, 400, seed=10)
            await eventually(lambda: agent.status().spool_depth == 0, within=30, what="the spool to drain")
            status = agent.status()
        stored = server_event_ids(process.data_dir)
        refused = [line for line in process.log().splitlines() if "usage batch refused" in line]
    assert refused, "the agent's first batches should have been over the server's limit"
    assert "ingest_max_batch_bytes=16384" in refused[0]
    assert Counter(stored) == Counter(ids)
    assert (status.events_accepted, status.dead_letter_count) == (len(ids), 0)


async def test_the_agent_keeps_a_full_window_of_unacked_batches_in_flight_and_no_more(tmp_path: Path) -> None:
    # While the control plane cannot commit (the test holds its database's write lock), no batch is acked:
    # the agent must have its whole window of batches in flight, not one at a time and not more than the
    # window, and once the lock goes every event is stored once.
    with control_plane(tmp_path / "cp") as cp:
        settings = agent_settings(
            cp.address, cp.gateway_token, tmp_path / "agent", max_batch_events=20, max_unacked_batches=4
        )
        async with GatewayAgent(settings) as agent:
            ids = await record_traffic(agent, 10, seed=11)  # registers the gateway before the lock is taken
            await eventually(lambda: agent.status().spool_depth == 0, within=30, what="the first events")
            database = sqlite3.connect(cp.process.data_dir / SQLITE_FILE_NAME, timeout=30, isolation_level=None)
            database.execute("BEGIN IMMEDIATE")
            try:
                ids += await record_traffic(agent, 150, seed=12)
                await eventually(lambda: agent.status().unacked_batches == 4, within=10, what="a full window")
                in_flight = []
                for _ in range(10):
                    in_flight.append(agent.status().unacked_batches)
                    await asyncio.sleep(0.05)
            finally:
                database.execute("COMMIT")
                database.close()
            await eventually(lambda: agent.status().spool_depth == 0, within=30, what="the spool to drain")
            status = agent.status()
        stored = server_event_ids(cp.process.data_dir)
    assert in_flight == [4] * 10
    assert Counter(stored) == Counter(ids)
    assert (status.events_accepted, status.unacked_batches) == (len(ids), 0)


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
    await eventually(lambda: not agent.status().connected, within=30, what="the agent to see the link down")
    assert agent.status().spool_depth > 0
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
