"""Budgets at the edge with real agents and a real control plane on loopback (SQLite and PostgreSQL): admission
while connected and cut off, convergence after reconnecting, out-of-order commits, shared hard stops under a
partition, and the daemon's answers."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import grpc
from prometheus_client import generate_latest

from budgeting.decision import Verdict
from gateway_agent import CheckRequest, Decision, GatewayAgent, UsageEstimate
from gateway_agent.agent import SPOOL_FILE
from gateway_agent.metrics import agent_registry
from gateway_agent.settings import Durability
from gateway_agent.spool import Spool
from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from meterwire.telemetry.v1 import telemetry_service_pb2 as telemetry_pb
from meterwire.telemetry.v1 import telemetry_service_pb2_grpc as telemetry_grpc
from tests.clients import bearer
from tests.gateway_agent.budget_plane import budget_plane, local_figures, settings_for, spend_event
from tests.gateway_agent.harness import GATEWAY, eventually
from tests.system.serve import run_cli

HARD, WARN = "m-hard", "m-warn"


def checking(model: str, cost: int | None = None) -> CheckRequest:
    estimate = None if cost is None else UsageEstimate(cost_micros=cost)
    return CheckRequest(requested_model=model, estimate=estimate)


def figures_of(agent: GatewayAgent, budget_id: str) -> tuple[int, int, int, int]:
    figures = local_figures(agent, budget_id)
    assert figures is not None, f"the agent does not know budget {budget_id}"
    return figures


async def snapshot_shows(agent: GatewayAgent, budget_id: str, *, server_used: int, pending: int = 0) -> None:
    def shown() -> bool:
        figures = local_figures(agent, budget_id)
        return figures is not None and figures[1:3] == (server_used, pending)

    await eventually(shown, within=30, what=f"a snapshot of {budget_id} with server_used {server_used}")


async def test_a_hundred_concurrent_checks_pass_at_most_what_remains_and_their_events_settle_them(
    migrated_database_url: str, tmp_path: Path
) -> None:
    async with budget_plane(migrated_database_url, tmp_path, GATEWAY) as plane:
        hard = await plane.create_budget("hard", limit=100_000, requested_model=HARD)
        async with GatewayAgent(settings_for(plane, GATEWAY, tmp_path / "agent")) as agent:
            await agent.record(spend_event(HARD, 99_000))
            await snapshot_shows(agent, hard, server_used=99_000)
            gate = threading.Barrier(100)

            def one(_: int) -> Decision:
                gate.wait()
                return agent.check(checking(HARD, 30))

            with ThreadPoolExecutor(max_workers=100) as pool:
                decisions = list(pool.map(one, range(100)))
            admitted = [d for d in decisions if d.allowed]
            assert len(admitted) == 1_000 // 30
            assert {d.denied_by_budget_id for d in decisions if not d.allowed} == {hard}
            assert figures_of(agent, hard) == (99_000, 99_000, 0, 33 * 30)
            for decision in admitted:  # each ran and cost 20: its event settles its reservation
                await agent.record(spend_event(HARD, 20, reservation_id=decision.reservation_id))
            assert figures_of(agent, hard)[2:] == (33 * 20, 0)
            assert agent.status().open_reservations == 0
            await snapshot_shows(agent, hard, server_used=99_000 + 33 * 20)


async def test_cut_off_the_agent_keeps_denying_once_over_and_warn_only_keeps_allowing(
    migrated_database_url: str, tmp_path: Path
) -> None:
    async with budget_plane(migrated_database_url, tmp_path, GATEWAY) as plane:
        hard = await plane.create_budget("hard", limit=1_000, requested_model=HARD)
        warn = await plane.create_budget("warn", limit=1_000, requested_model=WARN, mode=budget_pb.MODE_WARN_ONLY)
        async with GatewayAgent(settings_for(plane, GATEWAY, tmp_path / "agent")) as agent:
            await snapshot_shows(agent, hard, server_used=0)
            for _ in range(2):
                assert agent.check(checking(HARD)).allowed
                await agent.record(spend_event(HARD, 400))
            await snapshot_shows(agent, hard, server_used=800)
            await plane.stop()
            # Cut off: the agent's own usage since the snapshot still counts.
            assert agent.check(checking(HARD)).allowed
            await agent.record(spend_event(HARD, 400), wait_for_commit=True)
            assert figures_of(agent, hard)[:3] == (1_200, 800, 400)
            for _ in range(3):
                denied = agent.check(checking(HARD))
                assert (denied.allowed, denied.http_status, denied.denied_by_budget_id) == (False, 429, hard)
            await agent.record(spend_event(WARN, 1_500), wait_for_commit=True)
            warned = [agent.check(checking(WARN, cost=10)) for _ in range(4)]
            assert [(d.allowed, d.verdict) for d in warned] == [(True, Verdict.WARN)] * 4
            status = agent.status()
            by_id = {figures.budget_id: figures for figures in status.budgets}
            assert (by_id[hard].denied_requests, by_id[warn].shadow_denied_requests) == (3, 4)
            assert status.budget_enforcement[hard] == (3, 0)
            assert status.budget_enforcement[warn] == (0, 4)
            state = agent.agent_state()
            assert state.HasField("budget_snapshot_time")
            assert {b.budget_id: b.shadow_denied_requests for b in state.budget_enforcement}[warn] == 4
            registry = agent_registry(agent, asyncio.get_running_loop())
            metrics = (await asyncio.to_thread(generate_latest, registry)).decode()
            assert f'meterwire_agent_budget_shadow_denied_requests_total{{budget_id="{warn}"}} 4.0' in metrics
            assert f'meterwire_agent_budget_denied_requests_total{{budget_id="{hard}"}} 3.0' in metrics
            assert f'meterwire_agent_budget_used{{budget_id="{hard}"}} 1200.0' in metrics


async def test_after_reconnecting_spooled_usage_is_delivered_and_a_fresh_snapshot_replaces_the_estimate(
    migrated_database_url: str, tmp_path: Path
) -> None:
    async with budget_plane(migrated_database_url, tmp_path, GATEWAY) as plane:
        hard = await plane.create_budget("hard", limit=100_000, requested_model=HARD)
        async with GatewayAgent(settings_for(plane, GATEWAY, tmp_path / "agent")) as agent:
            await snapshot_shows(agent, hard, server_used=0)
            await plane.stop()
            for _ in range(5):
                await agent.record(spend_event(HARD, 1_000), wait_for_commit=True)
            assert figures_of(agent, hard)[:3] == (5_000, 0, 5_000)
            await plane.start()
            started = time.monotonic()
            await snapshot_shows(agent, hard, server_used=5_000, pending=0)
            converged_s = time.monotonic() - started
            assert await plane.server_used(hard) == 5_000
            assert figures_of(agent, hard)[0] == 5_000
            print(f"converged {converged_s:.2f}s after the control plane came back (heartbeat interval 1 s)")


def first_sequence_of_a_new_spool(data_dir: Path) -> int:
    """Creates a new agent's spool in `data_dir` now; returns the sequence number its first event will get."""
    spool = Spool(
        data_dir / SPOOL_FILE,
        durability=Durability.OS_BUFFERED,
        max_bytes=1 << 20,
        max_pending=10,
        commit_linger=timedelta(0),
        commit_max_events=10,
    )
    spool.open()
    try:
        return spool.next_sequence
    finally:
        spool.close()


async def test_a_later_batch_committed_first_is_counted_once(migrated_database_url: str, tmp_path: Path) -> None:
    """Events 5-6 of the agent's spool reach the control plane before 1-4 (as a resent batch would): the snapshot
    includes them by range, the agent counts only 1-4 itself, and nothing is counted twice at any point."""
    async with budget_plane(migrated_database_url, tmp_path, GATEWAY) as plane:
        hard = await plane.create_budget("hard", limit=10**9, requested_model=HARD)
        events = [spend_event(HARD, 100 * n, event_id=f"00000000-0000-7000-8000-00000000000{n}") for n in range(1, 7)]
        first = await asyncio.to_thread(first_sequence_of_a_new_spool, tmp_path / "agent")
        for sequence, event in enumerate(events, start=first):
            event.sequence = sequence
            event.event_time.GetCurrentTime()
        assert plane.channel is not None
        ack = await telemetry_grpc.TelemetryServiceStub(plane.channel).ReportUsage(
            telemetry_pb.ReportUsageRequest(batch_sequence=1, events=events[4:]),
            metadata=bearer(plane.gateway_tokens[GATEWAY]),
        )
        assert ack.ack.accepted_count == 2
        total = 100 * 21
        async with GatewayAgent(settings_for(plane, GATEWAY, tmp_path / "agent")) as agent:
            await snapshot_shows(agent, hard, server_used=1_100)
            for event in events:
                event.ClearField("sequence")
                result = await agent.record(event)
                assert result.sequence == first + int(event.event_id[-1]) - 1
                assert figures_of(agent, hard)[0] <= total
            assert figures_of(agent, hard)[:3] == (total, 1_100, 1_000)
            await snapshot_shows(agent, hard, server_used=total, pending=0)
            assert await plane.server_used(hard) == total


async def test_a_gateway_reinstalled_with_a_fresh_data_dir_counts_its_new_events_while_cut_off(
    migrated_database_url: str, tmp_path: Path
) -> None:
    """A gateway's first install delivered 20 events; a new install (a fresh data dir, as a container without a
    volume gets) must not number its events into the included set the control plane keeps for the old one: after
    its first snapshot, cut off, its own events count locally and the hard stop denies once they reach it."""
    async with budget_plane(migrated_database_url, tmp_path, GATEWAY) as plane:
        hard = await plane.create_budget("hard", limit=10_000, requested_model=HARD)
        async with GatewayAgent(settings_for(plane, GATEWAY, tmp_path / "first-install")) as first:
            for _ in range(20):
                await first.record(spend_event(HARD, 100))
            await snapshot_shows(first, hard, server_used=2_000)
        async with GatewayAgent(settings_for(plane, GATEWAY, tmp_path / "second-install")) as second:
            await snapshot_shows(second, hard, server_used=2_000)
            await plane.stop()
            admitted = 0
            while admitted <= 8 and second.check(checking(HARD)).allowed:
                await second.record(spend_event(HARD, 1_000), wait_for_commit=True)
                admitted += 1
            assert admitted == 8
            assert figures_of(second, hard) == (10_000, 2_000, 8_000, 0)
            denied = second.check(checking(HARD))
            assert (denied.allowed, denied.denied_by_budget_id) == (False, hard)
        await plane.start()
        assert await plane.server_used(hard) == 2_000  # the second install's events are still in its spool


async def test_three_agents_cut_off_overspend_a_shared_hard_stop_no_more_than_the_bound(
    migrated_database_url: str, tmp_path: Path
) -> None:
    """Each agent spends only its lease while cut off. Real usage exceeds each reservation by `excess`, one
    request at a time per agent, so the documented bound is limit + sum((B - S_i) / N) + N * excess."""
    limit, estimate, excess = 30_000, 1_000, 1_500
    gateways = ("gw-a", "gw-b", "gw-c")
    async with budget_plane(migrated_database_url, tmp_path, *gateways) as plane:
        shared = await plane.create_budget("shared", limit=limit, requested_model=HARD)
        agents = [GatewayAgent(settings_for(plane, g, tmp_path / g)) for g in gateways]
        for agent in agents:
            await agent.start()
        try:
            for agent in agents:
                for _ in range(3):
                    decision = agent.check(checking(HARD, estimate))
                    assert decision.allowed
                    await agent.record(spend_event(HARD, 2_000, reservation_id=decision.reservation_id))
            for agent in agents:
                await snapshot_shows(agent, shared, server_used=18_000)
            leases = [next(b for b in a.status().budgets if b.budget_id == shared) for a in agents]
            assert {(b.lease_allowance, b.lease_sharing_gateways) for b in leases} == {(4_000, 3)}
            server_at_cut = await plane.server_used(shared)
            seen = [b.server_used for b in leases]
            await plane.stop()
            admitted = [0, 0, 0]
            for index, agent in enumerate(agents):
                while (decision := agent.check(checking(HARD, estimate))).allowed:
                    admitted[index] += 1
                    await agent.record(spend_event(HARD, estimate + excess, reservation_id=decision.reservation_id))
                assert decision.denied_by_budget_id == shared
            await plane.start()
            for agent in agents:
                await snapshot_shows(agent, shared, server_used=18_000 + sum(admitted) * (estimate + excess))
            total = await plane.server_used(shared)
        finally:
            for agent in agents:
                await agent.shutdown()
    n = len(gateways)
    bound = limit + sum((server_at_cut - s) / n for s in seen) + n * excess
    print(f"partition: limit {limit}, spent {total}, overspend {total - limit}, bound {bound:.0f}, admitted {admitted}")
    assert total <= bound
    assert admitted == [2, 2, 2]


async def test_a_real_agent_daemon_answers_a_denied_check_with_the_429_explanation(
    migrated_database_url: str, tmp_path: Path
) -> None:
    from meterwire.agent.v1 import agent_service_pb2 as agent_pb
    from tests.gateway_agent.harness import AgentProcess

    async with budget_plane(migrated_database_url, tmp_path, GATEWAY) as plane:
        hard = await plane.create_budget("daily spend", limit=1_000, requested_model=HARD)
        daemon = AgentProcess(
            plane.address, plane.gateway_tokens[GATEWAY], tmp_path / "agent", "--reservation-ttl", "1"
        )
        try:
            request = agent_pb.CheckRequestRequest(
                requested_model=HARD, estimate=agent_pb.UsageEstimate(cost_micros=600)
            )

            def snapshot_seen() -> bool:
                return any(b.budget.budget_id == hard for b in daemon.status().budgets)

            await eventually(snapshot_seen, within=30, what="the daemon's first budget snapshot")
            admitted = daemon.stub.CheckRequest(request, timeout=5)
            assert admitted.allowed
            assert admitted.reservation_id
            assert admitted.budgets[0].reserved == 600
            assert daemon.stub.CheckRequest(request, timeout=5).http_status == 429  # 600 reserved + 600 > 1,000
            assert daemon.stub.ReleaseReservation(
                agent_pb.ReleaseReservationRequest(reservation_id=admitted.reservation_id), timeout=5
            ).released
            held = daemon.stub.CheckRequest(request, timeout=5)
            assert held.allowed
            await eventually(
                lambda: daemon.status().open_reservations == 0, within=30, what="the reservation to expire"
            )
            daemon.stub.RecordUsage(
                agent_pb.RecordUsageRequest(event=spend_event(HARD, 1_000), wait_for_commit=True), timeout=5
            )
            denied = daemon.stub.CheckRequest(request, timeout=5)
            assert (denied.allowed, denied.http_status, denied.denied_by_budget_id) == (False, 429, hard)
            assert denied.decision == budget_pb.DECISION_DENY
            assert denied.response_headers["x-should-retry"] == "false"
            assert denied.response_headers["content-type"] == "application/json"
            assert int(denied.response_headers["Retry-After"]) == denied.retry_after.seconds
            error = json.loads(denied.response_body)["error"]
            assert (error["code"], error["budget"]["id"], error["budget"]["name"]) == (
                "budget_exceeded",
                hard,
                "daily spend",
            )
            assert (error["budget"]["limit"], error["budget"]["used"]) == (1_000, 1_000)
            assert error["budget"]["scope"] == {"environment_id": "agent-test", "requested_model": HARD}
            assert error["retry_after_seconds"] == denied.retry_after.seconds
        finally:
            daemon.stop()


async def test_an_agent_killed_and_restarted_mid_outage_keeps_its_count(
    migrated_database_url: str, tmp_path: Path
) -> None:
    from meterwire.agent.v1 import agent_service_pb2 as agent_pb
    from tests.gateway_agent.harness import AgentProcess

    async with budget_plane(migrated_database_url, tmp_path, GATEWAY) as plane:
        hard = await plane.create_budget("hard", limit=10_000, requested_model=HARD)
        data_dir = tmp_path / "agent"
        daemon = AgentProcess(plane.address, plane.gateway_tokens[GATEWAY], data_dir)

        def figures(process: AgentProcess) -> tuple[int, int, int]:
            for local in process.status().budgets:
                if local.budget.budget_id == hard:
                    return local.used, local.server_used, local.pending_used
            return -1, -1, -1

        try:
            for _ in range(3):
                daemon.stub.RecordUsage(agent_pb.RecordUsageRequest(event=spend_event(HARD, 1_000)), timeout=5)
            await eventually(lambda: figures(daemon) == (3_000, 3_000, 0), within=30, what="the usage included")
            await plane.stop()
            for _ in range(4):
                daemon.stub.RecordUsage(
                    agent_pb.RecordUsageRequest(event=spend_event(HARD, 1_500), wait_for_commit=True), timeout=5
                )
            assert figures(daemon) == (9_000, 3_000, 6_000)
        finally:
            daemon.kill()
        restarted = AgentProcess(plane.address, plane.gateway_tokens[GATEWAY], data_dir)
        try:
            assert figures(restarted) == (9_000, 3_000, 6_000)
            denied = restarted.stub.CheckRequest(
                agent_pb.CheckRequestRequest(requested_model=HARD, estimate=agent_pb.UsageEstimate(cost_micros=1_500)),
                timeout=5,
            )
            assert (denied.allowed, denied.denied_by_budget_id) == (False, hard)
            shown = await asyncio.to_thread(run_cli, "agent", "status", "--agent", restarted.address)
            assert shown.returncode == 0, shown.stderr
            table = shown.stdout
            assert "budgets (as this agent enforces them)" in table
            assert f"hard ({hard})" in table
            assert "9000" in table
            assert "6000" in table
            as_json = await asyncio.to_thread(run_cli, "agent", "status", "--agent", restarted.address, "--json")
            (local,) = json.loads(as_json.stdout)["budgets"]
            assert (local["used"], local["pending_used"], local["denied_requests"]) == ("9000", "6000", "1")
        finally:
            restarted.stop()


async def test_the_budget_stream_of_a_control_plane_without_budgets_is_retried_quietly(tmp_path: Path) -> None:
    """A control plane that answers UNIMPLEMENTED: the agent fails open and keeps serving."""
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        from tests.gateway_agent.harness import agent_settings

        settings = agent_settings(f"127.0.0.1:{port}", "t", tmp_path / "agent")
        async with GatewayAgent(settings) as agent:

            def absent() -> bool:
                control = agent._control  # what the stream concluded
                return control is not None and control.budget_service_absent

            await eventually(absent, within=30, what="the budget stream to give up for a minute")
            assert agent.check(checking(HARD, 10)).allowed
    finally:
        await server.stop(None)
