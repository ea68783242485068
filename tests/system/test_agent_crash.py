"""kill -9 of the agent daemon at random points: the control plane ends with exactly the accepted events, once each."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from gateway_agent import new_event_id
from meterwire.agent.v1 import agent_service_pb2 as agent_pb
from services.cli.simulate import make_request
from tests.gateway_agent.harness import AgentProcess, control_plane, server_event_ids, wait_until

pytestmark = pytest.mark.system

KILLS = 22
IN_FLIGHT = 8


def drive_until_killed(agent: AgentProcess, rng: random.Random, accepted: list[str], uncertain: list[str]) -> None:
    """Records events with wait_for_commit (IN_FLIGHT at once) and SIGKILLs the agent after a random moment.

    An id counts as accepted only when RecordUsage answered COMMITTED; calls cut off by the kill are uncertain:
    the agent may or may not have committed them.
    """
    kill_at = time.monotonic() + rng.uniform(0.2, 1.0)
    in_flight: list[tuple[str, grpc.Future]] = []  # type: ignore[type-arg]
    while time.monotonic() < kill_at:
        for event in make_request(rng):
            event.event_id = new_event_id()
            request = agent_pb.RecordUsageRequest(event=event, wait_for_commit=True)
            in_flight.append((event.event_id, agent.stub.RecordUsage.future(request, timeout=10)))
        while len(in_flight) >= IN_FLIGHT:
            event_id, future = in_flight.pop(0)
            response = future.result()
            assert response.outcome == agent_pb.RECORD_OUTCOME_COMMITTED
            accepted.append(event_id)
    agent.kill()
    for event_id, future in in_flight:
        try:
            response = future.result()
        except grpc.RpcError:
            uncertain.append(event_id)
        else:
            assert response.outcome == agent_pb.RECORD_OUTCOME_COMMITTED
            accepted.append(event_id)


def test_sigkilled_agent_loses_and_duplicates_nothing_it_accepted(tmp_path: Path) -> None:
    rng = random.Random(20261123)
    accepted: list[str] = []
    uncertain: list[str] = []
    with control_plane(tmp_path / "cp") as cp:
        for _ in range(KILLS):
            agent = AgentProcess(cp.address, cp.gateway_token, tmp_path / "agent", "--durability", "fsync")
            drive_until_killed(agent, rng, accepted, uncertain)
        final = AgentProcess(cp.address, cp.gateway_token, tmp_path / "agent")
        try:
            wait_until(lambda: final.status().state.spool_depth == 0, timeout=30, what="the spool to drain")
            status = final.status()
        finally:
            assert final.stop() == 0
        stored = Counter(server_event_ids(cp.process.data_dir))

    assert len(accepted) > 500
    duplicated = [event_id for event_id, n in stored.items() if n > 1]
    lost = set(accepted) - set(stored)
    unexplained = set(stored) - set(accepted) - set(uncertain)
    assert duplicated == []
    assert lost == set()
    assert unexplained == set()
    # Each uncertain id was cut off by a kill: at most IN_FLIGHT per kill, stored or not.
    assert len(uncertain) <= KILLS * (IN_FLIGHT + 3)
    assert status.state.last_acked_sequence == status.next_sequence - 1
