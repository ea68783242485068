"""A gateway that made contact without heartbeats (usage only) is listed, found and judged by its silence."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc

from meterwire.heartbeat.v1 import heartbeat_service_pb2 as pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2_grpc as pb_grpc
from meterwire.telemetry.v1 import telemetry_service_pb2 as telemetry_pb
from meterwire.telemetry.v1 import telemetry_service_pb2_grpc as telemetry_grpc
from services.heartbeat.fleet import Fleet
from services.server import ControlPlane
from tests.clients import Tokens, bearer
from tests.clock import FakeClock
from tests.heartbeat.helpers import fleet_of, list_gateways
from tests.telemetry.events import usage_event


async def _report_usage(channel: grpc.aio.Channel, secret: str) -> None:
    request = telemetry_pb.ReportUsageRequest(events=[usage_event()])
    response = await telemetry_grpc.TelemetryServiceStub(channel).ReportUsage(request, metadata=bearer(secret))
    assert response.ack.accepted_count == 1


async def _get(channel: grpc.aio.Channel, secret: str) -> pb.Gateway:
    request = pb.GetGatewayRequest(environment_id="prod", gateway_id="gw-usage")
    return (await pb_grpc.HeartbeatServiceStub(channel).GetGateway(request, metadata=bearer(secret))).gateway


async def test_a_gateway_sending_only_usage_is_listed_found_and_goes_offline_when_silent(
    channel: grpc.aio.Channel, tokens: Tokens, fleet: Fleet, clock: FakeClock
) -> None:
    await tokens.environment("prod")
    await _report_usage(channel, await tokens.gateway("prod", "gw-usage"))

    listed = await list_gateways(channel, tokens.admin)
    found = await _get(channel, tokens.admin)
    clock.advance(timedelta(minutes=2))
    fleet.tick()
    silent = await _get(channel, tokens.admin)

    assert [(g.gateway_id, g.status) for g in listed] == [("gw-usage", pb.GATEWAY_STATUS_HEALTHY)]
    assert found.HasField("register_time")
    assert not found.HasField("last_seen_time")
    assert silent.status == pb.GATEWAY_STATUS_OFFLINE
    assert "no heartbeat ever" in silent.status_reasons[0]


async def test_after_a_restart_a_usage_only_gateway_is_not_never_seen(
    control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens, tmp_path: Path
) -> None:
    await tokens.environment("prod")
    await _report_usage(channel, await tokens.gateway("prod", "gw-usage"))
    await control_plane.shutdown()

    settings = control_plane.settings.model_copy(update={"data_dir": tmp_path / "second"})
    async with ControlPlane(settings) as second, grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel2:
        found = await _get(channel2, tokens.admin)
        listed = await list_gateways(channel2, tokens.admin, statuses=[pb.GATEWAY_STATUS_NEVER_SEEN])
        assert fleet_of(second).current(("prod", "gw-usage")) is not None

    assert found.status == pb.GATEWAY_STATUS_HEALTHY
    assert found.HasField("register_time")
    assert listed == []
