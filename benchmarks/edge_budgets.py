"""Budgets at the edge: check() latency with 20 applicable budgets (in-process, and over a real agent daemon's
local gRPC socket), and the overspend of three agents sharing a hard stop while cut off, against the bound.

Everything is real: `meterwire serve` (SQLite) with the budgets, agents that receive their snapshots over
WatchBudgetStates, and `meterwire agent run` for the socket. Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from gateway_agent import CheckRequest, GatewayAgent, UsageEstimate
from meterwire.agent.v1 import agent_service_pb2 as agent_pb
from meterwire.agent.v1 import agent_service_pb2_grpc as agent_grpc
from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from meterwire.budget.v1 import budget_service_pb2_grpc as budget_grpc
from meterwire.common.v1 import usage_pb2
from tests.clients import bearer
from tests.gateway_agent.harness import (
    ENVIRONMENT,
    AgentProcess,
    agent_settings,
    create_gateway_token,
    eventually,
)
from tests.system.serve import ServeProcess, free_port, serve

MODEL = "bench-model"


def percentiles(samples_ns: list[int]) -> str:
    ordered = sorted(samples_ns)
    p50 = ordered[len(ordered) // 2] / 1000
    p99 = ordered[int(len(ordered) * 0.99)] / 1000
    return f"p50 {p50:.2f} µs, p99 {p99:.2f} µs, mean {statistics.fmean(ordered) / 1000:.2f} µs"


def create_budget(process: ServeProcess, name: str, *, limit: int, requested_model: str) -> str:
    admin = bearer(process.admin_token_file.read_text().strip())
    with grpc.insecure_channel(process.address) as channel:
        budget = budget_pb.Budget(
            display_name=name,
            scope=budget_pb.Scope(environment_id=ENVIRONMENT, requested_model=requested_model),
            metric=budget_pb.METRIC_SPEND,
            limit=limit,
            period=budget_pb.PERIOD_DAY,
            mode=budget_pb.MODE_HARD_STOP,
        )
        response = budget_grpc.BudgetServiceStub(channel).CreateBudget(
            budget_pb.CreateBudgetRequest(budget=budget), metadata=admin, timeout=10
        )
        return str(response.budget.budget_id)


def server_used(process: ServeProcess, budget_id: str) -> int:
    admin = bearer(process.admin_token_file.read_text().strip())
    with grpc.insecure_channel(process.address) as channel:
        response = budget_grpc.BudgetServiceStub(channel).GetBudgetStatus(
            budget_pb.GetBudgetStatusRequest(budget_id=budget_id), metadata=admin, timeout=10
        )
        return int(response.status.used)


def spend_event(cost_micros: int, reservation_id: str) -> usage_pb2.UsageEvent:
    event = usage_pb2.UsageEvent(
        request_id="r", attempt=1, requested_model=MODEL, resolved_model=MODEL, reservation_id=reservation_id
    )
    event.cost_micros = cost_micros
    return event


async def check_latency(root: Path, checks: int) -> None:
    with serve(root / "cp") as process:
        token = create_gateway_token(process)
        for index in range(20):  # 20 budgets every request matches (environment- and model-scoped)
            create_budget(process, f"budget {index:02d}", limit=10**15, requested_model=MODEL)
        request = CheckRequest(api_key_id="key-1", requested_model=MODEL, estimate=UsageEstimate(cost_micros=1_000))
        plain = CheckRequest(api_key_id="key-1", requested_model=MODEL)
        async with GatewayAgent(agent_settings(process.address, token, root / "agent")) as agent:
            await eventually(lambda: len(agent.status().budgets) == 20, within=60, what="the 20-budget snapshot")
            for label, checked in (("without estimate", plain), ("with estimate (reserves)", request)):
                samples = []
                for _ in range(checks):
                    start = time.perf_counter_ns()
                    decision = agent.check(checked)
                    samples.append(time.perf_counter_ns() - start)
                    if decision.reservation_id:
                        agent.release_reservation(decision.reservation_id)
                assert len(decision.budgets) == 20
                assert decision.allowed
                print(f"in-process check, 20 budgets, {label}: {percentiles(samples)} ({checks} checks)")
        socket = root / "agent.sock"
        daemon = AgentProcess(process.address, token, root / "daemon", listen=f"unix://{socket}")
        try:
            await eventually(lambda: len(daemon.status().budgets) == 20, within=60, what="the daemon's snapshot")
            with grpc.insecure_channel(f"unix://{socket}") as channel:
                stub = agent_grpc.AgentServiceStub(channel)
                wire = agent_pb.CheckRequestRequest(
                    api_key_id="key-1", requested_model=MODEL, estimate=agent_pb.UsageEstimate(cost_micros=1_000)
                )
                samples = []
                for _ in range(max(1, checks // 20)):
                    start = time.perf_counter_ns()
                    response = stub.CheckRequest(wire, timeout=5)
                    samples.append(time.perf_counter_ns() - start)
                    stub.ReleaseReservation(agent_pb.ReleaseReservationRequest(reservation_id=response.reservation_id))
                print(f"CheckRequest over the daemon's unix socket, 20 budgets: {percentiles(samples)}")
        finally:
            daemon.stop()


async def partition(root: Path, *, limit: int, estimate: int, excess: int) -> None:
    """Three agents share a hard stop; the control plane goes away; each spends what its lease allows."""
    port = free_port()
    gateways = ("gw-a", "gw-b", "gw-c")
    data_dir = root / "cp-partition"
    with serve(data_dir, port=port) as process:
        tokens = [create_gateway_token(process, gateway=gateways[0])]
        tokens += [create_gateway_token_more(process, gateway) for gateway in gateways[1:]]
        shared = create_budget(process, "shared", limit=limit, requested_model=MODEL)
        agents = [
            GatewayAgent(agent_settings(process.address, token, root / gateway, gateway_id=gateway))
            for token, gateway in zip(tokens, gateways, strict=True)
        ]
        for agent in agents:
            await agent.start()
        for agent in agents:  # spend 60% of the limit while connected
            for _ in range(int(limit * 0.2) // (estimate * 2)):
                decision = agent.check(CheckRequest(requested_model=MODEL, estimate=UsageEstimate(estimate)))
                await agent.record(spend_event(estimate * 2, decision.reservation_id))
        connected_total = len(agents) * (int(limit * 0.2) // (estimate * 2)) * estimate * 2

        def fresh() -> bool:
            return all(
                b.server_used == connected_total and b.pending_used == 0
                for a in agents
                for b in a.status().budgets
                if b.budget_id == shared
            )

        await eventually(fresh, within=60, what="every agent's snapshot to include the connected usage")
        seen = [next(b.server_used for b in a.status().budgets if b.budget_id == shared) for a in agents]
        at_cut = server_used(process, shared)
        process.stop()
    admitted = []
    for agent in agents:
        count = 0
        while (decision := agent.check(CheckRequest(requested_model=MODEL, estimate=UsageEstimate(estimate)))).allowed:
            count += 1
            await agent.record(spend_event(estimate + excess, decision.reservation_id))
        admitted.append(count)
    with serve(data_dir, port=port) as process:
        expected = connected_total + sum(admitted) * (estimate + excess)
        await eventually(lambda: server_used(process, shared) == expected, within=60, what="the spooled usage")
        total = server_used(process, shared)
        for agent in agents:
            await agent.shutdown()
    n = len(agents)
    bound = limit + sum((at_cut - s) / n for s in seen) + n * excess
    print(
        f"partition, 3 agents, limit {limit}: spent {total} (overspend {total - limit}); bound limit +"
        f" sum((B - S_i)/N) + N*c = {bound:.0f} (B {at_cut}, S_i {seen}, c {excess}); admitted cut off {admitted}"
    )


def create_gateway_token_more(process: ServeProcess, gateway: str) -> str:
    """A gateway token in the environment create_gateway_token made."""
    import json

    result = process.cli("tokens", "create", "gateway", "-e", ENVIRONMENT, "-g", gateway, "--json")
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["secret"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checks", type=int, default=200_000, help="in-process checks per variant")
    parser.add_argument("--limit", type=int, default=300_000, help="the shared budget's limit (micros)")
    parser.add_argument("--estimate", type=int, default=1_000, help="each request's reserved estimate")
    parser.add_argument("--excess", type=int, default=1_700, help="what each request's real cost exceeds it by")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mw-edge-budgets-") as temp:
        root = Path(temp)
        await check_latency(root, args.checks)
        await partition(root, limit=args.limit, estimate=args.estimate, excess=args.excess)


if __name__ == "__main__":
    asyncio.run(main())
