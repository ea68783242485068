"""Out-of-range heartbeat input is refused at the edge naming its field, and one gateway's state never blocks
another's: not the status check, not the batched flush."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from meterwire.heartbeat.v1 import heartbeat_service_pb2 as pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2_grpc as pb_grpc
from services.heartbeat.fleet import Fleet
from services.heartbeat.records import AgentState, GatewayStatus
from services.server import ControlPlane
from services.storage import tables
from tests.clients import Tokens, bearer
from tests.clock import FakeClock
from tests.heartbeat.helpers import GatewayStream

_YEAR_10000 = 253402300800  # 10000-01-01T00:00:00Z in seconds since 1970


# The range checks refuse these at the edge, before anything is stored: one database engine is enough.
@pytest.mark.parametrize("storage_dialect", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("state", "field"),
    [
        (pb.AgentState(oldest_unsent_age=Duration(seconds=10**14)), "state.oldest_unsent_age"),
        (pb.AgentState(oldest_unsent_age=Duration(seconds=5, nanos=-1)), "state.oldest_unsent_age"),
        (pb.AgentState(oldest_unsent_age=Duration(seconds=-1)), "state.oldest_unsent_age"),
        (pb.AgentState(connected_since=Timestamp(seconds=_YEAR_10000)), "state.connected_since"),
        (pb.AgentState(connected_since=Timestamp(seconds=-62135596800)), "state.connected_since"),
        (pb.AgentState(connected_since=Timestamp(seconds=1, nanos=-1)), "state.connected_since"),
        (pb.AgentState(last_acked_sequence=2**64 - 1), "state.last_acked_sequence"),
        (pb.AgentState(spool_bytes=-1), "state.spool_bytes"),
    ],
    ids=["age-1e14s", "age-malformed", "age-negative", "since-year-10000", "since-year-1", "since-malformed",
         "sequence-past-int64", "negative-bytes"],
)  # fmt: skip
async def test_an_out_of_range_heartbeat_is_invalid_argument_naming_the_field(
    channel: grpc.aio.Channel, tokens: Tokens, fleet: Fleet, state: pb.AgentState, field: str
) -> None:
    await tokens.environment("prod")
    stream = GatewayStream(channel, await tokens.gateway("prod", "gw-1"))

    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stream.beat(state)

    assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (failure.value.details() or "").startswith(f"{field}: ")
    assert fleet.current(("prod", "gw-1")) is None  # nothing of it was kept


async def test_a_refused_heartbeat_leaves_the_status_check_working_for_the_others(
    channel: grpc.aio.Channel, tokens: Tokens, fleet: Fleet, clock: FakeClock
) -> None:
    await tokens.environment("prod")
    quiet = GatewayStream(channel, await tokens.gateway("prod", "gw-quiet"))
    await quiet.beat()
    await quiet.close()
    hostile = GatewayStream(channel, await tokens.gateway("prod", "gw-bad"))
    with pytest.raises(grpc.aio.AioRpcError):
        await hostile.beat(pb.AgentState(oldest_unsent_age=Duration(seconds=10**14)))

    clock.advance(timedelta(seconds=61))
    fleet.tick()

    stub = pb_grpc.HeartbeatServiceStub(channel)
    request = pb.GetGatewayRequest(environment_id="prod", gateway_id="gw-quiet")
    silent = (await stub.GetGateway(request, metadata=bearer(tokens.admin))).gateway
    assert silent.status == pb.GATEWAY_STATUS_OFFLINE


async def test_one_gateway_whose_row_cannot_be_written_does_not_drop_the_others_state(
    control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens, fleet: Fleet
) -> None:
    await tokens.environment("prod")
    good = GatewayStream(channel, await tokens.gateway("prod", "gw-good"))
    await good.beat(pb.AgentState(agent_version="1.0", spool_depth=4))
    await fleet.flush()
    await good.beat(pb.AgentState(agent_version="1.1", spool_depth=5))
    # A state no edge would let in (past any 64-bit column), put straight into the fleet: the batched flush
    # containing it fails, and the other gateway's state must still be written.
    broken = fleet.register("prod", "gw-broken")
    fleet.record_heartbeat(broken, AgentState(spool_depth=2**70))

    written = await fleet.flush()

    gw = tables.gateways
    async with control_plane.engine.connect() as connection:
        rows = await connection.execute(
            sa.select(gw.c.gateway_id, gw.c.agent_version, gw.c.spool_depth).where(gw.c.environment_id == "prod")
        )
        stored = {row.gateway_id: (row.agent_version, row.spool_depth) for row in rows}
    assert written == 1
    assert stored["gw-good"] == ("1.1", 5)
    assert "gw-broken" not in stored
    assert await fleet.flush() == 0  # the unwritable row is not retried at one transaction per flush
    await good.close()


async def test_a_gateway_whose_status_cannot_be_derived_does_not_stop_the_others(
    channel: grpc.aio.Channel, tokens: Tokens, fleet: Fleet, clock: FakeClock
) -> None:
    await tokens.environment("prod")
    # An interval no edge lets in: six of them overflow a timedelta, so deriving this gateway's status raises.
    # Registered first, so the status check meets it before the other gateway.
    broken = fleet.register("prod", "gw-broken")
    fleet.record_heartbeat(broken, AgentState())
    broken.interval = timedelta(days=10**8)
    broken.recheck_at = 0.0
    quiet = GatewayStream(channel, await tokens.gateway("prod", "gw-quiet"))
    await quiet.beat()
    await quiet.close()

    clock.advance(timedelta(seconds=61))
    fleet.tick()

    quiet_record = fleet.current(("prod", "gw-quiet"))
    assert quiet_record is not None
    assert quiet_record.status == GatewayStatus.OFFLINE
