"""The budget state agents report in heartbeats: its age makes a live gateway DEGRADED once it is old, its
per-budget denial counts are shown, kept across a restart, and bad reports are refused naming the field."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from meterwire.heartbeat.v1 import heartbeat_service_pb2 as pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2_grpc as pb_grpc
from services.heartbeat.fleet import Fleet
from services.server import ControlPlane
from tests.clients import Tokens, bearer
from tests.clock import FakeClock
from tests.heartbeat.helpers import Cli, GatewayStream, fleet_of, list_gateways
from tests.telemetry.events import stamp

_ENFORCEMENT = [
    pb.BudgetEnforcement(budget_id="bud_hard", denied_requests=3),
    pb.BudgetEnforcement(budget_id="bud_warn", shadow_denied_requests=5),
]


async def _get(channel: grpc.aio.Channel, secret: str, gateway_id: str = "gw-1") -> pb.Gateway:
    request = pb.GetGatewayRequest(environment_id="prod", gateway_id=gateway_id)
    return (await pb_grpc.HeartbeatServiceStub(channel).GetGateway(request, metadata=bearer(secret))).gateway


def _state(clock: FakeClock, age: timedelta) -> pb.AgentState:
    return pb.AgentState(
        agent_version="0.2.0", budget_snapshot_time=stamp(clock.now - age), budget_enforcement=_ENFORCEMENT
    )


async def test_a_gateway_enforcing_budgets_from_old_state_is_degraded_with_its_age(
    channel: grpc.aio.Channel, tokens: Tokens, fleet: Fleet, clock: FakeClock
) -> None:
    await tokens.environment("prod")
    stream = GatewayStream(channel, await tokens.gateway("prod", "gw-1"))
    # The default interval is 10 s: a snapshot 20 s old is fresh enough (limit 3 intervals), 2m10s is not.
    fresh = await stream.beat(_state(clock, timedelta(seconds=20)))
    assert fresh.status == pb.GATEWAY_STATUS_HEALTHY

    # No new heartbeat needed: the status check notices the snapshot aging past the limit.
    clock.advance(timedelta(seconds=11))
    fleet.tick()
    aged = await _get(channel, tokens.admin)
    assert aged.status == pb.GATEWAY_STATUS_DEGRADED

    old = await stream.beat(_state(clock, timedelta(minutes=2, seconds=10)))
    gateway = await _get(channel, tokens.admin)
    assert old.status == gateway.status == pb.GATEWAY_STATUS_DEGRADED
    assert gateway.status_reasons == ["enforcing budgets from state 2m10s old (limit 30s)"]
    assert gateway.state.budget_snapshot_time == stamp(clock.now - timedelta(minutes=2, seconds=10))
    assert list(gateway.state.budget_enforcement) == _ENFORCEMENT
    (listed,) = await list_gateways(channel, tokens.admin, statuses=[pb.GATEWAY_STATUS_DEGRADED])
    assert listed.state.budget_enforcement == gateway.state.budget_enforcement

    # A fresh snapshot again (the agent reconnected): healthy.
    assert (await stream.beat(_state(clock, timedelta(seconds=1)))).status == pb.GATEWAY_STATUS_HEALTHY
    await stream.close()


async def test_the_snapshot_ageing_between_heartbeats_turns_the_status_without_traffic(
    channel: grpc.aio.Channel, tokens: Tokens, fleet: Fleet, clock: FakeClock
) -> None:
    await tokens.environment("prod")
    stream = GatewayStream(channel, await tokens.gateway("prod", "gw-1"))
    assert (await stream.beat(_state(clock, timedelta(seconds=25)))).status == pb.GATEWAY_STATUS_HEALTHY
    clock.advance(timedelta(seconds=6))  # 31 s old, and the last heartbeat is 6 s old (not stale yet)
    fleet.tick()
    gateway = await _get(channel, tokens.admin)
    assert gateway.status == pb.GATEWAY_STATUS_DEGRADED
    assert gateway.status_reasons == ["enforcing budgets from state 31s old (limit 30s)"]
    await stream.close()


async def test_budget_state_survives_a_control_plane_restart(
    control_plane: ControlPlane,
    channel: grpc.aio.Channel,
    tokens: Tokens,
    fleet: Fleet,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    await tokens.environment("prod")
    stream = GatewayStream(channel, await tokens.gateway("prod", "gw-1"))
    await stream.beat(_state(clock, timedelta(seconds=5)))
    await stream.close()
    await control_plane.shutdown()  # the last flush happens here

    settings = control_plane.settings.model_copy(update={"data_dir": tmp_path / "second"})
    async with ControlPlane(settings) as second, grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel2:
        fleet_of(second).clock = clock
        gateway = await _get(channel2, tokens.admin)
    assert gateway.state.budget_snapshot_time == stamp(clock.now - timedelta(seconds=5))
    assert list(gateway.state.budget_enforcement) == _ENFORCEMENT


@pytest.mark.parametrize(
    ("state", "field"),
    [
        (
            pb.AgentState(budget_enforcement=[pb.BudgetEnforcement(budget_id="b", denied_requests=-1)]),
            "state.budget_enforcement[0].denied_requests",
        ),
        (pb.AgentState(budget_enforcement=[pb.BudgetEnforcement()]), "state.budget_enforcement[0].budget_id"),
        (
            pb.AgentState(budget_enforcement=[pb.BudgetEnforcement(budget_id="b")] * 2),
            "state.budget_enforcement[1].budget_id",
        ),
        (
            pb.AgentState(budget_enforcement=[pb.BudgetEnforcement(budget_id=f"b{i}") for i in range(101)]),
            "state.budget_enforcement",
        ),
    ],
    ids=["negative", "no-budget-id", "twice", "too-many"],
)
async def test_bad_budget_enforcement_is_refused_naming_the_field(
    channel: grpc.aio.Channel, tokens: Tokens, state: pb.AgentState, field: str
) -> None:
    await tokens.environment("prod")
    stream = GatewayStream(channel, await tokens.gateway("prod", "gw-1"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream.beat(state)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in (refused.value.details() or "")


async def test_the_cli_shows_budget_state_age_and_denials(
    control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens, fleet: Fleet, clock: FakeClock
) -> None:
    await tokens.environment("prod")
    stream = GatewayStream(channel, await tokens.gateway("prod", "gw-1"))
    await stream.beat(_state(clock, timedelta(minutes=2, seconds=10)))
    cli = Cli(control_plane, tokens.admin)

    listed = await cli("gateways", "list")
    assert listed.exit_code == 0, listed.output
    assert "budget state" in listed.output
    assert "2m old" in listed.output
    assert "3 denied, 5 shadow" in listed.output

    shown = await cli("gateways", "show", "gw-1", "--environment", "prod")
    assert shown.exit_code == 0, shown.output
    assert "budget state: 2m old" in shown.output
    assert "bud_hard" in shown.output
    assert "bud_warn" in shown.output

    as_json = json.loads((await cli("gateways", "show", "gw-1", "--environment", "prod", "--json")).output)
    assert as_json["state"]["budget_enforcement"][0] == {"budget_id": "bud_hard", "denied_requests": "3"}
    await stream.close()
